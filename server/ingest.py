"""Ingest: reads, events (hits, answers, audit rows) and images, each stored once by its UUID.

Guarantees:
- Exactly once by record id: a record whose id the server already has is reported as a
  duplicate and not written again (its first copy wins); the same id twice inside one batch is
  stored once and reported once as stored, once as duplicate.
- `store_batch` returns only after its transaction has committed durably (WAL,
  `synchronous=FULL`), so the acknowledgement the caller sends is never ahead of the disk.
- A batch is one transaction: a crash mid-batch stores none of it, and the device's retry
  stores all of it.
- Records that validate but cannot be accepted (see `_refusal`) are listed as rejected with a
  reason; the device sets them aside rather than retrying forever.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.db import Database
from sync.protocol import (
    AnswerRecord,
    AuditRecord,
    BatchAck,
    HitRecord,
    ReadRecord,
    Rejected,
    UploadBatch,
)

COMPONENT = "server.ingest"
KINDS = ("read", "hit", "answer", "audit")

MIGRATIONS = (
    """
    CREATE TABLE reads (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        received_at REAL NOT NULL,
        camera TEXT NOT NULL,
        plate TEXT NOT NULL,
        confidence REAL NOT NULL,
        region TEXT,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        observations INTEGER NOT NULL,
        lat REAL,
        lon REAL,
        speed_mps REAL,
        heading_deg REAL,
        fix_mode INTEGER NOT NULL,
        fix_time REAL
    ) WITHOUT ROWID;
    CREATE INDEX reads_plate ON reads (plate, first_seen);
    CREATE INDEX reads_time ON reads (first_seen);
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('hit', 'answer', 'audit')),
        device_id TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        received_at REAL NOT NULL,
        body TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX events_kind ON events (kind, received_at);
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        received_at REAL NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    """,
)

_INSERT_READ = (
    "INSERT INTO reads (id, device_id, batch_id, received_at, camera, plate, confidence, region, "
    "first_seen, last_seen, observations, lat, lon, speed_mps, heading_deg, fix_mode, fix_time) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A read the device saved early (for a quick alert) is queued again, same id, when its pass ends:
# the repeat is acknowledged as a duplicate but its pass may only grow, so keep the final extent.
_EXTEND_READ = (
    "UPDATE reads SET last_seen = max(last_seen, ?), observations = max(observations, ?) "
    "WHERE id = ? AND device_id = ? AND (last_seen < ? OR observations < ?)"
)
_INSERT_EVENT = (
    "INSERT INTO events (id, kind, device_id, batch_id, received_at, body) VALUES (?, ?, ?, ?, ?, ?)"
)
# SQLite's default limit on host parameters is 32766; stay well below it per IN (...) query.
_LOOKUP_CHUNK = 900


@dataclass(frozen=True, slots=True)
class ImageResult:
    status: str  # "stored" | "duplicate"
    sha256: str


def _refusal(record: ReadRecord | HitRecord | AnswerRecord | AuditRecord) -> str | None:
    """Why a schema-valid record is still refused for good, or None."""
    if isinstance(record, ReadRecord):
        if record.last_seen < record.first_seen:
            return "last_seen is before first_seen"
        if not record.plate.strip():
            return "plate is blank"
    return None


class Ingest:
    """Stores uploads in the server database."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        db.migrate(COMPONENT, MIGRATIONS)

    def store_batch(
        self, device_id: str, batch: UploadBatch, *, rejected: list[Rejected] | None = None
    ) -> BatchAck:
        """Store the batch's records (the caller checked `batch.device_id`); durable on return.

        `rejected` carries records the caller already refused while decoding; they are echoed.
        """
        refused = list(rejected or ())
        now = self._clock()
        candidates = []
        for record in batch.records:
            reason = _refusal(record)
            if reason is None:
                candidates.append(record)
            else:
                refused.append(Rejected(id=record.id, reason=reason))
        stored: list[str] = []
        duplicate: list[str] = []
        reads: list[tuple] = []
        extended: list[tuple] = []
        events: list[tuple] = []
        with self._db.write() as conn:
            read_ids = [r.id for r in candidates if isinstance(r, ReadRecord)]
            event_ids = [r.id for r in candidates if not isinstance(r, ReadRecord)]
            known = _existing(conn, "reads", read_ids) | _existing(conn, "events", event_ids)
            for record in candidates:
                if record.id in known:
                    duplicate.append(record.id)
                    if isinstance(record, ReadRecord):
                        grown = (record.last_seen, record.observations)
                        extended.append((*grown, record.id, device_id, *grown))
                    continue
                known.add(record.id)
                stored.append(record.id)
                if isinstance(record, ReadRecord):
                    reads.append(
                        (
                            record.id,
                            device_id,
                            batch.batch_id,
                            now,
                            record.camera,
                            record.plate,
                            record.confidence,
                            record.region,
                            record.first_seen,
                            record.last_seen,
                            record.observations,
                            record.lat,
                            record.lon,
                            record.speed_mps,
                            record.heading_deg,
                            record.fix_mode,
                            record.fix_time,
                        )
                    )
                else:
                    events.append(
                        (
                            record.id,
                            record.kind,
                            device_id,
                            batch.batch_id,
                            now,
                            record.model_dump_json(),
                        )
                    )
            if reads:
                conn.executemany(_INSERT_READ, reads)
            if extended:
                conn.executemany(_EXTEND_READ, extended)
            if events:
                conn.executemany(_INSERT_EVENT, events)
        return BatchAck(
            batch_id=batch.batch_id, stored=stored, duplicate=duplicate, rejected=refused, server_time=now
        )

    def store_image(self, device_id: str, record_id: str, data: bytes) -> ImageResult:
        digest = hashlib.sha256(data).hexdigest()
        with self._db.write() as conn:
            done = conn.execute(
                "INSERT INTO images (id, device_id, received_at, sha256, size, data) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (record_id, device_id, self._clock(), digest, len(data), data),
            ).rowcount
        return ImageResult("stored" if done == 1 else "duplicate", digest)

    # ------------------------------------------------------------ inspection (CLI, tests)

    def stored_ids(self, kind: str) -> list[str]:
        if kind not in (*KINDS, "image"):
            raise ValueError(f"kind must be one of {(*KINDS, 'image')}, not {kind!r}")
        if kind == "read":
            rows = self._db.query("SELECT id FROM reads ORDER BY id")
        elif kind == "image":
            rows = self._db.query("SELECT id FROM images ORDER BY id")
        else:
            rows = self._db.query("SELECT id FROM events WHERE kind = ? ORDER BY id", (kind,))
        return [r[0] for r in rows]

    def count(self, kind: str) -> int:
        if kind == "read":
            return self._db.query("SELECT count(*) FROM reads")[0][0]
        if kind == "image":
            return self._db.query("SELECT count(*) FROM images")[0][0]
        if kind in KINDS:
            return self._db.query("SELECT count(*) FROM events WHERE kind = ?", (kind,))[0][0]
        raise ValueError(f"kind must be one of {(*KINDS, 'image')}, not {kind!r}")

    def event(self, record_id: str) -> dict | None:
        rows = self._db.query("SELECT body FROM events WHERE id = ?", (record_id,))
        return json.loads(rows[0][0]) if rows else None

    def image(self, record_id: str) -> bytes | None:
        rows = self._db.query("SELECT data FROM images WHERE id = ?", (record_id,))
        return bytes(rows[0][0]) if rows else None


def _existing(conn, table: str, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(ids), _LOOKUP_CHUNK):
        chunk = ids[i : i + _LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        found.update(r[0] for r in conn.execute(f"SELECT id FROM {table} WHERE id IN ({marks})", chunk))
    return found
