"""`python -m pinmatrix bundle OUT [selectors...]`: what a host without network needs for the
selected cells (pinmatrix/bundle.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pinmatrix.bundle import build_bundle
from pinmatrix.errors import EXIT_OK
from pinmatrix.run.options import BundleOptions, RunOptions

HELP = ("OUT: pack what a host without network needs for the selected cells (wheels, or "
        "site layers against --host-packages), a manifest and the command "
        "(pinmatrix/bundle.py)")


@dataclass(frozen=True)
class BundleConfig:
    bundle_out: Path  # OUT, the first positional
    run: RunOptions
    bundle: BundleOptions


def run(config: BundleConfig) -> int:
    build_bundle(config.run, config.bundle_out, host_packages=config.bundle.host_packages,
                 part_mib=config.bundle.part_mib)
    return EXIT_OK
