"""aiosqlite internals: BEGIN in the first operation's thread hop, and COMMIT on the loop.

Every aiosqlite operation is one *thread hop*: the call is queued to the
connection's worker thread and the event loop is woken with the result. Hops,
not SQLite, dominate the cost of a small transaction. aiosqlite has no public
way to run two steps in one hop, so this module uses its internals
(``Connection._execute``, the funnel of every operation; ``_conn``; the
request queue ``_tx`` and its ``(future, callable)`` items; the flags
``_running`` and ``_connection``). It is used only when :data:`ENABLED`
(chosen once at import: off with ``AIOLEASE_COMPAT=public`` or when
aiosqlite's layout is not the expected one); otherwise
:mod:`aiolease._dialects.sqlite` spends a hop per statement through the
public API.

* **BEGIN rides along with the first operation of the block.** :func:`arm`
  issues nothing; it installs a one-shot wrapper over the connection's
  ``_execute`` that runs ``BEGIN IMMEDIATE`` in the worker thread right before
  the first operation of the block, in the same hop. Unlike sqlite3's legacy
  implicit BEGIN (which only precedes INSERT/UPDATE/DELETE) this also covers a
  block that *reads first*. A block that ran no statement costs no hop.
* COMMIT (or ROLLBACK), and resetting ``query_only`` after a read-only block,
  share one hop; a failed COMMIT is rolled back in the same hop.
* The block's two hops (its first operation with BEGIN, and COMMIT) are put on
  the request queue directly (:func:`_submit`), without the coroutine and the
  ``functools.partial`` aiosqlite's ``_execute`` adds: Python run on the loop
  thread between two hops is what a transaction spends beyond its hops.
* A pool reads a connection's transaction state (:func:`transaction_state`)
  from the sqlite3 connection, without aiosqlite's two property calls.
* **COMMIT on the loop (opt-in)**, for connections marked by
  :func:`enable_loop_commit` (``aiolease.sqlite`` pools with
  ``commit_on_loop=True``; WAL mode, ``check_same_thread=False``). The COMMIT
  then runs on the event loop's thread, with no hop. Hazard: SQLite work on the
  loop thread blocks the loop while it runs. In WAL mode with
  ``synchronous=NORMAL`` the COMMIT of a small transaction only appends its
  last pages to the WAL file (no fsync, no lock to wait for: the write lock is
  already held), but with ``synchronous=FULL``, a slow disk or a large
  transaction it can stall every task of the loop. Everything that could block
  longer stays in the thread: the COMMIT goes through the worker after all when
  the block changed many rows, when an operation of the block is still running
  or queued (a statement the body stopped awaiting), and SQLite's automatic
  WAL checkpoint is switched off while blocks run and done in the worker
  thread instead.

Writes start with ``BEGIN IMMEDIATE`` so the busy timeout applies when the
write lock is taken.

The fence is kept because public mode is measurably worse without it: on
2026-12-05 (bench/README.md, 2-core shared VM, Python 3.11, pinned to one CPU,
five runs per mode) ``pool.atomic`` with one INSERT ran at 1.05x aiosqlite's
manual BEGIN/INSERT/COMMIT in the default mode and 0.74x in public mode, one
thread hop more per transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from functools import partial
from typing import Any

from . import PUBLIC

__all__ = [
    "ENABLED",
    "LOOP_COMMIT_MAX_CHANGES",
    "begin",
    "commit",
    "enable_loop_commit",
    "in_transaction",
    "release_savepoint",
    "rollback",
    "rollback_to_savepoint",
    "savepoint",
    "stop_waiting",
    "transaction_state",
]


# Marker on a connection whose block began read-only (query_only must be reset).
_READONLY = "_aiolease_readonly"
# Marker on a connection whose block's BEGIN ran (set and read in the worker thread):
# a block whose transaction is over without it never began (BEGIN failed), one with
# it was ended by a statement of the block.
_BEGAN = "_aiolease_began"


# Marker on a connection whose block found one of its savepoints gone (set in the worker
# thread): a statement of the block ended the transaction atomic began (a COMMIT or
# ROLLBACK sent by hand), and any transaction open now is not that one.
_LOST = "_aiolease_lost"
# The block's _LockWait while it is open (see _begin_immediate).
_LOCK_WAIT = "_aiolease_lock_wait"
#: Milliseconds one try of a block's BEGIN IMMEDIATE waits for the write lock: the
#: longest a cancelled block waits for its BEGIN to give up.
LOCK_WAIT_SLICE_MS = 50
_SQLITE_BUSY = 5


class _LockWait:
    """Whether the block whose BEGIN IMMEDIATE waits for the write lock is over: written
    by the event loop (the block's rollback), read by the worker thread between tries."""

    __slots__ = ("given_up",)

    def __init__(self) -> None:
        self.given_up = False


#: A transaction that changed more rows than this commits through the worker thread.
LOOP_COMMIT_MAX_CHANGES = 1000
_LOOP = "_aiolease_loop_commit"  # instance attribute: the connection's _LoopCommit


class _LoopCommit:
    """Per-connection state of COMMIT-on-the-loop (see the module doc).

    ``submitted`` is written by the event loop thread only and ``finished`` by
    the worker thread only, so their difference (operations of the block still
    in the worker) needs no lock.
    """

    __slots__ = (
        "autocheckpoint",
        "begin_fn",
        "begun",
        "changes_at_begin",
        "checkpointed_at",
        "failed",
        "finished",
        "submitted",
        "suspended",
    )

    def __init__(self, autocheckpoint: int) -> None:
        self.autocheckpoint = autocheckpoint  # the connection's wal_autocheckpoint (pages)
        self.begin_fn: Any = None  # while a block is open: how it begins
        self.begun = False  # the block's first operation has run (BEGIN was sent)
        self.changes_at_begin = 0  # sqlite3 total_changes when the block began
        self.checkpointed_at = 0  # total_changes at our last checkpoint
        self.failed: BaseException | None = None  # the block's BEGIN failed (see _NotBegun)
        self.submitted = 0
        self.finished = 0
        self.suspended = False  # wal_autocheckpoint is off (see _prepare_block)


def enable_loop_commit(conn: Any, autocheckpoint: int = 1000) -> None:
    """Let :func:`aiolease.atomic` commit ``conn``'s transactions on the event loop.

    Only for an aiosqlite connection opened with ``check_same_thread=False``
    whose database is in WAL mode (:mod:`aiolease.sqlite` pools call this for
    their connections). ``autocheckpoint`` is the connection's
    ``wal_autocheckpoint`` setting, in pages (0: the application checkpoints).

    It installs a dispatcher over the connection's ``_execute`` (the funnel of
    every aiosqlite operation, cursors included) that runs in the same thread
    hop as the operation: BEGIN before a block's first operation, the count of
    the block's operations, and restoring ``wal_autocheckpoint`` before the
    first operation outside a block.
    """
    loop = _LoopCommit(autocheckpoint)
    state = conn.__dict__
    state[_LOOP] = loop
    original = type(conn)._execute

    async def execute(fn: Any, *args: Any, **kwargs: Any) -> Any:
        begin_fn = loop.begin_fn
        if begin_fn is not None:
            loop.submitted += 1
            return await original(conn, _in_block, conn, loop, begin_fn, fn, args, kwargs)
        if loop.suspended:
            return await original(conn, _outside_block, conn, loop, fn, args, kwargs)
        return await original(conn, fn, *args, **kwargs)

    state["_execute"] = execute


def _prepare_block(db: sqlite3.Connection, loop: _LoopCommit) -> None:
    """In the worker thread, before BEGIN: checkpoint if due, and hold off SQLite's own
    checkpoints, which would run inside a COMMIT on the loop. They stay off until an
    operation outside a block (see :func:`_outside_block`)."""
    changes = db.total_changes
    loop.changes_at_begin = changes
    if loop.autocheckpoint <= 0:
        return  # the application checkpoints
    # Changed rows since our last checkpoint stand in for WAL pages: each change
    # writes at least one page, so this checkpoints no later than SQLite would.
    if changes - loop.checkpointed_at >= loop.autocheckpoint:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        loop.checkpointed_at = changes
    if not loop.suspended:
        db.execute("PRAGMA wal_autocheckpoint=0").close()
        loop.suspended = True


def _in_block(conn: Any, loop: _LoopCommit, begin_fn: Any, fn: Any, args: Any, kwargs: Any) -> Any:
    """Worker thread: an operation of a block (the first one begins it)."""
    try:
        if not loop.begun:
            db = conn._conn
            _prepare_block(db, loop)
            loop.begun = True  # before BEGIN: a failed BEGIN still ends through the thread
            try:
                begin_fn(db)
            except BaseException as exc:
                loop.failed = exc
                raise
            conn.__dict__[_BEGAN] = True
        elif loop.failed is not None:
            raise _not_begun(loop.failed)
        return fn(*args, **kwargs)
    finally:
        loop.finished += 1


def _outside_block(conn: Any, loop: _LoopCommit, fn: Any, args: Any, kwargs: Any) -> Any:
    """Worker thread: an operation outside any block; SQLite checkpoints as configured."""
    db = conn._connection
    if loop.suspended and db is not None:
        db.execute(f"PRAGMA wal_autocheckpoint={loop.autocheckpoint}").close()
        loop.suspended = False
    return fn(*args, **kwargs)


def _begin_immediate(wait: _LockWait, db: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting for the write lock as long as the connection's busy
    timeout says, in tries of at most :data:`LOCK_WAIT_SLICE_MS`.

    SQLite's busy wait ignores ``interrupt()``, so a single try would keep a cancelled
    block's connection (and its rollback, queued behind) waiting for the whole busy
    timeout. Between tries the wait ends once the block is over (``wait.given_up``, set
    by its rollback), with the last try's "database is locked". A BEGIN that found the
    lock taken began nothing, so trying again means what one longer wait means. The
    busy timeout is set back before returning.
    """
    (timeout,) = db.execute("PRAGMA busy_timeout").fetchone()
    if timeout <= LOCK_WAIT_SLICE_MS:
        db.execute("BEGIN IMMEDIATE")
        return
    deadline = time.monotonic() + timeout / 1000
    slice_ms = LOCK_WAIT_SLICE_MS
    db.execute(f"PRAGMA busy_timeout={slice_ms}")
    try:
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if exc.sqlite_errorcode & 0xFF != _SQLITE_BUSY or wait.given_up or left_ms <= 0:
                    raise
            if left_ms < slice_ms:
                slice_ms = left_ms
                db.execute(f"PRAGMA busy_timeout={slice_ms}")
    finally:
        db.execute(f"PRAGMA busy_timeout={timeout}")


def _begin_readonly(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA query_only = 1")
    try:
        db.execute("BEGIN DEFERRED")
    except BaseException:
        db.execute("PRAGMA query_only = 0")
        raise


def _drop_not_begun(conn: Any) -> None:
    """Worker thread, at the block's end: remove the :class:`_NotBegun` a BEGIN installed
    after the loop ended the block (a block cancelled while its BEGIN waited)."""
    state = conn.__dict__
    if isinstance(state.get("_execute"), _NotBegun):
        del state["_execute"]


def _commit(conn: Any, readonly: bool) -> bool | None:
    db = conn._conn
    _drop_not_begun(conn)
    try:
        if conn.__dict__.pop(_LOST, False):
            # Not the transaction the block began: never committed in its name.
            if db.in_transaction:
                db.execute("ROLLBACK")
            return None
        if not db.in_transaction:
            # BEGIN failed (its error was caught): nothing began (False). Else SQLite
            # ended the transaction itself (some errors roll back automatically) or a
            # statement of the block did (None).
            return None if conn.__dict__.get(_BEGAN) else False
        try:
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return True
    finally:
        if readonly:
            db.execute("PRAGMA query_only = 0")


def _rollback(conn: Any, readonly: bool) -> bool:
    """Roll back; False when a statement of the block had ended the transaction."""
    db = conn._conn
    _drop_not_begun(conn)
    began = conn.__dict__.pop(_BEGAN, False)
    lost = conn.__dict__.pop(_LOST, False)
    try:
        if lost:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return False
        if not db.in_transaction:
            return not began
        db.execute("ROLLBACK")
        return True
    finally:
        if readonly:
            db.execute("PRAGMA query_only = 0")


def _submit(conn: Any, call: Any) -> asyncio.Future[Any]:
    """Queue ``call()`` to ``conn``'s worker thread; the future its answer resolves.

    What aiosqlite's ``_execute`` does (same check, same queue, same answer),
    without the coroutine and the ``functools.partial`` it adds: the block's
    two hops (its first operation with BEGIN, and COMMIT) go this way.
    """
    if not conn._running or not conn._connection:
        raise ValueError("Connection closed")
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    conn._tx.put_nowait((future, call))
    return future


def _not_begun(error: BaseException) -> sqlite3.OperationalError:
    """The error of an operation of a block whose BEGIN failed with ``error`` (see
    :class:`_NotBegun`): ``error``'s message and SQLite codes, so that it is retried
    (or not) as ``error`` would be."""
    refused = sqlite3.OperationalError(
        f"{error} (not run: this atomic block's BEGIN failed with that error at its first "
        "statement, and the error was caught; no later statement of the block runs, as "
        "it would run outside the transaction)"
    )
    for name in ("sqlite_errorcode", "sqlite_errorname"):
        if hasattr(error, name):
            setattr(refused, name, getattr(error, name))
    return refused


class _NotBegun:
    """The ``_execute`` of a block whose BEGIN failed (an error the block caught): its
    later operations would run outside any transaction, each committing at once, so
    they fail without running. Installed by the worker thread before the failed
    operation's answer reaches the loop; the block's end removes it."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        raise _not_begun(self.error)


def _begin_then(conn: Any, begin_fn: Any, fn: Any, args: Any, kwargs: Any) -> Any:
    try:
        begin_fn(conn._connection)
    except BaseException as exc:
        conn.__dict__["_execute"] = _NotBegun(exc)
        raise
    conn.__dict__[_BEGAN] = True
    return fn(*args, **kwargs)


def _unless_not_begun(conn: Any, fn: Any, args: Any, kwargs: Any) -> Any:
    """Worker thread: an operation started while the block's BEGIN was in flight; it
    fails without running when that BEGIN failed (see :class:`_Pending`)."""
    failed = conn.__dict__.get("_execute")
    if isinstance(failed, _NotBegun):
        raise _not_begun(failed.error)
    return fn(*args, **kwargs)


class _Pending:
    """The ``_execute`` of a block whose first operation (with BEGIN) was sent and has
    not answered yet. Operations started meanwhile (``asyncio.gather`` in the block) are
    queued behind it before anyone knows whether BEGIN worked: they go to the worker
    thread with a check, and fail without running if it failed (else they would run
    outside any transaction, each committing at once). Removed on the loop once the
    first operation answered with BEGIN done; from then on operations go straight to
    the thread."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        return _submit(self.conn, partial(_unless_not_begun, self.conn, fn, args, kwargs))


def _make_first(conn: Any, begin_fn: Any) -> Any:
    """The one-shot ``_execute`` of an armed connection.

    Made per block: kept on the connection only while armed (then :class:`_Pending`
    while BEGIN is in flight), so the reference cycle it forms (connection -> wrapper
    -> connection) ends with the block. Every caller awaits what ``_execute``
    returns, so a future does.
    """

    def first_execute(fn: Any, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        state = conn.__dict__
        pending = _Pending(conn)
        state["_execute"] = pending
        future = _submit(conn, partial(_begin_then, conn, begin_fn, fn, args, kwargs))

        def answered(future: asyncio.Future[Any]) -> None:
            # A failed BEGIN replaced ``pending`` (in the thread, before answering).
            if not future.cancelled() and state.get("_execute") is pending:
                del state["_execute"]

        future.add_done_callback(answered)
        return future

    return first_execute


def _run(db: sqlite3.Connection, sql: str) -> None:
    db.execute(sql).close()


def _rollback_to(db: sqlite3.Connection, name: str) -> None:
    db.execute(f"ROLLBACK TO SAVEPOINT {name}")
    db.execute(f"RELEASE SAVEPOINT {name}")


def _on_savepoint(conn: Any, step: Any, name: str) -> None:
    """Worker thread: ``step(db, name)`` on a block's savepoint; a savepoint found gone
    marks the block's transaction lost (see :data:`_LOST`)."""
    try:
        step(conn._conn, name)
    except sqlite3.OperationalError as exc:
        if "no such savepoint" in str(exc):
            conn.__dict__[_LOST] = True
        raise


def _release(db: sqlite3.Connection, name: str) -> None:
    db.execute(f"RELEASE SAVEPOINT {name}").close()


async def begin(conn: Any, isolation: str | None, readonly: bool) -> None:
    """Arm ``conn``: its next operation runs BEGIN first, in the same hop (SQLite's
    only level, serializable, is what ``isolation`` can be)."""
    state = conn.__dict__
    state.pop(_BEGAN, None)
    state.pop(_LOST, None)
    if readonly:
        state[_READONLY] = True
        begin_fn: Any = _begin_readonly
    else:
        wait = state[_LOCK_WAIT] = _LockWait()
        begin_fn = partial(_begin_immediate, wait)
    loop: _LoopCommit | None = state.get(_LOOP)
    if loop is not None:
        loop.begun = False
        loop.failed = None
        loop.submitted = loop.finished = 0
        loop.begin_fn = begin_fn  # the dispatcher sends BEGIN with the first operation
        return
    # An instance attribute shadows the method for this block only.
    state["_execute"] = _make_first(conn, begin_fn)


async def commit(conn: Any) -> bool | None:
    """COMMIT in one hop (or none: an empty block, or COMMIT on the loop)."""
    state = conn.__dict__
    readonly = state.pop(_READONLY, False)
    state.pop(_LOCK_WAIT, None)
    loop: _LoopCommit | None = state.get(_LOOP)
    if loop is None:
        armed = state.pop("_execute", None)
        if isinstance(armed, _NotBegun):
            return False  # BEGIN failed: nothing began, the block's work is not committed
        if armed is not None and not isinstance(armed, _Pending):
            return True  # the block ran no statement: nothing began, nothing to commit
        committed: bool | None = await _submit(conn, partial(_commit, conn, readonly))
        return committed
    loop.begin_fn = None
    if loop.submitted == 0:
        return True  # the block ran no statement: nothing began, nothing to commit
    db = conn._conn
    if (
        loop.begun
        and loop.submitted == loop.finished
        and conn._tx.empty()
        and db.total_changes - loop.changes_at_begin <= LOOP_COMMIT_MAX_CHANGES
    ):
        return _commit(conn, readonly)  # on the loop: no hop (see the module doc)
    # Through the worker, behind whatever of the block is still running or queued.
    outcome: bool | None = await conn._execute(_commit, conn, readonly)
    return outcome


async def rollback(conn: Any) -> bool:
    """ROLLBACK in one hop (none when nothing began); False when a statement of the
    block had ended the transaction."""
    state = conn.__dict__
    readonly = bool(state.pop(_READONLY, False))
    stop_waiting(conn)
    loop: _LoopCommit | None = state.get(_LOOP)
    if loop is not None:
        loop.begin_fn = None
        if loop.submitted == 0:
            return True  # nothing began
    else:
        armed = state.pop("_execute", None)
        if armed is not None and not isinstance(armed, _Pending):
            return True  # nothing began: BEGIN was not sent, or it failed
    # Through the worker thread: a statement the block stopped awaiting may still run.
    rolled_back: bool = await conn._execute(_rollback, conn, readonly)
    return rolled_back


def stop_waiting(conn: Any) -> None:
    """End the wait for the write lock of the block open on ``conn``, if its BEGIN is
    waiting (see :func:`_begin_immediate`): the block is over, or its connection is
    being closed."""
    wait: _LockWait | None = conn.__dict__.pop(_LOCK_WAIT, None)
    if wait is not None:
        wait.given_up = True


async def savepoint(conn: Any, name: str) -> None:
    # Through the (possibly still armed) wrapper: BEGIN + SAVEPOINT in one hop.
    await conn._execute(_run, conn._conn, f"SAVEPOINT {name}")


async def release_savepoint(conn: Any, name: str) -> None:
    await conn._execute(_on_savepoint, conn, _release, name)


async def rollback_to_savepoint(conn: Any, name: str) -> None:
    await conn._execute(_on_savepoint, conn, _rollback_to, name)


def transaction_state(conn: Any) -> bool | None:
    """Whether ``conn`` is in a transaction; None once it is closed.

    aiosqlite's ``in_transaction`` (which raises ``ValueError`` once closed)
    read from the sqlite3 connection directly, without its two property calls:
    a pool reads it at every checkout and release.
    """
    db = conn._connection
    return None if db is None else bool(db.in_transaction)


def in_transaction(conn: Any) -> bool:
    """:func:`transaction_state`, False once closed (what a dialect answers)."""
    db = conn._connection
    return db is not None and bool(db.in_transaction)


def _has_layout() -> bool:
    try:
        import aiosqlite
    except ImportError:  # pragma: no cover - the sqlite extra is not installed
        return False
    conn_type = aiosqlite.Connection
    # The request queue and the state flags are set per instance, in __init__.
    assigned = getattr(getattr(conn_type.__init__, "__code__", None), "co_names", ())
    return all(
        hasattr(conn_type, name) for name in ("_execute", "_conn", "in_transaction", "commit")
    ) and all(name in assigned for name in ("_tx", "_running", "_connection"))


#: Whether aiolease uses the internals above (chosen once at import).
ENABLED = not PUBLIC and _has_layout()
