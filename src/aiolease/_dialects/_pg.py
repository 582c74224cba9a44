"""PostgreSQL statements shared by the asyncpg and fake dialects."""

from __future__ import annotations

__all__ = ["begin_sql"]

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
