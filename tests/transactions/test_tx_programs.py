"""Generated programs of nested ``atomic`` blocks against a small model of the contract.

Hypothesis writes programs: blocks (with or without a savepoint) nested in one
another, inserts, failing statements caught where they fail or left to
propagate, the user's own ``SAVEPOINT``/``ROLLBACK TO``/``RELEASE``, blocks
that end normally, by raising, with ``Rollback`` or with ``set_rollback``,
nested blocks whose error the enclosing block catches or not, and a task
cancellation at a chosen statement (before it is sent, or while it runs).
Every block registers an ``on_commit`` and an ``on_rollback`` hook. Each
program runs on every backend and in :class:`Model`, a plain interpreter of
what docs/transactions.md promises; the rows left in the table, the hooks
that ran (in order) and the kind of exception that left the outermost block
must be the same, and the connection must be out of any transaction and kept.

Example counts stay modest so ``make test`` stays quick; set
``AIOLEASE_DIFF_EXAMPLES`` (e.g. 2000) to run more.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import pq
from tx_backends import (  # noqa: F401 - backend_fixture registers the fixture
    Backend,
    FakeBackend,
    backend_fixture,
    generated,
)

import aiolease
from aiolease import _tracking
from aiolease._compat.asyncpg import SEES_CANCELLING

EXAMPLES, PROGRAMS = generated(60)
pytestmark = pytest.mark.timeout(max(120, EXAMPLES * 2))

ENDS = ("normal", "raise", "Rollback", "set_rollback")

# A program is a list of operations:
#   ("insert",)                      one row (its value numbered in program order)
#   ("fail", caught)                 a failing statement, its error caught right there or not
#   ("user_savepoint", ops, release) SAVEPOINT u<n>; ops; RELEASE or ROLLBACK TO it
#   ("block", savepoint, ops, end, caught)   a nested atomic block; the enclosing
#                                    block catches its exception when `caught`
simple_ops = st.one_of(st.just(("insert",)), st.tuples(st.just("fail"), st.booleans()))


def _programs(depth: int) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    user_savepoint = st.tuples(
        st.just("user_savepoint"), st.lists(simple_ops, max_size=3), st.booleans()
    )
    leaf = st.one_of(simple_ops, user_savepoint)
    if depth == 0:
        return st.lists(leaf, max_size=4)
    block = st.tuples(
        st.just("block"), st.booleans(), _programs(depth - 1), st.sampled_from(ENDS), st.booleans()
    )
    return st.lists(st.one_of(block, leaf, block), max_size=4)  # blocks twice as often


programs = st.tuples(
    _programs(2),
    st.sampled_from(ENDS),
    # Cancel the task at this statement of the program (None: never), before the
    # statement is sent or while it runs.
    st.one_of(st.none(), st.integers(1, 8)),
    st.sampled_from(["before", "during"]),
)


class Boom(Exception):
    pass


# -- the model ----------------------------------------------------------------------------


class MError(Exception):
    """The model's exceptions; ``kind`` is what the real run must raise."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class MBlock:
    savepoint: bool | None  # None: the outermost block
    mark: int = 0  # len(Model.pending) at the savepoint
    commit_hooks: list[str] = field(default_factory=list)
    rollback_hooks: list[str] = field(default_factory=list)
    rollback_only: bool = False
    doomed: bool = False


class Model:
    """The transaction contract as a plain interpreter (see the module doc)."""

    def __init__(self, aborts_on_error: bool, cancel_at: int | None) -> None:
        self.aborts_on_error = aborts_on_error
        self.cancel_at = cancel_at
        self.statements = 0
        self.values = itertools.count(1)
        self.pending: list[int] = []
        self.rows: list[int] = []
        self.aborted = False
        self.hooks: list[str] = []
        self.block_ids = itertools.count()
        self.user_savepoints = itertools.count(1)

    def statement(self) -> None:
        self.statements += 1
        if self.statements == self.cancel_at:
            raise MError("cancelled")
        if self.aborted:
            raise MError("db")

    def fail(self) -> None:
        self.statement()
        self.aborted = self.aborts_on_error
        raise MError("db")

    def run(self, ops: list[tuple[Any, ...]], end: str) -> str:
        """The kind of exception that leaves the outermost block ("none" if none)."""
        block = MBlock(None)
        self._register(block)
        try:
            self._ops(block, ops)
            self._end(block, end)
        except MError as exc:
            return self._exit_outermost(block, exc)
        return self._exit_outermost(block, None)

    def _register(self, block: MBlock) -> None:
        n = next(self.block_ids)
        block.commit_hooks.append(f"commit {n}")
        block.rollback_hooks.append(f"rollback {n}")

    def _end(self, block: MBlock, end: str) -> None:
        if end == "raise":
            raise MError("Boom")
        if end == "Rollback":
            raise MError("Rollback")
        if end == "set_rollback":
            block.rollback_only = True

    def _ops(self, block: MBlock, ops: list[tuple[Any, ...]]) -> None:
        for op in ops:
            if op[0] == "insert":
                value = next(self.values)
                self.statement()
                self.pending.append(value)
            elif op[0] == "fail":
                try:
                    self.fail()
                except MError as exc:
                    if not op[1] or exc.kind == "cancelled":
                        raise
            elif op[0] == "user_savepoint":
                next(self.user_savepoints)
                self.statement()
                mark = len(self.pending)
                self._ops(block, op[1])
                if op[2]:
                    self.statement()  # RELEASE
                else:
                    self.statements += 1  # ROLLBACK TO works in an aborted transaction
                    if self.statements == self.cancel_at:
                        raise MError("cancelled")
                    del self.pending[mark:]
                    self.aborted = False
            else:
                _, savepoint, inner_ops, end, caught = op
                try:
                    self._nested(block, savepoint, inner_ops, end)
                except MError as exc:
                    if not caught or exc.kind == "cancelled":
                        raise

    def _nested(
        self, parent: MBlock, savepoint: bool, ops: list[tuple[Any, ...]], end: str
    ) -> None:
        block = MBlock(savepoint, mark=len(self.pending))
        if savepoint and self.aborted:
            raise MError("db")  # SAVEPOINT fails in an aborted transaction
        self._register(block)
        try:
            self._ops(block, ops)
            self._end(block, end)
        except MError as exc:
            self._exit_nested(parent, block, exc)
            return
        self._exit_nested(parent, block, None)

    def _exit_nested(self, parent: MBlock, block: MBlock, exc: MError | None) -> None:
        if not block.savepoint:
            parent.commit_hooks += block.commit_hooks
            parent.rollback_hooks += block.rollback_hooks
            if block.rollback_only or (exc is not None and exc.kind == "Rollback"):
                parent.rollback_only = True
            elif exc is not None or block.doomed:
                parent.doomed = True
            if exc is not None and exc.kind != "Rollback":
                raise exc
            return
        if exc is None and not block.rollback_only and not block.doomed:
            if not self.aborted:
                parent.commit_hooks += block.commit_hooks
                parent.rollback_hooks += block.rollback_hooks
                return
            del self.pending[block.mark :]
            self.aborted = False
            raise MError("TransactionError")
        del self.pending[block.mark :]
        self.aborted = False
        if exc is None and block.doomed:
            raise MError("TransactionError")
        if exc is not None and exc.kind != "Rollback":
            raise exc

    def _exit_outermost(self, block: MBlock, exc: MError | None) -> str:
        if exc is None and not block.rollback_only and not block.doomed and not self.aborted:
            self.rows += self.pending
            self.hooks += block.commit_hooks
            return "none"
        self.pending.clear()
        self.aborted = False
        self.hooks += block.rollback_hooks
        if exc is None:
            return "TransactionError" if block.doomed or not block.rollback_only else "none"
        return "none" if exc.kind == "Rollback" else exc.kind


# -- the real run ---------------------------------------------------------------------------


class Runner:
    def __init__(self, b: Backend, conn: Any, cancel_at: int | None, when: str) -> None:
        self.b = b
        self.conn = conn
        self.cancel_at = cancel_at
        self.when = when
        self.statements = 0
        self.values = itertools.count(1)
        self.hooks: list[str] = []
        self.block_ids = itertools.count()
        self.user_savepoints = itertools.count(1)

    async def statement(self, sql: str | None) -> None:
        """Run ``sql`` (None: a failing statement), cancelling the task when told."""
        self.statements += 1
        cancel = self.statements == self.cancel_at
        if cancel:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            if self.when == "before" or sql is None or self.aborted():
                await asyncio.sleep(0)  # raises here: the statement is never sent
        try:
            if sql is None:
                await self.b.fail(self.conn)
            elif sql == "insert":
                await self.b.insert(self.conn, next(self.values))
            else:
                await self.b.run(self.conn, sql)
        finally:
            if cancel:
                # The statement did not wait (or failed first): the cancellation lands here.
                await asyncio.sleep(0)

    def aborted(self) -> bool:
        """Whether the statement will fail for sure: it is cancelled before it is sent
        then, like a failing statement, as the drivers differ while it runs (psycopg
        closes a plain connection whose cancelled statement ended on an error)."""
        return (
            self.b.name == "psycopg"
            and self.conn.info.transaction_status == pq.TransactionStatus.INERROR
        )

    def register(self, tx: aiolease.Transaction[Any]) -> None:
        n = next(self.block_ids)
        tx.on_commit(lambda: self.hooks.append(f"commit {n}"))
        tx.on_rollback(lambda: self.hooks.append(f"rollback {n}"))

    @staticmethod
    def end(tx: aiolease.Transaction[Any], end: str) -> None:
        if end == "raise":
            raise Boom
        if end == "Rollback":
            raise aiolease.Rollback
        if end == "set_rollback":
            tx.set_rollback(True)

    async def run(self, ops: list[tuple[Any, ...]], end: str, pool: Any = None) -> None:
        if pool is None:
            async with aiolease.atomic(self.conn) as tx:
                self.register(tx)
                await self.ops(ops)
                self.end(tx, end)
            return
        async with pool.atomic() as tx:  # the pool's lease proxy, nested blocks too
            self.conn = tx.connection
            self.register(tx)
            await self.ops(ops)
            self.end(tx, end)

    async def ops(self, ops: list[tuple[Any, ...]]) -> None:
        for op in ops:
            if op[0] == "insert":
                # The model numbers values as it goes: skip none here either.
                await self.statement("insert")
            elif op[0] == "fail":
                try:
                    await self.statement(None)
                except Exception:
                    if not op[1]:
                        raise
            elif op[0] == "user_savepoint":
                name = f"u{next(self.user_savepoints)}"
                await self.statement(f"SAVEPOINT {name}")
                await self.ops(op[1])
                await self.statement(
                    f"RELEASE SAVEPOINT {name}" if op[2] else f"ROLLBACK TO SAVEPOINT {name}"
                )
            else:
                _, savepoint, inner_ops, end, caught = op
                try:
                    async with aiolease.atomic(self.conn, savepoint=savepoint) as tx:
                        self.register(tx)
                        await self.ops(inner_ops)
                        self.end(tx, end)
                except Exception:
                    if not caught:
                        raise


def kind_of(exc: BaseException | None) -> str:
    if exc is None:
        return "none"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, Boom):
        return "Boom"
    if isinstance(exc, aiolease.TransactionError):
        return "TransactionError"
    return "db"


async def values_in(b: Backend, conn: Any) -> list[int]:
    if isinstance(b, FakeBackend):
        return sorted(v for v, _ in b._rows(conn))
    if b.name == "psycopg":
        cur = await conn.execute(f"SELECT v FROM {b.table} ORDER BY v")
        return [row[0] for row in await cur.fetchall()]
    if b.name == "asyncpg":
        return [row[0] for row in await conn.fetch(f"SELECT v FROM {b.table} ORDER BY v")]
    async with conn.execute(f"SELECT v FROM {b.table} ORDER BY v") as cur:
        return [row[0] for row in await cur.fetchall()]


@pytest.fixture(params=["plain", "pool"])
async def pool(request: pytest.FixtureRequest, backend: Backend) -> AsyncIterator[Any]:
    """None (atomic on a plain connection) or a pool of one connection (pool.atomic())."""
    if request.param == "plain":
        yield None
        return
    async with backend.pool(min_size=0, max_size=1) as p:
        yield p


@PROGRAMS
@given(program=programs)
async def test_nested_programs_match_the_model(backend: Backend, pool: Any, program: Any) -> None:
    ops, end, cancel_at, when = program
    b = backend
    # One connection for every example: a program must leave it as it found it.
    conn = b.connections[0] if b.connections else await b.connect()
    before = await values_in(b, conn)
    model = Model(b.aborts_on_error, cancel_at)
    model.rows = list(before)
    expected = model.run(ops, end)

    runner = Runner(b, conn, cancel_at, when)
    discarded = 0 if pool is None else pool.statistics().discarded
    task = asyncio.ensure_future(runner.run(ops, end, pool))
    await asyncio.wait((task,), timeout=30)
    assert task.done(), "the program did not end"
    got = kind_of(None if task.cancelled() else task.exception())
    if task.cancelled():
        got = "cancelled"

    assert (got, runner.hooks) == (expected, model.hooks), program
    assert not _tracking.is_broken(conn), program
    # The connection is kept; a pool that cannot see whether a cancelled statement is
    # still running discards it after a cancellation: SQLite's (aiosqlite runs it in its
    # thread), asyncpg's in AIOLEASE_COMPAT=public.
    if pool is not None and not (
        got == "cancelled" and (b.name == "sqlite" or (b.name == "asyncpg" and not SEES_CANCELLING))
    ):
        assert pool.statistics().discarded == discarded, program
    assert not b_in_transaction(b, conn), program
    assert await values_in(b, conn) == sorted(model.rows), program


def b_in_transaction(b: Backend, conn: Any) -> bool:
    if b.name == "asyncpg":
        return bool(conn.is_in_transaction())
    if b.name == "psycopg":
        return bool(conn.info.transaction_status != pq.TransactionStatus.IDLE)
    return bool(conn.in_transaction)
