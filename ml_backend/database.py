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
    broke (the server restarted) is replaced when it is next taken."""

    dialect = "postgresql"
    MAX_CONNECTIONS = 16

    def __init__(self, url: str):
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        psycopg.connect(url, connect_timeout=10).close()  # an unreachable server fails here, with its own reason
        self.pool = ConnectionPool(url, min_size=1, max_size=self.MAX_CONNECTIONS, open=True,
                                   kwargs={"autocommit": True, "row_factory": dict_row},
                                   check=ConnectionPool.check_connection)

    @contextmanager
    def transaction(self, key: int | None = None) -> Iterator[Session]:
        """A write transaction that first waits for the advisory lock on `key` (held to its end); without
        a key, one that writes without reading first (a single statement on a row of its own)."""
        with self.pool.connection() as connection, connection.transaction():
            if key is not None:
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            yield Session(connection, _placeholders)

    def all(self, sql: str, args: Iterable = ()) -> list[dict]:
        with self.pool.connection() as connection:
            return connection.execute(_placeholders(sql), tuple(args)).fetchall()

    def close(self) -> None:
        self.pool.close()
