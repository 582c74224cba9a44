"""Public extension points: implement these to plug your own resources into aiolease."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ._dialects._base import Dialect as Dialect

__all__ = ["Dialect", "Manager", "ResourceInfo"]

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class ResourceInfo:
    """What a pool knows about a resource (given to `Manager.check` and `Manager.reset`).

    Times are on the event loop's clock (``loop.time()``).

    Attributes:
        created_at: when the resource was created.
        last_used_at: when it was last released (``created_at`` before its first use).
        uses: how many times it has been handed out.
        expires_at: when ``max_lifetime`` retires it (``inf`` without a lifetime).
    """

    created_at: float
    last_used_at: float
    uses: int = 0
    expires_at: float = field(default=float("inf"))


class Manager(ABC, Generic[T]):
    """How a :class:`~aiolease.Pool` creates, vets, resets and closes its resources.

    Only :meth:`create` is required; the others default to doing nothing.
    Each method may be cancelled at any await: the pool then closes (or
    discards) the resource involved and frees its slot.

    Attributes:
        close_timeout: seconds the pool lets :meth:`close` run (default 10);
            past it the resource is abandoned: :meth:`abort` is called and the
            pool counts it in ``statistics().discarded``.
    """

    close_timeout: float = 10.0

    @abstractmethod
    async def create(self) -> T:
        """Make a new resource. An exception here goes to the acquirer it served."""

    async def check(self, resource: T, info: ResourceInfo) -> None:
        """Vet an idle resource before handing it out. Raise to discard it."""

    async def reset(self, resource: T, info: ResourceInfo) -> None:
        """Clean a resource that came back. Raise to discard it."""

    async def close(self, resource: T) -> None:
        """Release the resource's underlying handles. Errors are logged, not raised."""

    def abort(self, resource: T) -> None:
        """Cut the resource off at once, without waiting for its peer (synchronous).

        Called when :meth:`close` outlasted ``close_timeout`` (or was cancelled),
        to free what it holds: abort the transport where the driver allows. Also
        called before :meth:`close` for a resource discarded as unusable (a fatal
        error in the body other than a cancellation or timeout, marked broken by a
        transaction, a failed check), whose graceful close would wait on a dead
        peer: :meth:`close` must accept an aborted resource.
        The default does nothing. Errors are logged.
        """

    def wrap(self, resource: T) -> T:
        """The object handed out for one lease of ``resource`` (default: the resource).

        Override it to hand out a per-lease proxy that refuses use after the
        lease ended (the pool calls :meth:`detach` on it at release). The
        pool only calls it when a subclass overrides it; it must not block or raise.
        """
        return resource

    def detach(self, handle: T) -> None:
        """The lease of ``handle`` (what :meth:`wrap` returned) has ended.

        Called synchronously at release, before :meth:`on_release` and
        :meth:`reset`. Must not block or raise.
        """

    def reset_needed(self, resource: T, info: ResourceInfo) -> bool:
        """Synchronous fast path of :meth:`reset`: return False when nothing needs cleaning.

        The pool then puts the resource straight back without awaiting
        :meth:`reset` (no task, no await). The default (not overridden) means
        always reset. Must not block or raise.
        """
        return True

    def check_needed(self, resource: T, info: ResourceInfo) -> bool:
        """Synchronous fast path of :meth:`check`: return False when the resource is known good.

        The pool then hands the idle resource out without awaiting :meth:`check`
        (no await, no timeout scope), which keeps the checkout of a healthy
        resource cheap while a suspicious one still gets the full async check.
        The default (not overridden) means always check. Must not block or raise.
        """
        return True

    def on_acquire(self, resource: T, info: ResourceInfo) -> None:
        """Called synchronously when a resource is handed to a caller (every lease starts here).

        Must not block or raise. The pool only calls it when a subclass overrides it.
        """

    def on_release(self, resource: T, info: ResourceInfo) -> None:
        """Called synchronously when a caller gives a resource back, before :meth:`reset`.

        Must not block or raise. The pool only calls it when a subclass overrides it.
        """

    def on_idle(self, resource: T, info: ResourceInfo) -> None:
        """Called synchronously when a resource starts to sit idle in the pool: after its
        creation or a release, when no task was waiting for it.

        Its counterpart is :meth:`check_needed`, called when an idle resource is
        about to be handed out (a resource passed straight from one task to the
        next is never idle in between). Use it to start watching an idle resource
        cheaply. Must not block or raise. The pool only calls it when a subclass
        overrides it.
        """

    def is_fatal(self, resource: T, exc: BaseException) -> bool:
        """Whether an exception raised by the ``async with`` body means the resource is broken.

        A resource whose body raised a fatal error is closed instead of going
        back to the pool. The default says no. If it raises, the pool logs a
        WARNING and discards the resource (the body's exception propagates).
        """
        return False
