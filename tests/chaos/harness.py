"""The chaos suite's workload, bookkeeping and report table.

A run: ``workers`` tasks insert unique ids, one transaction each, through a pool
(``pool.acquire`` + ``aiolease.atomic``) under an application timeout, while a
fault is injected and then healed. Afterwards the run checks the outcome of
every transaction against the table (reported success => row present, reported
failure => row absent, ``CommitUnknown`` => either), the pool's invariants, and
how long the first success after the fault took.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiolease

#: Rows of the report, printed by tests/chaos/conftest.py at the end of the session.
REPORT: list[Report] = []

_ids = itertools.count(1)


def env_seconds(name: str, default: float) -> float:
    """Seconds from the environment (for shorter local runs)."""
    return float(os.environ.get(name, default))


def unknown_outcome(exc: BaseException) -> bool:
    """Whether ``exc`` or anything in its chain is a ``CommitUnknown``."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, aiolease.CommitUnknown):
            return True
        stack += [e.__cause__, e.__context__]
    return False


@dataclass
class Report:
    """One row of the chaos table."""

    driver: str
    fault: str
    ops: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    unknown: int = 0
    recovery: float | None = None  # seconds from heal to the first success
    max_acquire: float = 0.0
    lost: int = 0  # reported success, row absent
    phantom: int = 0  # reported failure, row present
    notes: list[str] = field(default_factory=list)  # problems: a run with notes fails
    remarks: list[str] = field(default_factory=list)  # shown in the row, not problems

    def row(self) -> str:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "-"
        recovery = "-" if self.recovery is None else f"{self.recovery:.2f}"
        return (
            f"{self.driver:<8} {self.fault:<22} {self.ops:>6} {self.ok:>6} {self.unknown:>4} "
            f"{recovery:>7} {self.max_acquire:>6.2f} {self.lost:>4} {self.phantom:>4}  {errors}"
            + (f"  [{'; '.join(self.notes)}]" if self.notes else "")
            + (f"  ({'; '.join(self.remarks)})" if self.remarks else "")
        )


HEADER = (
    f"{'driver':<8} {'fault':<22} {'ops':>6} {'ok':>6} {'unkn':>4} {'recov_s':>7} "
    f"{'acq_s':>6} {'lost':>4} {'phan':>4}  errors by type"
)


@dataclass
class Outcomes:
    """What each transaction reported: id -> "ok" | "failed" | "unknown"."""

    by_id: dict[int, str] = field(default_factory=dict)
    ok_times: list[float] = field(default_factory=list)  # loop times of successes


Insert = Callable[[Any, int], Awaitable[None]]


async def transaction(
    pool: aiolease.Pool[Any],
    insert: Insert,
    outcomes: Outcomes,
    report: Report,
    *,
    acquire_timeout: float,
    op_timeout: float,
) -> None:
    """One transaction inserting a fresh id, recorded in ``outcomes`` and ``report``."""
    loop = asyncio.get_running_loop()
    tx_id = next(_ids)
    outcomes.by_id[tx_id] = "failed"
    report.ops += 1
    try:
        async with asyncio.timeout(op_timeout):
            start = loop.time()
            async with pool.acquire(timeout=acquire_timeout) as conn:
                report.max_acquire = max(report.max_acquire, loop.time() - start)
                async with aiolease.atomic(conn):
                    await insert(conn, tx_id)
    except asyncio.CancelledError as exc:
        if unknown_outcome(exc):
            outcomes.by_id[tx_id] = "unknown"
        raise
    except Exception as exc:
        if unknown_outcome(exc):
            outcomes.by_id[tx_id] = "unknown"
            report.unknown += 1
        report.errors[type(exc).__name__] += 1
        if not str(exc) and not isinstance(exc, TimeoutError):  # ours: asyncio.timeout()
            report.notes.append(f"an error without a message: {exc!r}")
        return
    outcomes.by_id[tx_id] = "ok"
    outcomes.ok_times.append(loop.time())
    report.ok += 1


def check_commits(outcomes: Outcomes, present: set[int], report: Report) -> None:
    """Lost commits (success reported, row absent), phantoms (failure reported, row present)."""
    for tx_id, outcome in outcomes.by_id.items():
        if outcome == "ok" and tx_id not in present:
            report.lost += 1
        elif outcome == "failed" and tx_id in present:
            report.phantom += 1
