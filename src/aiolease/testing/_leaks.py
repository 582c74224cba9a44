"""``leak_check()``: fail when pools, transactions or limiters made inside it still hold things.

Every aiolease pool, transaction and limiter registers itself with
:mod:`aiolease._tracking` when it is created. ``leak_check`` pushes a tracker
for its duration; on exit it asks every object created inside that is still
alive what it holds (``_aiolease_leaks()``) and raises ``AssertionError``
listing the answers.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from .. import _tracking

__all__ = ["LeakCheck", "leak_check"]

# Shielded releases and closes started by a cancelled task finish a few loop
# iterations after the task itself: give them that long before judging.
_SETTLE_ITERATIONS = 10


class _KeepingTracker(_tracking.Tracker):
    """A tracker that also keeps its objects alive until the check ends.

    Without this, a pool dropped without ``aclose()`` would be garbage by the
    time the check runs and escape it: the commonest leak of all.
    """

    __slots__ = ("_keep",)

    def __init__(self) -> None:
        super().__init__()
        self._keep: list[_tracking.Trackable] = []

    def add(self, obj: _tracking.Trackable) -> None:
        super().add(obj)
        self._keep.append(obj)

    def let_go(self) -> None:
        self._keep.clear()


class LeakCheck:
    """The object returned by :func:`leak_check`; an async (or plain) context manager.

    ``async with`` enters and exits without blocking on I/O; on exit it lets
    the loop run up to a few iterations (``asyncio.sleep(0)``, no timers) so
    shielded releases already under way can finish, then checks. It is not
    useful to cancel it. The plain ``with`` form checks immediately (the
    pytest fixture uses it).

    Attributes:
        tracker: the :class:`aiolease._tracking.Tracker` collecting the objects.
    """

    __slots__ = ("_active", "tracker")

    def __init__(self) -> None:
        self.tracker: _tracking.Tracker = _KeepingTracker()
        self._active = False

    def leaks(self) -> list[str]:
        """What the objects created so far still hold (empty when clean); usable mid-test."""
        return self.tracker.leaks()

    def check(self) -> None:
        """Raise ``AssertionError`` now if anything leaks.

        Raises:
            AssertionError: naming each pool still open or with resources
                checked out (and where they were acquired), each transaction
                left open and each limiter with waiters.
        """
        problems = self.leaks()
        if problems:
            raise AssertionError(_report(problems))

    def _start(self) -> None:
        if self._active:
            raise RuntimeError("this leak_check() is already active; create a new one per block")
        self._active = True
        _tracking.active.append(self.tracker)

    def _stop(self) -> None:
        self._active = False
        try:
            _tracking.active.remove(self.tracker)
        except ValueError:  # removed by someone else: nothing to undo
            pass

    def _finish(self, exc: BaseException | None) -> None:
        problems = self.leaks()
        if isinstance(self.tracker, _KeepingTracker):
            self.tracker.let_go()
        if not problems:
            return
        report = _report(problems)
        if exc is not None:
            # A failing block usually leaks as a consequence: keep its error
            # as the one raised and attach the leak report to it.
            exc.add_note(report)
            return
        raise AssertionError(report)

    async def __aenter__(self) -> LeakCheck:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        if exc is None:
            for _ in range(_SETTLE_ITERATIONS):
                if not self.leaks():
                    break
                await asyncio.sleep(0)
        self._finish(exc)

    def __enter__(self) -> LeakCheck:
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        self._finish(exc)


def leak_check() -> LeakCheck:
    """Fail if what was created inside is left open or holding resources.

    ::

        async with leak_check():
            async with Pool(FakeManager()) as pool:
                r = await pool.acquire()      # never released
        # AssertionError: leak_check found 1 leak: ... acquired at test_x.py:12 ...

    Only objects created while the check is active are examined (a pool made
    by a session fixture before it is not); they are kept alive until the
    check ends, so a pool dropped without ``aclose()`` is still reported.
    Checks may nest. When the block
    raises, its exception propagates unchanged with the leak report attached
    as a note instead.

    Raises:
        AssertionError: on exit, naming each pool created inside that is
            still open or has resources checked out (with where they were
            acquired), each transaction left open and each limiter with
            tasks still waiting.
    """
    return LeakCheck()


def _report(problems: list[str]) -> str:
    noun = "leak" if len(problems) == 1 else "leaks"
    lines = [f"leak_check found {len(problems)} {noun}:"]
    lines += ["  - " + p.replace("\n", "\n    ") for p in problems]
    return "\n".join(lines)
