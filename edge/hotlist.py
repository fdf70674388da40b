"""The on-device hotlist: entries, imports, exact and approximate matching, staleness,
officer entries (BOLOs and suppressions) and the retro-check of recent reads.

Storage. Entries live in the device's one SQLite file (WAL), keyed by (plate, state,
list_kind), each with the integer code of its confusion skeleton (`edge.plate_confusions`).
Every change (import, delta, officer entry) is one transaction that also bumps
`hotlist_meta.change_seq`; readers compare `PRAGMA data_version` (free) and then that counter,
so a change committed by another process is seen at the next look-up.

Guarantees:
- An import is all or nothing. The file is parsed into a TEMP staging table first (the
  shared database is not locked meanwhile); a file with bad lines is refused with every bad
  line and the lists in force are untouched. Only the final merge holds the write lock. A
  crash at any point leaves either the old lists or the new ones, never a mix.
- An import of source S covering lists L replaces exactly the entries S put on L: keys absent
  from the new file are removed, keys present keep their row id (so the retro-check sees only
  truly new entries). Duplicate keys in one file are merged (blank fields filled, record ids
  joined with ';', highest priority kept); entries are never merged by plate alone.
- A removed entry stops matching as soon as its transaction commits: every candidate found in
  the in-memory index is re-read from the database before it becomes a hit.
- Look-ups never wait for an import: they read the committed WAL snapshot.
- Officer BOLOs and suppressions always carry an expiry, stop acting when it passes (even if
  nobody purges them) and every add, removal and expiry is written to the append-only `audit`
  table (`edge.audit`, which also queues the row for upload) in the same transaction as the change.

Look-up cost. The reading process holds two int64 arrays (skeleton code and row id of every
entry, sorted by code: 16 bytes per entry) plus a small tail of entries added since; a read is
turned into ~200 probe codes (itself, one character removed, one character inserted) that are
searched with one vectorised binary search. Candidates are fetched from SQLite by id.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import IO, Literal

import numpy as np

from edge import audit
from edge.hotlist_formats import (
    NCIC_LISTS,
    DeltaChange,
    DeltaHeader,
    HotlistRecord,
    LineError,
    ListKind,
    StagingRow,
    clew_list_kind,
    ncic_rows,
    parse_clew,
    parse_csv,
    parse_delta,
    record_row,
)
from edge.migrations import apply_migrations
from edge.plate_confusions import (
    SKELETON_VERSION,
    Edit,
    align,
    is_valid_plate,
    normalize_plate,
    normalize_read,
    probe_codes,
    skeleton_code,
)
from edge.ratelog import RateLimitedLog

__all__ = [
    "DEFAULT_PRIORITIES",
    "DeltaRejected",
    "DeltaResult",
    "FeedRefusal",
    "Freshness",
    "Hit",
    "Hotlist",
    "HotlistEntry",
    "HotlistError",
    "HotlistSettings",
    "HotlistUnavailable",
    "ImportRefused",
    "ImportResult",
    "ListKind",
    "ListStatus",
    "MatchKind",
    "OfficerEntryError",
    "RetroCheck",
    "Suppression",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- errors


class HotlistError(Exception):
    """Anything the hotlist refuses or cannot do."""


class HotlistUnavailable(HotlistError):
    """The database is busy, locked or failing (transient: retry with backoff)."""


class HotlistSchemaError(HotlistError):
    """The database schema cannot be used by this software (permanent)."""


class ImportRefused(HotlistError):
    """A file was refused; the lists in force are unchanged. `errors` names every bad line."""

    def __init__(self, message: str, errors: Sequence[LineError] = ()) -> None:
        self.errors = tuple(errors)
        super().__init__(message)


class DeltaRejected(HotlistError):
    """A delta was refused as a whole (older than the version in force, or malformed)."""


class OfficerEntryError(HotlistError):
    """A BOLO or suppression request is invalid (bad plate, no reason, expiry in the past)."""


# ---------------------------------------------------------------- values

DEFAULT_PRIORITIES: Mapping[str, int] = MappingProxyType(
    {
        ListKind.AMBER_ALERT: 100,
        ListKind.MISSING_PERSON: 90,
        ListKind.VIOLENT_PERSON: 85,
        ListKind.WANTED_PERSON: 80,
        ListKind.FELONY_VEHICLE: 80,
        ListKind.GANG_TERRORIST: 75,
        ListKind.STOLEN_VEHICLE: 70,
        ListKind.OFFICER_BOLO: 65,
        ListKind.STOLEN_PLATE: 60,
        ListKind.STOLEN_CANADIAN_VEHICLE: 60,
        ListKind.PROTECTION_ORDER: 50,
        ListKind.PROTECTIVE_INTEREST: 40,
        ListKind.SUPERVISED_RELEASE: 30,
        ListKind.SEX_OFFENDER: 30,
    }
)


@dataclass(frozen=True, kw_only=True)
class HotlistSettings:
    """The `[hotlist]` configuration section.

    priorities: per list kind, higher is more urgent (AMBER highest); kinds not named keep
    DEFAULT_PRIORITIES. A list refreshed within `fresh_hours` is fresh, within `stale_hours`
    aging, older (or never refreshed) stale. `retro_check_hours`: how far back reads are
    re-checked when entries are added. `approximate_matching`: confusion/indel hits on or off.
    """

    priorities: Mapping[str, int] = field(default_factory=lambda: DEFAULT_PRIORITIES)
    fresh_hours: float = 12.0
    stale_hours: float = 48.0
    retro_check_hours: float = 24.0
    approximate_matching: bool = True

    def __post_init__(self) -> None:
        unknown = [k for k in self.priorities if k not in ListKind.__members__.values()]
        if unknown:
            raise ValueError(f"hotlist priorities name unknown lists: {sorted(map(str, unknown))}")
        if not 0 < self.fresh_hours <= self.stale_hours:
            raise ValueError("hotlist fresh_hours must be > 0 and <= stale_hours")
        if self.retro_check_hours < 0:
            raise ValueError("hotlist retro_check_hours must be >= 0")
        merged = dict(DEFAULT_PRIORITIES)
        merged.update({ListKind(k): int(v) for k, v in self.priorities.items()})
        object.__setattr__(self, "priorities", MappingProxyType(merged))

    def priority(self, kind: ListKind) -> int:
        return self.priorities[kind]

    def freshness(self, age_s: float | None) -> Freshness:
        if age_s is None or age_s > self.stale_hours * 3600:
            return Freshness.STALE
        return Freshness.FRESH if age_s <= self.fresh_hours * 3600 else Freshness.AGING


class MatchKind(StrEnum):
    EXACT = "exact"
    APPROXIMATE = "approximate"


class Freshness(StrEnum):
    FRESH = "fresh"
    AGING = "aging"
    STALE = "stale"


@dataclass(frozen=True, kw_only=True)
class HotlistEntry:
    id: int
    plate: str
    state: str
    list_kind: ListKind
    priority: int  # effective: the entry's own override, else the list's configured priority
    source: str  # ncic, clew, csv, delta, officer
    source_record_id: str | None = None
    agency: str | None = None
    vehicle_year: int | None = None
    make: str | None = None
    model: str | None = None
    color: str | None = None
    description: str | None = None
    entered_on: str | None = None
    expires_at: float | None = None
    officer: str | None = None
    reason: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Hit:
    """A read matched to an entry. `differing_positions` index the read's normalized text
    (for a missing character: where it would go); `edits` spell each difference out."""

    read_plate: str
    read_state: str | None
    entry: HotlistEntry
    kind: MatchKind
    edits: tuple[Edit, ...]
    differing_positions: tuple[int, ...]
    state_mismatch: bool
    list_age_s: float | None  # None: the list has no recorded refresh
    list_version: str | None
    freshness: Freshness
    stale: bool
    matched_at: float
    retroactive: bool = False
    read_id: str | None = None  # set on retroactive hits
    read_at: float | None = None  # the read's last_seen, on retroactive hits
    suppressed_by: int | None = None  # suppression id; only returned with include_suppressed


@dataclass(frozen=True, kw_only=True)
class Suppression:
    id: int
    plate: str  # the plate as read (normalized)
    state: str | None
    list_kind: ListKind | None
    entry_plate: str | None
    reason: str
    officer: str
    created_at: float
    expires_at: float
    removed_at: float | None = None
    removed_by: str | None = None

    def applies(self, read_plate: str, read_state: str | None, entry: HotlistEntry, now: float) -> bool:
        return (
            self.removed_at is None
            and now < self.expires_at
            and self.plate == read_plate
            and (self.state is None or read_state is None or self.state == read_state)
            and (self.list_kind is None or self.list_kind == entry.list_kind)
            and (self.entry_plate is None or self.entry_plate == entry.plate)
        )


@dataclass(frozen=True, kw_only=True)
class FeedRefusal:
    """The last hotlist feed refused (bad signature, rollback, expired...), while it is the latest word."""

    at: float
    cause: str
    from_version: int | None
    to_version: int | None


@dataclass(frozen=True, kw_only=True)
class ListStatus:
    list_kind: ListKind
    entries: int
    source: str | None
    version: str | None
    refreshed_at: float | None
    age_s: float | None
    freshness: Freshness


@dataclass(frozen=True, kw_only=True)
class ImportResult:
    source: str
    version: str
    lists: tuple[ListKind, ...]
    records: int  # good records read from the file
    added: int  # keys not in force before
    updated: int  # keys already in force, overwritten
    duplicates_merged: int  # records folded into an earlier record with the same key
    removed: int  # keys of the covered lists absent from the file
    skipped_bad: int  # bad lines left out (only with skip_bad)
    errors: tuple[LineError, ...]  # the bad lines left out
    first_new_id: int  # entries with id >= this are new (retro-check)
    seconds: float  # from the call until the change was committed (visible to readers)
    write_lock_s: float  # how long the shared database's write lock was held


@dataclass(frozen=True, kw_only=True)
class DeltaResult:
    version: int
    lists: tuple[ListKind, ...]
    added: int
    updated: int
    removed: int
    absent_removals: int  # removals of keys that were not in force
    first_new_id: int
    seconds: float  # from the call until the change was committed (visible to readers)
    write_lock_s: float  # how long the shared database's write lock was held


@dataclass(frozen=True, kw_only=True)
class RetroCheck:
    hits: tuple[Hit, ...]
    reads_checked: int
    checked_up_to: int  # entries with id <= this have been checked


@dataclass(frozen=True)
class Counters:
    lookups: int = 0
    hits: int = 0
    suppressed_hits: int = 0
    expired_entries_skipped: int = 0
    refreshes: int = 0
    rebuilds: int = 0
    bad_lines_skipped: int = 0


# ---------------------------------------------------------------- schema


def _schema_v1(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V1:
        conn.execute(statement)


_SCHEMA_V1 = (
    """CREATE TABLE hotlist_entries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        plate TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT '',
        list_kind TEXT NOT NULL,
        skel_code INTEGER NOT NULL,
        priority INTEGER,
        source TEXT NOT NULL,
        source_record_id TEXT,
        agency TEXT,
        vehicle_year INTEGER,
        make TEXT,
        model TEXT,
        color TEXT,
        description TEXT,
        entered_on TEXT,
        expires_at REAL,
        officer TEXT,
        reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        import_gen INTEGER NOT NULL DEFAULT 0,
        UNIQUE (plate, state, list_kind)
    )""",
    """CREATE TABLE hotlist_lists (
        list_kind TEXT PRIMARY KEY,
        source TEXT,
        version TEXT,
        refreshed_at REAL
    )""",
    "CREATE TABLE hotlist_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    f"""INSERT INTO hotlist_meta (key, value) VALUES ('change_seq', 0), ('import_gen', 0),
        ('live_count', 0), ('retro_checked_id', 0), ('skeleton_version', {SKELETON_VERSION})""",
    """CREATE TABLE hotlist_suppressions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        plate TEXT NOT NULL,
        state TEXT,
        list_kind TEXT,
        entry_plate TEXT,
        reason TEXT NOT NULL,
        officer TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        removed_at REAL,
        removed_by TEXT
    )""",
    # Suppression changes write audit rows in their own transaction, so the table must exist even
    # before the store has migrated; its one definition is edge.audit's.
    *audit.SCHEMA,
)


def _schema_v2(conn: sqlite3.Connection) -> None:
    # The last feed the sync agent refused (one row at most): the list in force stays, and the
    # MDT status strip says why it is not being updated.
    conn.execute(
        """CREATE TABLE hotlist_feed_refusal (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            at REAL NOT NULL,
            cause TEXT NOT NULL,
            from_version INTEGER,
            to_version INTEGER
        )"""
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_schema_v1, _schema_v2)

_ENTRY_COLUMNS = (
    "id, plate, state, list_kind, priority, source, source_record_id, agency, vehicle_year, make, "
    "model, color, description, entered_on, expires_at, officer, reason, created_at, updated_at"
)

# One upsert for imports and deltas. A row already written by the same import generation is
# a duplicate inside one file: merge it. A row from an older generation is overwritten.
_UPSERT = """
INSERT INTO hotlist_entries (plate, state, list_kind, skel_code, priority, source, source_record_id,
    agency, vehicle_year, make, model, color, description, entered_on, expires_at, created_at,
    updated_at, import_gen)
SELECT {select}
ON CONFLICT (plate, state, list_kind) DO UPDATE SET
    priority = CASE WHEN import_gen = excluded.import_gen
        THEN max(coalesce(priority, excluded.priority), coalesce(excluded.priority, priority))
        ELSE excluded.priority END,
    source_record_id = CASE
        WHEN import_gen != excluded.import_gen OR source_record_id IS NULL THEN excluded.source_record_id
        WHEN excluded.source_record_id IS NULL
            OR instr(';' || source_record_id || ';', ';' || excluded.source_record_id || ';') > 0
            THEN source_record_id
        ELSE source_record_id || ';' || excluded.source_record_id END,
    agency = CASE WHEN import_gen = excluded.import_gen THEN coalesce(agency, excluded.agency)
        ELSE excluded.agency END,
    vehicle_year = CASE WHEN import_gen = excluded.import_gen
        THEN coalesce(vehicle_year, excluded.vehicle_year) ELSE excluded.vehicle_year END,
    make = CASE WHEN import_gen = excluded.import_gen THEN coalesce(make, excluded.make)
        ELSE excluded.make END,
    model = CASE WHEN import_gen = excluded.import_gen THEN coalesce(model, excluded.model)
        ELSE excluded.model END,
    color = CASE WHEN import_gen = excluded.import_gen THEN coalesce(color, excluded.color)
        ELSE excluded.color END,
    description = CASE WHEN import_gen = excluded.import_gen
        THEN coalesce(description, excluded.description) ELSE excluded.description END,
    entered_on = CASE WHEN import_gen = excluded.import_gen
        THEN min(coalesce(entered_on, excluded.entered_on), coalesce(excluded.entered_on, entered_on))
        ELSE excluded.entered_on END,
    expires_at = CASE WHEN import_gen != excluded.import_gen THEN excluded.expires_at
        WHEN expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
        ELSE max(expires_at, excluded.expires_at) END,
    source = excluded.source,
    officer = NULL,
    reason = NULL,
    updated_at = excluded.updated_at,
    import_gen = excluded.import_gen
"""
_UPSERT_FROM_STAGING = _UPSERT.format(
    select="plate, state, list_kind, skel_code, priority, :source, source_record_id, agency, "
    "vehicle_year, make, model, color, description, entered_on, expires_at, :now, :now, :gen "
    "FROM temp.hotlist_staging WHERE true ORDER BY plate, state, list_kind, rowid"
)
_UPSERT_VALUES = _UPSERT.format(select="?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?")

_STAGING = """CREATE TEMP TABLE IF NOT EXISTS hotlist_staging (
    plate TEXT, state TEXT, list_kind TEXT, skel_code INTEGER, priority INTEGER,
    source_record_id TEXT, agency TEXT, vehicle_year INTEGER, make TEXT, model TEXT, color TEXT,
    description TEXT, entered_on TEXT, expires_at REAL)"""


def _delta_row(record: HotlistRecord, now: float, gen: int) -> tuple:
    row = record_row(record)
    return (*row[:5], "delta", *row[5:], now, now, gen)


# ---------------------------------------------------------------- in-memory index


class _PlateIndex:
    """Skeleton code -> row ids, as sorted int64 arrays plus a small sorted tail.

    Rows deleted from the database stay in here until the next rebuild (`garbage`): the caller
    re-reads every candidate, so a deleted row can never become a hit.
    """

    TAIL_MERGE = 50_000

    def __init__(self, codes: np.ndarray, ids: np.ndarray, watermark: int) -> None:
        order = np.argsort(codes, kind="stable")
        self.codes = codes[order]
        self.ids = ids[order]
        self.watermark = watermark  # every row id <= watermark at load time is in the index
        self.tail_codes = np.empty(0, dtype=np.int64)
        self.tail_ids = np.empty(0, dtype=np.int64)

    @property
    def size(self) -> int:
        return len(self.codes) + len(self.tail_codes)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.ids.nbytes + self.tail_codes.nbytes + self.tail_ids.nbytes

    def add(self, codes: np.ndarray, ids: np.ndarray) -> None:
        if not len(ids):
            return
        self.watermark = max(self.watermark, int(ids.max()))
        codes = np.concatenate([self.tail_codes, codes])
        ids = np.concatenate([self.tail_ids, ids])
        order = np.argsort(codes, kind="stable")
        self.tail_codes, self.tail_ids = codes[order], ids[order]
        if len(self.tail_codes) >= self.TAIL_MERGE:
            at = np.searchsorted(self.codes, self.tail_codes)
            self.codes = np.insert(self.codes, at, self.tail_codes)
            self.ids = np.insert(self.ids, at, self.tail_ids)
            self.tail_codes = np.empty(0, dtype=np.int64)
            self.tail_ids = np.empty(0, dtype=np.int64)

    def candidates(self, probes: np.ndarray) -> list[int]:
        out: list[int] = []
        for codes, ids in ((self.codes, self.ids), (self.tail_codes, self.tail_ids)):
            if not len(codes):
                continue
            lo = np.searchsorted(codes, probes, side="left")
            hi = np.searchsorted(codes, probes, side="right")
            for a, b in zip(lo[hi > lo].tolist(), hi[hi > lo].tolist(), strict=True):
                out.extend(ids[a:b].tolist())
        return out


def _fetch_codes(cursor: sqlite3.Cursor, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(skel_code, id) rows into two int64 arrays, a chunk at a time: Python tuples for a
    whole national list would cost the reading process hundreds of MB for a moment."""
    parts: list[np.ndarray] = []
    while rows := cursor.fetchmany(chunk):
        parts.append(np.array(rows, dtype=np.int64))
    table = np.concatenate(parts) if parts else np.empty((0, 2), dtype=np.int64)
    return np.ascontiguousarray(table[:, 0]), np.ascontiguousarray(table[:, 1])


def _load_index(conn: sqlite3.Connection) -> _PlateIndex:
    """Every entry's (code, id), read in one snapshot."""
    conn.execute("BEGIN")
    try:
        watermark = conn.execute("SELECT coalesce(max(id), 0) FROM hotlist_entries").fetchone()[0]
        codes, ids = _fetch_codes(
            conn.execute("SELECT skel_code, id FROM hotlist_entries WHERE id <= ?", (watermark,))
        )
    finally:
        conn.execute("COMMIT")
    return _PlateIndex(codes, ids, watermark)


# ---------------------------------------------------------------- the hotlist


def connect(path: str | Path, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    """A connection configured the way the shared device database is used (WAL, autocommit)."""
    try:
        conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL like the store: officer BOLOs and suppressions write audit rows and outbox entries
        # here, and an import or delta is one transaction, so this costs one fsync per change.
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as exc:
        raise HotlistUnavailable(f"{path}: cannot open the database: {exc}") from exc
    return conn


class Hotlist:
    """The hotlist over one SQLite database. Thread-safe (one lock around the connection).

    The daemon keeps one instance and calls `match` per read; importers (the CLI, the sync
    agent) use their own instance in their own process. The in-memory index is loaded on the
    first look-up (or `load()`), not by writers that never look up.
    """

    def __init__(
        self,
        db: str | Path | sqlite3.Connection,
        settings: HotlistSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or HotlistSettings()
        self._clock = clock
        self._lock = threading.RLock()
        if isinstance(db, sqlite3.Connection):
            self._conn = db
            self._owns_conn = False
            row = db.execute("PRAGMA database_list").fetchone()
            self._path: str | None = row[2] or None
        else:
            self._conn = connect(db)
            self._owns_conn = True
            self._path = str(db)
        self._rlog = RateLimitedLog(log, 60.0)
        self._counts: dict[str, int] = dict.fromkeys(Counters.__dataclass_fields__, 0)
        self._index: _PlateIndex | None = None
        self._data_version: int | None = None
        self._change_seq: int | None = None
        self._status_counts: tuple[int, dict[str, int]] | None = None  # (change_seq, entries per list)
        self._lists: dict[ListKind, tuple[str | None, str | None, float | None]] = {}
        self._suppressions: dict[str, list[Suppression]] = {}
        self._live_count = 0
        self._rebuild_thread: threading.Thread | None = None
        try:
            apply_migrations(self._conn, "hotlist", MIGRATIONS, clock=clock)
            self._check_skeleton_version()
        except sqlite3.Error as exc:
            self.close()
            raise HotlistUnavailable(f"cannot prepare the hotlist tables: {exc}") from exc
        except Exception as exc:
            self.close()
            raise HotlistSchemaError(f"the hotlist schema cannot be used: {exc}") from exc

    # ------------------------------------------------------------ lifecycle

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait for a background index rebuild to finish; False on timeout."""
        thread = self._rebuild_thread
        if thread is not None:
            thread.join(timeout_s)
            return not thread.is_alive()
        return True

    def close(self) -> None:
        self.wait_idle()
        if self._owns_conn:
            self._conn.close()

    def __enter__(self) -> Hotlist:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def counters(self) -> Counters:
        return Counters(**self._counts)

    @property
    def index_bytes(self) -> int:
        return self._index.nbytes if self._index is not None else 0

    def _check_skeleton_version(self) -> None:
        stored = self._meta("skeleton_version")
        if stored == SKELETON_VERSION:
            return
        # The confusion table changed in a software update: every stored code is recomputed.
        self._conn.create_function("hotlist_skeleton_code", 1, skeleton_code, deterministic=True)
        with self._write():
            self._conn.execute("UPDATE hotlist_entries SET skel_code = hotlist_skeleton_code(plate)")
            self._set_meta("skeleton_version", SKELETON_VERSION)
            self._bump()

    # ------------------------------------------------------------ transactions and meta

    class _Tx:
        def __init__(self, hotlist: Hotlist, begin: str) -> None:
            self._h = hotlist
            self._begin = begin

        def __enter__(self) -> sqlite3.Connection:
            self._h._lock.acquire()
            try:
                self._h._conn.execute(self._begin)
            except sqlite3.Error as exc:
                self._h._lock.release()
                raise HotlistUnavailable(f"cannot start a hotlist transaction: {exc}") from exc
            return self._h._conn

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            conn = self._h._conn
            try:
                if exc_type is None:
                    try:
                        conn.execute("COMMIT")
                    except sqlite3.Error as err:
                        conn.execute("ROLLBACK")
                        raise HotlistUnavailable(f"cannot commit the hotlist change: {err}") from err
                elif conn.in_transaction:
                    conn.execute("ROLLBACK")
            finally:
                if self._begin != "BEGIN":
                    self._h._data_version = None  # our own commit does not move data_version
                self._h._lock.release()

    def _write(self) -> Hotlist._Tx:
        return Hotlist._Tx(self, "BEGIN IMMEDIATE")

    def _read(self) -> Hotlist._Tx:
        return Hotlist._Tx(self, "BEGIN")

    def _meta(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM hotlist_meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._conn.execute(
            "INSERT INTO hotlist_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _bump(self) -> int:
        seq = self._meta("change_seq") + 1
        self._set_meta("change_seq", seq)
        return seq

    def _max_id(self) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'hotlist_entries'").fetchone()
        return int(row[0]) if row else 0

    def _audit(
        self,
        *,
        actor: str,
        action: str,
        subject: str,
        reason: str | None,
        outcome: str,
        details: Mapping[str, object],
    ) -> None:
        try:
            audit.append(
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
            raise HotlistUnavailable(str(exc)) from exc

    # ------------------------------------------------------------ change detection

    @property
    def change_seq(self) -> int:
        """The hotlist's change counter as last seen by this instance (after `refresh`)."""
        return self._change_seq or 0

    def changed(self) -> bool:
        """Cheap: has anything (any process) committed a hotlist change we have not loaded?

        `PRAGMA data_version` moves on any commit by another connection (reads stored by the
        daemon too); only then is the hotlist's own counter read.
        """
        with self._lock:
            try:
                dv = self._conn.execute("PRAGMA data_version").fetchone()[0]
                if dv == self._data_version and self._change_seq is not None:
                    return False
                if self._meta("change_seq") != self._change_seq:
                    return True
                self._data_version = dv  # something else in the file changed, not the hotlist
                return False
            except sqlite3.Error as exc:
                raise HotlistUnavailable(f"cannot check the hotlist version: {exc}") from exc

    def load(self) -> None:
        """Build the in-memory index now (otherwise the first look-up does)."""
        with self._lock:
            if self._index is None:
                self._refresh(force=True)

    def refresh(self) -> bool:
        """Load whatever changed since the last look-up; True when something did."""
        with self._lock:
            return self._refresh(force=False)

    def _refresh(self, *, force: bool) -> bool:
        if not force and self._index is not None and not self.changed():
            return False
        try:
            dv = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if self._index is None:
                self._index = _load_index(self._conn)
                self._counts["rebuilds"] += 1
            with self._read() as conn:
                seq = self._meta("change_seq")
                self._live_count = self._meta("live_count")
                new_codes, new_ids = _fetch_codes(
                    conn.execute(
                        "SELECT skel_code, id FROM hotlist_entries WHERE id > ?", (self._index.watermark,)
                    )
                )
                lists = conn.execute("SELECT list_kind, source, version, refreshed_at FROM hotlist_lists")
                self._lists = {ListKind(k): (s, v, r) for k, s, v, r in lists.fetchall()}
                self._suppressions = self._load_suppressions()
        except sqlite3.Error as exc:
            raise HotlistUnavailable(f"cannot refresh the hotlist: {exc}") from exc
        self._index.add(new_codes, new_ids)
        self._change_seq = seq
        self._data_version = dv  # read before the snapshot: a commit racing the load is seen next time
        self._counts["refreshes"] += 1
        garbage = self._index.size - self._live_count
        if garbage > max(10_000, self._live_count // 5):
            self._start_rebuild()
        return True

    def _load_suppressions(self) -> dict[str, list[Suppression]]:
        out: dict[str, list[Suppression]] = {}
        for s in self._suppression_rows("WHERE removed_at IS NULL AND expires_at > ?", (self._clock(),)):
            out.setdefault(s.plate, []).append(s)
        return out

    def _start_rebuild(self) -> None:
        """Rebuild the index without deleted rows, off the look-up path, from a second connection."""
        if self._path is None or (self._rebuild_thread is not None and self._rebuild_thread.is_alive()):
            return
        path = self._path

        def run() -> None:
            try:
                conn = connect(path)
                try:
                    fresh = _load_index(conn)
                finally:
                    conn.close()
            except (sqlite3.Error, HotlistError) as exc:
                self._rlog.warning("rebuild", "hotlist index rebuild failed (will retry): %s", exc)
                return
            with self._lock:
                old = self._index
                if old is not None:
                    keep = old.tail_ids > fresh.watermark
                    fresh.add(old.tail_codes[keep], old.tail_ids[keep])
                self._index = fresh
                self._counts["rebuilds"] += 1

        self._rebuild_thread = threading.Thread(target=run, name="hotlist-rebuild", daemon=True)
        self._rebuild_thread.start()

    # ------------------------------------------------------------ matching

    def match(self, plate: str, state: str | None = None, *, include_suppressed: bool = False) -> list[Hit]:
        """Every entry the read matches, ranked: exact first, then priority, then closeness.

        Expired entries never match. Hits a suppression covers are left out (and counted)
        unless `include_suppressed`, in which case they carry `suppressed_by`.
        """
        with self._lock:
            self._refresh(force=self._index is None)
            self._counts["lookups"] += 1
            read = normalize_read(plate)
            read_state = (state or "").strip().upper() or None
            assert self._index is not None
            ids = self._index.candidates(probe_codes(read, approximate=self.settings.approximate_matching))
            if not ids:
                return []
            return self._hits(read, read_state, ids, include_suppressed=include_suppressed)

    def _entries(self, ids: Sequence[int]) -> list[HotlistEntry]:
        marks = ",".join("?" * len(ids))
        try:
            rows = self._conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM hotlist_entries WHERE id IN ({marks})", tuple(ids)
            ).fetchall()
        except sqlite3.Error as exc:
            raise HotlistUnavailable(f"cannot read hotlist entries: {exc}") from exc
        return [self._entry(row) for row in rows]

    def _entry(self, row: Sequence) -> HotlistEntry:
        kind = ListKind(row[3])
        return HotlistEntry(
            id=row[0],
            plate=row[1],
            state=row[2],
            list_kind=kind,
            priority=row[4] if row[4] is not None else self.settings.priority(kind),
            source=row[5],
            source_record_id=row[6],
            agency=row[7],
            vehicle_year=row[8],
            make=row[9],
            model=row[10],
            color=row[11],
            description=row[12],
            entered_on=row[13],
            expires_at=row[14],
            officer=row[15],
            reason=row[16],
            created_at=row[17],
            updated_at=row[18],
        )

    def _hits(
        self,
        read: str,
        read_state: str | None,
        ids: Sequence[int],
        *,
        include_suppressed: bool,
        retro: tuple[str, float] | None = None,
    ) -> list[Hit]:
        now = self._clock()
        hits: list[Hit] = []
        for entry in self._entries(ids):
            if entry.expires_at is not None and entry.expires_at <= now:
                self._counts["expired_entries_skipped"] += 1
                continue
            edits = align(read, entry.plate)
            if edits is None or (edits and not self.settings.approximate_matching):
                continue
            _source, version, refreshed = self._lists.get(entry.list_kind, (None, None, None))
            age = max(0.0, now - refreshed) if refreshed is not None else None
            freshness = (
                Freshness.FRESH if entry.list_kind is ListKind.OFFICER_BOLO else self.settings.freshness(age)
            )
            suppressed_by = next(
                (s.id for s in self._suppressions.get(read, ()) if s.applies(read, read_state, entry, now)),
                None,
            )
            if suppressed_by is not None:
                self._counts["suppressed_hits"] += 1
                self._rlog.warning(
                    "suppressed",
                    "hit on %s (%s) suppressed by #%d",
                    entry.plate,
                    entry.list_kind,
                    suppressed_by,
                )
                if not include_suppressed:
                    continue
            hits.append(
                Hit(
                    read_plate=read,
                    read_state=read_state,
                    entry=entry,
                    kind=MatchKind.APPROXIMATE if edits else MatchKind.EXACT,
                    edits=edits,
                    differing_positions=tuple(sorted({e.read_index for e in edits})),
                    state_mismatch=bool(read_state and entry.state and read_state != entry.state),
                    list_age_s=age,
                    list_version=version,
                    freshness=freshness,
                    stale=freshness is Freshness.STALE,
                    matched_at=now,
                    retroactive=retro is not None,
                    read_id=retro[0] if retro else None,
                    read_at=retro[1] if retro else None,
                    suppressed_by=suppressed_by,
                )
            )
        hits.sort(
            key=lambda h: (
                h.kind is not MatchKind.EXACT,
                -h.entry.priority,
                h.state_mismatch,
                len(h.edits),
                h.entry.id,
            )
        )
        self._counts["hits"] += len(hits)
        return hits

    # ------------------------------------------------------------ imports

    def import_file(
        self,
        path: str | Path,
        fmt: Literal["ncic", "clew", "csv", "delta"],
        *,
        list_kind: ListKind | None = None,
        skip_bad: bool = False,
        version: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> ImportResult | DeltaResult:
        """Import a file (see `edge.hotlist_formats`); `progress(bytes_done, bytes_total)`."""
        path = Path(path)
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise ImportRefused(f"{path}: cannot read: {exc.strerror}") from exc
        with handle:
            lines = _CountingLines(handle, path.stat().st_size, progress)
            if fmt == "delta":
                return self.apply_delta(parse_delta(lines), skip_bad=skip_bad)
            if fmt == "ncic":
                items: Iterable[HotlistRecord | StagingRow | LineError] = ncic_rows(lines)
                lists: Collection[ListKind] | None = NCIC_LISTS
            elif fmt == "clew":
                kind = list_kind or clew_list_kind(path.name)
                if kind is None:
                    raise ImportRefused(f"{path.name}: not svs.tbl, sfr.tbl or slr.tbl; give --list-kind")
                items, lists = parse_clew(lines, kind), (kind,)
            elif fmt == "csv":
                items, lists = parse_csv(lines, list_kind), None
            else:
                raise ImportRefused(f"unknown format '{fmt}'")
            # without a version from the caller, the file's own digest names it
            return self.import_records(
                items,
                source=fmt,
                lists=lists,
                version=version if version is not None else (lambda: f"{fmt}:{lines.digest()[:16]}"),
                skip_bad=skip_bad,
                file_label=path.name,
            )

    def import_records(
        self,
        items: Iterable[HotlistRecord | StagingRow | LineError],
        *,
        source: str,
        lists: Collection[ListKind] | None,
        version: str | Callable[[], str] | None,
        skip_bad: bool = False,
        allow_empty: bool = False,
        file_label: str = "import",
    ) -> ImportResult:
        """Replace the entries `source` put on `lists` (None: the lists the records name)."""
        with self._lock, _BulkWrite(self._conn):
            return self._import_records(
                items,
                source=source,
                lists=lists,
                version=version,
                skip_bad=skip_bad,
                allow_empty=allow_empty,
                file_label=file_label,
            )

    def _import_records(
        self,
        items: Iterable[HotlistRecord | StagingRow | LineError],
        *,
        source: str,
        lists: Collection[ListKind] | None,
        version: str | Callable[[], str] | None,
        skip_bad: bool,
        allow_empty: bool,
        file_label: str,
    ) -> ImportResult:
        started = time.monotonic()
        errors: list[LineError] = []
        seen_lists: set[str] = set()
        records = 0
        try:
            self._stage(items, errors, seen_lists)
            records = self._conn.execute("SELECT count(*) FROM temp.hotlist_staging").fetchone()[0]
        except sqlite3.Error as exc:
            self._drop_staging()
            raise HotlistUnavailable(f"cannot stage the import: {exc}") from exc
        if errors and not skip_bad:
            self._drop_staging()
            raise ImportRefused(
                f"{file_label}: {len(errors)} bad line(s); nothing imported, "
                "the lists in force are unchanged",
                errors,
            )
        if records == 0 and not allow_empty:
            self._drop_staging()
            raise ImportRefused(f"{file_label}: no entries; refusing to empty the lists in force", errors)
        covered = tuple(sorted(set(lists) if lists is not None else {ListKind(k) for k in seen_lists}))
        now = self._clock()
        label = (version() if callable(version) else version) or f"{source}:{int(now)}"
        try:
            locked = time.monotonic()
            with self._write() as conn:
                gen = self._meta("import_gen") + 1
                self._set_meta("import_gen", gen)
                first_new = self._max_id() + 1
                conn.execute(_UPSERT_FROM_STAGING, {"source": source, "now": now, "gen": gen})
                marks = ",".join("?" * len(covered))
                removed = conn.execute(
                    f"DELETE FROM hotlist_entries WHERE source = ? AND list_kind IN ({marks}) "
                    "AND import_gen != ?",
                    (source, *[k.value for k in covered], gen),
                ).rowcount
                added = conn.execute(
                    "SELECT count(*) FROM hotlist_entries WHERE id >= ?", (first_new,)
                ).fetchone()[0]
                distinct = conn.execute(
                    "SELECT count(*) FROM hotlist_entries WHERE import_gen = ?", (gen,)
                ).fetchone()[0]
                for kind in covered:
                    self._touch_list(kind, source, label, now)
                self._set_meta(
                    "live_count", conn.execute("SELECT count(*) FROM hotlist_entries").fetchone()[0]
                )
                self._bump()
            locked = time.monotonic() - locked
        finally:
            self._drop_staging()
        if errors:
            self._counts["bad_lines_skipped"] += len(errors)
            log.warning("%s: imported without %d bad line(s) (--skip-bad)", file_label, len(errors))
        return ImportResult(
            source=source,
            version=label,
            lists=covered,
            records=records,
            added=added,
            updated=distinct - added,
            duplicates_merged=records - distinct,
            removed=removed,
            skipped_bad=len(errors),
            errors=tuple(errors),
            first_new_id=first_new,
            seconds=time.monotonic() - started,
            write_lock_s=locked,
        )

    def _stage(
        self, items: Iterable[HotlistRecord | StagingRow | LineError], errors: list[LineError], seen: set[str]
    ) -> None:
        """Parse into TEMP staging: only the connection's temp database is written, so the
        shared file stays unlocked while a large file is read."""
        with self._lock:
            conn = self._conn
            conn.execute(_STAGING)
            conn.execute("DELETE FROM temp.hotlist_staging")
            insert = "INSERT INTO temp.hotlist_staging VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            batch: list[tuple] = []
            conn.execute("BEGIN")
            try:
                for item in items:
                    if type(item) is tuple:
                        batch.append(item)
                        seen.add(item[2])
                        continue
                    if isinstance(item, LineError):
                        errors.append(item)
                        continue
                    seen.add(item.list_kind.value)
                    batch.append(record_row(item))
                    if len(batch) >= 20_000:
                        conn.executemany(insert, batch)
                        batch.clear()
                if batch:
                    conn.executemany(insert, batch)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _drop_staging(self) -> None:
        with self._lock:
            try:
                self._conn.execute("DROP TABLE IF EXISTS temp.hotlist_staging")
            except sqlite3.Error as exc:
                log.warning("could not drop the hotlist staging table: %s", exc)

    def _touch_list(self, kind: ListKind, source: str, version: str, now: float) -> None:
        self._conn.execute(
            "INSERT INTO hotlist_lists (list_kind, source, version, refreshed_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (list_kind) DO UPDATE SET source = excluded.source, version = excluded.version, "
            "refreshed_at = excluded.refreshed_at",
            (kind.value, source, version, now),
        )

    # ------------------------------------------------------------ deltas

    def apply_delta(
        self, items: Iterable[DeltaHeader | DeltaChange | LineError], *, skip_bad: bool = False
    ) -> DeltaResult:
        """Apply one delta atomically: its header (version, lists it refreshes) then its changes.

        Refused whole when a line is bad (unless skip_bad) or when its version is not newer
        than a delta version already in force for one of its lists (a rollback).
        """
        with self._lock, _BulkWrite(self._conn):
            return self._apply_delta(items, skip_bad=skip_bad)

    def _apply_delta(
        self, items: Iterable[DeltaHeader | DeltaChange | LineError], *, skip_bad: bool
    ) -> DeltaResult:
        started = time.monotonic()
        header: DeltaHeader | None = None
        changes: list[DeltaChange] = []
        errors: list[LineError] = []
        for item in items:
            if isinstance(item, LineError):
                errors.append(item)
            elif isinstance(item, DeltaHeader):
                header = item
            else:
                changes.append(item)
        if header is None:
            raise (
                DeltaRejected("delta refused: no valid header line; " + "; ".join(map(str, errors[:5])))
                if errors
                else DeltaRejected("delta refused: no header line")
            )
        if errors and not skip_bad:
            raise ImportRefused(f"delta refused: {len(errors)} bad line(s); nothing applied", errors)
        covered = tuple(sorted(set(header.lists) | {c.key.list_kind for c in changes}))
        now = self._clock()
        locked = time.monotonic()
        with self._write() as conn:
            for kind in covered:
                row = conn.execute(
                    "SELECT source, version FROM hotlist_lists WHERE list_kind = ?", (kind.value,)
                ).fetchone()
                in_force = row[1] if row and row[0] == "delta" and row[1] and row[1].isdigit() else None
                if in_force is not None and int(in_force) >= header.version:
                    raise DeltaRejected(
                        f"delta version {header.version} is not newer than version {row[1]} "
                        f"of list {kind.value} in force (rollback refused)"
                    )
            gen = self._meta("import_gen") + 1
            self._set_meta("import_gen", gen)
            first_new = self._max_id() + 1
            removed = absent = touched = 0
            i = 0
            while i < len(changes):
                j = i
                while j < len(changes) and changes[j].op == changes[i].op:
                    j += 1
                run = changes[i:j]
                if run[0].op == "add":
                    conn.executemany(
                        _UPSERT_VALUES, [_delta_row(c.record, now, gen) for c in run if c.record is not None]
                    )
                    touched += len(run)
                else:
                    n = conn.executemany(
                        "DELETE FROM hotlist_entries WHERE plate = ? AND state = ? AND list_kind = ?",
                        [(c.key.plate, c.key.state, c.key.list_kind.value) for c in run],
                    ).rowcount
                    removed += n
                    absent += len(run) - n
                i = j
            added = conn.execute(
                "SELECT count(*) FROM hotlist_entries WHERE id >= ?", (first_new,)
            ).fetchone()[0]
            for kind in covered:
                self._touch_list(kind, "delta", str(header.version), now)
            self._set_meta("live_count", self._meta("live_count") + added - removed)
            self._bump()
        locked = time.monotonic() - locked
        if absent:
            self._rlog.warning(
                "absent", "delta %d removed %d key(s) that were not in force", header.version, absent
            )
        if errors:
            self._counts["bad_lines_skipped"] += len(errors)
        return DeltaResult(
            version=header.version,
            lists=covered,
            added=added,
            updated=max(0, touched - added),
            removed=removed,
            absent_removals=absent,
            first_new_id=first_new,
            seconds=time.monotonic() - started,
            write_lock_s=locked,
        )

    # ------------------------------------------------------------ officer entries

    def add_bolo(
        self,
        plate: str,
        state: str | None,
        *,
        reason: str,
        officer: str,
        expires_at: float,
        description: str | None = None,
        priority: int | None = None,
    ) -> HotlistEntry:
        """An officer-entered BOLO on list `officer_bolo`; replaces one with the same key."""
        norm, st = self._officer_input(plate, state, reason, officer, expires_at)
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO hotlist_entries (plate, state, list_kind, skel_code, priority, source, "
                "description, expires_at, officer, reason, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, 'officer', ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (plate, state, list_kind) DO UPDATE SET priority = excluded.priority, "
                "source = 'officer', description = excluded.description, expires_at = excluded.expires_at, "
                "officer = excluded.officer, reason = excluded.reason, updated_at = excluded.updated_at",
                (
                    norm,
                    st,
                    ListKind.OFFICER_BOLO.value,
                    skeleton_code(norm),
                    priority,
                    description,
                    expires_at,
                    officer,
                    reason,
                    now,
                    now,
                ),
            )
            row = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM hotlist_entries "
                "WHERE plate = ? AND state = ? AND list_kind = ?",
                (norm, st, ListKind.OFFICER_BOLO.value),
            ).fetchone()
            self._audit(
                actor=officer,
                action="hotlist.bolo.add",
                subject=f"{norm}/{st or '-'}",
                reason=reason,
                outcome="ok",
                details={"entry_id": row[0], "expires_at": expires_at, "description": description},
            )
            self._touch_list(ListKind.OFFICER_BOLO, "officer", str(self._meta("change_seq") + 1), now)
            self._set_meta("live_count", conn.execute("SELECT count(*) FROM hotlist_entries").fetchone()[0])
            self._bump()
        return self._entry(row)

    def remove_bolo(self, plate: str, state: str | None, *, officer: str, reason: str) -> bool:
        """Remove an officer BOLO; False (and audited as not_found) when there is none."""
        norm = normalize_plate(plate)
        st = (state or "").strip().upper()
        if not officer.strip() or not reason.strip():
            raise OfficerEntryError("removing a BOLO needs the officer and a reason")
        now = self._clock()
        with self._write() as conn:
            n = conn.execute(
                "DELETE FROM hotlist_entries WHERE plate = ? AND state = ? AND list_kind = ?",
                (norm, st, ListKind.OFFICER_BOLO.value),
            ).rowcount
            self._audit(
                actor=officer,
                action="hotlist.bolo.remove",
                subject=f"{norm}/{st or '-'}",
                reason=reason,
                outcome="ok" if n else "not_found",
                details={},
            )
            if n:
                self._touch_list(ListKind.OFFICER_BOLO, "officer", str(self._meta("change_seq") + 1), now)
                self._set_meta("live_count", self._meta("live_count") - n)
            self._bump()
        return bool(n)

    def list_bolos(self, *, include_expired: bool = False) -> list[HotlistEntry]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM hotlist_entries WHERE list_kind = ? ORDER BY id",
                (ListKind.OFFICER_BOLO.value,),
            ).fetchall()
        now = self._clock()
        entries = [self._entry(r) for r in rows]
        return [e for e in entries if include_expired or e.expires_at is None or e.expires_at > now]

    def add_suppression(
        self,
        plate: str,
        *,
        reason: str,
        officer: str,
        expires_at: float,
        state: str | None = None,
        list_kind: ListKind | None = None,
        entry_plate: str | None = None,
    ) -> Suppression:
        """Suppress hits for reads of `plate` (optionally only on one list or one entry plate)."""
        norm, st = self._officer_input(plate, state, reason, officer, expires_at)
        entry_norm = normalize_plate(entry_plate) if entry_plate else None
        if entry_norm is not None and not is_valid_plate(entry_norm):
            raise OfficerEntryError(f"entry plate '{entry_plate}' is not a plate")
        now = self._clock()
        with self._write() as conn:
            sid = conn.execute(
                "INSERT INTO hotlist_suppressions (plate, state, list_kind, entry_plate, reason, officer, "
                "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    norm,
                    st or None,
                    list_kind.value if list_kind else None,
                    entry_norm,
                    reason,
                    officer,
                    now,
                    expires_at,
                ),
            ).lastrowid
            self._audit(
                actor=officer,
                action="hotlist.suppress.add",
                subject=f"{norm}/{st or '-'}",
                reason=reason,
                outcome="ok",
                details={
                    "suppression_id": sid,
                    "expires_at": expires_at,
                    "list_kind": list_kind.value if list_kind else None,
                    "entry_plate": entry_norm,
                },
            )
            self._bump()
        return Suppression(
            id=sid,
            plate=norm,
            state=st or None,
            list_kind=list_kind,
            entry_plate=entry_norm,
            reason=reason,
            officer=officer,
            created_at=now,
            expires_at=expires_at,
        )

    def remove_suppression(self, suppression_id: int, *, officer: str, reason: str) -> bool:
        if not officer.strip() or not reason.strip():
            raise OfficerEntryError("removing a suppression needs the officer and a reason")
        now = self._clock()
        with self._write() as conn:
            n = conn.execute(
                "UPDATE hotlist_suppressions SET removed_at = ?, removed_by = ? "
                "WHERE id = ? AND removed_at IS NULL",
                (now, officer, suppression_id),
            ).rowcount
            self._audit(
                actor=officer,
                action="hotlist.suppress.remove",
                subject=f"suppression #{suppression_id}",
                reason=reason,
                outcome="ok" if n else "not_found",
                details={"suppression_id": suppression_id},
            )
            self._bump()
        return bool(n)

    def list_suppressions(self, *, include_inactive: bool = False) -> list[Suppression]:
        with self._lock:
            if include_inactive:
                return self._suppression_rows("ORDER BY id", ())
            return self._suppression_rows(
                "WHERE removed_at IS NULL AND expires_at > ? ORDER BY id", (self._clock(),)
            )

    def _suppression_rows(self, where: str, params: tuple) -> list[Suppression]:
        rows = self._conn.execute(
            "SELECT id, plate, state, list_kind, entry_plate, reason, officer, created_at, expires_at, "
            f"removed_at, removed_by FROM hotlist_suppressions {where}",
            params,
        ).fetchall()
        return [
            Suppression(
                id=r[0],
                plate=r[1],
                state=r[2],
                list_kind=ListKind(r[3]) if r[3] else None,
                entry_plate=r[4],
                reason=r[5],
                officer=r[6],
                created_at=r[7],
                expires_at=r[8],
                removed_at=r[9],
                removed_by=r[10],
            )
            for r in rows
        ]

    def _officer_input(
        self, plate: str, state: str | None, reason: str, officer: str, expires_at: float
    ) -> tuple[str, str]:
        norm = normalize_plate(plate)
        if not is_valid_plate(norm):
            raise OfficerEntryError(f"'{plate}' is not a plate (1-10 letters and digits)")
        st = (state or "").strip().upper()
        if st and (len(st) != 2 or not st.isalpha() or not st.isascii()):
            raise OfficerEntryError(f"state '{state}' is not a two-letter code")
        if not reason.strip():
            raise OfficerEntryError("a reason is required")
        if not officer.strip():
            raise OfficerEntryError("the officer is required")
        if expires_at <= self._clock():
            raise OfficerEntryError("the expiry must be in the future")
        return norm, st

    def mark_refreshed(self, *, source: str = "delta", at: float | None = None) -> int:
        """Record that the lists fed by `source` were confirmed current at `at` (default: now).

        For a feed that answered "not modified": nothing changed, but the lists are not getting
        staler. Bumps the change counter so every reader reloads the refresh times. Returns the
        number of lists marked.
        """
        when = self._clock() if at is None else at
        with self._write() as conn:
            n = conn.execute(
                "UPDATE hotlist_lists SET refreshed_at = ? WHERE source = ?", (when, source)
            ).rowcount
            if n:
                self._bump()
        return n

    def purge_expired(self) -> int:
        """Delete expired entries and close expired suppressions, auditing officer ones."""
        now = self._clock()
        with self._write() as conn:
            bolos = conn.execute(
                "SELECT id, plate, state, officer, expires_at FROM hotlist_entries "
                "WHERE expires_at IS NOT NULL AND expires_at <= ? AND list_kind = ?",
                (now, ListKind.OFFICER_BOLO.value),
            ).fetchall()
            for eid, plate, st, officer, exp in bolos:
                self._audit(
                    actor="system",
                    action="hotlist.bolo.expire",
                    subject=f"{plate}/{st or '-'}",
                    reason="expired",
                    outcome="ok",
                    details={"entry_id": eid, "officer": officer, "expires_at": exp},
                )
            n = conn.execute(
                "DELETE FROM hotlist_entries WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            ).rowcount
            sups = conn.execute(
                "SELECT id, plate, officer, expires_at FROM hotlist_suppressions "
                "WHERE removed_at IS NULL AND expires_at <= ?",
                (now,),
            ).fetchall()
            for sid, plate, officer, exp in sups:
                self._audit(
                    actor="system",
                    action="hotlist.suppress.expire",
                    subject=f"suppression #{sid}",
                    reason="expired",
                    outcome="ok",
                    details={"plate": plate, "officer": officer, "expires_at": exp},
                )
                conn.execute(
                    "UPDATE hotlist_suppressions SET removed_at = ?, removed_by = 'expiry' WHERE id = ?",
                    (exp, sid),
                )
            if n or sups:
                self._set_meta("live_count", self._meta("live_count") - n)
                self._bump()
        return n + len(sups)

    # ------------------------------------------------------------ status

    def record_feed_refusal(
        self, cause: str, *, from_version: int | None = None, to_version: int | None = None
    ) -> None:
        """Remember that a feed was refused (the lists in force are untouched by this)."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO hotlist_feed_refusal (id, at, cause, from_version, to_version) "
                "VALUES (1, ?, ?, ?, ?)",
                (self._clock(), cause, from_version, to_version),
            )

    def clear_feed_refusal(self) -> None:
        """A feed was taken since: the refusal no longer describes the lists."""
        with self._write() as conn:
            conn.execute("DELETE FROM hotlist_feed_refusal")

    def feed_refusal(self) -> FeedRefusal | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT at, cause, from_version, to_version FROM hotlist_feed_refusal WHERE id = 1"
            ).fetchone()
        if row is None:
            return None
        return FeedRefusal(at=row[0], cause=row[1], from_version=row[2], to_version=row[3])

    def status(self) -> list[ListStatus]:
        """Per list: entries, source, version, age and fresh/aging/stale at this moment."""
        now = self._clock()
        with self._read() as conn:
            # Counting 2M entries takes most of a second, and the daemon and the MDT ask for status
            # every few seconds; every change to the entries bumps change_seq, so count once per change.
            seq = self._meta("change_seq")
            if self._status_counts is None or self._status_counts[0] != seq:
                counted = dict(
                    conn.execute("SELECT list_kind, count(*) FROM hotlist_entries GROUP BY list_kind")
                )
                self._status_counts = (seq, counted)
            counts = self._status_counts[1]
            lists = {
                k: (s, v, r)
                for k, s, v, r in conn.execute(
                    "SELECT list_kind, source, version, refreshed_at FROM hotlist_lists"
                )
            }
        out = []
        for kind in sorted(set(counts) | set(lists)):
            source, version, refreshed = lists.get(kind, (None, None, None))
            age = max(0.0, now - refreshed) if refreshed is not None else None
            lk = ListKind(kind)
            out.append(
                ListStatus(
                    list_kind=lk,
                    entries=counts.get(kind, 0),
                    source=source,
                    version=version,
                    refreshed_at=refreshed,
                    age_s=age,
                    freshness=Freshness.FRESH
                    if lk is ListKind.OFFICER_BOLO
                    else self.settings.freshness(age),
                )
            )
        return out

    # ------------------------------------------------------------ retro-check

    def retro_check(self, *, after_entry_id: int | None = None, hours: float | None = None) -> RetroCheck:
        """Hits, marked retroactive, of reads from the last `hours` (default: settings) on
        entries with id > `after_entry_id` (default: the stored watermark, see
        `mark_retro_checked`). Returns nothing when there is no `reads` table."""
        hours = self.settings.retro_check_hours if hours is None else hours
        with self._lock:
            self._refresh(force=self._index is None)
            assert self._index is not None
            after = self._meta("retro_checked_id") if after_entry_id is None else after_entry_id
            up_to = self._index.watermark
            if up_to <= after or not self._reads_table_usable():
                return RetroCheck(hits=(), reads_checked=0, checked_up_to=max(up_to, after))
            since = self._clock() - hours * 3600
            reads = self._conn.execute(
                "SELECT read_id, plate, region, last_seen FROM reads WHERE last_seen >= ? ORDER BY last_seen",
                (since,),
            ).fetchall()
            hits: list[Hit] = []
            for read_id, plate, region, last_seen in reads:
                read = normalize_read(plate or "")
                ids = [
                    i
                    for i in self._index.candidates(
                        probe_codes(read, approximate=self.settings.approximate_matching)
                    )
                    if after < i <= up_to
                ]
                if ids:
                    hits.extend(
                        self._hits(
                            read,
                            (region or "").strip().upper() or None,
                            ids,
                            include_suppressed=False,
                            retro=(read_id, last_seen),
                        )
                    )
            return RetroCheck(hits=tuple(hits), reads_checked=len(reads), checked_up_to=up_to)

    def mark_retro_checked(self, entry_id: int) -> None:
        """Record that entries up to `entry_id` were retro-checked (call after storing the hits)."""
        with self._write():
            if entry_id > self._meta("retro_checked_id"):
                self._set_meta("retro_checked_id", entry_id)

    def _reads_table_usable(self) -> bool:
        columns = {r[1] for r in self._conn.execute("PRAGMA table_info(reads)")}
        if not columns:
            return False
        missing = {"read_id", "plate", "region", "last_seen"} - columns
        if missing:
            self._rlog.warning("reads", "retro-check skipped: table reads lacks columns %s", sorted(missing))
            return False
        return True


class _BulkWrite:
    """Settings for the length of an import or delta on the importing connection only.

    A large page cache: a national list's B-trees do not fit SQLite's default 2 MB and every
    miss is a read. No automatic checkpoint inside the commit: the change becomes visible as
    soon as its WAL frames are written, and the WAL is copied back into the database by a
    PASSIVE checkpoint afterwards (`checkpoint_s`), which never blocks readers.
    """

    CACHE_KIB = 256 * 1024

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._saved: tuple[int, int, int] = (0, 0, 0)
        self.checkpoint_s = 0.0

    def __enter__(self) -> _BulkWrite:
        get = self._conn.execute
        self._saved = (
            int(get("PRAGMA main.cache_size").fetchone()[0]),
            int(get("PRAGMA temp.cache_size").fetchone()[0]),
            int(get("PRAGMA wal_autocheckpoint").fetchone()[0]),
        )
        get(f"PRAGMA main.cache_size = -{self.CACHE_KIB}")
        get(f"PRAGMA temp.cache_size = -{self.CACHE_KIB}")
        get("PRAGMA wal_autocheckpoint = 0")
        return self

    def __exit__(self, *exc: object) -> None:
        main, temp, autocheckpoint = self._saved
        self._conn.execute(f"PRAGMA main.cache_size = {main}")
        self._conn.execute(f"PRAGMA temp.cache_size = {temp}")
        self._conn.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
        started = time.monotonic()
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("hotlist: WAL checkpoint after a bulk write failed (SQLite retries later): %s", exc)
        self.checkpoint_s = time.monotonic() - started


class _CountingLines:
    """Iterates a binary file by lines, reporting progress and hashing what was read."""

    def __init__(self, handle: IO[bytes], total: int, progress: Callable[[int, int], None] | None) -> None:
        self._handle = handle
        self._total = total
        self._progress = progress
        self._sha = hashlib.sha256()
        self.done = 0

    def __iter__(self) -> Iterator[bytes]:
        step = max(1, self._total // 200)
        next_report = step
        for line in self._handle:
            self._sha.update(line)
            self.done += len(line)
            if self._progress is not None and self.done >= next_report:
                self._progress(self.done, self._total)
                next_report = self.done + step
            yield line
        if self._progress is not None:
            self._progress(self.done, self._total)

    def digest(self) -> str:
        return self._sha.hexdigest()
