"""Shared test set-up: `tests/` on sys.path for the helpers that unit and integration tests
share."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
