"""The store and its migrations, against real SQLite files and real processes."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from edge.migrations import DowngradeError, MigrationStepError, apply_migrations, recorded_version
from edge.store import (
    STEPS,
    Lane,
    NotADatabaseError,
    ReadNotFoundError,
    SchemaTooNewError,
    Store,
    StoreBusyError,
    StoreClosedError,
    StoreOpenError,
    StoreWriteError,
    TransientStoreError,
)
from edge.types import NO_FIX, Box, FixMode, GpsFix, PlateRead

REPO = Path(__file__).resolve().parents[1]
CHILD_ENV = {**os.environ, "PYTHONPATH": str(REPO)}

GPS = GpsFix(
    mode=FixMode.FIX_3D,
    lat=37.804363,
    lon=-122.271111,
    speed_mps=13.4,
    heading_deg=271.5,
    fix_time=1_700_000_001.5,
    source="gpsd",
)


def make_read(
    *,
    read_id: str | None = None,
    gps: GpsFix = NO_FIX,
    text: str = "7ABC123",
    first_seen: float = 1_700_000_000.0,
    last_seen: float = 1_700_000_002.0,
    crop: bytes = b"\xff\xd8 a jpeg \xff\xd9",
) -> PlateRead:
    return PlateRead(
        read_id=read_id or str(uuid.uuid4()),
        camera_id="front",
        text=text,
        confidence=0.87,
        char_confidences=(0.99, 0.87, 0.95, 0.9, 0.93, 0.97, 0.91),
        region="CA",
        first_seen=first_seen,
        last_seen=last_seen,
        observations=5,
        best_crop_jpeg=crop,
        best_box=Box(100.5, 200.0, 260.25, 250.0),
        gps=gps,
    )


def raw(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Query the file through a separate, plain connection (what another process would see)."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


# -- durability settings and migrations ------------------------------------------------------


def test_wal_and_synchronous_full_are_in_force(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "dir" / "alpr.db"
    with Store(db) as store:
        settings = store.settings
        assert settings.journal_mode == "wal"
        assert settings.synchronous == 2  # FULL; NORMAL (1) could lose the last commits on power loss
        assert settings.foreign_keys is True
        assert settings.busy_timeout_ms == 5000
        store.save_read(make_read())
        assert (tmp_path / "nested" / "dir" / "alpr.db-wal").exists()
    # WAL is a property of the file: another process opening it gets WAL too.
    assert raw(db, "PRAGMA journal_mode") == [("wal",)]


def test_migrations_recorded_once_and_not_reapplied_on_reopen(tmp_path: Path) -> None:
    db = tmp_path / "alpr.db"
    Store(db, clock=lambda: 1_000.0).close()
    first = raw(db, "SELECT component, version, applied_at FROM schema_migrations ORDER BY version")
    assert [(c, v) for c, v, _ in first] == [("store", n) for n in range(1, len(STEPS) + 1)]
    assert first[0][2].startswith("1970-01-01T00:16:40")

    with Store(db, clock=lambda: 2_000.0) as store:
        store.save_read(make_read())
    assert raw(db, "SELECT component, version, applied_at FROM schema_migrations ORDER BY version") == first


def test_callable_step_runs_once_across_reopens(tmp_path: Path) -> None:
    calls: list[int] = []

    def add_column(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("ALTER TABLE entries ADD COLUMN expires REAL")

    steps = ["CREATE TABLE entries (plate TEXT PRIMARY KEY)", add_column]
    for _ in range(3):
        with closing(sqlite3.connect(tmp_path / "alpr.db")) as conn:
            apply_migrations(conn, "hotlist", steps)
    assert calls == [1]
    assert [r[1] for r in raw(tmp_path / "alpr.db", "PRAGMA table_info(entries)")] == ["plate", "expires"]


def test_components_share_one_file_and_migrate_independently(tmp_path: Path) -> None:
    db = tmp_path / "alpr.db"
    Store(db).close()
    with closing(sqlite3.connect(db)) as conn:
        assert apply_migrations(conn, "hotlist", ["CREATE TABLE hotlist (plate TEXT)"]) == [1]
        assert recorded_version(conn, "hotlist") == 1
        assert recorded_version(conn, "store") == len(STEPS)
    with Store(db) as store:  # the store ignores the hotlist's rows and vice versa
        store.save_read(make_read())
    assert raw(db, "SELECT component, MAX(version) FROM schema_migrations GROUP BY component") == [
        ("hotlist", 1),
        ("store", len(STEPS)),
    ]


def test_database_from_newer_code_is_refused_naming_the_component(tmp_path: Path) -> None:
    db = tmp_path / "alpr.db"
    Store(db).close()
    newer = len(STEPS) + 1
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("INSERT INTO schema_migrations VALUES ('store', ?, '2030-01-01T00:00:00')", (newer,))
    with pytest.raises(SchemaTooNewError) as info:
        Store(db)
    assert "'store'" in str(info.value)
    assert f"version {newer}" in str(info.value)
    assert str(db) in str(info.value)


def test_downgrade_is_refused_before_any_step_runs(tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "alpr.db")) as conn:
        apply_migrations(conn, "hotlist", ["CREATE TABLE a (x)", "CREATE TABLE b (x)", "CREATE TABLE c (x)"])
        with pytest.raises(DowngradeError, match=r"'hotlist' is at version 3 .* only up to version 2"):
            apply_migrations(conn, "hotlist", ["CREATE TABLE a (x)", "CREATE TABLE b (x)"])
        with pytest.raises(DowngradeError, match="'hotlist'"):
            apply_migrations(conn, "hotlist", [])
        assert recorded_version(conn, "hotlist") == 3


def test_failed_step_is_rolled_back_whole_and_applied_once_fixed(tmp_path: Path) -> None:
    db = tmp_path / "alpr.db"
    broken = ["CREATE TABLE a (x)", "CREATE TABLE b (x); INSERT INTO no_such_table VALUES (1)"]
    with closing(sqlite3.connect(db)) as conn:
        with pytest.raises(MigrationStepError, match="hotlist: migration step 2 failed"):
            apply_migrations(conn, "hotlist", broken)
        assert recorded_version(conn, "hotlist") == 1
        # Step 2's first statement went with the rest of its transaction.
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'b'").fetchall() == []
        fixed = ["CREATE TABLE a (x)", "CREATE TABLE b (x)"]
        assert apply_migrations(conn, "hotlist", fixed) == [2]


# -- reads -----------------------------------------------------------------------------------


def test_read_with_gps_fix_round_trips(tmp_path: Path) -> None:
    read = make_read(gps=GPS)
    with Store(tmp_path / "alpr.db", clock=lambda: 1_700_000_010.0) as store:
        store.save_read(read)
        stored = store.get_read(read.read_id)
        assert store.read_crop(read.read_id) == read.best_crop_jpeg
    assert stored is not None
    assert stored.plate == "7ABC123"
    assert stored.camera_id == "front"
    assert stored.confidence == pytest.approx(0.87)
    assert stored.char_confidences == read.char_confidences
    assert stored.region == "CA"
    assert (stored.first_seen, stored.last_seen, stored.observations) == (1_700_000_000.0, 1_700_000_002.0, 5)
    assert stored.box == read.best_box
    assert stored.gps == GPS
    assert stored.created_at == 1_700_000_010.0


def test_read_without_fix_is_stored_as_null_never_zero_zero(tmp_path: Path) -> None:
    db = tmp_path / "alpr.db"
    # A GPS reader that wrongly fills 0,0 while reporting no fix must not leak a position in.
    zero_no_fix = GpsFix(mode=FixMode.NO_FIX, lat=0.0, lon=0.0, speed_mps=0.0, heading_deg=0.0, source="gpsd")
    plain, zeroed = make_read(gps=NO_FIX), make_read(gps=zero_no_fix)
    with Store(db) as store:
        store.save_read(plain)
        store.save_read(zeroed)
        got_plain, got_zeroed = store.get_read(plain.read_id), store.get_read(zeroed.read_id)
    assert got_plain is not None and got_zeroed is not None
    assert got_plain.gps == NO_FIX
    assert not got_zeroed.gps.has_fix
    assert (got_zeroed.gps.lat, got_zeroed.gps.lon, got_zeroed.gps.source) == (None, None, "gpsd")
    rows = raw(db, "SELECT lat, lon, speed_mps, heading_deg, fix_time, fix_mode FROM reads")
    assert rows == [(None, None, None, None, None, 1)] * 2


def test_saving_the_same_read_twice_stores_it_once(tmp_path: Path) -> None:
    db = tmp_path / "alpr.db"
    read = make_read()
    with Store(db) as store:
        store.save_read(read)
        [entry] = store.outbox_pending(Lane.READS, 10)
        store.outbox_ack([entry.seq])
        store.save_read(read)  # a retry after an uncertain failure
        assert store.duplicate_reads == 1
        # An acknowledged read must not be queued again by the retry.
        assert store.outbox_counts() == {Lane.HITS: 0, Lane.READS: 0, Lane.IMAGES: 1}
    assert raw(db, "SELECT COUNT(*) FROM reads") == [(1,)]
    assert raw(db, "SELECT COUNT(*) FROM read_images") == [(1,)]


def test_outbox_failure_leaves_no_read_behind(tmp_path: Path) -> None:
    db = tmp_path / "alpr.db"
    with Store(db) as store:
        # The image's outbox entry is the last write of save_read: refuse exactly that one.
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute(
                "CREATE TRIGGER refuse_images BEFORE INSERT ON outbox WHEN NEW.lane = 2 "
                "BEGIN SELECT RAISE(ABORT, 'outbox refused'); END"
            )
        read = make_read()
        with pytest.raises(StoreWriteError, match="outbox refused"):
            store.save_read(read)
        assert store.get_read(read.read_id) is None
        assert store.read_crop(read.read_id) is None
        assert raw(db, "SELECT (SELECT COUNT(*) FROM reads), (SELECT COUNT(*) FROM outbox)") == [(0, 0)]

        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("DROP TRIGGER refuse_images")
        store.save_read(read)  # the store is not left inside a dead transaction
        assert store.get_read(read.read_id) is not None
        assert store.outbox_counts() == {Lane.HITS: 0, Lane.READS: 1, Lane.IMAGES: 1}


def test_bad_read_is_refused_without_writing(tmp_path: Path) -> None:
    with Store(tmp_path / "alpr.db") as store:
        with pytest.raises(StoreWriteError, match="not-a-uuid"):
            store.save_read(make_read(read_id="not-a-uuid"))
        nan = make_read()
        object.__setattr__(nan, "char_confidences", (0.9, float("nan")))
        with pytest.raises(StoreWriteError):
            store.save_read(nan)
        assert store.recent_reads() == []
        assert store.outbox_counts() == dict.fromkeys(Lane, 0)


def test_finalized_read_is_requeued_even_if_old_upload_is_acked_later(tmp_path: Path) -> None:
    read = make_read(last_seen=1_700_000_001.0)
    with Store(tmp_path / "alpr.db") as store:
        store.save_read(read)  # emitted early, for an early alert
        [in_flight] = store.outbox_pending(Lane.READS, 10)  # the agent is uploading it
        store.finalize_read(read.read_id, last_seen=1_700_000_009.0, observations=12)
        assert store.outbox_ack([in_flight.seq]) == 0  # the late ack does not swallow the update
        [requeued] = store.outbox_pending(Lane.READS, 10)
        assert requeued.record_id == read.read_id and requeued.seq > in_flight.seq
        stored = store.get_read(read.read_id)
        assert stored is not None
        assert (stored.last_seen, stored.observations) == (1_700_000_009.0, 12)
        with pytest.raises(ReadNotFoundError):
            store.finalize_read(str(uuid.uuid4()), last_seen=1.0, observations=1)


def test_recent_reads_are_newest_first_and_respect_since_and_limit(tmp_path: Path) -> None:
    reads = [make_read(first_seen=1000.0 + i, last_seen=1001.0 + i, text=f"PLATE{i}") for i in range(5)]
    with Store(tmp_path / "alpr.db") as store:
        for read in random.Random(4).sample(reads, len(reads)):
            store.save_read(read)
        assert [r.plate for r in store.recent_reads()] == ["PLATE4", "PLATE3", "PLATE2", "PLATE1", "PLATE0"]
        assert [r.plate for r in store.recent_reads(limit=2)] == ["PLATE4", "PLATE3"]
        assert [r.plate for r in store.recent_reads(since=1003.0)] == ["PLATE4", "PLATE3", "PLATE2"]


# -- outbox ----------------------------------------------------------------------------------


def test_outbox_ack_removes_only_the_named_entries(tmp_path: Path) -> None:
    with Store(tmp_path / "alpr.db") as store:
        reads = [make_read() for _ in range(3)]
        for read in reads:
            store.save_read(read)
        pending_reads = store.outbox_pending(Lane.READS, 10)
        pending_images = store.outbox_pending(Lane.IMAGES, 10)
        assert [e.record_id for e in pending_reads] == [r.read_id for r in reads]  # queue order
        assert [e.kind for e in pending_images] == ["read_image"] * 3
        assert store.outbox_pending(Lane.READS, 2) == pending_reads[:2]

        assert store.outbox_ack([pending_reads[0].seq, pending_images[1].seq]) == 2
        assert store.outbox_pending(Lane.READS, 10) == pending_reads[1:]
        assert store.outbox_pending(Lane.IMAGES, 10) == [pending_images[0], pending_images[2]]
        assert store.outbox_ack([pending_reads[0].seq, 10_000]) == 0  # repeated or unknown acks
        assert store.outbox_counts() == {Lane.HITS: 0, Lane.READS: 2, Lane.IMAGES: 2}
        # Acknowledging never deletes the read itself: that is retention's job.
        assert all(store.get_read(r.read_id) is not None for r in reads)


# -- other processes, locks and crashes ------------------------------------------------------

READER = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=0)
print(json.dumps(conn.execute(
    "SELECT (SELECT COUNT(*) FROM reads), (SELECT COUNT(*) FROM read_images), (SELECT COUNT(*) FROM outbox)"
).fetchone()))
conn.close()
"""


def read_counts_in_another_process(db: Path) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", READER, str(db)], capture_output=True, text=True, timeout=20, check=True
    )
    return json.loads(out.stdout)


def test_another_process_sees_only_committed_rows(tmp_path: Path) -> None:
    db = tmp_path / "alpr.db"
    seen_before_commit: list[list[int]] = []
    armed = threading.Event()

    def look_just_before_commit(sql: str, params: object) -> None:
        if armed.is_set() and sql.strip().upper() == "COMMIT":
            # Every row of the read is written by now, inside the still-open transaction.
            seen_before_commit.append(read_counts_in_another_process(db))

    with Store(db, tracer=look_just_before_commit) as store:
        store.save_read(make_read())
        armed.set()
        store.save_read(make_read())
        armed.clear()
        # The reader was not blocked by the open write transaction, and saw none of it.
        assert seen_before_commit == [[1, 1, 2]]
        assert read_counts_in_another_process(db) == [2, 2, 4]


def test_lock_held_past_busy_timeout_is_a_transient_error_and_waits_otherwise(tmp_path: Path) -> None:
    db = tmp_path / "alpr.db"
    with Store(db, busy_timeout_s=0.05) as impatient, Store(db, busy_timeout_s=10.0) as patient:
        with closing(sqlite3.connect(db, isolation_level=None, check_same_thread=False)) as sync_agent:
            sync_agent.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreBusyError) as info:
                impatient.save_read(make_read())
            assert isinstance(info.value, TransientStoreError)

            release = threading.Timer(0.2, sync_agent.execute, ("COMMIT",))
            release.start()
            try:
                patient.save_read(make_read())  # waits for the lock instead of failing
            finally:
                release.join()
        assert len(patient.recent_reads()) == 1
        impatient.save_read(make_read())  # a retry succeeds once the lock is free
        assert len(impatient.recent_reads()) == 2


WRITER = """
import sys, uuid
from pathlib import Path
from edge.store import Store
from edge.types import NO_FIX, Box, PlateRead
with Store(Path(sys.argv[1])) as store:
    while True:
        read_id = str(uuid.uuid4())
        store.save_read(PlateRead(
            read_id=read_id, camera_id="front", text="KILL1", confidence=0.9,
            char_confidences=(0.9,) * 5, region=None, first_seen=1.0, last_seen=2.0, observations=3,
            best_crop_jpeg=bytes(range(256)) * 8, best_box=Box(1, 2, 3, 4), gps=NO_FIX))
        print(read_id, flush=True)
"""


def test_sigkill_mid_save_loop_leaves_intact_db_with_every_read_queued(tmp_path: Path) -> None:
    db = tmp_path / "alpr.db"
    rng = random.Random(20240611)
    committed: set[str] = set()
    for _ in range(5):
        with subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=CHILD_ENV,
        ) as child:
            assert child.stdout is not None
            for _ in range(rng.randint(3, 40)):  # let it write, then kill it mid-loop
                line = child.stdout.readline()
                assert line, f"writer died early with code {child.poll()}"
                committed.add(line.strip())
            time.sleep(rng.uniform(0, 0.01))  # so the kill does not always land at the same step
            child.send_signal(signal.SIGKILL)
            committed.update(line.strip() for line in child.stdout)  # printed => committed
            assert child.wait() == -signal.SIGKILL

        with Store(db) as store:
            assert store.integrity_ok()
        stored = {r[0] for r in raw(db, "SELECT read_id FROM reads")}
        assert committed <= stored
        assert raw(
            db,
            "SELECT COUNT(*) FROM reads r WHERE r.read_id NOT IN (SELECT read_id FROM read_images) "
            "OR (SELECT COUNT(*) FROM outbox o WHERE o.record_id = r.read_id) != 2",
        ) == [(0,)]
        assert raw(db, "SELECT COUNT(*) FROM outbox WHERE record_id NOT IN (SELECT read_id FROM reads)") == [
            (0,)
        ]
    assert len(committed) >= 5 * 3


# -- opening bad files -----------------------------------------------------------------------


def test_file_that_is_not_a_database_is_refused_by_path_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "alpr.db"
    content = b"plate,state\n7ABC123,CA\n" * 200
    path.write_bytes(content)
    with pytest.raises(NotADatabaseError) as info:
        Store(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


def test_unopenable_path_is_an_open_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    bad = tmp_path / "a-file" / "alpr.db"
    with pytest.raises(StoreOpenError, match=re.escape(str(bad))):
        Store(bad)
    with pytest.raises(StoreOpenError, match=re.escape(str(tmp_path))):
        Store(tmp_path)  # a folder, not a file


def test_damaged_file_fails_the_integrity_check(tmp_path: Path) -> None:
    db = tmp_path / "alpr.db"
    with Store(db) as store:
        for i in range(60):
            store.save_read(make_read(text=f"DMG{i:03d}", crop=bytes([i]) * 3000))
        assert store.integrity_ok()
    page_size = raw(db, "PRAGMA page_size")[0][0]
    [(root,)] = raw(db, "SELECT rootpage FROM sqlite_master WHERE name = 'reads'")
    with db.open("r+b") as f:  # scribble over the root page of the reads table
        f.seek(page_size * (root - 1))
        f.write(b"\x2a" * page_size)
    with Store(db) as store:
        assert not store.integrity_ok()


def test_closed_store_refuses_use(tmp_path: Path) -> None:
    store = Store(tmp_path / "alpr.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreClosedError):
        store.save_read(make_read())
    with pytest.raises(StoreClosedError):
        store.outbox_counts()


def test_a_read_stays_unchecked_until_its_full_hotlist_check_is_stored(tmp_path: Path) -> None:
    with Store(tmp_path / "alpr.db") as store:
        first, second = make_read(), make_read(text="8XYZ999", first_seen=1_700_000_010.0)
        store.save_read(first)
        store.save_read(second)
        assert [r.read_id for r in store.unchecked_reads()] == [first.read_id, second.read_id]
        # A retro-check's hits (some new entries only) do not count as the read's check.
        assert store.save_hits(first.read_id, []) == []
        assert len(store.unchecked_reads()) == 2
        store.save_hits(first.read_id, [], checked=True)
        assert [r.read_id for r in store.unchecked_reads()] == [second.read_id]
    # It survives a restart: the next run finds what is left.
    with Store(tmp_path / "alpr.db") as store:
        assert [r.plate for r in store.unchecked_reads()] == ["8XYZ999"]
