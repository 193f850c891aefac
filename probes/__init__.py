"""Probes run *inside* a cell. Stdlib and the stack under test only: never import pinmatrix here."""
