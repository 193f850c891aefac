"""Collect WARNING+ log records from every logger while a piece of stack code runs."""
from __future__ import annotations

import logging


class WarningLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")
        except Exception:   # noqa: BLE001 - a broken log call must not fail the check
            self.lines.append(f"{record.levelname} {record.name}: {record.msg!r}")


def attach(handler: logging.Handler) -> list[logging.Logger]:
    """Attach to the root logger and to every logger that does not propagate to it (transformers' does not).

    Loggers created while the handler is attached are reached only if they propagate; the caller
    removes the handler from exactly the returned loggers.
    """
    targets = [logging.getLogger()]
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and not logger.propagate:
            targets.append(logger)
    for logger in targets:
        logger.addHandler(handler)
    return targets
