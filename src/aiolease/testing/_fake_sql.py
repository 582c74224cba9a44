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
    REINDEX SCHEMA/DATABASE/SYSTEM. (CLUSTER without a table, COMMIT/ROLLBACK PREPARED
    and CREATE SUBSCRIPTION are not told.)
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
_TOKEN = re.compile(r'\s*(?:"((?:[^"]|"")+)"|([^\W\d][\w$]*))')
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
        return self.text if self.quoted else self.text.translate(_ASCII_LOWER)


_DEFAULT_ISOLATION = "read committed"  # PostgreSQL's default_transaction_isolation
_LEVELS = ("serializable", "repeatable read", "read committed", "read uncommitted")


def _transaction_modes(tokens: list[_Token]) -> list[tuple[str, object]] | None:
    """The modes of a BEGIN, in order, as ``(kind, value)``; None if one is malformed."""
    words = [t.text.lower() if not t.quoted else "" for t in tokens]
    modes: list[tuple[str, object]] = []
    i = 0
    while i < len(words):
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
    """Whether ``sql`` is transaction control (SET TRANSACTION included)."""
    head = _head(sql)
    if head == "SET":
        words = sql.split(None, 2)
        return len(words) > 1 and words[1].upper().rstrip(";") == "TRANSACTION"
    return head in _CONTROL


def _head(sql: str) -> str:
    """The statement's first word, upper case ("" for none)."""
    words = sql.strip().rstrip(";").split(None, 1)
    return words[0].upper() if words else ""
