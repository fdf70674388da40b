"""The sync agent's own small state in the device database (migration component "sync").

Tables (read by the MDT status strip and `alpr-sync status`; written only by the agent):
- `sync_state (key, value JSON, updated_at)`. Keys:
  - `instance_id`: a random UUID made when this database first met the agent. Audit rows have
    integer ids; their upload ids are uuid5(instance_id, "audit/<row id>"), stable across
    retries and restarts and distinct from any other database's (a re-flashed car starts
    again at row 1 but gets a new instance id).
  - `feed_refused`: {"at", "cause", "from_version", "to_version"} of the last hotlist feed the
    agent refused; deleted when a feed is next applied or confirmed current. While present the
    list in force is the one from before the refused feed.
  - `feed_ok`: {"at", "version"} of the last feed applied or confirmed current.
  - `image_budget`: {"day": "YYYY-MM-DD" (UTC, device clock), "bytes": N} image bytes sent that day.
- `sync_set_aside (seq, kind, record_id, reason, at)`: outbox entries the server refused for
  good (or whose record is missing locally). They stay in the outbox (nothing is lost); the
  agent no longer sends them; `alpr-sync status` lists how many.

Guarantees: each write is one short `BEGIN IMMEDIATE` transaction; nothing here touches rows of
another component. A crash leaves either the old value or the new one.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edge.migrations import MigrationError, apply_migrations

COMPONENT = "sync"

STEPS: tuple[str, ...] = (
    """
    CREATE TABLE sync_state (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL CHECK (json_valid(value)),
        updated_at REAL NOT NULL
    );
    CREATE TABLE sync_set_aside (
        seq INTEGER PRIMARY KEY NOT NULL,
        kind TEXT NOT NULL,
        record_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
)

KEY_INSTANCE = "instance_id"
KEY_FEED_REFUSED = "feed_refused"
KEY_FEED_OK = "feed_ok"
KEY_IMAGE_BUDGET = "image_budget"


class SyncStateError(Exception):
    """The agent's state could not be read or written (transient: the database is busy or failing)."""


def connect(path: Path, *, busy_timeout_s: float = 20.0, read_only: bool = False) -> sqlite3.Connection:
    """A connection to the shared device database in autocommit mode (explicit transactions only)."""
    try:
        conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {round(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise SyncStateError(f"{path}: cannot open the device database: {exc}") from exc
    return conn


class SyncState:
    """Key/value state and the set-aside list, over the agent's own connection."""

    def __init__(self, conn: sqlite3.Connection, *, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._clock = clock
        try:
            apply_migrations(conn, COMPONENT, STEPS, clock=clock)
        except (MigrationError, sqlite3.Error) as exc:
            raise SyncStateError(f"cannot prepare the sync agent's tables: {exc}") from exc
        existing = self.get(KEY_INSTANCE)
        if existing is None:
            # INSERT OR IGNORE: the first of two racing agents wins and both then read its value.
            self._write(
                "INSERT OR IGNORE INTO sync_state (key, value, updated_at) VALUES (?, ?, ?)",
                (KEY_INSTANCE, json.dumps(str(uuid.uuid4())), self._clock()),
            )
            existing = self.get(KEY_INSTANCE)
        self.instance_id = uuid.UUID(str(existing))

    @property
    def conn(self) -> sqlite3.Connection:
        """The agent's write connection to the device database (autocommit; explicit transactions)."""
        return self._conn

    def get(self, key: str) -> Any:
        try:
            row = self._conn.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise SyncStateError(f"cannot read sync state {key}: {exc}") from exc
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: Any) -> None:
        self._write(
            "INSERT INTO sync_state (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (key, json.dumps(value), self._clock()),
        )

    def delete(self, key: str) -> None:
        self._write("DELETE FROM sync_state WHERE key = ?", (key,))

    def set_aside(self, entries: Iterable[tuple[int, str, str, str]]) -> None:
        """Record (seq, kind, record_id, reason) entries the agent must not send again."""
        rows = [(int(s), k, r, why[:500], self._clock()) for s, k, r, why in entries]
        if rows:
            self._write_many(
                "INSERT OR REPLACE INTO sync_set_aside (seq, kind, record_id, reason, at) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    def set_aside_count(self) -> int:
        try:
            return int(self._conn.execute("SELECT count(*) FROM sync_set_aside").fetchone()[0])
        except sqlite3.Error as exc:
            raise SyncStateError(f"cannot count set-aside entries: {exc}") from exc

    def _write(self, sql: str, params: tuple) -> None:
        self._write_many(sql, [params])

    def _write_many(self, sql: str, rows: list[tuple]) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SyncStateError(f"cannot write sync state: {exc}") from exc
