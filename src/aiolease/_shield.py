"""Shielding aiolease's bounded clean-ups from a cancellation that is delivered again.

asyncio delivers a cancellation once: the await that ``Task.cancel()`` interrupts raises
``CancelledError`` and the awaits after it run. anyio (whose asyncio backend Starlette,
FastAPI and httpx run on) delivers the cancellation of a cancelled ``CancelScope`` again at
every await inside the scope until it exits. A clean-up that aiolease runs in the cancelled
task itself and that waits through cancellations within its own bound (the ROLLBACK of a
cancelled transaction, the server-side cancel of a psycopg query) would, under anyio, be
interrupted at every loop iteration: it spins, and gives up on what it waits for.

:func:`shielded` is anyio's public ``CancelScope(shield=True)``, the tool anyio gives for
exactly this, when anyio has been imported (a cancel scope can only exist then), else a
no-op: aiolease never imports anyio itself. It stops anyio's re-delivery only; a
``Task.cancel()`` still reaches the clean-up, which handles it as it always did.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

__all__ = ["shielded"]

_NOTHING = contextlib.nullcontext()


def shielded() -> contextlib.AbstractContextManager[Any]:
    """``with shielded():`` around a bounded clean-up in a task that may be cancelled."""
    anyio = sys.modules.get("anyio")
    if anyio is None:
        return _NOTHING
    scope: contextlib.AbstractContextManager[Any] = anyio.CancelScope(shield=True)
    return scope
