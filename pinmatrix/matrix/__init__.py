"""matrix.yaml → Matrix → [Cell]: load and validate the file, expand live axes, select cells."""
