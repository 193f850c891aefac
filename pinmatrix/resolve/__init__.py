"""[Cell] → Lock | Unresolvable: `uv pip compile` for the cell's Python and platform, all cells at
once."""
