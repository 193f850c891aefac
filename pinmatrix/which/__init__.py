"""`python -m pinmatrix which`: does a user's own stack LoRA-train EXAONE, how fast, and the
smallest change that makes it (stack: reading; match: matching and answering; cli: the command)."""
