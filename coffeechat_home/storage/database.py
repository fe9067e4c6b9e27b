"""The database handle: an asyncpg pool, engine detection, and the one
transaction helper every write goes through.

CockroachDB runs every transaction SERIALIZABLE and may abort one with
SQLSTATE 40001; PostgreSQL (run serializable in tests) does the same, and may
also report a deadlock (40P01). ``Database.transaction`` re-runs the whole
unit of work on those, with jittered exponential backoff and a bound.
Units of work must therefore be free of side effects outside the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import urllib.parse
from enum import Enum
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

import asyncpg

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


class Engine(Enum):
    POSTGRES = "postgres"
    COCKROACH = "cockroach"


class DatabaseError(Exception):
    """The database could not be reached or used; the message is one line."""


class TooManyRetries(DatabaseError):
    pass


def is_retryable(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) in RETRYABLE_SQLSTATES


def detect_engine(version_string: str) -> Engine:
    return Engine.COCKROACH if "CockroachDB" in version_string else Engine.POSTGRES


def _connect_kwargs(url: str) -> dict[str, Any]:
    """asyncpg connection arguments for a URL. TLS: ``sslmode`` verify-full
    or verify-ca checks the server against ``sslrootcert`` (or the system's
    CAs); ``sslcert`` and ``sslkey`` present a client certificate (how one
    logs in to a secure CockroachDB cluster). Several hosts
    (``postgresql://u@h1:26257,h2:26257/db``) are tried in order."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    kwargs: dict[str, Any] = {}
    sslmode = query.pop("sslmode", None)
    rootcert = query.pop("sslrootcert", None)
    clientcert = query.pop("sslcert", None)
    clientkey = query.pop("sslkey", None)
    options = query.pop("options", None)
    if clientkey and not clientcert:
        raise ValueError("sslkey is set without sslcert")
    ctx: ssl.SSLContext | None = None
    if sslmode in ("verify-full", "verify-ca"):
        ctx = ssl.create_default_context(cafile=rootcert) if rootcert else ssl.create_default_context()
        ctx.check_hostname = sslmode == "verify-full"
    elif clientcert:
        if sslmode == "disable":
            raise ValueError("sslcert needs TLS, but sslmode is disable")
        # require (or prefer/allow/unset: a client certificate needs TLS)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif sslmode in ("require", "prefer", "allow", "disable"):
        kwargs["ssl"] = sslmode
    if ctx is not None:
        if clientcert:
            ctx.load_cert_chain(clientcert, keyfile=clientkey or None)
        kwargs["ssl"] = ctx
    if options:
        # "--cluster=name" (CockroachDB Serverless routing) as a startup option.
        kwargs.setdefault("server_settings", {})["options"] = options
    rebuilt = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    kwargs["dsn"] = rebuilt
    return kwargs


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """Lighter than asyncpg's default reset: we never change session state
    (no SET, no LISTEN, no advisory locks, no temp tables), so only an open
    transaction needs cleaning up. Saves a round trip on every release."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


# The sessions of the transaction pool on PostgreSQL. Its SSI takes a
# predicate lock on the whole table for a sequential scan, and the planner
# picks one for a point lookup in a table it knows to be small (a few rooms,
# the handful of rows of ``stream_inflight``) once autovacuum has analyzed
# it: every other transaction writing that table (a send to any other room)
# then forms a read-write conflict with it, and under concurrent writes most
# of them fail to serialize (2,271 failures for 2,000 sends into 20 separate
# rooms, bench/bench_send_conflicts.py). PostgreSQL's documentation advises
# steering SERIALIZABLE transactions towards index scans; with sequential
# scans off the planner uses an index wherever one fits (a table with none
# is still scanned). Not SERIALIZABLE weakened: only its lock granularity.
# The sessions also default to SERIALIZABLE, so that a stream write that is
# one statement (``Database.attempt_single``: no BEGIN or COMMIT) runs at the
# isolation every write has. (CockroachDB's default is SERIALIZABLE.)
# And they plan prepared statements once (generic plans): the writes pass
# their rows as arrays (``unnest($n)``), for which the planner always finds
# a custom plan for the batch at hand cheaper, so by default it plans every
# execution anew. On a message's send that planning cost the database more
# CPU than the rest of the statement: 0.51-0.53 ms of backend CPU per send
# against 0.38-0.40 with generic plans (bench/bench_write_parts.py). The
# writes are index lookups by key either way. (This pool runs writes only;
# lone reads go through ``single``, which keeps the default.)
SERIALIZABLE_SESSION_SETTINGS = {
    "enable_seqscan": "off",
    "default_transaction_isolation": "serializable",
    "plan_cache_mode": "force_generic_plan",
}


# Array types our statements pass or read for which asyncpg has no built-in
# codec (bigint[], integer[], boolean[]; text[] is built in): on each new
# connection, the first statement using one makes asyncpg run its type
# introspection query, whose planning alone took 15-40 ms of the database's
# CPU here (bench/bench_initial_sync.py --pglog: 16 ms of an initial sync's
# 21 ms, while the pools' connections were new). The types' descriptions
# are read once at start-up and given to every new connection instead.
# OIDs of built-in types are fixed (CockroachDB uses PostgreSQL's).
PRELOADED_TYPE_OIDS = (1016, 1007, 1000)  # _int8, _int4, _bool


async def _detect_engine(kwargs: dict[str, Any], timeout: float) -> tuple[Engine, list[Any]]:
    """The engine behind the URL and the descriptions of the preloaded
    types, from one short-lived connection (the pools' session settings
    depend on the engine)."""
    conn = await asyncio.wait_for(asyncpg.connect(**kwargs), timeout)
    try:
        engine = detect_engine(await conn.fetchval("SELECT version()"))
        try:
            types, _ = await conn._introspect_types(list(PRELOADED_TYPE_OIDS), timeout)
        except (AttributeError, TypeError, ValueError):  # another asyncpg: it introspects by itself
            types = []
        return engine, list(types)
    finally:
        await conn.close()


def _type_preloader(types: list[Any]) -> Callable[[asyncpg.Connection], Awaitable[None]] | None:
    """The pools' ``init``: register ``types`` in a new connection's codec
    settings (asyncpg's own step after introspecting), without a query."""
    if not types:
        return None

    async def init(conn: asyncpg.Connection) -> None:
        try:
            conn._protocol.get_settings().register_data_types(types)
        except (AttributeError, TypeError, ValueError):
            log.debug("could not preload type codecs; asyncpg will introspect them", exc_info=True)

    return init


class Database:
    """Two pools on one database: ``pool`` runs multi-statement units of
    work (``transaction``), each opened with ``BEGIN ISOLATION LEVEL
    SERIALIZABLE`` whatever the server's default (CockroachDB v24.1 and later
    let a role or database default to READ COMMITTED); on PostgreSQL its
    sessions plan without sequential scans (SERIALIZABLE_SESSION_SETTINGS).
    ``single`` runs lone
    statements (``fetch``/``execute`` ...). On PostgreSQL its sessions use
    READ COMMITTED: one statement is atomic and sees one snapshot anyway,
    and PostgreSQL's SSI tracks reads by index page, so lone reads (sync,
    notifier polls) running SERIALIZABLE would make unrelated writers abort.
    CockroachDB detects conflicts per key and keeps its default."""

    def __init__(self, pool: asyncpg.Pool, single: asyncpg.Pool, engine: Engine, url: str) -> None:
        self.pool = pool
        self.single = single
        self.engine = engine
        self.url = url
        self.max_attempts = 20
        self.retry_count = 0  # total retries, for tests and metrics

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 2, max_size: int = 20, timeout: float = 15.0) -> "Database":
        try:
            kwargs = _connect_kwargs(url)
        except (OSError, ValueError, ssl.SSLError) as e:
            raise DatabaseError(f"database at {redact_url(url)}: {_one_line(e)}") from None

        types: list[Any] = []

        async def make_pool(size_min: int, size_max: int, settings: dict[str, str]) -> asyncpg.Pool:
            args = dict(kwargs)
            if settings:
                args["server_settings"] = {**args.get("server_settings", {}), **settings}
            pool = await asyncio.wait_for(
                asyncpg.create_pool(
                    min_size=size_min, max_size=size_max, reset=_reset_connection, statement_cache_size=512,
                    init=_type_preloader(types), **args
                ),
                timeout,
            )
            assert pool is not None
            return pool

        try:
            engine, types = await _detect_engine(kwargs, timeout)
            postgres = engine is Engine.POSTGRES
            pool = await make_pool(min_size, max_size, SERIALIZABLE_SESSION_SETTINGS if postgres else {})
            settings = {"default_transaction_isolation": "read committed"} if postgres else {}
            try:
                single = await make_pool(min(min_size, 2), max(2, max_size // 2), settings)
            except BaseException:
                await pool.close()
                raise
        except asyncio.TimeoutError:
            raise DatabaseError(f"database at {redact_url(url)} did not answer within {timeout:.0f}s") from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError, ssl.SSLError) as e:
            raise DatabaseError(f"cannot connect to database at {redact_url(url)}: {_one_line(e)}") from None
        return cls(pool, single, engine, url)

    def text_order(self, expr: str) -> str:
        """An ORDER BY term sorting text by code point (Python's order) on
        both engines, for orders users see where SQL must sort (a LIMIT):
        CockroachDB compares strings byte-wise (UTF-8, so by code point);
        PostgreSQL follows the database's collation unless told "C".
        Where all rows are read anyway, sort in Python instead."""
        return f'{expr} COLLATE "C"' if self.engine is Engine.POSTGRES else expr

    async def close(self, timeout: float = 10.0) -> None:
        """Close both pools, waiting at most ``timeout`` seconds for each
        (asyncpg's close waits for every connection to be released, and a
        statement to a database that stopped answering may never return);
        what is left is then terminated."""
        for pool in (self.single, self.pool):
            try:
                async with asyncio.timeout(timeout):
                    await pool.close()
            except TimeoutError:
                log.warning("database pool did not close within %.0f s; connections terminated", timeout)
                pool.terminate()

    async def ping(self, timeout: float = 5.0) -> None:
        """Return when the database answers a trivial query within
        ``timeout`` seconds; raise DatabaseUnavailable otherwise."""
        try:
            await asyncio.wait_for(self.fetchval("SELECT 1"), timeout)
        except asyncio.TimeoutError:
            raise DatabaseUnavailable(f"no answer within {timeout:g}s", retryable=False) from None
        except DatabaseError:
            raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise DatabaseUnavailable(_one_line(e), retryable=False) from None

    def pool_usage(self) -> dict[str, tuple[int, int, int]]:
        """Per pool ("transaction", "single"): (open, idle, max) connections."""
        return {
            name: (p.get_size(), p.get_idle_size(), p.get_max_size())
            for name, p in (("transaction", self.pool), ("single", self.single))
        }

    async def transaction(
        self,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        name: str = "txn",
        readonly: bool = False,
    ) -> T:
        """Run ``fn(conn)`` in one transaction, retrying it whole on
        40001/40P01 and on a lost connection before COMMIT was sent."""
        return await self.retrying(lambda: self.attempt_transaction(fn, readonly=readonly), name=name)

    async def retrying(self, attempt: Callable[[], Awaitable[T]], *, name: str = "txn") -> T:
        """Call ``attempt()`` until it succeeds: again after a serialization
        failure (up to ``max_attempts``, full-jitter backoff) or after a
        connection lost before anything could have committed (a few times
        within about a second, then ``DatabaseUnavailable``: requests fail
        fast during an outage and resume by themselves after it)."""
        attempt_no = 0
        lost = 0
        while True:
            attempt_no += 1
            try:
                return await attempt()
            except DatabaseUnavailable as e:
                if not e.retryable:
                    raise
                lost += 1
                if lost >= CONNECTION_ATTEMPTS:
                    raise DatabaseUnavailable(f"{name}: {e}", retryable=False) from e
                self.retry_count += 1
                await asyncio.sleep(CONNECTION_BACKOFF_S * (2 ** (lost - 1)))
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                if not is_retryable(e):
                    raise
                if attempt_no >= self.max_attempts:
                    raise TooManyRetries(f"{name}: gave up after {attempt_no} attempts: {_one_line(e)}") from e
                self.retry_count += 1
                delay = _backoff(attempt_no)
                log.debug("retrying %s after %s (attempt %d, sleep %.3fs)", name, e.sqlstate, attempt_no, delay)
                await asyncio.sleep(delay)

    async def attempt_transaction(
        self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, readonly: bool = False
    ) -> T:
        """One try of ``fn(conn)`` in a transaction. A connection that broke
        is thrown away (never rolled back: a ROLLBACK on a connection whose
        server is gone would be a second operation on it) and reported as
        ``DatabaseUnavailable``, retryable unless COMMIT had been sent."""
        async with self._connection(self.pool) as conn:
            # SERIALIZABLE asked for, not assumed: since v24.1 a CockroachDB
            # role or database may default to READ COMMITTED
            tx = conn.transaction(isolation="serializable", readonly=readonly)
            await _guard(conn, tx.start(), committing=False)
            try:
                result = await _guard(conn, fn(conn), committing=False)
            except BaseException:
                if not _is_gone(conn):
                    try:
                        await tx.rollback()
                    except Exception:
                        _drop(conn)
                raise
            await _guard(conn, tx.commit(), committing=True)
            return result

    async def attempt_bracketed(
        self, prelude: str, fn: Callable[[asyncpg.Connection], Awaitable[T]], finale: str
    ) -> T:
        """One try of ``fn(conn)`` in a SERIALIZABLE transaction opened by
        the simple-query string ``prelude`` (which holds ``BEGIN ISOLATION
        LEVEL SERIALIZABLE``: what comes before it runs first, what follows
        it runs in the transaction, all in one round trip) and closed by
        ``finale`` (statements, then ``COMMIT``, also one round trip). Saves
        the two round trips of a separate BEGIN and COMMIT. Failures are
        reported as by ``attempt_transaction``; a failed prelude or finale
        leaves the connection rolled back."""
        assert "BEGIN ISOLATION LEVEL SERIALIZABLE" in prelude.upper()
        assert finale.rstrip().rstrip(";").upper().endswith("COMMIT")
        async with self._connection(self.pool) as conn:
            try:
                await _guard(conn, conn.execute(prelude), committing=False)
                result = await _guard(conn, fn(conn), committing=False)
                await _guard(conn, conn.execute(finale), committing=True)
            except BaseException:
                if not _is_gone(conn) and conn.is_in_transaction():
                    try:
                        await conn.execute("ROLLBACK")
                    except Exception:
                        _drop(conn)
                raise
            return result

    async def attempt_single(
        self, prelude: str, prelude_args: Sequence[Any], fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *, held: "Awaitable[Held] | None" = None,
    ) -> T:
        """One try of a write that is one statement, committed as it ends
        (no BEGIN or COMMIT; the session's default isolation, SERIALIZABLE
        on this pool): the statement ``prelude`` with ``prelude_args``
        (committed on its own), then ``fn(conn)``, which runs that one
        statement. Two round trips in all. Once the statement is sent, a
        lost connection leaves its outcome unknown (as a COMMIT's).

        ``held``: the prelude was run ahead (``run_first``, with the same
        statement and arguments): ``fn`` runs on its connection once it is
        done, and a failure of the prelude is raised as here."""
        h = await (self.run_first(prelude, prelude_args) if held is None else held)
        try:
            return await _guard(h.conn, fn(h.conn), committing=True)
        finally:
            await h.release()

    async def run_first(self, prelude: str, prelude_args: Sequence[Any]) -> "Held":
        """``attempt_single``'s first round trip on its own: a pool
        connection with ``prelude`` run (and committed) on it, held for
        the statement that follows (``attempt_single(held=...)``), or let go
        (``Held.release``). Failures are reported as ``attempt_single``'s."""
        cm = self._connection(self.pool)
        conn = await cm.__aenter__()
        try:
            await _guard(conn, conn.execute(prelude, *prelude_args), committing=False)
        except BaseException:
            await cm.__aexit__(None, None, None)
            raise
        return Held(cm, conn)

    @contextlib.asynccontextmanager
    async def _connection(self, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
        try:
            ctx = pool.acquire()
            conn = await ctx.__aenter__()
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            if isinstance(e, asyncpg.PostgresError) and not is_connection_error(e):
                raise
            raise DatabaseUnavailable(f"cannot connect: {_one_line(e)}", retryable=True) from e
        try:
            yield conn
        finally:
            try:
                await ctx.__aexit__(None, None, None)
            except Exception:  # the pool has terminated a connection it could not reset
                log.debug("dropped a connection that could not be reset", exc_info=True)

    # Single statements outside an explicit transaction; still retried.
    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._retry_single(lambda c: c.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self._retry_single(lambda c: c.fetchrow(query, *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._retry_single(lambda c: c.fetchval(query, *args))

    async def execute(self, query: str, *args: Any) -> str:
        return await self._retry_single(lambda c: c.execute(query, *args))

    async def _retry_single(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def attempt() -> T:
            async with self._connection(self.single) as conn:
                # a lone statement commits as it ends: once sent, a lost
                # connection leaves its outcome unknown unless the server
                # itself reported the failure
                return await _guard(conn, fn(conn), committing=True)

        return await self.retrying(attempt, name="statement")


class Held:
    """A pool connection whose first statement ran (``Database.run_first``)."""

    __slots__ = ("_cm", "conn")

    def __init__(
        self, cm: contextlib.AbstractAsyncContextManager[asyncpg.Connection], conn: asyncpg.Connection
    ) -> None:
        self._cm: contextlib.AbstractAsyncContextManager[asyncpg.Connection] | None = cm
        self.conn = conn

    async def release(self) -> None:
        """Back to the pool (once)."""
        cm, self._cm = self._cm, None
        if cm is not None:
            await cm.__aexit__(None, None, None)


class DatabaseUnavailable(DatabaseError):
    """The connection broke or could not be made. ``retryable`` when nothing
    can have committed (no COMMIT sent, or the server reported the failure)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


# Connection loss: retried this many times in all, the waits doubling from
# CONNECTION_BACKOFF_S (0.05 + 0.1 + 0.2 + 0.4 s), then reported.
CONNECTION_ATTEMPTS = 5
CONNECTION_BACKOFF_S = 0.05

# SQLSTATEs that mean the server ended the session or refused it; nothing
# of an unfinished statement or transaction was committed.
_SERVER_GONE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, asyncpg.InternalClientError)):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return state.startswith("08") or state in _SERVER_GONE_SQLSTATES


def _is_gone(conn: asyncpg.Connection) -> bool:
    """Closed, or already handed back to the pool (asyncpg releases a
    pooled connection by itself when it closes)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


def _drop(conn: asyncpg.Connection) -> None:
    """Throw a broken connection away; the pool opens a new one on demand."""
    if not _is_gone(conn):
        conn.terminate()


async def _guard(conn: asyncpg.Connection, op: Awaitable[T], *, committing: bool) -> T:
    """Await ``op``; on a connection-level failure drop the connection and
    raise DatabaseUnavailable (retryable if nothing can have committed)."""
    try:
        return await op
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as e:
        if not is_connection_error(e):
            raise
        _drop(conn)
        server_said = getattr(e, "sqlstate", None) in _SERVER_GONE_SQLSTATES
        raise DatabaseUnavailable(f"connection lost: {_one_line(e)}", retryable=server_said or not committing) from e


def _backoff(attempt: int) -> float:
    """Full jitter: a random wait up to 2 ms * 2^attempt, capped at 1 s."""
    cap: float = min(1.0, 0.002 * 2.0 ** min(attempt, 9))
    return cap * random.random()


def redact_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urllib.parse.urlunsplit(parts._replace(query=""))


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()
