"""The edge daemon's durable store: plate reads, their crops and the upload outbox, in SQLite.

Durability story
- The database runs in WAL mode with `synchronous=FULL`: every commit (reads, outbox, audit
  rows) is fsynced to the WAL before `save_read` and friends return, so a committed row
  survives a process crash and a power cut.
- A read, its crop and its outbox entries (lane READS for the read, lane IMAGES for the crop)
  are written in ONE transaction. A crash at any point leaves either all of them or none: there
  is never a read the sync agent will not upload, nor an outbox entry without its read.
- Every write transaction is `BEGIN IMMEDIATE`, so it takes the write lock before reading and
  cannot fail half-way on a stale snapshot. Another process (the sync agent) shares the file;
  lock waits are bounded by `busy_timeout` and then raise `StoreBusyError` (transient).
- Outbox `seq` is AUTOINCREMENT, so a sequence number is never reused: an acknowledgement that
  arrives late can only ever delete the entry it was meant for.
- An outbox entry is removed only by `outbox_ack`, i.e. after the server acknowledged it. A read
  with no outbox entry of kind "read" has therefore been acknowledged; only then may retention
  delete it locally (retention is not part of this module: nothing here deletes a read).
- Saving a read whose `read_id` is already stored is a no-op (counted and logged), so a retry
  after an uncertain failure cannot duplicate it or re-queue an acknowledged upload.
- `finalize_read` (a read emitted early for an early alert, updated when its pass ends)
  re-queues the read with a NEW outbox entry in the same transaction, so the final values are
  uploaded even if the agent was mid-way through uploading, and then acknowledging, the old one.
- No fix is stored as NULL position, speed, heading and fix time, never as 0,0.
- An officer's answer to a hit, its audit row and their two outbox entries (lane HITS, kinds
  "answer" and "audit") are one transaction; answers and audit rows are append-only (triggers).
  Every audit row, whoever wrote it (`edge.audit`), is queued for upload in lane HITS.

Concurrency: one `Store` may be shared by threads (calls are serialised by a lock). Readers in
other processes see only committed transactions (WAL snapshots).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError

from edge import audit
from edge.hotlist import Hit
from edge.migrations import DowngradeError, MigrationError, Step, apply_migrations
from edge.ratelog import RateLimitedLog
from edge.types import Box, FixMode, GpsFix, PlateRead

log = logging.getLogger(__name__)


class StoreError(Exception):
    """Anything the store could not do."""


class TransientStoreError(StoreError):
    """Worth retrying with backoff: the same call may succeed later."""


class StoreBusyError(TransientStoreError):
    """Another connection held the lock longer than busy_timeout."""


class StoreFullError(TransientStoreError):
    """The disk (or the database's size limit) is full; retention may free room."""


class StoreIOError(TransientStoreError):
    """The operating system reported an I/O error on the database file."""


class PermanentStoreError(StoreError):
    """Retrying the same call will not help."""


class StoreOpenError(PermanentStoreError):
    """The database file cannot be created or opened (the message names the path)."""


class NotADatabaseError(StoreOpenError):
    """The file exists but is not a SQLite database."""


class SchemaTooNewError(StoreOpenError):
    """The database was written by newer software; this version refuses to touch it."""


class StoreCorruptError(PermanentStoreError):
    """SQLite reports the database image is malformed."""


class StoreClosedError(PermanentStoreError):
    """The store was used after close()."""


class ReadNotFoundError(PermanentStoreError):
    """No read with that read_id is stored."""


class StoreWriteError(PermanentStoreError):
    """A record was refused (bad value or constraint failure); nothing of it was written."""


class HitNotFoundError(PermanentStoreError):
    """No hit with that hit_id is stored."""


COMPONENT = "store"

KIND_READ = "read"
KIND_READ_IMAGE = "read_image"
KIND_HIT = "hit"
KIND_ANSWER = "answer"
KIND_AUDIT = audit.KIND_AUDIT

# What an officer can answer to a hit, in the order the MDT page offers them.
ANSWERS: tuple[str, ...] = (
    "confirmed_match",
    "misread",
    "wrong_state",
    "vehicle_mismatch",
    "entry_cleared",
    "not_actionable",
)
MAX_NOTE_CHARS = 2000


class Lane(IntEnum):
    """Upload lanes, drained in this order by the sync agent."""

    HITS = 0  # hits and officers' answers
    READS = 1
    IMAGES = 2


assert audit.OUTBOX_LANE == Lane.HITS, "audit rows must upload in the hits lane"


def _queue_audit_rows(conn: sqlite3.Connection) -> None:
    audit.queue_existing(conn, time.time())


# Version N is STEPS[N-1]. Append only: never edit a step that has shipped.
STEPS: tuple[Step, ...] = (
    """
    CREATE TABLE reads (
        read_id TEXT PRIMARY KEY NOT NULL,
        camera_id TEXT NOT NULL,
        plate TEXT NOT NULL,
        confidence REAL NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
        char_confidences TEXT NOT NULL CHECK (json_valid(char_confidences)),
        region TEXT,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        observations INTEGER NOT NULL CHECK (observations >= 0),
        box TEXT NOT NULL CHECK (json_valid(box)),
        lat REAL,
        lon REAL,
        speed_mps REAL,
        heading_deg REAL,
        fix_mode INTEGER NOT NULL CHECK (fix_mode IN (1, 2, 3)),
        fix_time REAL,
        gps_source TEXT NOT NULL,
        created_at REAL NOT NULL,
        -- no fix is NULL, never 0,0: a position needs a fix and both coordinates
        CHECK ((lat IS NULL) = (lon IS NULL)),
        CHECK (fix_mode >= 2 OR lat IS NULL)
    );
    CREATE INDEX reads_last_seen ON reads (last_seen);
    CREATE TABLE read_images (
        read_id TEXT PRIMARY KEY NOT NULL REFERENCES reads (read_id) ON DELETE CASCADE,
        kind TEXT NOT NULL DEFAULT 'crop' CHECK (kind = 'crop'),
        jpeg BLOB NOT NULL
    );
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        lane INTEGER NOT NULL CHECK (lane IN (0, 1, 2)),
        kind TEXT NOT NULL,
        record_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        UNIQUE (kind, record_id)
    );
    CREATE INDEX outbox_lane_seq ON outbox (lane, seq);
    """,
    # 2: hotlist hits. One row per (read, entry): a retro-check that meets a read already hit
    # live on the same entry adds nothing. `entry` is a JSON snapshot of the hotlist record as it
    # was at match time, so the hit still says what was matched after the entry is removed.
    """
    CREATE TABLE hits (
        hit_id TEXT PRIMARY KEY NOT NULL,
        read_id TEXT NOT NULL REFERENCES reads (read_id),
        entry_id INTEGER NOT NULL,
        entry_plate TEXT NOT NULL,
        entry_state TEXT NOT NULL,
        list_kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        match_kind TEXT NOT NULL CHECK (match_kind IN ('exact', 'approximate')),
        differing_positions TEXT NOT NULL CHECK (json_valid(differing_positions)),
        state_mismatch INTEGER NOT NULL CHECK (state_mismatch IN (0, 1)),
        list_age_s REAL,
        list_version TEXT,
        freshness TEXT NOT NULL,
        stale INTEGER NOT NULL CHECK (stale IN (0, 1)),
        retroactive INTEGER NOT NULL CHECK (retroactive IN (0, 1)),
        matched_at REAL NOT NULL,
        entry TEXT NOT NULL CHECK (json_valid(entry)),
        UNIQUE (read_id, entry_id)
    );
    CREATE INDEX hits_matched_at ON hits (matched_at);
    """,
    # 3: officers' answers to hits. Append-only like the audit log: a corrected answer is a new
    # row, the newest is in force. `answer_id` is made by the MDT page, so a retried POST of the
    # same answer is recognised and not stored twice.
    """
    CREATE TABLE answers (
        answer_id TEXT PRIMARY KEY NOT NULL,
        hit_id TEXT NOT NULL REFERENCES hits (hit_id),
        officer TEXT NOT NULL,
        answer TEXT NOT NULL CHECK (answer IN ('confirmed_match', 'misread', 'wrong_state',
            'vehicle_mismatch', 'entry_cleared', 'not_actionable')),
        note TEXT,
        answered_at REAL NOT NULL
    );
    CREATE INDEX answers_hit ON answers (hit_id, answered_at);
    CREATE TRIGGER answers_no_update BEFORE UPDATE ON answers
        BEGIN SELECT RAISE(ABORT, 'answers are append-only'); END;
    CREATE TRIGGER answers_no_delete BEFORE DELETE ON answers
        BEGIN SELECT RAISE(ABORT, 'answers are append-only'); END;
    """,
    # 4: audit rows are uploaded (lane HITS). Rows written before this step (by the hotlist) were
    # never queued, so none can have been acknowledged: queue them all now.
    _queue_audit_rows,
    # 5: reads not yet checked against the hotlist. A read joins in the transaction that stores
    # it and leaves in the one that stores its hits, so a read stored just before a crash or a
    # shutdown is checked when the daemon starts again instead of never.
    """
    CREATE TABLE unchecked_reads (
        read_id TEXT PRIMARY KEY NOT NULL REFERENCES reads (read_id) ON DELETE CASCADE
    );
    INSERT INTO unchecked_reads (read_id) SELECT read_id FROM reads
        WHERE read_id NOT IN (SELECT read_id FROM hits);
    """,
)


@dataclass(frozen=True, kw_only=True)
class StoredRead:
    """A read as stored. `gps` is `NO_FIX`-shaped (all None) when there was no fix."""

    read_id: str
    camera_id: str
    plate: str
    confidence: float
    char_confidences: tuple[float, ...]
    region: str | None
    first_seen: float
    last_seen: float
    observations: int
    box: Box
    gps: GpsFix
    created_at: float


@dataclass(frozen=True, kw_only=True)
class OutboxEntry:
    """One record waiting for upload; `record_id` names the row in the table its `kind` implies."""

    seq: int
    lane: Lane
    kind: str
    record_id: str
    created_at: float
    attempts: int


@dataclass(frozen=True, kw_only=True)
class StoreSettings:
    """The connection's durability settings, as SQLite reports them."""

    journal_mode: str
    synchronous: int  # 2 = FULL
    foreign_keys: bool
    busy_timeout_ms: int


_READ_COLUMNS = (
    "read_id, camera_id, plate, confidence, char_confidences, region, first_seen, last_seen, "
    "observations, box, lat, lon, speed_mps, heading_deg, fix_mode, fix_time, gps_source, created_at"
)
_ACK_CHUNK = 500  # well under SQLite's bound-parameter limit


class Store:
    """The daemon's SQLite database. See the module docstring for what is guaranteed."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
        tracer: Callable[[str, Any], None] | None = None,
    ) -> None:
        """Open or create the database at `path` (and its parent folders) and migrate it.

        `tracer`, when given, is called with (sql, parameters) before each statement (debugging).
        """
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._closed = False
        self.duplicate_reads = 0  # save_read calls ignored because the read_id was already stored
        self._duplicate_log = RateLimitedLog(log, 60.0)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreOpenError(f"{self.path}: cannot create its folder: {exc.strerror}") from exc
        try:
            # isolation_level=None: the driver never opens transactions on its own; every write
            # below is an explicit BEGIN IMMEDIATE ... COMMIT.
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, "open") from exc
        self._conn = conn
        try:
            self._db = Database(conn, recursive_triggers=False, execute_plugins=False, tracer=tracer)
            self._configure(busy_timeout_s)
            apply_migrations(conn, COMPONENT, STEPS, clock=clock)
        except DowngradeError as exc:
            conn.close()
            raise SchemaTooNewError(f"{self.path}: {exc}") from exc
        except MigrationError as exc:
            conn.close()
            raise StoreOpenError(f"{self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            conn.close()
            raise _translate(exc, self.path, "open") from exc
        except StoreError:
            conn.close()
            raise

    def _configure(self, busy_timeout_s: float) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {max(0, round(busy_timeout_s * 1000))}")
        # The first statement that reads the file: a non-database file fails here (NOTADB).
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreOpenError(f"{self.path}: cannot switch to WAL mode (journal_mode is {mode!r})")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA foreign_keys = ON")

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def settings(self) -> StoreSettings:
        with self._reading("read settings"):
            return StoreSettings(
                journal_mode=str(self._pragma("journal_mode")),
                synchronous=int(self._pragma("synchronous")),
                foreign_keys=bool(self._pragma("foreign_keys")),
                busy_timeout_ms=int(self._pragma("busy_timeout")),
            )

    def integrity_ok(self) -> bool:
        """PRAGMA integrity_check: True only when SQLite answers exactly "ok"."""
        try:
            with self._reading("check integrity"):
                rows = self._db.execute("PRAGMA integrity_check").fetchall()
        except (StoreCorruptError, NotADatabaseError) as exc:
            log.error("%s: integrity check failed: %s", self.path, exc)
            return False
        ok = [tuple(r) for r in rows] == [("ok",)]
        if not ok:
            log.error("%s: integrity check failed: %s", self.path, "; ".join(str(r[0]) for r in rows[:10]))
        return ok

    # -- reads -----------------------------------------------------------------------------

    def save_read(self, read: PlateRead) -> None:
        """Store a read, its crop and their outbox entries atomically; a known read_id is a no-op."""
        row = _read_row(read, created_at=self._clock())
        with self._writing(f"save read {read.read_id}"):
            if self._db.execute("SELECT 1 FROM reads WHERE read_id = ?", (read.read_id,)).fetchone():
                self._count_duplicate(read.read_id)
                return
            self._db["reads"].insert(row)
            self._db.execute("INSERT INTO unchecked_reads (read_id) VALUES (?)", (read.read_id,))
            self._enqueue(Lane.READS, KIND_READ, read.read_id, row["created_at"])
            if read.best_crop_jpeg:
                self._db["read_images"].insert(
                    {"read_id": read.read_id, "kind": "crop", "jpeg": bytes(read.best_crop_jpeg)}
                )
                self._enqueue(Lane.IMAGES, KIND_READ_IMAGE, read.read_id, row["created_at"])

    def save_hits(self, read_id: str, hits: Sequence[Hit], *, checked: bool = False) -> list[StoredHit]:
        """Store a read's hotlist hits and queue them (lane HITS) in one transaction.

        A hit on an entry this read already hit is not stored again; returns the new ones.
        `checked`: these are the read's hits against the whole hotlist (not a retro-check of
        some new entries), so the read leaves `unchecked_reads`, in the same transaction.
        """
        if not hits and not checked:
            return []
        stored = []
        with self._writing(f"save hits of read {read_id}"):
            if not self._db.execute("SELECT 1 FROM reads WHERE read_id = ?", (read_id,)).fetchone():
                raise ReadNotFoundError(f"{self.path}: no read {read_id} to attach hits to")
            for hit in hits:
                row = _hit_row(read_id, hit)
                cur = self._db.execute(
                    f"INSERT OR IGNORE INTO hits ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                    list(row.values()),
                )
                if cur.rowcount:
                    self._enqueue(Lane.HITS, KIND_HIT, row["hit_id"], row["matched_at"])
                    stored.append(_stored_hit(row))
            if checked:
                self._db.execute("DELETE FROM unchecked_reads WHERE read_id = ?", (read_id,))
        return stored

    def unchecked_reads(self) -> list[StoredRead]:
        """Reads stored but not yet checked against the hotlist, oldest first."""
        with self._reading("unchecked reads"):
            rows = list(
                self._db.query(
                    f"SELECT {_READ_COLUMNS} FROM reads "
                    "WHERE read_id IN (SELECT read_id FROM unchecked_reads) ORDER BY created_at, read_id"
                )
            )
        return [_stored_read(r) for r in rows]

    def hits_for_read(self, read_id: str) -> list[StoredHit]:
        with self._reading(f"hits of read {read_id}"):
            rows = list(
                self._db.query("SELECT * FROM hits WHERE read_id = ? ORDER BY priority DESC", (read_id,))
            )
        return [_stored_hit(r) for r in rows]

    def recent_hits(self, limit: int = 50) -> list[StoredHit]:
        with self._reading("recent hits"):
            rows = list(
                self._db.query("SELECT * FROM hits ORDER BY matched_at DESC, hit_id LIMIT ?", (limit,))
            )
        return [_stored_hit(r) for r in rows]

    def get_hit(self, hit_id: str) -> StoredHit | None:
        with self._reading(f"get hit {hit_id}"):
            rows = list(self._db.query("SELECT * FROM hits WHERE hit_id = ?", (hit_id,)))
        return _stored_hit(rows[0]) if rows else None

    def hits_since(self, since: float, limit: int = 50) -> list[StoredHit]:
        """Hits matched at or after `since`, newest first."""
        with self._reading("hits since"):
            rows = list(
                self._db.query(
                    "SELECT * FROM hits WHERE matched_at >= ? ORDER BY matched_at DESC, hit_id LIMIT ?",
                    (since, limit),
                )
            )
        return [_stored_hit(r) for r in rows]

    # -- officers' answers and the audit log --------------------------------------------------

    def save_answer(
        self,
        hit_id: str,
        *,
        officer: str,
        answer: str,
        note: str | None = None,
        answer_id: str | None = None,
    ) -> StoredAnswer:
        """Store an officer's answer to a hit, its audit row and both outbox entries atomically.

        `answer_id` (a UUID made by the client) makes a retry harmless: an answer already stored
        under that id is returned as it was, not stored again. Raises HitNotFoundError for an
        unknown hit and StoreWriteError for an answer that is not one of ANSWERS.
        """
        if answer not in ANSWERS:
            raise StoreWriteError(f"'{answer}' is not an answer; expected one of {', '.join(ANSWERS)}")
        if not officer.strip():
            raise StoreWriteError("an answer needs the officer")
        note = (note or "").strip() or None
        if note is not None and len(note) > MAX_NOTE_CHARS:
            raise StoreWriteError(f"the note is longer than {MAX_NOTE_CHARS} characters")
        try:
            answer_id = str(uuid.UUID(answer_id)) if answer_id else str(uuid.uuid4())
        except ValueError as exc:
            raise StoreWriteError(f"answer id {answer_id!r} is not a UUID") from exc
        now = self._clock()
        with self._writing(f"save answer to hit {hit_id}"):
            hit = self._db.execute(
                "SELECT read_id, entry_plate, entry_state, list_kind FROM hits WHERE hit_id = ?", (hit_id,)
            ).fetchone()
            if hit is None:
                raise HitNotFoundError(f"no hit {hit_id!r}: the answer was not stored")
            known = list(self._db.query("SELECT * FROM answers WHERE answer_id = ?", (answer_id,)))
            if known:
                return _stored_answer(known[0])
            row = {
                "answer_id": answer_id,
                "hit_id": hit_id,
                "officer": officer,
                "answer": answer,
                "note": note,
                "answered_at": now,
            }
            self._db["answers"].insert(row)
            self._enqueue(Lane.HITS, KIND_ANSWER, answer_id, now)
            audit.append(
                self._conn,
                at=now,
                actor=officer,
                action="hit.answer",
                subject=hit_id,
                reason=note,
                outcome=answer,
                details={
                    "answer_id": answer_id,
                    "read_id": hit[0],
                    "entry": f"{hit[1]}/{hit[2] or '-'}",
                    "list_kind": hit[3],
                },
            )
        return _stored_answer(row)

    def answers_for(self, hit_ids: Sequence[str]) -> dict[str, list[StoredAnswer]]:
        """Every answer to each of `hit_ids`, oldest first (the last one is in force)."""
        out: dict[str, list[StoredAnswer]] = {h: [] for h in hit_ids}
        ids = list(out)
        with self._reading("list answers"):
            for start in range(0, len(ids), _ACK_CHUNK):
                chunk = ids[start : start + _ACK_CHUNK]
                rows = self._db.query(
                    f"SELECT * FROM answers WHERE hit_id IN ({','.join('?' * len(chunk))}) "
                    "ORDER BY answered_at, rowid",
                    chunk,
                )
                for r in rows:
                    out[r["hit_id"]].append(_stored_answer(r))
        return out

    def audit(
        self,
        *,
        actor: str,
        action: str,
        outcome: str,
        subject: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Append one audit row (and queue it for upload) in its own durable transaction."""
        with self._writing(f"audit {action}"):
            try:
                return audit.append(
                    self._conn,
                    at=self._clock(),
                    actor=actor,
                    action=action,
                    subject=subject,
                    reason=reason,
                    outcome=outcome,
                    details=details,
                )
            except audit.AuditError as exc:
                raise StoreWriteError(str(exc)) from exc

    def audit_rows(self, *, limit: int = 100, action_prefix: str | None = None) -> list[audit.AuditRow]:
        """Newest first."""
        with self._reading("list audit rows"):
            return audit.recent(self._conn, limit=limit, action_prefix=action_prefix)

    def search_reads(self, plate_contains: str, *, since: float, limit: int = 200) -> list[StoredRead]:
        """Reads whose plate contains `plate_contains` (upper-case letters and digits), seen since `since`."""
        needle = "".join(ch for ch in plate_contains.upper() if ch.isalnum())
        pattern = "%" + needle + "%"
        sql = (
            f"SELECT {_READ_COLUMNS} FROM reads WHERE last_seen >= ? AND plate LIKE ? "
            "ORDER BY last_seen DESC, read_id LIMIT ?"
        )
        with self._reading("search reads"):
            rows = list(self._db.query(sql, (since, pattern, max(1, limit))))
        return [_stored_read(r) for r in rows]

    def finalize_read(self, read_id: str, *, last_seen: float, observations: int) -> None:
        """Record the end of a pass for a read saved early, and queue the updated read for upload."""
        if not math.isfinite(last_seen) or observations < 0:
            raise StoreWriteError(
                f"read {read_id}: bad final values last_seen={last_seen} obs={observations}"
            )
        with self._writing(f"finalize read {read_id}"):
            try:
                self._db["reads"].update(read_id, {"last_seen": last_seen, "observations": observations})
            except NotFoundError as exc:
                raise ReadNotFoundError(f"{self.path}: no read {read_id} to finalize") from exc
            # A new entry (new seq), not the old one: the agent may be acking the old upload.
            self._db.execute("DELETE FROM outbox WHERE kind = ? AND record_id = ?", (KIND_READ, read_id))
            self._enqueue(Lane.READS, KIND_READ, read_id, self._clock())

    def get_read(self, read_id: str) -> StoredRead | None:
        with self._reading(f"get read {read_id}"):
            rows = list(self._db.query(f"SELECT {_READ_COLUMNS} FROM reads WHERE read_id = ?", (read_id,)))
        return _stored_read(rows[0]) if rows else None

    def recent_reads(self, limit: int = 50, since: float | None = None) -> list[StoredRead]:
        """Newest first (by last_seen); with `since`, only reads whose pass ended at or after it."""
        if limit < 1:
            return []
        where, params = ("WHERE last_seen >= ?", [since]) if since is not None else ("", [])
        sql = f"SELECT {_READ_COLUMNS} FROM reads {where} ORDER BY last_seen DESC, read_id LIMIT ?"
        with self._reading("list recent reads"):
            rows = list(self._db.query(sql, [*params, limit]))
        return [_stored_read(r) for r in rows]

    def read_crop(self, read_id: str) -> bytes | None:
        with self._reading(f"get crop {read_id}"):
            row = self._db.execute("SELECT jpeg FROM read_images WHERE read_id = ?", (read_id,)).fetchone()
        return bytes(row[0]) if row else None

    # -- outbox ----------------------------------------------------------------------------

    def outbox_pending(self, lane: Lane, limit: int) -> list[OutboxEntry]:
        """The oldest `limit` entries of `lane`, in the order they were queued."""
        if limit < 1:
            return []
        with self._reading("list outbox"):
            rows = list(
                self._db.query(
                    "SELECT seq, lane, kind, record_id, created_at, attempts FROM outbox "
                    "WHERE lane = ? ORDER BY seq LIMIT ?",
                    (int(Lane(lane)), limit),
                )
            )
        return [
            OutboxEntry(
                seq=r["seq"],
                lane=Lane(r["lane"]),
                kind=r["kind"],
                record_id=r["record_id"],
                created_at=r["created_at"],
                attempts=r["attempts"],
            )
            for r in rows
        ]

    def outbox_ack(self, seqs: Iterable[int]) -> int:
        """Remove the entries the server acknowledged; returns how many were still there."""
        wanted = sorted({int(s) for s in seqs})
        if not wanted:
            return 0
        removed = 0
        with self._writing(f"ack {len(wanted)} outbox entries"):
            for start in range(0, len(wanted), _ACK_CHUNK):
                chunk = wanted[start : start + _ACK_CHUNK]
                marks = ",".join("?" * len(chunk))
                removed += self._db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk).rowcount
        return removed

    def outbox_counts(self) -> dict[Lane, int]:
        with self._reading("count outbox"):
            rows = self._db.execute("SELECT lane, COUNT(*) FROM outbox GROUP BY lane").fetchall()
        counts = dict.fromkeys(Lane, 0)
        for lane, n in rows:
            counts[Lane(lane)] = n
        return counts

    # -- internals -------------------------------------------------------------------------

    def _enqueue(self, lane: Lane, kind: str, record_id: str, created_at: float) -> None:
        self._db["outbox"].insert(
            {"lane": int(lane), "kind": kind, "record_id": record_id, "created_at": created_at},
            ignore=True,
        )

    def _pragma(self, name: str) -> Any:
        return self._db.execute(f"PRAGMA {name}").fetchone()[0]

    def _count_duplicate(self, read_id: str) -> None:
        self.duplicate_reads += 1
        held_back = self._duplicate_log.ready("duplicate")
        if held_back is not None:
            log.warning(
                "%s: read %s already stored; not saved again (%d duplicates in total, %d not logged)",
                self.path,
                read_id,
                self.duplicate_reads,
                held_back,
            )

    @contextmanager
    def _reading(self, action: str) -> Iterator[None]:
        with self._lock:
            self._check_open()
            try:
                yield
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, action) from exc

    @contextmanager
    def _writing(self, action: str) -> Iterator[None]:
        """One BEGIN IMMEDIATE transaction: committed if the block returns, else rolled back."""
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, action) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self.path}: the store is closed")


@dataclass(frozen=True, kw_only=True)
class StoredHit:
    """A hotlist hit as stored: which read met which entry, how, and how old the list was."""

    hit_id: str
    read_id: str
    entry_id: int
    entry_plate: str
    entry_state: str
    list_kind: str
    priority: int
    match_kind: str
    differing_positions: tuple[int, ...]
    state_mismatch: bool
    list_age_s: float | None
    list_version: str | None
    freshness: str
    stale: bool
    retroactive: bool
    matched_at: float
    entry: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class StoredAnswer:
    """An officer's answer to a hit (one of ANSWERS), with an optional note."""

    answer_id: str
    hit_id: str
    officer: str
    answer: str
    note: str | None
    answered_at: float


def _stored_answer(row: dict[str, Any]) -> StoredAnswer:
    return StoredAnswer(
        answer_id=row["answer_id"],
        hit_id=row["hit_id"],
        officer=row["officer"],
        answer=row["answer"],
        note=row["note"],
        answered_at=row["answered_at"],
    )


def _hit_row(read_id: str, hit: Hit) -> dict[str, Any]:
    entry = hit.entry
    snapshot = {k: (str(v) if k == "list_kind" else v) for k, v in dataclasses.asdict(entry).items()}
    return {
        "hit_id": str(uuid.uuid4()),
        "read_id": read_id,
        "entry_id": entry.id,
        "entry_plate": entry.plate,
        "entry_state": entry.state,
        "list_kind": str(entry.list_kind),
        "priority": entry.priority,
        "match_kind": str(hit.kind),
        "differing_positions": json.dumps(list(hit.differing_positions)),
        "state_mismatch": int(hit.state_mismatch),
        "list_age_s": hit.list_age_s,
        "list_version": hit.list_version,
        "freshness": str(hit.freshness),
        "stale": int(hit.stale),
        "retroactive": int(hit.retroactive),
        "matched_at": hit.matched_at,
        "entry": json.dumps(snapshot),
    }


def _stored_hit(row: dict[str, Any]) -> StoredHit:
    return StoredHit(
        hit_id=row["hit_id"],
        read_id=row["read_id"],
        entry_id=row["entry_id"],
        entry_plate=row["entry_plate"],
        entry_state=row["entry_state"],
        list_kind=row["list_kind"],
        priority=row["priority"],
        match_kind=row["match_kind"],
        differing_positions=tuple(json.loads(row["differing_positions"])),
        state_mismatch=bool(row["state_mismatch"]),
        list_age_s=row["list_age_s"],
        list_version=row["list_version"],
        freshness=row["freshness"],
        stale=bool(row["stale"]),
        retroactive=bool(row["retroactive"]),
        matched_at=row["matched_at"],
        entry=json.loads(row["entry"]),
    )


def _read_row(read: PlateRead, *, created_at: float) -> dict[str, Any]:
    try:
        if str(uuid.UUID(read.read_id)) != read.read_id:
            raise ValueError("not in canonical lower-case form")
        gps = read.gps
        has_fix = gps.has_fix
        box = read.best_box
        return {
            "read_id": read.read_id,
            "camera_id": read.camera_id,
            "plate": read.text,
            "confidence": float(read.confidence),
            # allow_nan=False: NaN is not JSON and the server would refuse the whole batch.
            "char_confidences": json.dumps([float(c) for c in read.char_confidences], allow_nan=False),
            "region": read.region,
            "first_seen": float(read.first_seen),
            "last_seen": float(read.last_seen),
            "observations": int(read.observations),
            "box": json.dumps({"x1": box.x1, "y1": box.y1, "x2": box.x2, "y2": box.y2}, allow_nan=False),
            "lat": gps.lat if has_fix else None,
            "lon": gps.lon if has_fix else None,
            "speed_mps": gps.speed_mps if has_fix else None,
            "heading_deg": gps.heading_deg if has_fix else None,
            "fix_mode": int(gps.mode) if has_fix else int(FixMode.NO_FIX),
            "fix_time": gps.fix_time if has_fix else None,
            "gps_source": gps.source,
            "created_at": float(created_at),
        }
    except (ValueError, TypeError) as exc:
        raise StoreWriteError(f"read {read.read_id!r} refused: {exc}") from exc


def _stored_read(row: dict[str, Any]) -> StoredRead:
    box = json.loads(row["box"])
    mode = FixMode(row["fix_mode"])
    if mode >= FixMode.FIX_2D and row["lat"] is not None:
        gps = GpsFix(
            mode=mode,
            lat=row["lat"],
            lon=row["lon"],
            speed_mps=row["speed_mps"],
            heading_deg=row["heading_deg"],
            fix_time=row["fix_time"],
            source=row["gps_source"],
        )
    else:
        gps = GpsFix(mode=FixMode.NO_FIX, source=row["gps_source"])
    return StoredRead(
        read_id=row["read_id"],
        camera_id=row["camera_id"],
        plate=row["plate"],
        confidence=row["confidence"],
        char_confidences=tuple(json.loads(row["char_confidences"])),
        region=row["region"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        observations=row["observations"],
        box=Box(box["x1"], box["y1"], box["x2"], box["y2"]),
        gps=gps,
        created_at=row["created_at"],
    )


def _translate(exc: sqlite3.Error, path: Path, action: str) -> StoreError:
    """Map a sqlite3 error to the store's tree by SQLite's primary result code."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    message = f"{path}: cannot {action}: {exc}"
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreBusyError(message)
    if primary == sqlite3.SQLITE_FULL:
        return StoreFullError(message)
    if primary == sqlite3.SQLITE_IOERR:
        return StoreIOError(message)
    if primary == sqlite3.SQLITE_NOTADB:
        return NotADatabaseError(f"{path}: not a SQLite database ({exc})")
    if primary == sqlite3.SQLITE_CORRUPT:
        return StoreCorruptError(f"{path}: the database is damaged ({exc})")
    if primary in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY):
        return StoreOpenError(message)
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
        return StoreClosedError(message)
    return StoreWriteError(message)
