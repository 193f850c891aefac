"""pinmatrix: the host side of the compatibility matrix, one package per stage (matrix, resolve,
runners, containers, environ, run, report, cli; docs/DESIGN.md lists the modules)."""
