"""The generic resource pool: a small core (:mod:`._core`) beside its collaborators.

``_backoff`` (creation backoff, time passed in), ``_queue`` (the waiters and
their timeouts on one timer), ``_creations`` (creations in
flight and whom they serve), ``_housekeeping`` (lifetime, idle, leak reports),
``_closing`` (closing resources, and aclose with its reports), ``_stats``
(counters, the snapshot, the repr), ``_args`` (the options, checked),
``_entries`` (per-resource bookkeeping), ``_acquire`` (the context manager
and the check before a lease).
"""

from __future__ import annotations

from ._core import Pool as Pool
from ._stats import PoolStatistics as PoolStatistics

__all__ = ["Pool", "PoolStatistics"]
