"""The hotlist against real SQLite files: imports, matching, staleness, officer entries,
retro-check, and readers in other processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.hotlist import (
    DeltaRejected,
    Freshness,
    Hotlist,
    HotlistSettings,
    ImportRefused,
    ListKind,
    MatchKind,
    OfficerEntryError,
)
from edge.hotlist_formats import HotlistRecord, LineError, parse_delta

DATA = Path(__file__).parent / "data" / "hotlist"
ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def db(tmp_path):
    return tmp_path / "alpr.db"


@pytest.fixture
def hotlist(db, clock):
    with Hotlist(db, clock=clock) as h:
        h.import_file(DATA / "extract.ncic", "ncic")
        yield h


def delta(tmp_path: Path, version: int, *changes: dict, lists: tuple[str, ...] = ()) -> Path:
    path = tmp_path / f"delta-{version}.jsonl"
    lines = [json.dumps({"version": version, "lists": list(lists)})] + [json.dumps(c) for c in changes]
    path.write_text("\n".join(lines) + "\n")
    return path


def entry_rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, plate, state, list_kind FROM hotlist_entries ORDER BY id").fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------- matching


def test_exact_read_of_a_listed_plate_hits_with_its_record(hotlist):
    (hit,) = hotlist.match("7ABC123", "CA")
    assert hit.kind is MatchKind.EXACT and hit.differing_positions == () and not hit.state_mismatch
    e = hit.entry
    assert (e.plate, e.state, e.list_kind, e.make, e.model, e.color, e.vehicle_year, e.agency) == (
        "7ABC123",
        "CA",
        ListKind.STOLEN_VEHICLE,
        "TOYT",
        "CAM",
        "BLU",
        2019,
        "CA0194200",
    )
    assert hit.list_version and hit.list_version.startswith("ncic:")
    assert hit.list_age_s == 0.0 and hit.freshness is Freshness.FRESH and not hit.stale


@pytest.mark.parametrize(
    ("read", "positions"),
    [("5SAMOD8", (4,)), ("SSAM0D8", (0,)), ("5SAM0DB", (6,)), ("55AM0D8", (1,)), ("5SAMQ08", (4, 5))],
)
def test_ocr_confusion_read_still_hits_as_approximate_with_the_differing_positions(hotlist, read, positions):
    hits = hotlist.match(read, "CA")
    assert [(h.entry.plate, h.kind, h.differing_positions) for h in hits] == [
        ("5SAM0D8", MatchKind.APPROXIMATE, positions)
    ]


def test_read_missing_a_character_hits_approximate(hotlist):
    (hit,) = hotlist.match("7ABC12", "CA")
    assert hit.entry.plate == "7ABC123" and hit.kind is MatchKind.APPROXIMATE
    assert [(e.op, e.entry_index, e.entry_char) for e in hit.edits] == [("missing", 6, "3")]


def test_read_with_an_extra_character_hits_approximate(hotlist):
    (hit,) = hotlist.match("57SAM0D8", "CA")
    assert hit.entry.plate == "5SAM0D8"
    assert [(e.op, e.read_index, e.read_char) for e in hit.edits] == [("extra", 1, "7")]
    assert hit.differing_positions == (1,)


def test_state_mismatch_marks_the_hit_but_does_not_hide_it(hotlist):
    (hit,) = hotlist.match("7ABC123", "NV")
    assert hit.state_mismatch and hit.kind is MatchKind.EXACT
    (unknown,) = hotlist.match("7ABC123", None)
    assert not unknown.state_mismatch


def test_hits_rank_exact_before_approximate_then_priority(hotlist):
    # ABC1234 is listed twice (TX stolen plate, NV wanted person); ABC1Z34 is confusable with it
    hits = hotlist.match("ABC1234", "TX")
    assert [(h.entry.state, h.entry.list_kind, h.state_mismatch) for h in hits] == [
        ("NV", ListKind.WANTED_PERSON, True),  # priority 80 beats stolen plate's 60
        ("TX", ListKind.STOLEN_PLATE, False),
    ]
    hits = hotlist.match("ABC123", None)
    assert all(h.kind is MatchKind.APPROXIMATE for h in hits)
    assert hotlist.match("8XYZ999", None)[0].entry.priority == 100  # AMBER highest


def test_priorities_come_from_settings_per_list(db, clock):
    settings = HotlistSettings(priorities={ListKind.STOLEN_PLATE: 99})
    with Hotlist(db, settings, clock=clock) as h:
        h.import_file(DATA / "extract.ncic", "ncic")
        assert [hit.entry.list_kind for hit in h.match("ABC1234", "TX")] == [
            ListKind.STOLEN_PLATE,
            ListKind.WANTED_PERSON,
        ]


def test_approximate_matching_off_gives_only_exact_hits(db, clock):
    with Hotlist(db, HotlistSettings(approximate_matching=False), clock=clock) as h:
        h.import_file(DATA / "extract.ncic", "ncic")
        assert h.match("5SAMOD8", "CA") == []
        assert [x.kind for x in h.match("5SAM0D8", "CA")] == [MatchKind.EXACT]


def test_read_text_is_normalized_before_matching(hotlist):
    assert [h.kind for h in hotlist.match(" 7abc-123 ", "ca")] == [MatchKind.EXACT]
    assert hotlist.match("", None) == [] and hotlist.match("----", None) == []


# ---------------------------------------------------------------- imports


def test_duplicate_keys_are_merged_and_same_plate_in_other_states_kept(hotlist, db):
    rows = [r for r in entry_rows(db) if r[1] in ("7ABC123", "ABC1234")]
    assert sorted(r[1:] for r in rows) == [
        ("7ABC123", "CA", "stolen_vehicle"),
        ("ABC1234", "NV", "wanted_person"),
        ("ABC1234", "TX", "stolen_plate"),
    ]
    (hit,) = hotlist.match("7ABC123", "CA")
    assert hit.entry.source_record_id == "V12345678;V12345679"
    assert hit.entry.entered_on == "2026-11-01"  # the earlier of the two


def test_bad_file_is_refused_with_every_bad_line_and_the_old_list_stays(hotlist, db):
    before = entry_rows(db)
    with pytest.raises(ImportRefused) as refused:
        hotlist.import_file(DATA / "bad.ncic", "ncic")
    assert [e.line for e in refused.value.errors] == [3, 5, 6]
    assert entry_rows(db) == before
    assert hotlist.match("8XYZ999", "CA")


def test_skip_bad_imports_the_good_lines_and_counts_the_bad(hotlist):
    result = hotlist.import_file(DATA / "bad.ncic", "ncic", skip_bad=True)
    assert result.skipped_bad == 3 and [e.line for e in result.errors] == [3, 5, 6]
    assert result.records == 6 and result.added == 0
    assert hotlist.counters.bad_lines_skipped == 3


def test_new_extract_removes_absent_keys_and_keeps_ids_of_kept_keys(hotlist, db, tmp_path):
    before = {r[1:]: r[0] for r in entry_rows(db)}
    lines = (DATA / "extract.ncic").read_text().splitlines()
    smaller = tmp_path / "next.ncic"
    smaller.write_text("\n".join(line for line in lines if "8XYZ999" not in line) + "\n")
    result = hotlist.import_file(smaller, "ncic")
    assert (result.added, result.removed) == (0, 1)
    after = {r[1:]: r[0] for r in entry_rows(db)}
    assert ("8XYZ999", "CA", "amber_alert") not in after
    assert all(before[k] == v for k, v in after.items())
    assert hotlist.match("8XYZ999", "CA") == []


def test_header_only_file_is_refused_rather_than_emptying_the_lists(hotlist, db, tmp_path):
    header_only = tmp_path / "empty.ncic"
    header_only.write_text("NCIC LPR EXTRACT\n")
    before = entry_rows(db)
    with pytest.raises(ImportRefused, match="no entries"):
        hotlist.import_file(header_only, "ncic")
    assert entry_rows(db) == before


def test_truncated_clew_table_is_refused(db, clock, tmp_path):
    truncated = tmp_path / "svs.tbl"
    truncated.write_text("".join((DATA / "svs.tbl").read_text().splitlines(keepends=True)[:-1]))
    with Hotlist(db, clock=clock) as h:
        with pytest.raises(ImportRefused) as refused:
            h.import_file(truncated, "clew")
        assert "truncated" in refused.value.errors[0].message
        assert h.status() == []


def test_clew_import_replaces_only_its_own_list(hotlist):
    result = hotlist.import_file(DATA / "svs.tbl", "clew")
    assert result.lists == (ListKind.STOLEN_VEHICLE,) and result.added == 3
    assert hotlist.match("6TRK001", "CA")[0].entry.list_kind is ListKind.STOLEN_VEHICLE
    assert hotlist.match("7ABC123", "CA"), "NCIC's stolen vehicle stays: another source"
    assert hotlist.match("8XYZ999", "CA"), "other lists untouched"


def test_csv_import_applies_explicit_priority_and_expiry(db, clock):
    with Hotlist(db, clock=clock) as h:
        h.import_file(DATA / "hotlist.csv", "csv")
        (hit,) = h.match("BOLO77", "WA")
        assert hit.entry.priority == 95 and not hit.state_mismatch  # entry has no state
        clock.now = 1_900_000_000.0  # past 2027-06-30
        assert h.match("MSS1010", "WA") == []
        assert h.counters.expired_entries_skipped == 1


def test_parsing_a_large_file_does_not_lock_the_shared_database(db, clock):
    other = sqlite3.connect(db, timeout=0, isolation_level=None)
    probes: list[bool] = []

    def records():
        for i in range(3000):
            if i == 1500:
                try:
                    other.execute("BEGIN IMMEDIATE")
                    other.execute("ROLLBACK")
                    probes.append(True)
                except sqlite3.OperationalError:
                    probes.append(False)
            yield HotlistRecord(plate=f"P{i:05d}", state="CA", list_kind=ListKind.STOLEN_PLATE)

    try:
        with Hotlist(db, clock=clock) as h:
            result = h.import_records(records(), source="csv", lists=None, version="v1")
        assert probes == [True] and result.added == 3000
    finally:
        other.close()


# ---------------------------------------------------------------- deltas


def test_delta_adds_removes_and_records_its_version(hotlist, tmp_path):
    result = hotlist.import_file(DATA / "delta-101.jsonl", "delta")
    assert (result.version, result.added, result.removed) == (101, 1, 1)
    (hit,) = hotlist.match("9NEW001", "CA")
    assert hit.entry.make == "NISS" and hit.list_version == "101"
    assert hotlist.match("8XYZ999", "CA") == []
    status = {s.list_kind: s for s in hotlist.status()}
    assert status[ListKind.AMBER_ALERT].version == "101" and status[ListKind.AMBER_ALERT].entries == 0


def test_delta_older_than_the_version_in_force_is_refused_whole(hotlist, tmp_path):
    hotlist.import_file(DATA / "delta-101.jsonl", "delta")
    old = delta(
        tmp_path,
        100,
        {"op": "add", "plate": "OLD1", "state": "CA", "list": "stolen_vehicle"},
    )
    with pytest.raises(DeltaRejected, match="rollback"):
        hotlist.import_file(old, "delta")
    assert hotlist.match("OLD1", "CA") == []


def test_delta_with_a_bad_line_changes_nothing(hotlist, tmp_path):
    path = delta(
        tmp_path,
        200,
        {"op": "remove", "plate": "7ABC123", "state": "CA", "list": "stolen_vehicle"},
        {"op": "add", "plate": "BAD PLATE!", "list": "V"},
    )
    with pytest.raises(ImportRefused) as refused:
        hotlist.import_file(path, "delta")
    assert [e.line for e in refused.value.errors] == [3]
    assert hotlist.match("7ABC123", "CA")


def test_delta_from_parsed_lines_is_the_sync_agents_entry_point(hotlist):
    lines = [b'{"version": 5}\n', b'{"op": "add", "plate": "SYNC1", "list": "W"}\n']
    result = hotlist.apply_delta(parse_delta(lines))
    assert result.lists == (ListKind.WANTED_PERSON,)
    assert hotlist.match("SYNC1", None)[0].entry.source == "delta"


# ---------------------------------------------------------------- readers and writers


def test_removed_entry_stops_matching_in_a_running_reader(db, clock, tmp_path):
    with Hotlist(db, clock=clock) as writer, Hotlist(db, clock=clock) as reader:
        writer.import_file(DATA / "extract.ncic", "ncic")
        assert reader.match("8XYZ999", "CA")
        writer.import_file(DATA / "delta-101.jsonl", "delta")
        assert reader.match("8XYZ999", "CA") == []
        assert reader.match("9NEW001", "CA")


def _run_writer(db: Path, script: str) -> None:
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(script)
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=60)


def test_change_committed_by_another_process_is_seen_at_the_next_lookup(hotlist, db):
    assert hotlist.match("XPROC1", None) == []
    seq = hotlist.change_seq
    _run_writer(
        db,
        """
        import sys
        from edge.hotlist import Hotlist
        from edge.hotlist_formats import parse_delta
        with Hotlist(sys.argv[1]) as h:
            h.apply_delta(parse_delta([b'{"version": 9}\\n',
                b'{"op": "add", "plate": "XPROC1", "state": "CA", "list": "A"}\\n']))
        """,
    )
    assert hotlist.changed()
    (hit,) = hotlist.match("XPROC1", "CA")
    assert hit.entry.list_kind is ListKind.AMBER_ALERT and hotlist.change_seq > seq


def test_lookup_does_not_wait_while_another_process_holds_the_write_lock(hotlist, db):
    code = textwrap.dedent(
        f"""
        import sqlite3, sys
        conn = sqlite3.connect({str(db)!r}, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM hotlist_entries")
        conn.execute("UPDATE hotlist_meta SET value = value + 1 WHERE key = 'change_seq'")
        print("locked", flush=True)
        sys.stdin.readline()
        conn.execute("ROLLBACK")
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        hotlist._conn.execute("PRAGMA busy_timeout = 0")  # a wait would now be an error, not a delay
        assert [h.entry.plate for h in hotlist.match("8XYZ999", "CA")] == ["8XYZ999"]
        assert hotlist.status()
    finally:
        proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0


def test_index_rebuilt_after_mass_removal_still_matches_correctly(db, clock, tmp_path):
    records = [
        HotlistRecord(plate=f"R{i:05d}", state="TX", list_kind=ListKind.STOLEN_PLATE) for i in range(30000)
    ]
    with Hotlist(db, clock=clock) as writer, Hotlist(db, clock=clock) as reader:
        writer.import_records(records, source="csv", lists=None, version="1")
        reader.load()
        writer.import_records(records[:12000], source="csv", lists=None, version="2")
        assert reader.match("R20000", "TX") == []  # removed, though still in the stale index
        assert reader.wait_idle(30)
        assert reader.counters.rebuilds == 2
        assert reader.index_bytes == 12000 * 16
        assert [h.kind for h in reader.match("R11999", "TX")] == [MatchKind.EXACT]
        assert reader.match("R12000", "TX") == []


# ---------------------------------------------------------------- staleness


def test_list_age_moves_from_fresh_to_aging_to_stale(hotlist, clock):
    clock.now += 13 * HOUR
    (hit,) = hotlist.match("7ABC123", "CA")
    assert hit.list_age_s == pytest.approx(13 * HOUR) and hit.freshness is Freshness.AGING and not hit.stale
    clock.now += 36 * HOUR
    (hit,) = hotlist.match("7ABC123", "CA")
    assert hit.freshness is Freshness.STALE and hit.stale
    stale = {s.list_kind: s.freshness for s in hotlist.status()}
    assert stale[ListKind.STOLEN_VEHICLE] is Freshness.STALE
    hotlist.import_file(DATA / "extract.ncic", "ncic")
    assert not hotlist.match("7ABC123", "CA")[0].stale


def test_status_lists_entries_version_and_age_per_list(hotlist, clock):
    clock.now += 2 * HOUR
    status = {s.list_kind: s for s in hotlist.status()}
    assert status[ListKind.STOLEN_PLATE].entries == 1
    assert status[ListKind.STOLEN_VEHICLE].entries == 1  # two lines, one key
    assert status[ListKind.SEX_OFFENDER].entries == 0  # covered by the NCIC extract, empty
    assert status[ListKind.AMBER_ALERT].age_s == pytest.approx(2 * HOUR)
    assert status[ListKind.AMBER_ALERT].freshness is Freshness.FRESH


def test_settings_refuse_limits_in_the_wrong_order():
    with pytest.raises(ValueError, match="fresh_hours"):
        HotlistSettings(fresh_hours=50, stale_hours=10)
    with pytest.raises(ValueError, match="unknown lists"):
        HotlistSettings(priorities={"parking": 1})


# ---------------------------------------------------------------- officer entries


def audit_rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT actor, action, subject, reason, outcome, details FROM audit ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def test_officer_bolo_hits_until_it_expires_and_every_step_is_audited(hotlist, db, clock):
    entry = hotlist.add_bolo(
        "6LOK 442", "CA", reason="robbery suspect vehicle", officer="B123", expires_at=clock.now + HOUR
    )
    (hit,) = hotlist.match("6L0K442", "CA")
    assert (
        hit.entry.id == entry.id
        and hit.entry.list_kind is ListKind.OFFICER_BOLO
        and hit.entry.officer == "B123"
    )
    clock.now += 2 * HOUR
    assert hotlist.match("6LOK442", "CA") == []
    assert hotlist.list_bolos() == [] and len(hotlist.list_bolos(include_expired=True)) == 1
    assert hotlist.purge_expired() == 1
    actions = [(r[0], r[1], r[4]) for r in audit_rows(db)]
    assert actions == [("B123", "hotlist.bolo.add", "ok"), ("system", "hotlist.bolo.expire", "ok")]


def test_bolo_removal_is_audited_even_when_nothing_was_there(hotlist, db, clock):
    hotlist.add_bolo("BOLO1", None, reason="r", officer="B1", expires_at=clock.now + HOUR)
    assert hotlist.remove_bolo("BOLO1", None, officer="B2", reason="found")
    assert not hotlist.remove_bolo("BOLO1", None, officer="B2", reason="again")
    assert [(r[1], r[4]) for r in audit_rows(db)][-2:] == [
        ("hotlist.bolo.remove", "ok"),
        ("hotlist.bolo.remove", "not_found"),
    ]
    assert hotlist.match("BOLO1", None) == []


@pytest.mark.parametrize(
    ("plate", "reason", "officer", "expires_in", "fragment"),
    [
        ("AB#1", "r", "o", HOUR, "not a plate"),
        ("AB1", " ", "o", HOUR, "reason"),
        ("AB1", "r", "", HOUR, "officer"),
        ("AB1", "r", "o", -1.0, "future"),
    ],
)
def test_officer_entry_without_plate_reason_officer_or_future_expiry_is_refused(
    hotlist, db, clock, plate, reason, officer, expires_in, fragment
):
    with pytest.raises(OfficerEntryError, match=fragment):
        hotlist.add_bolo(plate, None, reason=reason, officer=officer, expires_at=clock.now + expires_in)
    with pytest.raises(OfficerEntryError, match=fragment):
        hotlist.add_suppression(plate, reason=reason, officer=officer, expires_at=clock.now + expires_in)
    assert audit_rows(db) == []


def test_suppression_hides_a_known_false_hit_until_it_expires(hotlist, db, clock):
    # a local car reads as 5SAMOD8, confusable with the listed felony vehicle 5SAM0D8
    assert hotlist.match("5SAMOD8", "CA")
    s = hotlist.add_suppression(
        "5SAMOD8", reason="local fleet car, checked", officer="B77", expires_at=clock.now + 8 * HOUR
    )
    assert hotlist.match("5SAMOD8", "CA") == []
    assert hotlist.match("5SAM0D8", "CA"), "the listed plate itself still hits"
    (held,) = hotlist.match("5SAMOD8", "CA", include_suppressed=True)
    assert held.suppressed_by == s.id
    assert hotlist.counters.suppressed_hits == 2
    clock.now += 9 * HOUR
    assert hotlist.match("5SAMOD8", "CA")
    hotlist.purge_expired()
    assert [r[1] for r in audit_rows(db)] == ["hotlist.suppress.add", "hotlist.suppress.expire"]


def test_suppression_scoped_to_a_list_leaves_other_lists_alerting(hotlist, clock):
    hotlist.add_suppression(
        "ABC1234",
        reason="plate reissued",
        officer="B9",
        expires_at=clock.now + HOUR,
        list_kind=ListKind.STOLEN_PLATE,
    )
    assert [h.entry.list_kind for h in hotlist.match("ABC1234", "TX")] == [ListKind.WANTED_PERSON]


def test_removed_suppression_stops_acting_and_is_audited(hotlist, db, clock):
    s = hotlist.add_suppression("7ABC123", reason="r", officer="B1", expires_at=clock.now + HOUR)
    assert hotlist.match("7ABC123", "CA") == []
    assert hotlist.remove_suppression(s.id, officer="B2", reason="vehicle stolen again")
    assert hotlist.match("7ABC123", "CA")
    assert (
        hotlist.list_suppressions() == []
        and hotlist.list_suppressions(include_inactive=True)[0].removed_by == "B2"
    )
    assert [r[1] for r in audit_rows(db)] == ["hotlist.suppress.add", "hotlist.suppress.remove"]


def test_audit_rows_cannot_be_changed_or_deleted(hotlist, db, clock):
    hotlist.add_bolo("AUD1", None, reason="r", officer="B1", expires_at=clock.now + HOUR)
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit SET actor = 'someone else'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit")
    finally:
        conn.close()
    assert audit_rows(db)[0][0] == "B1"


# ---------------------------------------------------------------- retro-check


def make_reads(db: Path, reads: list[tuple[str, str, str | None, float]]) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute("CREATE TABLE reads (read_id TEXT PRIMARY KEY, plate TEXT, region TEXT, last_seen REAL)")
        conn.executemany("INSERT INTO reads VALUES (?, ?, ?, ?)", reads)
        conn.commit()
    finally:
        conn.close()


def test_retro_check_finds_recent_reads_of_newly_added_entries_only(hotlist, db, clock):
    make_reads(
        db,
        [
            ("r-recent", "9NEW0O1", "CA", clock.now - 2 * HOUR),  # confusable with the new entry
            ("r-old", "9NEW001", "CA", clock.now - 30 * HOUR),  # outside the 24 h window
            ("r-listed-before", "7ABC123", "CA", clock.now - HOUR),  # entry was already in force
        ],
    )
    result = hotlist.import_file(DATA / "delta-101.jsonl", "delta")
    check = hotlist.retro_check(after_entry_id=result.first_new_id - 1)
    assert [(h.read_id, h.entry.plate, h.kind, h.retroactive, h.read_at) for h in check.hits] == [
        ("r-recent", "9NEW001", MatchKind.APPROXIMATE, True, clock.now - 2 * HOUR)
    ]
    assert check.reads_checked == 2


def test_retro_check_watermark_makes_each_entry_checked_once(hotlist, db, clock):
    make_reads(db, [("r1", "8XYZ999", "CA", clock.now - HOUR)])
    first = hotlist.retro_check()  # watermark starts at 0: the whole first import is new
    assert [h.read_id for h in first.hits] == ["r1"]
    hotlist.mark_retro_checked(first.checked_up_to)
    assert hotlist.retro_check().hits == ()


def test_retro_check_without_a_reads_table_returns_nothing(hotlist):
    check = hotlist.retro_check(after_entry_id=0)
    assert check.hits == () and check.reads_checked == 0


def test_line_errors_print_with_their_line_number():
    assert str(LineError(7, "plate is blank")) == "line 7: plate is blank"


def test_entries_added_after_load_are_found_after_the_tail_is_merged(db, clock, monkeypatch):
    import edge.hotlist

    monkeypatch.setattr(edge.hotlist._PlateIndex, "TAIL_MERGE", 50)
    with Hotlist(db, clock=clock) as writer, Hotlist(db, clock=clock) as reader:
        writer.import_file(DATA / "extract.ncic", "ncic")
        reader.load()
        for batch in range(3):
            records = [
                HotlistRecord(plate=f"T{batch}{i:04d}", state="WA", list_kind=ListKind.STOLEN_PLATE)
                for i in range(40)
            ]
            writer.import_records(records, source=f"csv{batch}", lists=None, version=str(batch))
            assert [h.entry.plate for h in reader.match(f"T{batch}0039", "WA")] == [f"T{batch}0039"]
        assert reader.index_bytes == (5 + 120) * 16
        assert all(reader.match(f"T{b}{i:04d}", "WA") for b in range(3) for i in (0, 17, 39))
        assert reader.match("7ABC123", "CA")


def test_mark_refreshed_keeps_an_unchanged_delta_fed_list_fresh(tmp_path):
    from edge.hotlist import Hotlist, HotlistSettings, parse_delta

    now = [1_000_000.0]
    hl = Hotlist(tmp_path / "d.db", HotlistSettings(fresh_hours=12, stale_hours=48), clock=lambda: now[0])
    try:
        lines = [
            b'{"version": 5, "lists": ["stolen_vehicle"]}',
            b'{"op":"add","plate":"ABC123","state":"CA","list":"stolen_vehicle"}',
        ]
        hl.apply_delta(parse_delta(lines))
        now[0] += 50 * 3600
        assert [s.freshness for s in hl.status()] == ["stale"]
        assert hl.mark_refreshed(source="delta") == 1
        (st,) = hl.status()
        assert st.freshness == "fresh" and st.age_s == 0 and st.version == "5"
        assert hl.match("ABC123")[0].stale is False
    finally:
        hl.close()


def test_status_counts_follow_changes_made_by_another_connection(tmp_path):
    import time

    from edge.hotlist import Hotlist, parse_delta

    db = tmp_path / "d.db"
    reader, writer = Hotlist(db), Hotlist(db)
    try:
        add = b'{"op":"add","plate":"%s","state":"CA","list":"stolen_vehicle"}'
        writer.apply_delta(parse_delta([b'{"version": 1, "lists": ["stolen_vehicle"]}', add % b"AAA111"]))
        assert [s.entries for s in reader.status()] == [1]
        assert [s.entries for s in reader.status()] == [1]  # unchanged: served without recounting
        writer.apply_delta(
            parse_delta([b'{"version": 2, "lists": ["stolen_vehicle"]}', add % b"BBB222", add % b"CCC333"])
        )
        assert [s.entries for s in reader.status()] == [3]
        writer.purge_expired()
        writer.add_bolo("DDD444", "CA", officer="B1", reason="seen at scene", expires_at=time.time() + 3600)
        assert sorted(s.entries for s in reader.status()) == [1, 3]
    finally:
        reader.close()
        writer.close()
