"""`python -m pinmatrix doctor`: can this host judge the selected cells
(pinmatrix/run/doctor.py)."""
from __future__ import annotations

from dataclasses import dataclass

from pinmatrix.run.doctor import doctor_command
from pinmatrix.run.options import RunOptions

HELP = ("can this host judge the selected cells? one line per capability, with its remedy; "
        "exit 2 when no cell could be judged (pinmatrix/run/doctor.py)")


@dataclass(frozen=True)
class DoctorConfig:
    run: RunOptions


def run(config: DoctorConfig) -> int:
    return doctor_command(config.run)
