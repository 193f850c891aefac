"""`python -m pinmatrix COMMAND`: argument parsing, exit codes, dispatch to the stages."""
