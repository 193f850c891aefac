"""pinmatrix: the host side of the compatibility matrix (matrix, resolve, runners, results,
report)."""
