"""Versioned schema steps for the modules that share one SQLite file.

Each module owns a component name ("store", "hotlist", ...) and an ordered list of steps; step
N (counting from 1) is version N of that component. `apply_migrations` applies the steps a
database has not yet recorded in `schema_migrations`.

Guarantees:
- Each step runs in its own `BEGIN IMMEDIATE` transaction together with the row that records it,
  so a crash or a failing step leaves the database at the previous version, never half-migrated.
- The recorded version is read inside that same write transaction, so two processes opening the
  file at once (the daemon and the sync agent) never apply a step twice.
- A database whose recorded version for a component is newer than the code knows is refused
  (`DowngradeError`) before anything is written: old code must not write into a newer schema.
- Components never touch each other's rows, so modules migrate independently.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlite_utils import Database

Step = str | Callable[[sqlite3.Connection], None]


class MigrationError(Exception):
    """The schema could not be brought up to date."""


class DowngradeError(MigrationError):
    """The database was written by newer code than this (permanent: upgrade the software)."""


class MigrationStepError(MigrationError):
    """A step failed; its transaction was rolled back and the database is at the previous version."""


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    applied_at TEXT NOT NULL,
    PRIMARY KEY (component, version)
)
"""


def recorded_version(conn: sqlite3.Connection, component: str) -> int:
    """The highest version recorded for `component`, 0 when none (or no table yet)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute(
        "SELECT MAX(version) FROM schema_migrations WHERE component = ?", (component,)
    ).fetchone()
    return int(row[0] or 0)


def apply_migrations(
    conn: sqlite3.Connection,
    component: str,
    steps: Sequence[Step],
    *,
    clock: Callable[[], float] = time.time,
) -> list[int]:
    """Apply the steps of `component` not yet recorded; return the versions applied now.

    A `str` step is SQL (several statements allowed); a callable step gets the connection and
    must not commit. `conn` must not be inside a transaction. Errors of the connection itself
    (`sqlite3.Error`: busy, I/O, not a database) propagate unchanged: the caller owns the
    connection and translates them at its boundary.
    """
    if not component:
        raise ValueError("component must be a non-empty name")
    if conn.in_transaction:
        raise MigrationError(f"{component}: migrations must start outside a transaction")
    db = Database(conn, recursive_triggers=False, execute_plugins=False)
    known = len(steps)
    applied: list[int] = []
    for version in range(1, known + 1):
        with _immediate(conn):
            db.execute(_CREATE_TABLE)
            current = recorded_version(conn, component)
            _refuse_downgrade(component, current, known)
            if current >= version:
                continue
            step = steps[version - 1]
            try:
                if isinstance(step, str):
                    # sqlite-utils splits the script instead of conn.executescript, which would
                    # COMMIT the open transaction first and break the step's atomicity.
                    db.executescript(step)
                else:
                    step(conn)
            except Exception as exc:
                raise MigrationStepError(f"{component}: migration step {version} failed: {exc}") from exc
            db["schema_migrations"].insert(
                {
                    "component": component,
                    "version": version,
                    "applied_at": datetime.fromtimestamp(clock(), UTC).isoformat(timespec="microseconds"),
                }
            )
            applied.append(version)
    if known == 0:
        with _immediate(conn):
            _refuse_downgrade(component, recorded_version(conn, component), known)
    return applied


def _refuse_downgrade(component: str, current: int, known: int) -> None:
    if current > known:
        raise DowngradeError(
            f"schema component '{component}' is at version {current} but this software knows only "
            f"up to version {known}: the database was written by newer software; refusing to "
            "downgrade it"
        )


class _immediate:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

    IMMEDIATE takes the write lock up front, so the version read inside cannot go stale before
    the step writes (a deferred transaction could fail with SQLITE_BUSY_SNAPSHOT instead).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
