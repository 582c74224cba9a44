"""The logger hierarchy, the redaction helper and the names pools go by (docs/logging.md)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from aiolease import Pool
from aiolease._logs import LOGGERS, get_logger
from aiolease._redact import dsn_label, dsn_secrets, redact
from aiolease.testing import FakeManager

ROOT = Path(__file__).parent.parent
SECRET = "Zq7s3cr3tPW"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://bob:pw@h:5432/db", "postgresql://bob:***@h:5432/db"),
        ("postgres://bob:p@ss@h/db x", "postgres://bob:***@h/db x"),  # an unencoded @
        ("redis://:pw@127.0.0.1:6379/4", "redis://:***@127.0.0.1:6379/4"),
        ("rediss://user:pw@h", "rediss://user:***@h"),
        (
            "postgresql://h/db?sslmode=require&password=pw&x=1",
            "postgresql://h/db?sslmode=require&password=***&x=1",
        ),
        ("host=h password=pw dbname=d", "host=h password=*** dbname=d"),
        ("host=h password = 'p w\\'x' dbname=d", "host=h password = *** dbname=d"),
        ("host=h sslpassword=pw", "host=h sslpassword=***"),
        ("{'password': 'pw', 'port': 5432}", "{'password': ***, 'port': 5432}"),
        ('{"PASSWORD": "pw"}', '{"PASSWORD": ***}'),
        # An unquoted value runs to the next space, as libpq reads it ("pw,host=h" could be one).
        ("Connection(password=pw,host=h)", "Connection(password=***"),
        ("postgresql://bob@h/db", "postgresql://bob@h/db"),  # nothing to hide
        ("mail bob@example.com, passes=3", "mail bob@example.com, passes=3"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_known_secrets_anywhere() -> None:
    assert redact(f"auth failed for {SECRET}!", [SECRET, ""]) == "auth failed for ***!"


@pytest.mark.parametrize(
    ("dsn", "keywords", "expected"),
    [
        ("postgresql://bob:pw@db.example:6432/app", {}, "db.example:6432/app"),
        ("postgresql://bob@db.example/app", {}, "db.example:5432/app"),
        ("postgresql://h1,h2:5433/app", {}, "h1:5432,h2:5433/app"),
        ("postgresql://[::1]:5433/app", {}, "[::1]:5433/app"),
        ("postgresql:///app?host=/run/postgresql", {}, "/run/postgresql:5432/app"),
        ("postgresql://h/app", {"port": 6000, "database": "other"}, "h:6000/other"),
        (None, {"host": ["a", "b"], "user": "bob"}, "a:5432,b:5432/bob"),
        # A port list pairs with the host list (libpq, asyncpg): psycopg's conninfo dict.
        (None, {"host": "a,b", "port": "6001,6002", "dbname": "d"}, "a:6001,b:6002/d"),
        (None, {"host": ["a", "b"], "port": [6001, 6002], "dbname": "d"}, "a:6001,b:6002/d"),
        (None, {"host": "a,b", "port": "6001", "dbname": "d"}, "a:6001,b:6001/d"),
    ],
)
def test_dsn_label(
    dsn: str | None, keywords: dict[str, object], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("PGHOST", "PGPORT", "PGDATABASE"):
        monkeypatch.delenv(var, raising=False)
    assert dsn_label(dsn, keywords) == expected


def test_dsn_label_names_the_database_libpq_defaults_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no database given, libpq (and asyncpg) connect to the one named after the user:
    the user given, else ``PGUSER``, else the operating-system user (docs/logging.md)."""
    import getpass

    for var in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER"):
        monkeypatch.delenv(var, raising=False)
    assert dsn_label("postgresql://h") == f"h:5432/{getpass.getuser()}"
    assert dsn_label(None, {}) == f"localhost:5432/{getpass.getuser()}"
    monkeypatch.setenv("PGUSER", "carol")
    assert dsn_label("postgresql://h") == "h:5432/carol"
    assert dsn_label("postgresql://bob@h") == "h:5432/bob"
    monkeypatch.setenv("PGDATABASE", "shop")
    assert dsn_label("postgresql://bob@h") == "h:5432/shop"


def test_dsn_secrets() -> None:
    assert dsn_secrets("postgresql://bob:p%40w@h/db", {"password": "kw"}) == ("p@w", "kw", "p%40w")
    # A raw "/" (or "?", "#", "@"): the pieces a driver may show on their own are secrets.
    assert dsn_secrets("postgresql://bob:abcd/efgh@h/db") == ("abcd/efgh", "abcd", "efgh")
    assert dsn_secrets("postgresql://h/db?sslpassword=k", {"password": lambda: "x"}) == ("k",)


def test_pool_names() -> None:
    assert repr(Pool(FakeManager(), name="orders")).startswith("<aiolease.Pool 'orders' ")
    generated = {repr(Pool(FakeManager())).split("'")[1] for _ in range(3)}
    assert len(generated) == 3
    assert all(re.fullmatch(r"pool-\d+", g) for g in generated)


def test_driver_pools_go_by_their_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiolease import asyncpg, psycopg, sqlite

    monkeypatch.delenv("PGPORT", raising=False)
    url = f"postgresql://bob:{SECRET}@db.example/app"
    for pool in (asyncpg.create_pool(url), psycopg.create_pool(url)):
        assert repr(pool).startswith("<aiolease.Pool 'db.example:5432/app' ")
        assert SECRET not in repr(pool.manager)
    assert psycopg.create_pool(url, name="orders").name == "orders"
    assert repr(sqlite.create_pool(":memory:")).startswith("<aiolease.Pool ':memory:' ")


def test_the_filter_redacts_and_keeps_the_template(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiolease")
    template = "%s failed on %r after %d tries in %.1fs"
    get_logger("aiolease.pool").warning(
        template, f"postgresql://bob:{SECRET}@h/db", {"password": SECRET}, 3, 0.25
    )
    (record,) = caplog.records
    assert record.msg == template  # tools that group records by template still can
    assert record.getMessage() == (
        "postgresql://bob:***@h/db failed on {'password': ***} after 3 tries in 0.2s"
    )


def test_the_filter_redacts_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiolease")
    try:
        raise RuntimeError(f"cannot reach postgresql://bob:{SECRET}@h/db")
    except RuntimeError:
        get_logger("aiolease.pool.psycopg").exception("a handler failed")
    (record,) = caplog.records
    shown = logging.Formatter().format(record)
    assert "RuntimeError: cannot reach postgresql://bob:***@h/db" in shown
    assert SECRET not in shown


def test_only_the_documented_loggers_exist() -> None:
    """Every logger in the source comes from get_logger with a name of LOGGERS, and
    docs/logging.md has a section for each."""
    names: set[str] = set()
    for path in (ROOT / "src" / "aiolease").rglob("*.py"):
        text = path.read_text()
        assert "logging.getLogger(" not in text or path.name == "_logs.py", path
        names.update(re.findall(r'get_logger\("([^"]+)"\)', text))
    assert names <= set(LOGGERS)
    docs = (ROOT / "docs" / "logging.md").read_text()
    for name in LOGGERS:
        assert f"`{name}`" in docs, name
    with pytest.raises(ValueError, match="not one of aiolease's loggers"):
        get_logger("aiolease.other")
