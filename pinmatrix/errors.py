"""Every exception the harness raises on purpose, in one hierarchy whose base carries the exit code.

    PinmatrixError          exit 1 unless a subclass says otherwise
    ├── BadInput            exit 2: the user can fix it (a matrix file, a selector, an option)
    │   ├── MatrixError     file:line:column: message
    │   ├── SelectionError  a cell selector
    │   ├── UsageError      the command line
    │   └── ShardError, ResumeError, SchedulerError   --shard, --resume, --gpus, --build-jobs
    ├── HarnessError        exit 1: the harness could not do its job
    │   └── SlurmError, FetchError, PreviousRunError
    └── InfraSignal         the machine failed one cell's stage: caught inside the pipeline and
        ├── InfraError      written as an `infra` outcome (data), never raised to the CLI
        ├── ResolveInfraError
        └── IndexUnreachable

`python -m pinmatrix` catches PinmatrixError once and exits with `exc.exit_code`, printing
`exc.prefix: message` on one line. A broken cell is never an exception: it is a check result.

Exit codes: 0 done (broken cells are data); 1 harness failure (and `nightly`: a new breakage);
2 bad input, or `HostNotReady` (the doctor found that no selected cell could be judged here);
3 `matrix` finished with at least one `infra` cell (EXIT_INFRA); 130 interrupted.
"""
from __future__ import annotations

from pathlib import Path

EXIT_OK, EXIT_HARNESS, EXIT_BAD_INPUT = 0, 1, 2
# `matrix` finished, but at least one selected cell could not be judged (status `infra`): the
# machine's fault, not a stack's. Broken cells are data and still exit 0.
EXIT_INFRA = 3
LOG_TAIL_CHARS = 4000   # how much of a build/run log an infra record keeps


class PinmatrixError(Exception):
    """Base of every deliberate harness exception. `exit_code` is what `python -m pinmatrix` exits
    with."""

    exit_code = EXIT_HARNESS
    prefix = "harness error"


# --- bad input: exit 2 ---------------------------------------------------------------------------

class BadInput(PinmatrixError):
    """Wrong input the user can fix; the message names the argument or file position."""

    exit_code = EXIT_BAD_INPUT
    prefix = "error"


class MatrixError(BadInput):
    """A matrix file is wrong at one place. `str()` is one line: `file:line:column: message`.

    The CLI exits with code 2 on it, before anything is written.
    """

    def __init__(self, path: str | Path, line: int, column: int, message: str) -> None:
        self.path = str(path)
        self.line = line          # 1-based
        self.column = column      # 1-based
        self.message = " ".join(message.split())  # one line, always
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class SelectionError(BadInput, ValueError):
    """A command-line cell selector is wrong; the message names the argument."""

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        self.message = " ".join(message.split())
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"cell selector {self.argument!r}: {self.message}"


class UsageError(BadInput):
    """A command-line option or argument is wrong (argparse's own complaints included)."""


class ShardError(BadInput, ValueError):
    """A bad --shard value, or shards that disagree about the run folder they share."""


class ResumeError(BadInput, ValueError):
    """--resume cannot continue: no such run, nothing unfinished, or a conflicting option."""


class SchedulerError(BadInput, ValueError):
    """A bad --gpus list or job count."""


class HostNotReady(BadInput):
    """The doctor's checks (pinmatrix/run/doctor.py) say no selected cell could be judged on this
    host: stop before spending minutes on an all-`infra` table. The message holds the remedies."""

    prefix = "not ready"


# --- harness failures: exit 1 --------------------------------------------------------------------

class HarnessError(PinmatrixError):
    """The harness itself failed (exit 1), as opposed to bad input (exit 2) or a broken cell
    (data)."""


class SlurmError(HarnessError):
    """sbatch missing or refusing, a bad run-cell call: exit 1 with the command's own words."""


class FetchError(HarnessError):
    """A model could not be prefetched (names the repo and revision; never carries a token)."""


class PreviousRunError(HarnessError):
    """The folder given as the previous run holds no run we can read."""


# --- one cell's infra: caught by the pipeline, recorded as data ----------------------------------

class InfraSignal(PinmatrixError):
    """The machine, not the stack, failed one cell's stage. The pipeline turns it into an `infra`
    outcome; reaching the CLI would be a harness bug (exit 1)."""


class InfraError(InfraSignal):
    """The machine failed (build, install, timeout, engine) — not the stack under test."""

    def __init__(self, reason: str, signature: str | None = None, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.signature = signature
        self.log_tail = log_tail[-LOG_TAIL_CHARS:]


class ResolveInfraError(InfraSignal):
    """The machine failed the resolve (uv missing, index unreachable): retry later, the cell is not
    at fault. `signature`: the outcome's (default "resolve-infra"; "environment-inconsistent" for a
    prepared environment whose own requirements are not met)."""

    def __init__(self, message: str, signature: str = "resolve-infra") -> None:
        super().__init__(message)
        self.signature = signature


class IndexUnreachable(InfraSignal):
    """The index could not be asked (network, TLS, HTTP error): the machine's problem, not the
    matrix's."""
