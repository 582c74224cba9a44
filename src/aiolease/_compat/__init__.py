"""The only place where aiolease touches other projects' private names.

One module per dependency; each chooses once, at import, between a faster
path built on the dependency's internals and a public-API fallback. Setting
the environment variable ``AIOLEASE_COMPAT=public`` before importing aiolease
forces every fallback.
"""

from __future__ import annotations

import os

__all__ = ["PUBLIC"]

#: True when ``AIOLEASE_COMPAT=public``: use only public APIs of dependencies.
PUBLIC = os.environ.get("AIOLEASE_COMPAT") == "public"
