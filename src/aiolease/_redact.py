"""Passwords kept out of logs, reprs and error messages; the names pools go by.

:func:`redact` is the one redaction helper: every log record of an aiolease
logger goes through it (see :mod:`aiolease._logs`), and so does every error
message, span status or URL that quotes a DSN, a client or another library's
error. It removes the password of a URL (``postgresql://user:secret@host``,
``redis://:secret@host``, one with a raw ``/`` or ``@`` in it), of a password
parameter (``password``, ``pwd``, ``PGPASSWORD``, ``sslpassword``... in a libpq
key-value conninfo, quoted or not, a URL query, a keyword shown as
``password='x'``, ``'password': 'x'`` or ``('password', 'x')``), and any literal
secret it is given (a driver pool knows its own password, see :func:`dsn_secrets`).

:func:`pool_label` is the name a pool goes by in its repr, logs and metrics:
its ``name``, else for a driver pool ``server.address:server.port/db.namespace``
(:func:`dsn_label`), else a generated ``pool-N``.
"""

from __future__ import annotations

import getpass
import itertools
import os
import re
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from . import _metrics

__all__ = [
    "MASK",
    "dsn_label",
    "dsn_secrets",
    "pool_label",
    "redact",
    "scrubbed",
    "without_secrets",
]

T = TypeVar("T")

MASK = "***"

# scheme://user:password@host: the password runs to the last "@" before a space, so a
# raw "@", "#", "?" or "/" in it is not taken for the host's start (libpq and the
# redis-py of some versions read it so). An http(s)/ws(s) URL, which HTTP clients
# percent-encode, keeps "/" for its path ("http://host:8080/users/a@b" is no password).
_URL_PASSWORD = re.compile(
    r"(?i)(?<![a-z0-9+.\-])"
    r"(?:((?:https?|wss?)://[^:@/\s]*:)[^\s/]*@"
    r"|((?!(?:https?|wss?)://)[a-z][a-z0-9+.\-]*://[^:@/\s]*:)\S*@)"
)
# A secret parameter (also as ``password => value``, Ruby's and PHP's way): password, pwd,
# passwd, pass, sslpassword, PGPASSWORD, db_password,
# secret, oauth_client_secret...
_KEY = r"(?:pg|ssl|\w*_)?(?:pass(?:word|wd)?|pwd|secret)"
# In a URL query (after "?" or "&") its value runs to "&" or "#". Anywhere else (a libpq
# conninfo, an environment variable, a repr of keywords, a dict or a pair): a quoted
# value (a quote after a backslash, or after several as in a repr of a repr, does
# not close it; it runs to the end when its quote is never closed) or, as libpq
# reads it, everything up to a space.
_KEY_PASSWORD = re.compile(
    rf"""(?i)(?<=[?&])({_KEY}=)[^\s&#]*"""
    rf"""|\b({_KEY}(?:\\?['"]\s*(?:=>|[:=,])|\s*(?:=>|[:=]))\s*)"""
    r"""(?:\*\*\*(?=[\s,;)}\]'"]|\Z)"""  # one already redacted
    r"""|b?'(?:\\+.|[^'\\])*(?:'|\Z)|b?"(?:\\+.|[^"\\])*(?:"|\Z)|\S+)"""
)


def _masked(match: re.Match[str]) -> str:
    kept = match.group(1) or match.group(2)
    return kept + MASK + ("@" if match.group(0).endswith("@") else "")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every password replaced by ``***``: those of URLs and password
    parameters, and each of ``secrets`` wherever it appears.

    This is the one redaction helper; it errs on the side of hiding too much (an
    unquoted value runs to the next space, a URL's password to its last ``@``).
    """
    for secret in sorted(secrets, key=len, reverse=True):  # a password before its pieces
        if secret:
            text = text.replace(secret, MASK)
    lowered = text.lower()
    if "pass" in lowered or "pwd" in lowered or "secret" in lowered:
        text = _KEY_PASSWORD.sub(_masked, text)
    if "@" in text:
        text = _URL_PASSWORD.sub(_masked, text)
    return text


def without_secrets(exc: BaseException, secrets: Iterable[str]) -> BaseException | None:
    """A ``ConnectionError`` standing for ``exc`` when its message shows one of ``secrets``
    (some drivers quote a malformed DSN whole), else None (``exc`` may be raised as it is).

    The replacement is made without a ``__cause__`` or ``__context__``, which would carry
    the secret along; raise it outside the ``except`` clause that caught ``exc``.
    """
    shown = f"{exc!s} {exc!r}"
    secrets = [s for s in secrets if s]
    if not any(s in shown for s in secrets) and redact(shown) == shown:
        return None
    return ConnectionError(f"{type(exc).__name__}: {redact(str(exc), secrets)}")


async def scrubbed(connect: Awaitable[T], secrets: Iterable[str]) -> T:
    """Await a driver's ``connect``; an error whose message shows a secret is replaced
    (:func:`without_secrets`), any other passes as it is (its type is the driver's)."""
    try:
        return await connect
    except Exception as exc:
        hidden = without_secrets(exc, secrets)
        if hidden is None:
            raise
    raise hidden  # outside the except clause: no __context__ back to the driver's error


def _url_parts(dsn: str) -> dict[str, str]:
    """host, port, dbname, user and password of a ``scheme://`` DSN (hosts as given,
    comma-separated when there are several)."""
    parts = urlsplit(dsn)
    netloc = parts.netloc
    userinfo, _, hostspec = netloc.rpartition("@")
    found: dict[str, str] = {}
    if userinfo:
        user, colon, password = userinfo.partition(":")
        found["user"] = unquote(user)
        if colon:
            found["password"] = unquote(password)
    if hostspec:
        found["host"] = unquote(hostspec)
    if parts.path.strip("/"):
        found["dbname"] = unquote(parts.path.lstrip("/"))
    for key, value in parse_qsl(parts.query):
        found[{"database": "dbname"}.get(key, key)] = value
    return found


def _parts(dsn: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = _url_parts(dsn) if dsn and "://" in dsn else {}
    for key, value in overrides.items():
        if isinstance(value, list | tuple):  # asyncpg takes lists of hosts and ports
            value = ",".join(map(str, value))
        if value is not None:
            found[{"database": "dbname"}.get(key, key)] = value
    return found


def dsn_label(
    dsn: str | None = None, overrides: Mapping[str, Any] | None = None, default_port: int = 5432
) -> str:
    """``server.address:server.port/db.namespace`` for a PostgreSQL DSN (a URL; key-value
    settings from ``overrides``, which win, as the drivers' keywords do), filled in from
    ``PGHOST``, ``PGPORT``, ``PGDATABASE`` and the defaults (the database named after the
    user: given, else ``PGUSER``, else the operating system's); never the password.

    Several hosts come out as given (``h1:5432,h2:5433/db``); a list of ports pairs with
    the list of hosts, as in libpq (``host=h1,h2 port=5432,5433``).
    """
    parts = _parts(dsn, overrides or {})
    hosts = str(parts.get("host") or os.environ.get("PGHOST") or "localhost").split(",")
    ports = str(parts.get("port") or os.environ.get("PGPORT") or default_port).split(",")
    if len(ports) != len(hosts):
        ports = ports[:1] * len(hosts)
    label = ",".join(h if _has_port(h) else f"{h}:{p}" for h, p in zip(hosts, ports, strict=True))
    dbname = (
        parts.get("dbname")
        or os.environ.get("PGDATABASE")
        or parts.get("user")
        or os.environ.get("PGUSER")
        or _os_user()
    )
    return redact(f"{label}/{dbname}" if dbname else label, dsn_secrets(dsn, overrides))


def _os_user() -> str | None:
    """The user libpq and asyncpg connect as when neither the DSN nor ``PGUSER`` names one
    (and so the database they connect to when none is named)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name, no passwd entry
        return None


def _has_port(host: str) -> bool:
    if host.startswith("["):  # [IPv6]:port
        return "]:" in host
    return ":" in host and not host.startswith("/")


def dsn_secrets(dsn: str | None, overrides: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The secrets a DSN and connect keywords hold (``password``, ``sslpassword``,
    ``oauth_client_secret``; a callable password is not a string, and not shown by anyone).

    A URL's password is taken as :func:`redact` finds it too, as written and decoded;
    when it holds a raw ``/``, ``?``, ``#`` or ``@`` a driver may read it as several
    parts (``postgresql://bob:ab/cd@h`` is host ``bob``, port ``ab`` to urllib and
    libpq) and quote one in an error, so its pieces of 4 characters or more are
    secrets too.
    """
    found = []
    for parts in (_parts(dsn, {}), overrides or {}):
        found += [parts.get(k) for k in ("password", "sslpassword", "oauth_client_secret")]
    for match in _URL_PASSWORD.finditer(dsn or ""):
        password = match.group(0)[len(match.group(1) or match.group(2)) : -1]
        pieces = [p for p in re.split(r"[/?#@]", password) if len(p) >= 4]
        found += [s for p in (password, *pieces) for s in (p, unquote(p))]
    return tuple(dict.fromkeys(s for s in found if isinstance(s, str) and s))


_generated = itertools.count(1)


def pool_label(name: str | None, manager: object) -> str:
    """What a pool goes by: ``name``, else what its driver manager says
    (``_aiolease_pool_name()``), else a generated ``pool-N`` (unique in the process: a
    number whose name a live pool was given is skipped)."""
    if name:
        return name
    derive = getattr(manager, "_aiolease_pool_name", None)
    derived = derive() if callable(derive) else None
    if isinstance(derived, str) and derived:
        return derived
    return _metrics.unused_name("pool", _generated, _metrics.pool_names())
