"""Release bisect: when a cell breaks, name the first bad release (`python -m pinmatrix bisect`)."""
