"""How FakeConnection reads SQL text: statements, comments, transaction-control words.

No SQL parser: a lexer that knows PostgreSQL's quoting and comments (enough to split a
string into statements and find each one's leading words), and the grammar of
transaction control, which is all the fake interprets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CONTROL = frozenset(
    {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"}
)
# Commands PostgreSQL refuses (25006) in a read-only transaction, told by their first word.
# A write it cannot see that way (inside WITH, nextval(), SELECT ... FOR UPDATE) runs.
_WRITES = frozenset(
    {
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "TRUNCATE",
        "CREATE",
        "DROP",
        "ALTER",
        "GRANT",
        "REVOKE",
        "COMMENT",
    }
)


def _refused_in_a_block(sql: str) -> str | None:
    """The command, if ``sql`` is one PostgreSQL refuses inside a transaction block (25001).

    Told by its leading words: VACUUM, CREATE/DROP DATABASE or TABLESPACE, ALTER SYSTEM,
    DISCARD ALL, CREATE [UNIQUE]/DROP INDEX CONCURRENTLY, REINDEX ... CONCURRENTLY and
    REINDEX SCHEMA/DATABASE/SYSTEM. (CLUSTER without a table and CREATE SUBSCRIPTION
    are not told; COMMIT/ROLLBACK PREPARED are transaction control.)
    """
    words: list[str] = re.findall(r"[A-Z_]+", sql[:200].upper())
    first, second = [*words, "", ""][:2]
    if first == "VACUUM":
        return first
    if (first, second) in _REFUSED_IN_A_BLOCK:
        return f"{first} {second}"
    index = words[2:3] if second == "UNIQUE" else words[1:2]  # CREATE UNIQUE INDEX
    if first in ("CREATE", "DROP") and index == ["INDEX"] and "CONCURRENTLY" in words[2:4]:
        return f"{first} INDEX CONCURRENTLY"
    if first == "REINDEX":
        if "CONCURRENTLY" in words:
            return "REINDEX CONCURRENTLY"
        kind = next((w for w in words if w in _REINDEX_KINDS), "")
        if kind in ("SCHEMA", "DATABASE", "SYSTEM"):
            return f"REINDEX {kind}"
    return None


def _only_in_a_block(text: str) -> str | None:
    """The command, if ``text`` is one PostgreSQL refuses outside a transaction block
    (25P01): LOCK, and DECLARE of a cursor without WITH HOLD (told by the words before
    its FOR)."""
    head = _head(text)
    if head == "LOCK":
        return "LOCK TABLE"
    if head == "DECLARE":
        words: list[str] = re.findall(r"[A-Z_]+", text.upper().split(" FOR ", 1)[0])
        held = any(words[i : i + 2] == ["WITH", "HOLD"] for i in range(len(words)))
        return None if held else "DECLARE CURSOR"
    return None


_REFUSED_IN_A_BLOCK = frozenset(
    {
        ("CREATE", "DATABASE"),
        ("DROP", "DATABASE"),
        ("CREATE", "TABLESPACE"),
        ("DROP", "TABLESPACE"),
        ("ALTER", "SYSTEM"),
        ("DISCARD", "ALL"),
    }
)
_REINDEX_KINDS = ("SCHEMA", "DATABASE", "SYSTEM", "TABLE", "INDEX")


# A word (a keyword or an unquoted name) or a double-quoted name ("" inside stands for ").
_TOKEN = re.compile(r'\s*(?:"((?:[^"]|"")+)"|([^\W\d][\w$]*|,))')
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    quoted: bool

    def is_(self, *keywords: str) -> bool:
        return not self.quoted and self.text.upper() in keywords

    @property
    def name(self) -> str:
        """As PostgreSQL names it: unquoted names are folded to (ASCII) lower case."""
        name = self.text if self.quoted else self.text.translate(_ASCII_LOWER)
        # Truncated to NAMEDATALEN - 1 bytes, at a character boundary, as PostgreSQL does.
        return name.encode()[:63].decode(errors="ignore")

    @property
    def is_name(self) -> bool:
        """Whether it can be a savepoint's name (a reserved keyword cannot, unquoted)."""
        return self.quoted or (self.text != "," and self.text.lower() not in _RESERVED)


# PostgreSQL's reserved and type/function-name keywords (pg_get_keywords() catcode R and T),
# which cannot name a savepoint unquoted; system_user is reserved from PostgreSQL 16.
_RESERVED_WORDS = """
    all analyse analyze and any array as asc asymmetric both case cast check collate column
    constraint create current_catalog current_date current_role current_time
    current_timestamp current_user default deferrable desc distinct do else end except false
    fetch for foreign from grant group having in initially intersect into lateral leading
    limit localtime localtimestamp not null offset on only or order placing primary
    references returning select session_user some symmetric system_user table then to
    trailing true union unique user using variadic when where window with authorization
    binary collation concurrently cross current_schema freeze full ilike inner is isnull
    join left like natural notnull outer overlaps right similar tablesample verbose"""
_RESERVED = frozenset(_RESERVED_WORDS.split())

_DEFAULT_ISOLATION = "read committed"  # PostgreSQL's default_transaction_isolation
_LEVELS = ("serializable", "repeatable read", "read committed", "read uncommitted")


def _transaction_modes(tokens: list[_Token]) -> list[tuple[str, object]] | None:
    """The modes of a BEGIN, in order, as ``(kind, value)``; None if one is malformed."""
    words = [t.text.lower() if not t.quoted else "" for t in tokens]
    modes: list[tuple[str, object]] = []
    i = 0
    while i < len(words):
        if words[i] == ",":  # one comma between two modes, optional
            if not modes or i + 1 == len(words):
                return None
            i += 1
        pair = " ".join(words[i : i + 2])
        if pair == "isolation level":
            level = next(
                (
                    lv.split()
                    for lv in _LEVELS
                    if words[i + 2 : i + 2 + len(lv.split())] == lv.split()
                ),
                None,
            )
            if level is None:
                return None
            modes.append(("isolation", " ".join(level)))
            i += 2 + len(level)
        elif pair in ("read only", "read write"):
            modes.append(("read only", pair == "read only"))
            i += 2
        elif pair == "not deferrable" or words[i] == "deferrable":
            modes.append(("deferrable", words[i] == "deferrable"))
            i += 1 if words[i] == "deferrable" else 2
        else:
            return None
    return modes


def _tokens(text: str) -> list[_Token] | None:
    """The words and quoted names of a transaction-control statement; None if anything else."""
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        quoted, word = m.groups()
        tokens.append(_Token(quoted.replace('""', '"'), True) if quoted else _Token(word, False))
        pos = m.end()
    return tokens


def _is_control(sql: str) -> bool:
    """Whether ``sql`` is transaction control (SET TRANSACTION included, and setting
    transaction_read_only, transaction_isolation or transaction_deferrable)."""
    head = _head(sql)
    if head in ("SET", "RESET"):
        words = sql.split(None, 2)
        return (
            len(words) > 1 and words[1].upper().rstrip(";") == "TRANSACTION"
        ) or _transaction_setting(sql) is not None
    return head in _CONTROL


# SET [SESSION | LOCAL] transaction_{read_only,isolation,deferrable} {= | TO} value, or RESET.
_SETTING = re.compile(
    r"(SET\s+(?:(?:SESSION|LOCAL)\s+)?|RESET\s+)"
    r"(transaction_read_only|transaction_isolation|transaction_deferrable)\b\s*(.*)",
    re.IGNORECASE | re.DOTALL,
)
_VALUE = re.compile(r"(?:=|TO\b)\s*(?:'((?:[^']|'')*)'|([\w.]+))", re.IGNORECASE | re.DOTALL)
# What PostgreSQL's parse_bool takes (a prefix of true/false/yes/no, on/off/of, 1/0).
_TRUE = frozenset({"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"})
_FALSE = frozenset({"f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0"})


def _transaction_setting(text: str) -> str | None:
    """For a statement setting transaction_read_only, transaction_isolation or
    transaction_deferrable, the modes of the SET TRANSACTION it amounts to ("" for one
    the fake does not read: DEFAULT, RESET, a value it does not know); else None."""
    m = _SETTING.match(text)
    if m is None:
        return None
    if m.group(1).upper().startswith("RESET"):
        return ""
    v = _VALUE.fullmatch(m.group(3))
    if v is None:
        return ""
    value = (v.group(1).replace("''", "'") if v.group(1) is not None else v.group(2)).lower()
    kind = m.group(2).lower()
    if kind == "transaction_isolation":
        return f"ISOLATION LEVEL {value}" if value in _LEVELS else ""
    flag = True if value in _TRUE else False if value in _FALSE else None
    if flag is None:
        return ""
    if kind == "transaction_read_only":
        return "READ ONLY" if flag else "READ WRITE"
    return "DEFERRABLE" if flag else "NOT DEFERRABLE"


def _head(sql: str) -> str:
    """The statement's first word, upper case ("" for none)."""
    words = sql.strip().rstrip(";").split(None, 1)
    return words[0].upper() if words else ""


# A dollar-quote opener ($$ or $tag$); a $ inside a name or a $1 parameter opens none.
_DOLLAR = re.compile(r"\$(?:[^\W\d][\w]*)?\$")


def _quoted_end(sql: str, start: int, quote: str, backslash: bool) -> int:
    """Where the literal or name opened by ``quote`` at ``start`` ends (past its closing
    quote; a doubled quote stands for one, a backslash escapes in an E'' string)."""
    i, n = start + 1, len(sql)
    while i < n:
        c = sql[i]
        if backslash and c == "\\":
            i += 2
        elif c == quote:
            if not sql.startswith(quote * 2, i):
                return i + 1
            i += 2
        else:
            i += 1
    return n


def _statements(sql: str) -> list[str]:
    """The statements of ``sql`` as PostgreSQL splits a simple query (at each ``;``
    outside quotes and comments), comments blanked, empty ones left out."""
    if ";" not in sql and "--" not in sql and "/*" not in sql:
        return [sql.strip()] if sql.strip() else []  # the common case, without a scan
    parts: list[str] = []
    cur: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        before = sql[i - 1] if i else " "
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            cur.append(" ")
        elif sql.startswith("/*", i):  # nested, as PostgreSQL's are
            depth, i = 1, i + 2
            while i < n and depth:
                step = sql[i : i + 2]
                depth += 1 if step == "/*" else -1 if step == "*/" else 0
                i += 2 if step in ("/*", "*/") else 1
            cur.append(" ")
        elif c in "'\"":
            prefix = sql[i - 2] if i >= 2 else " "
            escapes = c == "'" and before in "eE" and not (prefix.isalnum() or prefix in "_$")
            end = _quoted_end(sql, i, c, escapes)
            cur.append(sql[i:end])
            i = end
        elif c == "$" and not (before.isalnum() or before in "_$") and _DOLLAR.match(sql, i):
            tag = _DOLLAR.match(sql, i)
            assert tag is not None
            close = sql.find(tag.group(), tag.end())
            end = n if close < 0 else close + len(tag.group())
            cur.append(sql[i:end])
            i = end
        elif c == ";":
            parts.append("".join(cur))
            cur = []
            i += 1
        else:
            cur.append(c)
            i += 1
    parts.append("".join(cur))
    return [part.strip() for part in parts if part.strip()]


# PREPARE TRANSACTION 'gid' | COMMIT PREPARED 'gid' | ROLLBACK PREPARED 'gid' (the gid a
# string constant: '...', E'...' or dollar-quoted).
_TWO_PHASE = re.compile(
    r"(PREPARE\s+TRANSACTION|COMMIT\s+PREPARED|ROLLBACK\s+PREPARED)\b"
    r"(?:\s*(?:[eE]'(?:[^'\\]|''|\\.)*'|'(?:[^']|'')*'|(\$(?:[^\W\d]\w*)?\$).*\2))?",
    re.IGNORECASE | re.DOTALL,
)


def _two_phase(text: str) -> tuple[str, bool] | None:
    """For a two-phase commit command, its name (upper case, one space) and whether it
    is well formed; None for any other statement."""
    m = _TWO_PHASE.match(text)
    if m is None:
        return None
    name = " ".join(m.group(1).upper().split())
    well_formed = m.end() == len(text) and m.end() > m.end(1)
    return name, well_formed


_SET_CONFIG = re.compile(
    r"set_config\s*\(\s*'transaction_(?:read_only|isolation|deferrable)'", re.IGNORECASE
)


def _unmodelled(text: str) -> str | None:
    """What of transaction-control statement ``text`` the fake does not model, if anything."""
    if _transaction_setting(text) == "":
        return (
            "this way of setting transaction_read_only, transaction_isolation or "
            "transaction_deferrable (RESET, DEFAULT, or a value it does not read)"
        )
    if _SET_CONFIG.search(text):
        return (
            "set_config() of transaction_read_only, transaction_isolation or "
            "transaction_deferrable (it does not read queries: use SET TRANSACTION)"
        )
    if re.match(r"SET\s+TRANSACTION\s+SNAPSHOT\b", text, re.IGNORECASE):
        return "SET TRANSACTION SNAPSHOT (it has no snapshots to import)"
    if re.search(r'\bU&"', text, re.IGNORECASE) and (
        _is_control(text) or _two_phase(text) is not None
    ):
        return 'a Unicode-escaped name (U&"...") in transaction control'
    return None


# The commands PostgreSQL runs without taking a snapshot (PlannedStmtRequiresSnapshot), by
# their first word: after them a transaction's modes can still change.
_NO_SNAPSHOT = frozenset(
    {"LOCK", "SET", "RESET", "SHOW", "FETCH", "MOVE", "LISTEN", "NOTIFY", "UNLISTEN", "CHECKPOINT"}
)


def _takes_snapshot(text: str) -> bool:
    """Whether the (work) statement ``text`` counts as a query that took a snapshot."""
    return _head(text) not in _NO_SNAPSHOT


def _plain_work(statements: list[str]) -> str | None:
    """For a string of several statements that are all plain work (no transaction control,
    none PostgreSQL runs only outside or only inside a transaction block, nothing the fake
    does not model): the one that stands for the string in the fake's checks (the first
    write, else the first that takes a snapshot, else the first). None for any other string.

    Such a string is work of the transaction it runs in, or, outside one, commits as a whole:
    what PostgreSQL's implicit transaction of a simple query does with it too.
    """
    for text in statements:
        if (
            _is_control(text)
            or _two_phase(text) is not None
            or _unmodelled(text) is not None
            or _refused_in_a_block(text) is not None
            or _only_in_a_block(text) is not None
        ):
            return None
    writes = [text for text in statements if _head(text) in _WRITES]
    if writes:
        return writes[0]
    return next((text for text in statements if _takes_snapshot(text)), statements[0])
