"""The department server's SQLite database: one file, WAL, `synchronous=FULL`.

Each server module owns a schema component (`server.devices`, `server.ingest`, `server.hotlist`,
`server.feed`) migrated with `edge.migrations.apply_migrations`, so the modules evolve
independently and a database written by newer software is refused before anything is written.

Guarantees:
- A write (`Database.write()`) is one `BEGIN IMMEDIATE` transaction; when the block returns, the
  commit has been fsynced (WAL + `synchronous=FULL`), so a caller may acknowledge the data to a
  device right after the block: a power cut afterwards cannot lose it.
- The server process, the `alpr-server` CLI and test harnesses may open the file at the same
  time; writers wait for the lock up to `busy_timeout_s`, then fail with `DatabaseBusy`
  (transient: the HTTP layer answers 503 with Retry-After).
- One connection per `Database`, guarded by a lock: the HTTP worker threads share it, and SQLite
  serialises writers anyway.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from edge.migrations import MigrationError, Step, apply_migrations


class ServerDBError(Exception):
    """The server database failed."""


class DatabaseUnavailable(ServerDBError):
    """The file cannot be opened, migrated or written (permanent until an operator acts)."""


class DatabaseBusy(ServerDBError):
    """Another writer held the lock for longer than the busy timeout (transient: retry)."""


class Database:
    """The server's SQLite file. Thread-safe; use as a context manager or call `close()`."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise DatabaseUnavailable(f"{self.path}: cannot open the database: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {max(0, round(busy_timeout_s * 1000))}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise DatabaseUnavailable(f"{self.path}: cannot switch to WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            conn.close()
            raise DatabaseUnavailable(f"{self.path}: not a usable SQLite database: {exc}") from exc
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def migrate(self, component: str, steps: Sequence[Step]) -> list[int]:
        with self._lock:
            try:
                return apply_migrations(self._conn, component, steps)
            except (MigrationError, sqlite3.Error) as exc:
                raise DatabaseUnavailable(f"{self.path}: {exc}") from exc

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; durable when the block exits without an exception."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _translate(exc, self.path) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise _translate(exc, self.path) from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN")
                yield conn
            except sqlite3.Error as exc:
                raise _translate(exc, self.path) from exc
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self.read() as conn:
            return conn.execute(sql, params).fetchall()


def _translate(exc: sqlite3.Error, path: Path) -> ServerDBError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return DatabaseBusy(f"{path}: database is busy: {text}")
    return DatabaseUnavailable(f"{path}: {text}")
