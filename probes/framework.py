"""The check API: a check is a function of the Context that returns its evidence or raises.

    Skip("needs a GPU")                      -> status skip, reason
    Infra("CUDA out of memory at 4x2048")    -> status infra, reason
    Failed("loss did not fall", evidence)    -> status fail, with a signature
    any other exception                      -> fail, or what the catalogue's `means` says: infra for
                                                the machine, skip ("needs a GPU") for a GPU path on
                                                a host without one
    return {...evidence...}                  -> status pass
"""
from __future__ import annotations

import math
import re
import signal
import threading
import time
import traceback as tb
import warnings
from typing import Any, Callable

from probes import signatures
from probes.context import Context, Infra, Skip
from probes.logcapture import WarningLog as _WarningLog
from probes.logcapture import attach as _attach

__all__ = ["Skip", "Infra", "Failed", "CheckTimeout", "CheckFn", "run_check", "jsonable", "error_record"]

TRACEBACK_LINES = 30
MAX_MESSAGE_CHARS = 4000
MAX_WARNINGS = 50
MAX_WARNING_CHARS = 2000


class Failed(Exception):
    """The stack failed a check's bar; `evidence` keeps the numbers that show it."""

    def __init__(self, message: str, evidence: dict | None = None):
        super().__init__(message)
        self.message = message
        self.evidence = evidence or {}


class CheckTimeout(Exception):
    """Raised by the SIGALRM handler when a check runs past its timeout (catalogue: check-timeout, infra)."""


CheckFn = Callable[[Context], dict]


def jsonable(value: Any) -> Any:
    """`value` as plain JSON: nan/inf become strings, tuples lists, 0-d tensors numbers, other objects repr."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)   # "nan", "inf", "-inf"
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    # numpy / torch scalars: keep the number. Whole tensors never go into a result, only their summary.
    shape = getattr(value, "shape", None)
    if hasattr(value, "item") and (shape is None or tuple(shape) == ()):
        try:
            return jsonable(value.item())
        except Exception:   # noqa: BLE001 - any failure falls back to the text form
            pass
    if shape is not None:
        return f"<{type(value).__name__} shape={list(shape)} dtype={getattr(value, 'dtype', '?')}>"
    return repr(value)[:MAX_MESSAGE_CHARS]


def check_name(name: str) -> str:
    """A name the schema accepts (^[a-z0-9][a-z0-9._-]*$), so one odd name cannot void a whole result."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "unnamed"
    return cleaned if cleaned[0].isalnum() else f"x{cleaned}"


def error_record(exc: BaseException, traceback_text: str | None = None) -> tuple[dict[str, Any], signatures.Classification]:
    """The schema `error` object for `exc`, and its classification.

    A Failed that carries the exception behind it (`raise Failed(...) from exc`, or a `source`
    attribute of (type, message, traceback) for a failure recorded earlier, such as an import at
    probe start) is classified by that underlying error when the catalogue knows it.
    """
    exc_type = type(exc).__name__
    message = (exc.message if isinstance(exc, Failed) else str(exc))[:MAX_MESSAGE_CHARS]
    if traceback_text is None:
        traceback_text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    found = signatures.classify(exc_type, message, _tail(traceback_text))
    source = getattr(exc, "source", None)
    if source is None and isinstance(exc, Failed) and exc.__cause__ is not None:
        cause = exc.__cause__
        source = (type(cause).__name__, str(cause), "")
    if isinstance(exc, Failed) and source is not None:
        src_type, src_message, src_traceback = source
        underlying = signatures.classify(src_type, src_message, _tail(src_traceback or ""))
        if underlying.known or not found.known:
            found, exc_type = underlying, src_type
            if src_traceback:
                traceback_text = src_traceback
    record = {"type": exc_type, "message": message, "traceback_tail": _tail(traceback_text),
              "signature": found.id, "known": found.known}
    return record, found


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-TRACEBACK_LINES:])


def _alarm(seconds: float) -> Callable[[], None]:
    """Arm SIGALRM to raise CheckTimeout after `seconds`; returns the disarm function.

    Only in the main thread of a platform with SIGALRM. The signal is delivered between Python
    bytecodes, so a hang inside C code (a CUDA kernel, a deadlocked extension) is not interrupted
    here: the runner's per-cell timeout is what ends those.
    """
    if seconds <= 0 or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_alarm(signum: int, frame: Any) -> None:
        raise CheckTimeout(f"check exceeded its timeout of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)

    def disarm() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    return disarm


def _warning_text(item: warnings.WarningMessage) -> str:
    return f"{item.category.__name__}: {item.message}"


def run_check(name: str, fn: CheckFn, ctx: Context, timeout_s: float) -> dict:
    """Run one check and return one schema `check` object; never raises (except KeyboardInterrupt)."""
    result: dict[str, Any] = {"name": check_name(name)}
    log = _WarningLog()
    loggers = _attach(log)
    evidence: Any = {}
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        disarm = _alarm(timeout_s)
        try:
            try:
                evidence = fn(ctx)
            finally:
                disarm()
            result["status"] = "pass"
        except KeyboardInterrupt:
            raise
        except Skip as exc:
            result.update(status="skip", reason=str(exc) or "skipped")
        except BaseException as exc:   # noqa: BLE001 - SystemExit from a library is a failure too
            error, found = error_record(exc)
            result["error"] = error
            status = signatures.status_for(found, has_accelerator=ctx.device == "cuda")
            if isinstance(exc, Failed):
                evidence = exc.evidence
            if status == "skip":
                # a GPU path on a host without one: not run here, never a verdict on the stack
                # (the catalogue's `means`: no-gpu); the error stays as the evidence of why
                result.update(status="skip", reason=signatures.needs_gpu_reason(found))
            elif isinstance(exc, Failed):
                result["status"] = "fail"
            elif isinstance(exc, (Infra, CheckTimeout)) or status == "infra":
                result["status"] = "infra"
                result["reason"] = str(exc) or found.id
            else:
                result["status"] = "fail"
        finally:
            duration = time.monotonic() - start
            for logger in loggers:
                logger.removeHandler(log)
    lines = [_warning_text(item) for item in caught] + log.lines
    result["duration_s"] = round(duration, 4)
    result["evidence"] = jsonable(evidence) if isinstance(evidence, dict) else {"returned": jsonable(evidence)}
    unique = list(dict.fromkeys(line[:MAX_WARNING_CHARS] for line in lines))
    if unique:
        result["warnings"] = unique[:MAX_WARNINGS] + ([f"... {len(unique) - MAX_WARNINGS} more"] if len(unique) > MAX_WARNINGS else [])
    return result
