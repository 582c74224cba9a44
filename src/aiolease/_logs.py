"""aiolease's loggers: one small hierarchy under ``aiolease`` (listed in docs/logging.md).

Every logger comes from :func:`get_logger`, which puts the redacting filter on
it: a record's message and arguments reach the handlers with passwords
replaced (:func:`aiolease._redact.redact`). The filter runs only for records
that are emitted (a disabled level costs the usual ``isEnabledFor`` check and
nothing more), and it keeps the message template, so tools that group records
by it (Sentry, structured logging) still do. The arguments are wrapped, not
formatted, so ``%d`` and ``%.3f`` keep working. A record's traceback is
formatted and redacted into ``exc_text``, which ``logging.Formatter`` shows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ._redact import redact

__all__ = ["LOGGERS", "get_logger"]

#: Every logger aiolease uses (docs/logging.md describes each; a test keeps them in step).
LOGGERS = (
    "aiolease.pool",
    "aiolease.pool.asyncpg",
    "aiolease.pool.psycopg",
    "aiolease.transaction",
    "aiolease.redis",
    "aiolease.http",
    "aiolease.asgi",
    "aiolease.testing",
)


class _Redacted:
    """An argument of a log record, shown with passwords redacted by ``%s`` and ``%r``."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return redact(str(self.value))

    def __repr__(self) -> str:
        return redact(repr(self.value))


def _wrap(value: object) -> object:
    return (
        value if isinstance(value, int | float | _Redacted) or value is None else _Redacted(value)
    )


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if record.exc_info and not record.exc_text:
            # The formatted traceback, which logging.Formatter uses when it is set.
            record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
        args: Any = record.args
        if isinstance(args, Mapping):
            record.args = {key: _wrap(value) for key, value in args.items()}
        elif args:
            record.args = tuple(_wrap(value) for value in args)
        return True


_FILTER = _RedactingFilter()
_FORMATTER = logging.Formatter()


def get_logger(name: str) -> logging.Logger:
    """The logger ``name`` (one of :data:`LOGGERS`), with the redacting filter on it."""
    if name not in LOGGERS:
        raise ValueError(f"{name!r} is not one of aiolease's loggers {LOGGERS}")
    logger = logging.getLogger(name)
    logger.addFilter(_FILTER)  # (once: addFilter ignores a filter it has already)
    return logger
