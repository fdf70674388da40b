"""Turns outbox entries into wire-protocol records by reading the device's tables.

Read-only: this module's connection runs with `PRAGMA query_only`, so it can never change the
daemon's rows. Entries leave the outbox only through `edge.store.Store.outbox_ack`, called by
the agent with the seqs the server acknowledged.

- `pending(lane, limit)` lists the oldest entries of a lane whose kind this agent can upload,
  skipping entries set aside (`sync.state`). Entries of a kind it does not know yet (a newer
  daemon) stay in the outbox untouched; they are counted and logged (rate-limited), and do not
  block the entries behind them.
- `records(entries)` reads the rows behind the entries (one query per kind). An entry whose row
  is missing, or whose row does not make a valid protocol record, comes back in `unusable` with
  the reason, for the agent to set aside: it never poisons a batch.
- Audit rows have integer ids; their record id is uuid5(instance_id, "audit/<id>") (see
  `sync.state`), the same on every retry.
- Floats are rounded to what the measurement is worth (times to 1 ms, positions to ~0.1 m) so
  a read costs fewer bytes on the LTE link.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from edge.ratelog import RateLimitedLog
from edge.store import KIND_HIT, KIND_READ, KIND_READ_IMAGE, Lane, OutboxEntry
from sync.protocol import AnswerRecord, AuditRecord, HitRecord, ReadRecord

log = logging.getLogger(__name__)

KIND_ANSWER = "answer"
KIND_AUDIT = "audit"
RECORD_KINDS = (KIND_HIT, KIND_ANSWER, KIND_AUDIT, KIND_READ)  # kinds sent in upload batches
IMAGE_KINDS = (KIND_READ_IMAGE,)  # kinds sent one by one with PUT

Record = ReadRecord | HitRecord | AnswerRecord | AuditRecord


class OutboxReadError(Exception):
    """The device tables could not be read (transient: busy or failing database)."""


@dataclass(frozen=True, kw_only=True)
class Unusable:
    entry: OutboxEntry
    reason: str


@dataclass(frozen=True, kw_only=True)
class Prepared:
    records: list[tuple[OutboxEntry, Record]]
    unusable: list[Unusable]


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


class OutboxReader:
    """Reads outbox entries and the rows behind them, through a read-only connection."""

    def __init__(self, conn: sqlite3.Connection, *, instance_id: uuid.UUID) -> None:
        self._conn = conn
        self._instance = instance_id
        self._log = RateLimitedLog(log, 60.0)
        self.unknown_kind_entries = 0  # last count of entries left alone because of their kind
        self._tables: set[str] = set()
        self._tables_version: int | None = None

    # -- cheap change detection --------------------------------------------------------------

    def data_version(self) -> int:
        """Moves whenever another connection commits (the daemon saved something)."""
        return int(self._query("data version", "PRAGMA data_version")[0][0])

    # -- listing -----------------------------------------------------------------------------

    def known_kinds(self) -> tuple[str, ...]:
        """The record kinds this agent can upload now (answers and audit once their tables exist)."""
        tables = self._existing_tables()
        kinds = [KIND_HIT, KIND_READ, KIND_READ_IMAGE]
        if "audit" in tables:
            kinds.append(KIND_AUDIT)
        if _ANSWER_TABLE in tables:
            kinds.append(KIND_ANSWER)
        return tuple(kinds)

    def pending(self, lane: Lane, limit: int) -> list[OutboxEntry]:
        """Oldest first; only kinds this agent knows; never set-aside entries."""
        if limit < 1:
            return []
        kinds = self.known_kinds()
        marks = ",".join("?" * len(kinds))
        rows = self._query(
            "list outbox",
            f"SELECT seq, lane, kind, record_id, created_at, attempts FROM outbox "
            f"WHERE lane = ? AND kind IN ({marks}) "
            f"AND seq NOT IN (SELECT seq FROM sync_set_aside) ORDER BY seq LIMIT ?",
            (int(lane), *kinds, limit),
        )
        return [
            OutboxEntry(seq=s, lane=Lane(ln), kind=k, record_id=r, created_at=c, attempts=a)
            for s, ln, k, r, c, a in rows
        ]

    def check_unknown_kinds(self) -> int:
        """Count (and log, rate-limited) entries left in the outbox because their kind is unknown."""
        kinds = self.known_kinds()
        marks = ",".join("?" * len(kinds))
        rows = self._query(
            "count unknown kinds",
            f"SELECT kind, count(*) FROM outbox WHERE kind NOT IN ({marks}) GROUP BY kind",
            kinds,
        )
        total = sum(n for _, n in rows)
        self.unknown_kind_entries = total
        if total:
            self._log.warning(
                "unknown",
                "outbox holds %d entries of kinds this agent cannot upload yet (%s): left in the outbox "
                "for a newer sync agent",
                total,
                ", ".join(f"{k}: {n}" for k, n in rows),
            )
        return total

    def counts(self) -> dict[str, int]:
        """Entries waiting per lane (set-aside entries included: they are still in the outbox)."""
        rows = self._query("count outbox", "SELECT lane, count(*) FROM outbox GROUP BY lane")
        out = {lane.name.lower(): 0 for lane in Lane}
        for lane, n in rows:
            out[Lane(lane).name.lower()] = n
        return out

    # -- records -----------------------------------------------------------------------------

    def records(self, entries: Sequence[OutboxEntry]) -> Prepared:
        """The protocol record behind each entry, in the entries' order."""
        by_kind: dict[str, list[OutboxEntry]] = {}
        for e in entries:
            by_kind.setdefault(e.kind, []).append(e)
        built: dict[int, Record] = {}
        unusable: list[Unusable] = []
        for kind, group in by_kind.items():
            builder = _BUILDERS.get(kind)
            if builder is None:
                unusable.extend(
                    Unusable(entry=e, reason=f"kind {kind!r} is not an upload record") for e in group
                )
                continue
            rows = self._rows(kind, [e.record_id for e in group])
            for e in group:
                row = rows.get(e.record_id)
                if row is None:
                    unusable.append(Unusable(entry=e, reason=f"{kind} {e.record_id} is missing locally"))
                    continue
                try:
                    built[e.seq] = builder(self, row)
                except (ValidationError, ValueError, TypeError, KeyError) as exc:
                    reason = f"{kind} {e.record_id} is not a valid v1 record: {_first_line(exc)}"
                    unusable.append(Unusable(entry=e, reason=reason))
        return Prepared(records=[(e, built[e.seq]) for e in entries if e.seq in built], unusable=unusable)

    def image(self, read_id: str) -> bytes | None:
        rows = self._query("read crop", "SELECT jpeg FROM read_images WHERE read_id = ?", (read_id,))
        return bytes(rows[0][0]) if rows else None

    def audit_uuid(self, row_id: int | str) -> str:
        return str(uuid.uuid5(self._instance, f"audit/{int(row_id)}"))

    # -- internals ---------------------------------------------------------------------------

    def _rows(self, kind: str, ids: list[str]) -> dict[str, sqlite3.Row | tuple]:
        table, key, columns = _SOURCES[kind]
        out: dict[str, tuple] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            params: list = [int(i) for i in chunk if i.isdigit()] if key == "id" else chunk
            if not params:
                continue
            marks = ",".join("?" * len(params))
            for row in self._query(
                f"read {table}", f"SELECT {columns} FROM {table} WHERE {key} IN ({marks})", params
            ):
                out[str(row[0])] = row
        return out

    def _existing_tables(self) -> set[str]:
        version = self.data_version()
        if version != self._tables_version or not self._tables:
            rows = self._query("list tables", "SELECT name FROM sqlite_master WHERE type = 'table'")
            self._tables = {r[0] for r in rows}
            self._tables_version = version
        return self._tables

    def _query(self, action: str, sql: str, params: Sequence = ()) -> list[tuple]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise OutboxReadError(f"cannot {action}: {exc}") from exc


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


_READ_COLS = (
    "read_id, camera_id, plate, confidence, region, first_seen, last_seen, observations, "
    "lat, lon, speed_mps, heading_deg, fix_mode, fix_time"
)
_HIT_COLS = (
    "hit_id, read_id, entry, match_kind, differing_positions, state_mismatch, list_kind, list_version, "
    "list_age_s, stale, retroactive, matched_at"
)
_AUDIT_COLS = "id, at, actor, action, subject, reason, outcome, details"
_ANSWER_TABLE = "answers"
_ANSWER_COLS = "answer_id, hit_id, officer, answer, note, answered_at"

_SOURCES: dict[str, tuple[str, str, str]] = {
    KIND_READ: ("reads", "read_id", _READ_COLS),
    KIND_HIT: ("hits", "hit_id", _HIT_COLS),
    KIND_AUDIT: ("audit", "id", _AUDIT_COLS),
    KIND_ANSWER: (_ANSWER_TABLE, "answer_id", _ANSWER_COLS),
}


def _read(_: OutboxReader, row: tuple) -> ReadRecord:
    rid, cam, plate, conf, region, t0, t1, n, lat, lon, sp, hd, fm, ft = row
    return ReadRecord(
        id=rid,
        camera=cam,
        plate=plate,
        confidence=round(conf, 3),
        region=region,
        first_seen=round(t0, 3),
        last_seen=round(t1, 3),
        observations=n,
        lat=_r(lat, 6),
        lon=_r(lon, 6),
        speed_mps=_r(sp, 2),
        heading_deg=_r(hd, 1),
        fix_mode=fm,
        fix_time=_r(ft, 3),
    )


def _hit(_: OutboxReader, row: tuple) -> HitRecord:
    hid, rid, entry, kind, diffs, mismatch, list_kind, version, age, stale, retro, at = row
    return HitRecord(
        id=hid,
        read_id=rid,
        entry=json.loads(entry),
        match_kind=kind,
        differing_positions=json.loads(diffs),
        state_mismatch=bool(mismatch),
        list_kind=list_kind,
        list_version=version,
        list_age_s=age,
        stale=bool(stale),
        retroactive=bool(retro),
        matched_at=at,
    )


def _audit(reader: OutboxReader, row: tuple) -> AuditRecord:
    rid, at, actor, action, subject, reason, outcome, details = row
    return AuditRecord(
        id=reader.audit_uuid(rid),
        at=at,
        actor=actor,
        action=action,
        subject=subject,
        reason=reason,
        outcome=outcome,
        details=json.loads(details) if details else {},
    )


def _answer(_: OutboxReader, row: tuple) -> AnswerRecord:
    aid, hid, officer, outcome, note, at = row
    return AnswerRecord(id=aid, hit_id=hid, officer=officer, outcome=outcome, note=note or "", answered_at=at)


_BUILDERS: dict[str, Callable[[OutboxReader, tuple], Record]] = {
    KIND_READ: _read,
    KIND_HIT: _hit,
    KIND_AUDIT: _audit,
    KIND_ANSWER: _answer,
}
