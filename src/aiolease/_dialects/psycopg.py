"""Transaction dialect for psycopg 3 ``AsyncConnection``.

BEGIN travels with the first statement of the block. On an autocommit
connection (aiolease.psycopg pools open them so) ``begin()`` sends nothing: it
arms the connection so that the first statement executed through a cursor
carries BEGIN — one round trip instead of two:

* usually as one simple query, ``BEGIN; <statement>``, with the parameters
  bound on the client (psycopg's own client-side binding, as
  ``ClientCursor`` does); the cursor then moves past BEGIN's result, so it
  shows the statement's result, rowcount and status as usual. On localhost,
  where a round trip costs mostly CPU, this is what saves time: it sends and
  parses no more than the statement alone would;
* in a short pipeline together with BEGIN, synced before ``execute()``
  returns, when the statement cannot be sent as text: ``binary=True``,
  ``prepare=True``, binary placeholders (``%b``) or a value with no text
  dumper.

Either way errors surface exactly where they would without it. Any other
first use of the connection (a cursor created before the block, COPY, a
server-side cursor...) goes through the safety net on ``conn.wait``, which
sends BEGIN first. A block that runs no statement costs no round trip.

Statements the dialect sends itself go through psycopg's internal command path
(no cursor, simple query protocol, under the connection lock), like
``AsyncConnection.transaction()``.

The round trips the dialect drives itself (its commands, and the first
statement that carries BEGIN) wait for the server with ``_wait``, a leaner
``AsyncConnection.wait``: one reader callback and one future per wait, without
psycopg's periodic timer (it exists to notice Ctrl-C, which asyncio already
turns into a cancellation). Interrupted, it does what psycopg does: cancel the
query on the server and drain its result, so the connection stays usable.
"""

from __future__ import annotations

from asyncio import Future, Handle, get_running_loop
from asyncio import SelectorEventLoop as _SelectorEventLoop
from collections.abc import Generator, Mapping, Sequence
from decimal import Decimal as _Decimal
from selectors import EVENT_READ as _EVENT_READ
from typing import Any

import psycopg
from psycopg import pq, waiting
from psycopg.adapt import PyFormat
from psycopg.adapt import Transformer as _Transformer
from psycopg.generators import execute as _execute

from ._base import Dialect
from ._pg import begin_bytes

__all__ = ["PsycopgDialect"]

_INERROR = pq.TransactionStatus.INERROR
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_TEXT = pq.Format.TEXT
_IDLE = pq.TransactionStatus.IDLE
_ACTIVE = pq.TransactionStatus.ACTIVE
_WAIT_R = waiting.Wait.R
_READY_R = waiting.Ready.R
_BINARY_PH = PyFormat.BINARY
_NO_TRACEBACK = getattr(psycopg.errors, "_NO_TRACEBACK", psycopg.Error)


def _wake(fut: Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _resume(state: Any, gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """``gen`` again, from a wait it already asked for (``state``)."""
    while True:
        ready = yield state
        try:
            state = gen.send(ready)
        except StopIteration as stop:
            return stop.value


async def _wait(conn: Any, gen: Generator[Any, Any, Any]) -> Any:
    """``await conn.wait(gen)``, leaner (see the module doc)."""
    try:
        state = next(gen)
        loop = get_running_loop()
        fileno = conn.pgconn.socket
        # Only on asyncio's own selector loop does _wait register its reader itself.
        selector = getattr(loop, "_selector", None) if type(loop) is _SelectorEventLoop else None
        while True:
            if state != _WAIT_R:
                # Waiting to write (a full socket buffer): psycopg's own wait.
                return await conn.wait(_resume(state, gen))
            fut = loop.create_future()
            remove = None
            if selector is not None:
                # What loop.add_reader()/remove_reader() do for an fd nobody
                # watches, without their lookups that fail by raising (a
                # transport owning the fd, the fd's selector key).
                try:
                    selector.register(
                        fileno, _EVENT_READ, (Handle(_wake, (fut,), loop, None), None)
                    )
                    remove = selector.unregister
                except KeyError:  # watched already: the public way
                    selector = None
            if remove is None:
                loop.add_reader(fileno, _wake, fut)
                remove = loop.remove_reader
            try:
                await fut
            except BaseException:  # cancelled (or interrupted) while the server works
                remove(fileno)
                await _interrupted(conn, gen, state)
                raise
            remove(fileno)
            state = gen.send(_READY_R)
    except StopIteration as stop:
        return stop.value
    except OSError as exc:
        raise psycopg.OperationalError("connection socket closed") from exc


async def _interrupted(conn: Any, gen: Generator[Any, Any, Any], state: Any) -> None:
    """What ``AsyncConnection.wait`` does when interrupted: cancel the query on
    the server and drain its result (the connection stays usable), or close
    the connection when that fails."""
    pgconn = conn.pgconn
    if pgconn.transaction_status != _ACTIVE:
        return
    try:
        await conn._try_cancel(timeout=5.0)
        await waiting.wait_async(_resume(state, gen), pgconn.socket, timeout=5.0)
    except psycopg.errors.QueryCanceled:
        pass  # as expected
    except BaseException as exc:
        # Not cancelled in time, or interrupted again: the state is unknown.
        pgconn.finish()
        if not isinstance(exc, Exception):
            raise


_PENDING = "_aiolease_begin"  # instance attribute: the BEGIN not sent yet


_CLIENT_CURSOR = "_aiolease_client_cursor"  # instance attribute: for client-side binding

# Client-side binding templates, by (query, encoding): (template, number of
# placeholders), or None for a query the fast path leaves to psycopg (named or
# binary placeholders). Bounded: cleared when full.
_TEMPLATES: dict[tuple[str | bytes, str], tuple[bytes, int] | None] = {}
_TEMPLATES_MAX = 512


def _template(query: str | bytes, encoding: str) -> tuple[bytes, int] | None:
    """psycopg's client-side template for ``query`` (``%s`` placeholders only)."""
    from psycopg._queries import _query2pg_client_nocache

    bquery = query if isinstance(query, bytes) else query.encode(encoding)
    template, order, parts = _query2pg_client_nocache(bquery, encoding)
    if order is not None or any(part.format == _BINARY_PH for part in parts[:-1]):
        return None
    return template, len(parts) - 1


_TX = "_aiolease_tx"  # instance attribute: (Transformer, what it was made for)
_PY_TEXT = PyFormat.TEXT
_PY_AUTO = PyFormat.AUTO


def _transformer(conn: Any) -> Any:
    """A Transformer for client-side binding, reused while the connection's
    dumpers and encoding are the ones it was made with: a fresh one looks each
    value type's dumper up again, which costs more than the rest of the binding.

    psycopg copies a dumper table before changing it once a cursor shares it,
    and a cursor is made before every statement this binds, so registering a
    dumper changes the identity of the table (the length is checked too)."""
    adapters = conn.adapters
    try:
        text = adapters._dumpers[_PY_TEXT]
        auto = adapters._dumpers[_PY_AUTO]
        mark = (id(adapters), id(text), len(text), id(auto), len(auto), conn.pgconn._encoding)
    except (AttributeError, KeyError, TypeError):  # another psycopg layout
        return _Transformer(conn)
    cached = conn.__dict__.get(_TX)
    if cached is not None and cached[1] == mark:
        return cached[0]
    tx = _Transformer(conn)
    conn.__dict__[_TX] = (tx, mark)
    return tx


def _cached_template(query: str | bytes, encoding: str) -> tuple[bytes, int] | None:
    key = (query, encoding)
    try:
        return _TEMPLATES[key]
    except KeyError:
        if len(_TEMPLATES) >= _TEMPLATES_MAX:
            _TEMPLATES.clear()
        entry = _TEMPLATES[key] = _template(query, encoding)
        return entry


# Types whose bare literal (no quotes, no cast) has the type their parameter would have.
_BARE_AS_PARAM = frozenset({int, str, bool, _Decimal})


def _literals(tx: Any, params: Sequence[Any]) -> tuple[bytes, ...] | None:
    """Each value as a literal of the type its parameter would have (see _bind)."""
    literal = tx.as_literal
    values = []
    for p in params:
        if p is None:
            values.append(b"NULL")
            continue
        value = literal(p)
        t = type(p)
        if t not in _BARE_AS_PARAM and b"'" not in value:
            # A bare number whose parameter would be typed otherwise: 1.5 is
            # a numeric, a float parameter a float8.
            if b"::" in value:
                values.append(value)  # cast already ('NaN'::float8)
                continue
            if t is not float:
                return None  # another type: sent with its real parameter type
            value += b"::float8"
        values.append(value)
    return tuple(values)


def _bind(conn: Any, query: Any, params: Any) -> tuple[bytes | None, Any, tuple[bytes, ...] | None]:
    """The statement as text with its parameters bound on the client (psycopg's
    client-side binding, as ``ClientCursor`` does): ``(text, transformer,
    literals)``. ``text`` is None when the statement cannot be sent that way. The
    transformer and the literals are given for the common case only (a
    ``str``/``bytes`` query with ``%s`` placeholders and a tuple or list of
    values, bound here without a cursor), the one the prepared path takes.

    Unlike ``ClientCursor``, a float is sent as ``<value>::float8``: psycopg's
    literal for it (``1.5``) is a numeric, and the statement would return a
    ``Decimal`` where the same statement with server-side binding, outside the
    block, returns a float. A value of another type that psycopg writes as a
    bare number is left to the pipeline path (its real parameter type).
    """
    if (type(params) is tuple or type(params) is list) and (
        type(query) is str or type(query) is bytes
    ):
        try:
            tx = _transformer(conn)
            entry = _cached_template(query, tx.encoding)
            if entry is not None and len(params) == entry[1]:
                values = _literals(tx, params)
                if values is None:
                    return None, None, None
                return entry[0] % values, tx, values
        except Exception:  # a malformed query, a type with no text dumper, ...
            return None, None, None
    return _as_text_other(conn, query, params), None, None


def _as_text(conn: Any, query: Any, params: Any) -> bytes | None:
    """The text of :func:`_bind` alone."""
    return _bind(conn, query, params)[0]


def _as_text_other(conn: Any, query: Any, params: Any) -> bytes | None:
    """The text of :func:`_bind` for a statement that is not its common case."""
    try:
        if params is None:
            if isinstance(query, bytes):
                return query
            if isinstance(query, str):
                return query.encode(conn.info.encoding)
            return bytes(query.as_bytes(conn))  # sql.SQL / sql.Composed
        if any(isinstance(v, float) for v in _values_of(params)):
            return None  # psycopg's literal for a float is numeric (see _bind)
        cursor = conn.__dict__.get(_CLIENT_CURSOR)
        if cursor is None:
            cursor = conn.__dict__[_CLIENT_CURSOR] = psycopg.AsyncClientCursor(conn)
        try:
            # What ClientCursor.mogrify() does, minus its decoding to str (and our
            # encoding back): a fresh Transformer, then the query merged, as bytes.
            cursor._tx = _Transformer(cursor)
            return bytes(cursor._convert_query(query, params).query)
        except AttributeError:  # another psycopg layout: the public way
            return bytes(cursor.mogrify(query, params).encode(conn.info.encoding))
    except Exception:  # a type with no text dumper, a placeholder mismatch, ...
        return None


_STATEMENTS = "_aiolease_statements"  # instance attribute: a _Statements
# Errors of an EXECUTE whose prepared statement is gone (DEALLOCATE, DISCARD ALL)
# or whose plan no longer fits (the table changed: "cached plan must not change
# result type"): the statement is sent again as text.
_STALE = frozenset({"26000", "0A000"})


class _Statements:
    """The first statements of ``atomic`` blocks this connection has prepared.

    The first statement of a block travels as text after BEGIN (one simple
    query), so the server parses and plans it every time, where psycopg's own
    execution prepares a statement run ``prepare_threshold`` times and only
    binds it from then on. This does the same for the first statement: once a
    statement with the same parameter types has come ``prepare_threshold``
    times, it is prepared (a Parse with the parameter types psycopg would send,
    outside any transaction) and then run as ``BEGIN; EXECUTE name(literals)``,
    still one round trip. At most ``prepared_max`` statements per connection.
    """

    __slots__ = ("counts", "names", "seq")

    def __init__(self) -> None:
        self.counts: dict[tuple[Any, ...], int] = {}
        # None: the server refused to prepare it (a utility statement, a
        # parameter whose type it cannot tell...): text from then on.
        self.names: dict[tuple[Any, ...], bytes | None] = {}
        self.seq = 0


async def _prepared_name(
    conn: Any, query: str | bytes, params: Sequence[Any], tx: Any
) -> bytes | None:
    """The name of the statement prepared on ``conn`` for ``query`` with these
    parameter types (prepared now, if it has come often enough), or None: send it
    as text. ``tx`` is the Transformer that bound it (_bind)."""
    threshold = conn.prepare_threshold
    if threshold is None:
        return None
    get_dumper = tx.get_dumper
    oids = tuple([0 if p is None else get_dumper(p, _PY_TEXT).oid for p in params])
    key = (query, oids)
    statements: _Statements | None = conn.__dict__.get(_STATEMENTS)
    if statements is None:
        statements = conn.__dict__[_STATEMENTS] = _Statements()
    names = statements.names
    if key in names:
        return names[key]
    counts = statements.counts
    seen = counts.get(key, 0) + 1
    if seen <= threshold or len(names) >= conn.prepared_max:
        if len(counts) >= _TEMPLATES_MAX:
            counts.clear()
        counts[key] = seen
        return None
    counts.pop(key, None)
    name = None
    if _plannable(query):
        statements.seq += 1
        name = f"_aiolease_{statements.seq}".encode()
        if not await _prepare(conn, name, query, tx.encoding, oids):
            name = None
    names[key] = name
    return name


_PLANNABLE = frozenset({"select", "insert", "update", "delete", "merge", "with", "values", "table"})


def _plannable(query: str | bytes) -> bool:
    """Whether ``query`` starts with a statement the server plans (and so checks its
    parameters when preparing it): not a utility statement (SET, EXECUTE, DO...)."""
    head = query.lstrip()[:7]
    words = (head.decode("ascii", "replace") if isinstance(head, bytes) else head).split(None, 1)
    return bool(words) and words[0].lower().rstrip("(") in _PLANNABLE


async def _prepare(
    conn: Any, name: bytes, query: str | bytes, encoding: str, oids: tuple[int, ...]
) -> bool:
    """Prepare ``query`` as ``name`` with these parameter types (a Parse message, as
    psycopg prepares its own statements). False when the server refuses it."""
    from psycopg._queries import _query2pg_nocache

    bquery = query if isinstance(query, bytes) else query.encode(encoding)
    pgquery = _query2pg_nocache(bquery, encoding)[0]
    pgconn = conn.pgconn
    async with conn.lock:
        pgconn.send_prepare(name, pgquery, param_types=oids)
        results = await _wait(conn, _execute(pgconn))
    return all(r.status == _COMMAND_OK for r in results)


def _forget_statement(conn: Any, name: bytes, sqlstate: str | None) -> list[bytes]:
    """After a stale EXECUTE: forget the statement (every statement, when the server
    lost them all), and return the commands to send: ROLLBACK, DEALLOCATE."""
    statements: _Statements = conn.__dict__[_STATEMENTS]
    if sqlstate == "26000":  # gone: DEALLOCATE ALL or DISCARD ALL forgot them all
        statements.names.clear()
        return [b"ROLLBACK"]
    for key, value in list(statements.names.items()):
        if value == name:
            del statements.names[key]
    return [b"ROLLBACK", b"DEALLOCATE " + name]


def _values_of(params: Any) -> Any:
    return params.values() if isinstance(params, Mapping) else params


class _BeginningCursor(psycopg.AsyncCursor[Any]):
    """The cursor class of an armed connection: its first execute carries BEGIN."""

    _aiolease_skip_begin = False

    def _set_results(self, results: list[Any]) -> None:
        if self._aiolease_skip_begin:
            # BEGIN's result came first: the cursor shows the statement's
            # results only, as if it had been sent alone.
            results = results[1:]
        super()._set_results(results)

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        conn = self._conn
        begin = _disarm(conn)
        if begin is None:
            return await super().execute(query, params, **kwargs)
        text = name = call = None
        if (
            not kwargs.get("prepare")
            and not kwargs.get("binary")
            and kwargs.keys() <= _EXECUTE_KWARGS
            and self.format == _TEXT
        ):
            text, tx, values = _bind(conn, query, params)
            if values is not None and kwargs.get("prepare") is None:  # False: never prepare
                name = await _prepared_name(conn, query, params, tx)
                if name is not None:  # EXECUTE name(literals)
                    call = b"EXECUTE " + name
                    if values:
                        call += b"(" + b", ".join(values) + b")"
        if text is not None:
            # One simple query: BEGIN's result first, then the statement's (or its error).
            self._aiolease_skip_begin = True  # see _set_results
            try:
                try:
                    sent = begin + b"; " + (call or text)
                    async with conn.lock:
                        await _wait(conn, self._execute_gen(sent, None, prepare=False))
                except psycopg.Error as exc:
                    if (
                        name is None
                        or exc.sqlstate not in _STALE
                        or conn.pgconn.transaction_status != _INERROR
                    ):
                        raise
                    # The prepared statement failed before anything else ran in this
                    # transaction: roll it back, and send the statement as text.
                    sent = begin + b"; " + text
                    async with conn.lock:
                        for command in _forget_statement(conn, name, exc.sqlstate):
                            await _wait(conn, conn._exec_command(command))
                        await _wait(conn, self._execute_gen(sent, None, prepare=False))
            except _NO_TRACEBACK as exc:  # as AsyncCursor.execute does
                raise exc.with_traceback(None)  # noqa: B904
            finally:
                self._aiolease_skip_begin = False
            return self
        if params is None and isinstance(query, str | bytes) and _has_semicolon(query):
            # A multi-statement script needs the simple protocol (no pipeline).
            async with conn.lock:
                await conn.wait(conn._exec_command(begin))
            return await super().execute(query, params, **kwargs)
        async with conn.pipeline():
            async with conn.lock:
                await conn.wait(conn._exec_command(begin))  # queued, not awaited
            await super().execute(query, params, **kwargs)
        # Leaving the pipeline synced it: the results (or the error) are in.
        return self


_EXECUTE_KWARGS = {"prepare", "binary"}


def _has_semicolon(query: str | bytes) -> bool:
    return (b";" in query) if isinstance(query, bytes) else (";" in query)


def _arm(conn: Any, begin: bytes) -> None:
    conn.__dict__[_PENDING] = begin
    conn.cursor_factory = _BeginningCursor
    original_wait = type(conn).wait

    async def wait(gen: Any, *args: Any, **kwargs: Any) -> Any:
        # Safety net: something other than a fresh cursor talks to the server first.
        pending = _disarm(conn)
        if pending is not None:
            await original_wait(conn, conn._exec_command(pending))
        return await original_wait(conn, gen, *args, **kwargs)

    conn.__dict__["wait"] = wait


def _disarm(conn: Any) -> bytes | None:
    """Forget the pending BEGIN (returned, None when there was none)."""
    begin: bytes | None = conn.__dict__.pop(_PENDING, None)
    if begin is not None:
        conn.__dict__.pop("wait", None)
        if conn.cursor_factory is _BeginningCursor:
            conn.cursor_factory = psycopg.AsyncCursor
    return begin


class PsycopgDialect(Dialect[Any]):
    """psycopg 3 ``AsyncConnection``: BEGIN pipelined with the first statement (see module doc)."""

    name = "psycopg"

    async def _command(self, conn: Any, sql: bytes) -> Any:
        async with conn.lock:
            return await _wait(conn, conn._exec_command(sql))

    async def begin(self, conn: Any, isolation: str | None, readonly: bool) -> None:
        sql = begin_bytes(isolation, readonly)
        if (
            conn.autocommit
            and conn._pipeline is None
            and conn.cursor_factory is psycopg.AsyncCursor
        ):
            _arm(conn, sql)
            return
        # Non-autocommit mode (psycopg would add a BEGIN of its own), a
        # custom cursor class, or the caller's own pipeline: BEGIN now.
        await self._command(conn, sql)

    async def commit(self, conn: Any) -> bool:
        if _disarm(conn) is not None:
            return True  # the block ran no statement: nothing began
        pipeline = conn._pipeline
        if pipeline is not None:
            # Results of queued statements arrive at the sync point; one that
            # failed raises there: end the transaction, then raise its error.
            try:
                await pipeline.sync()
            except psycopg.Error:
                await self.rollback(conn)
                raise
            aborted = conn.pgconn.transaction_status == _INERROR
            await self._command(conn, b"COMMIT")
            await pipeline.sync()
            return not aborted
        async with conn.lock:  # self._command, inlined (the hot path)
            result = await _wait(conn, conn._exec_command(b"COMMIT"))
        return bool(result is None or result.command_status == b"COMMIT")

    async def rollback(self, conn: Any) -> None:
        if _disarm(conn) is not None:
            return  # nothing began
        if conn._pipeline is not None:
            await self._command(conn, b"ROLLBACK")
            try:
                await conn._pipeline.sync()
            except psycopg.Error:
                # Errors of statements queued before the rollback: they are
                # what the block is rolled back for.
                pass
            return
        await self._command(conn, b"ROLLBACK")

    async def savepoint(self, conn: Any, name: str) -> None:
        begin = _disarm(conn)
        sql = f"SAVEPOINT {name}".encode()
        if begin is not None:
            # Simple query protocol: BEGIN and SAVEPOINT in one round trip.
            await conn.execute(begin + b"; " + sql)
            return
        await self._command(conn, sql)

    async def release_savepoint(self, conn: Any, name: str) -> None:
        await self._command(conn, f"RELEASE SAVEPOINT {name}".encode())

    async def rollback_to_savepoint(self, conn: Any, name: str) -> None:
        if conn._pipeline is not None:
            await self._command(conn, f"ROLLBACK TO SAVEPOINT {name}".encode())
            await self._command(conn, f"RELEASE SAVEPOINT {name}".encode())
            return
        # Through a cursor: the simple query protocol sends both in one round trip.
        await conn.execute(f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}".encode())

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.pgconn.transaction_status != _IDLE)

    def is_connection_error(self, exc: BaseException, conn: Any) -> bool:
        if super().is_connection_error(exc, conn):
            return True
        if conn.closed or conn.broken:
            return True
        return isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None
