"""The device's append-only audit log: who did what, when, why, and how it ended.

Logins and failed logins, officers' answers to hits, recent-read searches, BOLO and suppression
changes and their expiry are written here by the module that performs the action, inside that
action's own transaction, so an action and its audit row commit together or not at all.

Guarantees:
- Rows are never changed or deleted on the device: triggers abort any UPDATE or DELETE.
- `append` writes the row AND its upload entry (outbox lane HITS, kind "audit", record id the
  row id) in the caller's transaction when the store's outbox exists. A database written only by
  the hotlist (no store yet) keeps its rows; the store's migration queues every row already there
  when it creates its tables (`queue_existing`), so no audit row is ever left out of the upload.
- `at` is ISO 8601 UTC with microseconds; `details` is a JSON object.

This module touches only the `audit` table and adds rows to `outbox`; the outbox itself (and its
lanes) belongs to `edge.store`, which checks that `OUTBOX_LANE` is its `Lane.HITS`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "KIND_AUDIT",
    "OUTBOX_LANE",
    "AuditError",
    "AuditRow",
    "append",
    "ensure_schema",
    "queue_existing",
    "recent",
]


class AuditError(Exception):
    """An audit row could not be written (the caller's transaction must not commit)."""


KIND_AUDIT = "audit"
OUTBOX_LANE = 0  # edge.store.Lane.HITS: audit rows travel with hits and answers, first

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT,
        reason TEXT,
        outcome TEXT NOT NULL,
        details TEXT
    )""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
       BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
       BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END""",
)


@dataclass(frozen=True, kw_only=True)
class AuditRow:
    id: int
    at: str
    actor: str
    action: str
    subject: str | None
    reason: str | None
    outcome: str
    details: dict


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the table and its append-only triggers if missing (inside the caller's transaction)."""
    for statement in SCHEMA:
        conn.execute(statement)


def _has_outbox(conn: sqlite3.Connection) -> bool:
    return (
        conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").fetchone()
        is not None
    )


def append(
    conn: sqlite3.Connection,
    *,
    at: float,
    actor: str,
    action: str,
    subject: str | None,
    reason: str | None,
    outcome: str,
    details: Mapping[str, object] | None = None,
) -> int:
    """Write one audit row and queue it for upload, inside the caller's open write transaction.

    Returns the row id. Raises AuditError (the caller must roll back) when SQLite refuses.
    """
    if not actor or not action or not outcome:
        raise AuditError("an audit row needs an actor, an action and an outcome")
    try:
        cur = conn.execute(
            "INSERT INTO audit (at, actor, action, subject, reason, outcome, details) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (iso(at), actor, action, subject, reason, outcome, json.dumps(dict(details or {}), default=str)),
        )
        row_id = int(cur.lastrowid)
        if _has_outbox(conn):
            conn.execute(
                "INSERT OR IGNORE INTO outbox (lane, kind, record_id, created_at) VALUES (?, ?, ?, ?)",
                (OUTBOX_LANE, KIND_AUDIT, str(row_id), at),
            )
    except sqlite3.Error as exc:
        raise AuditError(f"cannot write the audit row for {action}: {exc}") from exc
    return row_id


def queue_existing(conn: sqlite3.Connection, created_at: float) -> int:
    """Queue every audit row written before the outbox existed (run once, by the store's migration).

    Only correct while no audit row has ever been queued and acknowledged: an acknowledged row has
    no outbox entry either. The store runs it in the migration step that introduces audit upload.
    """
    ensure_schema(conn)
    cur = conn.execute(
        "INSERT OR IGNORE INTO outbox (lane, kind, record_id, created_at) "
        "SELECT ?, ?, CAST(id AS TEXT), ? FROM audit ORDER BY id",
        (OUTBOX_LANE, KIND_AUDIT, created_at),
    )
    return cur.rowcount


def recent(conn: sqlite3.Connection, *, limit: int = 100, action_prefix: str | None = None) -> list[AuditRow]:
    """The newest rows first, optionally only actions starting with `action_prefix`."""
    where, params = "", []
    if action_prefix:
        where, params = "WHERE action LIKE ? ESCAPE '\\'", [_like_prefix(action_prefix)]
    rows = conn.execute(
        f"SELECT id, at, actor, action, subject, reason, outcome, details FROM audit {where} "
        "ORDER BY id DESC LIMIT ?",
        [*params, limit],
    ).fetchall()
    return [
        AuditRow(
            id=r[0],
            at=r[1],
            actor=r[2],
            action=r[3],
            subject=r[4],
            reason=r[5],
            outcome=r[6],
            details=json.loads(r[7]) if r[7] else {},
        )
        for r in rows
    ]


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
