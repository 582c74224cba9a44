"""The only place aiolease touches other projects' private names; one module per dependency.

Each module picks, once at import, between a private fast path and a public-API fallback.
Setting ``AIOLEASE_COMPAT=public`` before import makes every module take its fallback.
"""

from __future__ import annotations

import os

__all__ = ["PUBLIC"]

#: True when ``AIOLEASE_COMPAT=public``: use only public APIs of every dependency.
PUBLIC = os.environ.get("AIOLEASE_COMPAT") == "public"
