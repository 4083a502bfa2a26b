"""Where the store's rows live: the embedded SQLite file in MODEL_DIR (the default), or a PostgreSQL
server (DATABASE_URL) that the web processes and the RQ workers of several machines share.

The store writes its SQL once, with `?` placeholders and syntax both databases run (ON CONFLICT,
RETURNING); the two classes here run it and return rows as dicts. A write transaction is serialized
with every other one that could change what it read first: SQLite's BEGIN IMMEDIATE lets one writer
at a time into the file; on PostgreSQL the transaction first takes an advisory lock on its key (a
project id), so that one that reads before it writes sees what the last one of the same key
committed, in whatever process or on whatever machine it ran.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class StoreUnavailable(RuntimeError):
    """The store's database cannot be reached (PostgreSQL down, restarting or out of connections):
    a request that needs it gets a 503 with this message, and a job waits and runs again."""


def open_database(location: str | Path) -> SQLite | PostgreSQL:
    """A `postgresql://` (or `postgres://`) URL, else the path of a SQLite file."""
    if str(location).startswith(("postgresql://", "postgres://")):
        return PostgreSQL(str(location))
    return SQLite(Path(location))


class Session:
    """The statements of one transaction, in the store's SQL (`?` placeholders) on either database."""

    def __init__(self, connection, translate=lambda sql: sql):
        self.connection, self.translate = connection, translate

    def execute(self, sql: str, args: Iterable = ()):
        return self.connection.execute(self.translate(sql), tuple(args))

    def executemany(self, sql: str, rows: Iterable[Iterable]) -> None:
        self.connection.cursor().executemany(self.translate(sql), [tuple(r) for r in rows])


def _dict_row(cursor: sqlite3.Cursor, row: tuple) -> dict:
    return {column[0]: value for column, value in zip(cursor.description, row)}


class SQLite:
    """One connection in WAL mode, shared by the process's threads under a lock; other processes on
    the same host open the same file (WAL needs memory shared by every process that writes it)."""

    dialect = "sqlite"

    def __init__(self, path: Path):
        if sqlite3.sqlite_version_info < (3, 35):
            raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old for the store: it needs 3.35 or newer "
                               "(ON CONFLICT ... DO UPDATE, RETURNING)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self.connection.row_factory = _dict_row
        self._use_wal()
        self.connection.execute("PRAGMA synchronous=NORMAL")

    def _use_wal(self) -> None:
        """Switch the file to WAL mode (it stays so). Two processes that open a new file at once may
        find it locked by the other's switch, which SQLite does not wait for: retry for 30 s."""
        deadline = time.monotonic() + 30
        while True:
            try:
                self.connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextmanager
    def transaction(self, key: int | None = None) -> Iterator[Session]:
        """A write transaction; BEGIN IMMEDIATE serializes it with every other writer, whatever its key."""
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield Session(self.connection)
                self.connection.execute("COMMIT")
            except BaseException:
                if self.connection.in_transaction:  # SQLite ends the transaction itself on some errors (a full disk)
                    self.connection.execute("ROLLBACK")
                raise

    def all(self, sql: str, args: Iterable = ()) -> list[dict]:
        with self.lock:
            return self.connection.execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        self.connection.close()


def _placeholders(sql: str) -> str:
    """The store's `?` placeholders as psycopg's `%s` (a literal `%` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgreSQL:
    """A pool of connections in autocommit mode, at most MAX_CONNECTIONS per process: the web server's
    threads and the job threads each take one for a statement or a transaction. A connection that
    broke (the server restarted) is replaced when it is next taken. While the server cannot be
    reached, taking a connection gives up after CONNECT_SECONDS with StoreUnavailable (the pool's own
    default, 30 s, outlasts the callers' timeouts: Label Studio's webhook gives up at 10 s). The pool
    retries a lost connection with a doubling delay; its default of trying so for 300 s meant waits of
    a minute and more after the server was back, so it gives up after 2 x CONNECT_SECONDS and the next
    request that finds no connection starts a new attempt at once."""

    dialect = "postgresql"
    MAX_CONNECTIONS = 16
    CONNECT_SECONDS = 5.0

    def __init__(self, url: str):
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        info = conninfo_to_dict(url)
        self.address = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        try:  # an unreachable server fails here, with its own reason
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the store's PostgreSQL database ({self.address}) cannot be reached: "
                                   f"{str(exc).strip()}") from exc
        self.pool = ConnectionPool(url, min_size=1, max_size=self.MAX_CONNECTIONS, open=True,
                                   timeout=self.CONNECT_SECONDS, reconnect_timeout=2 * self.CONNECT_SECONDS,
                                   kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": 5},
                                   check=ConnectionPool.check_connection)

    @contextmanager
    def _connection(self):
        """A pooled connection; an unreachable server (no connection in time, or the one taken broke
        under a statement) as StoreUnavailable. An error of the statement itself passes unchanged."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as connection:
                try:
                    yield connection
                except psycopg.OperationalError as exc:
                    if not connection.broken:
                        raise
                    raise StoreUnavailable(f"the store's PostgreSQL database ({self.address}) closed the "
                                           f"connection: {str(exc).strip()}") from exc
        except PoolTimeout as exc:
            raise StoreUnavailable(f"the store's PostgreSQL database ({self.address}) gave no connection within "
                                   f"{self.CONNECT_SECONDS:g} s: it is down, restarting, or all "
                                   f"{self.MAX_CONNECTIONS} connections are busy") from exc

    @contextmanager
    def transaction(self, key: int | None = None) -> Iterator[Session]:
        """A write transaction that first waits for the advisory lock on `key` (held to its end); without
        a key, one that writes without reading first (a single statement on a row of its own)."""
        with self._connection() as connection, connection.transaction():
            if key is not None:
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            yield Session(connection, _placeholders)

    def all(self, sql: str, args: Iterable = ()) -> list[dict]:
        with self._connection() as connection:
            return connection.execute(_placeholders(sql), tuple(args)).fetchall()

    def close(self) -> None:
        self.pool.close()
