"""PostgreSQL statements shared by the asyncpg and fake dialects."""

from __future__ import annotations

from ._base import sqlstate_of

__all__ = ["begin_sql", "ended_idle"]

# SQLSTATE of the FATAL error that ends a session left idle in a transaction longer than
# idle_in_transaction_session_timeout: the server rolled the transaction back before the
# statement (or COMMIT) that gets it could run.
_IDLE_IN_TRANSACTION_TIMEOUT = "25P03"

_BEGIN: dict[tuple[str | None, bool], str] = {}
for _level in (None, "read committed", "repeatable read", "serializable"):
    for _ro in (False, True):
        _sql = "BEGIN"
        if _level is not None:
            _sql += f" ISOLATION LEVEL {_level.upper()}"
        if _ro:
            _sql += " READ ONLY"
        _BEGIN[_level, _ro] = _sql


def begin_sql(isolation: str | None, readonly: bool) -> str:
    """The BEGIN statement for a normalized isolation level (or None) and read-only flag."""
    return _BEGIN[isolation, readonly]


def ended_idle(exc: BaseException) -> bool:
    """Whether ``exc`` says the server ended the session (and rolled its transaction back)
    for sitting idle in a transaction (``Dialect.rolls_back_by_itself``)."""
    return sqlstate_of(exc) == _IDLE_IN_TRANSACTION_TIMEOUT
