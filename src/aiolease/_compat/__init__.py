"""The only place that touches other projects' private names, one module per dependency.

Each module offers a public-API fallback. ``AIOLEASE_COMPAT=public`` in the environment
before import makes every one of them take it.
"""

from __future__ import annotations

import os

#: Whether only public APIs of our dependencies may be used (env ``AIOLEASE_COMPAT=public``).
PUBLIC = os.environ.get("AIOLEASE_COMPAT") == "public"
