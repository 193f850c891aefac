"""One run of the matrix: options, the pipeline per cell, scheduling over GPUs, shards and Slurm,
the result cache, the run folder and its resume state."""
