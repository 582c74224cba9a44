"""Redis key names of the limiters: escaping, Cluster hash tags, and the checks of names and keys.

Every key a script touches for one (limiter name, limiter key) shares one ``{...}`` hash tag, so
it lives in one Redis Cluster slot (no CROSSSLOT) while different keys spread over the cluster.
Braces, ``|`` and ``%`` in names and keys are escaped, so a user's text can never move the tag.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

from .._validate import utf8_size

__all__ = ["KINDS", "check_name", "check_prefix", "key_base", "key_text", "redis_key"]

#: The longest name, prefix or key text accepted, in UTF-8 bytes. Redis takes far longer keys,
#: but every call sends the key and the server keeps it: a key this long is a bug at the caller.
MAX_KEY_BYTES: Final = 1024

_KEY_TYPES: Final = (str, int, float, bytes, tuple)

#: The kinds of limiter keys: a rate limiter's, a concurrency limiter's.
KINDS: Final = ("rate", "conc")


def _esc(text: str) -> str:
    # `{`/`}` would change which part of the key Redis Cluster hashes; `|` separates name and key.
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D").replace("|", "%7C")


def _check_text(what: str, text: str, shown: object) -> None:
    size = utf8_size(what, text, shown)
    if size > MAX_KEY_BYTES:
        raise ValueError(
            f"{what} must be at most {MAX_KEY_BYTES} bytes of UTF-8, got {size} bytes "
            f"({shown!r:.60}...); hash long keys yourself"
        )


def check_name(name: object) -> str:
    """Validate a limiter name (non-empty str, UTF-8 encodable, at most MAX_KEY_BYTES)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {type(name).__name__} {name!r}")
    _check_text("name", name, name)
    return name


def check_prefix(prefix: object) -> str:
    """Validate a key prefix: it stands outside the hash tag, so it may not contain braces."""
    if not isinstance(prefix, str) or not prefix:
        raise TypeError(f"prefix must be a non-empty str, got {type(prefix).__name__} {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ValueError(
            f"prefix must not contain '{{' or '}}' (it would become the Redis Cluster hash tag "
            f"of every key), got {prefix!r}"
        )
    _check_text("prefix", prefix, prefix)
    return prefix


def _check_key(key: object) -> None:
    if isinstance(key, tuple):
        for part in key:
            _check_key(part)
    elif key is not None and not isinstance(key, _KEY_TYPES):
        raise TypeError(
            "key must be None, or a str, int, float, bytes or a tuple of those for a Redis "
            f"limiter (it is stored in Redis by its text), got {type(key).__name__} {key!r}"
        )


def key_text(key: Hashable) -> str:
    """The text of a key in Redis: a str as itself, anything else as ``#`` + its repr.

    Raises:
        TypeError: the key is not None, str, int, float, bytes or a tuple of those.
        ValueError: its text is not UTF-8 encodable (a lone surrogate) or longer than
            MAX_KEY_BYTES.
    """
    if isinstance(key, str):
        text = "#" + key if key.startswith("#") else key
    else:
        _check_key(key)
        text = "#" + repr(key)
    _check_text("key", text, key)
    return text


def key_base(prefix: str, kind: str, name: str, key: Hashable = None) -> str:
    """:func:`redis_key` of arguments the limiter already checked (its prefix, kind, name)."""
    tag = _esc(name) if key is None else f"{_esc(name)}|{_esc(key_text(key))}"
    return f"{prefix}:{kind}:{{{tag}}}"


def redis_key(prefix: str, kind: str, name: str, key: Hashable = None) -> str:
    """The hash-tagged Redis key base of one limiter key (``prefix:kind:{name|key}``): where a
    limiter made with this ``prefix`` and ``name`` keeps ``key``'s state.

    Args:
        prefix: the limiter's ``prefix``.
        kind: ``"rate"`` (a :class:`RedisRateLimiter`) or ``"conc"`` (a
            :class:`RedisConcurrencyLimiter`).
        name: the limiter's ``name``.
        key: the limiter key (None: the default key).

    Raises:
        TypeError: ``prefix`` or ``name`` is not a non-empty str; ``key`` is not a key a Redis
            limiter takes.
        ValueError: ``kind`` is not one of those; a text is too long or not UTF-8 encodable.
    """
    check_prefix(prefix)
    if kind not in KINDS:
        raise ValueError(f"kind must be 'rate' or 'conc', got {kind!r}")
    check_name(name)
    return key_base(prefix, kind, name, key)
