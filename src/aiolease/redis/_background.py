"""A Redis limiter's background calls (:class:`Background`: fire-and-forget calls whose
failures are reported to the limiter's :class:`~aiolease.redis._health.Health`), and its
bounded close (:func:`closing`, :func:`cancel_late`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from .._logs import get_logger
from .._tasks import start_task
from ._health import Health

__all__ = ["Background", "cancel_late", "closing"]

logger = get_logger("aiolease.redis")


class Background:
    """A limiter's background Redis calls (refunds, settles, releases); errors are logged:
    a WARNING, or a DEBUG line while ``health`` knows Redis is down (its outage was logged
    once already; one line per call would flood the log)."""

    __slots__ = ("health", "tasks")

    def __init__(self, health: Health) -> None:
        self.health = health
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        # Never eagerly (see aiolease._tasks): a call failing before it suspends would end
        # the task inside this call, and whoever awaits it would see the failure before
        # _log_error (which logs an outage's start) has run.
        task: asyncio.Task[Any] = start_task(coro, asyncio.get_running_loop())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(self._log_error)
        return task

    def _log_error(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or (exc := task.exception()) is None:
            return
        logger.log(
            self.health.background_failed(exc),
            "%s: a background Redis call (a release, refund or settle) failed (%s: %s)",
            self.health.what,
            type(exc).__name__,
            exc,
        )

    async def aclose(self, timeout: float) -> None:
        """Let the calls in flight finish within ``timeout``, then cancel the rest."""
        # (a task of a loop closed since never ends: it is not waited for)
        tasks = {t for t in self.tasks if not t.get_loop().is_closed()}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            await cancel_late(late, timeout, self.health.what)


def closing(
    task: asyncio.Task[None] | None, close: Callable[[], Coroutine[Any, Any, None]]
) -> asyncio.Task[None]:
    """The task running a limiter's close (what its ``aclose()`` waits for, shielded): ``task``,
    the one an earlier ``aclose()`` started, or a new one running ``close()``.

    The close runs in a task of the limiter's own so that cancelling ``aclose()`` (a shutdown
    hook's deadline) stops the caller's wait only: a close cut short would keep the pipelined
    connection out of the client's pool, and the limiter, marked closed, would no longer be
    reported as left open. It is bounded (``call_timeout`` per stage). One begun on a loop
    closed since never ends: it starts again on this one.
    """
    if task is None or (not task.done() and task.get_loop().is_closed()):
        task = start_task(close(), asyncio.get_running_loop())
    return task


async def cancel_late(late: set[asyncio.Task[Any]], timeout: float, what: str) -> None:
    """Cancel ``late`` and wait up to ``timeout`` for them to end. A task that ignores its
    cancellation (redis-py can lose one while it connects or reads) is left running, with a
    WARNING, rather than waited for forever: closing stays bounded."""
    if not late:
        return
    for task in late:
        task.cancel()
    _, stuck = await asyncio.wait(late, timeout=timeout)
    if stuck:
        logger.warning(
            "%s: %d Redis call(s) did not end within %ss of being cancelled; left running",
            what,
            len(stuck),
            timeout,
        )
