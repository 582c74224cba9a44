"""The only place aiolease touches another project's private names.

One module per dependency (``asyncpg``, ``psycopg``, ``aiosqlite``, ``redis``: where a
private name is worth keeping). Each probes once, at import, whether the private layout it
relies on is what it expects; if not, or when the environment variable
``AIOLEASE_COMPAT=public`` was set before import, it takes a fallback built on public APIs
only. Callers bind the chosen functions once (at import or at
construction), so hot paths never test which one is in force.
"""

from __future__ import annotations

import os

__all__ = ["PUBLIC"]

#: ``AIOLEASE_COMPAT=public`` (read once, at import): every ``_compat`` module takes its
#: public-API fallback.
PUBLIC: bool = os.environ.get("AIOLEASE_COMPAT", "").strip().lower() == "public"
