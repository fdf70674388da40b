"""Hotlist parsers and the confusion table: good files, bad lines, and fuzzed input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.hotlist import Hotlist, ImportRefused
from edge.hotlist_formats import (
    DeltaChange,
    DeltaHeader,
    HotlistRecord,
    LineError,
    ListKind,
    delta_line,
    ncic_line,
    parse_clew,
    parse_csv,
    parse_delta,
    parse_ncic,
)
from edge.plate_confusions import (
    ALPHABET,
    CONFUSION_GROUPS,
    align,
    normalize_read,
    probe_codes,
    skeleton,
    skeleton_code,
)

DATA = Path(__file__).parent / "data" / "hotlist"
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def lines_of(text: str | bytes) -> list[bytes]:
    raw = text.encode() if isinstance(text, str) else text
    return raw.splitlines(keepends=True)


def split(items):
    good = [i for i in items if not isinstance(i, LineError)]
    bad = [i for i in items if isinstance(i, LineError)]
    return good, bad


# ---------------------------------------------------------------- good files


def test_ncic_fields_are_read_from_their_columns():
    good, bad = split(list(parse_ncic(lines_of((DATA / "extract.ncic").read_bytes()))))
    assert bad == []
    first = good[0]
    assert first == HotlistRecord(
        plate="7ABC123",
        state="CA",
        list_kind=ListKind.STOLEN_VEHICLE,
        source_record_id="V12345678",
        agency="CA0194200",
        entered_on="2026-11-02",
        vehicle_year=2019,
        make="TOYT",
        model="CAM",
        color="BLU",
    )
    assert {r.list_kind for r in good} >= {
        ListKind.AMBER_ALERT,
        ListKind.WANTED_PERSON,
        ListKind.FELONY_VEHICLE,
    }


def test_ncic_line_round_trips_through_the_parser():
    rec = HotlistRecord(
        plate="ZZ9",
        state="",
        list_kind=ListKind.SEX_OFFENDER,
        color="BLK/WHI",
        entered_on="2024-02-29",
    )
    (parsed,) = parse_ncic([b"header\n", ncic_line(rec).encode() + b"\n"])
    assert parsed == rec


def test_clew_table_list_comes_from_the_file_and_footer_count_is_checked():
    good, bad = split(list(parse_clew(lines_of((DATA / "svs.tbl").read_bytes()), ListKind.STOLEN_VEHICLE)))
    assert bad == []
    assert [(r.plate, r.state, r.entered_on) for r in good] == [
        ("4GHJ567", "CA", "2026-11-01"),
        ("6TRK001", "CA", "2026-11-20"),
        ("AB12CD", "NV", "2026-10-15"),
    ]
    wrong_count = (DATA / "svs.tbl").read_text().replace("TOTAL RECORDS: 3", "TOTAL RECORDS: 4")
    _, bad = split(list(parse_clew(lines_of(wrong_count), ListKind.STOLEN_VEHICLE)))
    assert [(e.line, "footer counts 4") for e in bad] == [(5, "footer counts 4")]
    assert "footer counts 4 records but the file has 3" in bad[0].message


def test_clew_without_footer_is_reported_as_truncated():
    text = "\n".join((DATA / "svs.tbl").read_text().splitlines()[:-1]) + "\n"
    _, bad = split(list(parse_clew(lines_of(text), ListKind.STOLEN_VEHICLE)))
    assert len(bad) == 1 and bad[0].line == 5 and "truncated" in bad[0].message


def test_csv_normalizes_plates_and_reads_list_codes_priority_and_expiry():
    good, bad = split(list(parse_csv(lines_of((DATA / "hotlist.csv").read_bytes()))))
    assert bad == []
    by_plate = {r.plate: r for r in good}
    assert set(by_plate) == {"WNT4455", "MSS1010", "BOLO77"}
    assert by_plate["MSS1010"].list_kind is ListKind.MISSING_PERSON
    assert by_plate["MSS1010"].expires_at is not None
    assert by_plate["BOLO77"].priority == 95 and by_plate["BOLO77"].state == ""
    assert by_plate["WNT4455"].entered_on == "2026-11-20"


def test_delta_lines_round_trip():
    rec = HotlistRecord(
        plate="9NEW001", state="CA", list_kind=ListKind.STOLEN_VEHICLE, make="NISS", priority=5
    )
    lines = [
        b'{"version": 7, "lists": ["stolen_vehicle"]}\n',
        delta_line(DeltaChange("add", rec.key, rec)).encode(),
    ]
    header, change = parse_delta(lines)
    assert header == DeltaHeader(version=7, lists=frozenset({ListKind.STOLEN_VEHICLE}))
    assert change == DeltaChange("add", rec.key, rec)


# ---------------------------------------------------------------- bad lines, named


def test_every_bad_ncic_line_is_reported_with_its_number_and_reason():
    _, bad = split(list(parse_ncic(lines_of((DATA / "bad.ncic").read_bytes()))))
    assert [(e.line, e.message.split(" ")[0]) for e in bad] == [(3, "list"), (5, "line"), (6, "incident")]
    assert "not a calendar date" in bad[2].message


GOOD = b"VV12345678CA0194200202611027ABC123   CA      2019TOYTCAM  BLU"  # plate at 27-37


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", (0, "empty file")),
        (b"V" + b"x" * 100_000 + b"\n", (2, "100001 characters long")),
        (GOOD[:29] + b"\xc3\xa9" + GOOD[31:] + b"\n", (2, "non-ASCII byte 0xc3 at column 29")),
        (GOOD[:38] + b"\n", (2, "at least 39 needed")),
        (GOOD[:23] + b"13" + GOOD[25:] + b"\n", (2, "not a calendar date")),
        (GOOD[:24] + b" " + GOOD[25:] + b"\n", (2, "not YYYYMMDD")),
        (GOOD[:29] + b"!" + GOOD[30:] + b"\n", (2, "characters other than")),
        (GOOD[:45] + b"20X9" + GOOD[49:] + b"\n", (2, "vehicle year")),
        (GOOD[:30] + b"\x07" + GOOD[31:] + b"\n", (2, "control character 0x07 at column 30")),
        (GOOD[:37] + b"C1" + GOOD[39:] + b"\n", (2, "two-letter")),
        (b" " * 60 + b"\n", (2, "blank line")),
    ],
)
def test_malformed_ncic_line_gives_a_clear_error(body, expected):
    data = (b"HEADER\n" + body) if body else b""
    _, bad = split(list(parse_ncic(lines_of(data))))
    assert len(bad) == 1
    assert bad[0].line == expected[0]
    assert expected[1] in bad[0].message


def test_header_only_ncic_file_has_no_records_and_no_errors():
    assert list(parse_ncic([b"NCIC LPR EXTRACT\n"])) == []


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", 0, "empty file"),
        ("state,list\nCA,V\n", 1, "no 'plate' column"),
        ("plate,list\nABC123,nonsense\n", 2, "not a known list"),
        ("plate,list\nABC123,V,extra\n", 2, "3 fields"),
        ("plate,list,expires\nABC123,V,2026-02-30\n", 2, "expiry"),
        ("plate,list\nABC123,\n", 2, "no list given"),
        ("plate,list,description\nABC123,V," + "d" * 2000 + "\n", 2, "at most 1000"),
        ('plate,list\n"ABC123,V\n', 2, "not valid CSV"),
    ],
)
def test_malformed_csv_gives_a_clear_error(text, line, fragment):
    _, bad = split(list(parse_csv(lines_of(text))))
    assert bad, "expected an error"
    assert bad[0].line == line
    assert fragment in bad[0].message


def test_csv_bytes_that_are_not_utf8_are_reported():
    _, bad = split(list(parse_csv([b"plate,list,description\n", b"ABC123,V,caf\xe9\n"])))
    assert [(e.line, "not UTF-8" in e.message) for e in bad] == [(2, True)]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", 0, "empty file"),
        ('{"lists": []}\n', 1, "version"),
        ('{"version": 2}\n{"op": "rename", "plate": "A1"}\n', 2, "op must be"),
        ('{"version": 2}\n[1]\n', 2, "not a JSON object"),
        ('{"version": 2}\n{"op": "add", "plate": "A1"\n', 2, "not JSON"),
        (
            '{"version": 2}\n{"op": "add", "plate": "A1", "list": "V", "make": {"x": 1}}\n',
            2,
            "must be a string",
        ),
    ],
)
def test_malformed_delta_gives_a_clear_error(text, line, fragment):
    _, bad = split([i for i in parse_delta(lines_of(text)) if not isinstance(i, DeltaHeader)])
    assert bad and bad[0].line == line and fragment in bad[0].message


# ---------------------------------------------------------------- fuzz


@FUZZ
@given(st.lists(st.binary(max_size=120), max_size=12))
def test_fuzzed_bytes_never_crash_any_parser(chunks):
    data = b"\n".join(chunks)
    for items in (
        parse_ncic(lines_of(data)),
        parse_clew(lines_of(data), ListKind.STOLEN_PLATE),
        parse_csv(lines_of(data)),
        parse_delta(lines_of(data)),
    ):
        n_lines = len(lines_of(data))
        for item in items:
            if isinstance(item, LineError):
                assert 0 <= item.line <= n_lines + 1
                assert item.message


def _valid_ncic_lines() -> list[bytes]:
    return lines_of((DATA / "extract.ncic").read_bytes())


@st.composite
def damaged_ncic(draw):
    """The valid fixture with one data line damaged in one of the ways the issue lists."""
    lines = _valid_ncic_lines()
    index = draw(st.integers(1, len(lines) - 1))
    line = lines[index].rstrip(b"\n")
    how = draw(st.sampled_from(["truncate", "widen", "non_ascii", "huge", "bad_date", "bad_code"]))
    if how == "truncate":
        line = line[: draw(st.integers(0, 38))]
    elif how == "widen":
        line = line + b"X" * draw(st.integers(200, 400))
    elif how == "non_ascii":
        at = draw(st.integers(0, len(line) - 1))
        line = line[:at] + bytes([draw(st.integers(128, 255))]) + line[at + 1 :]
    elif how == "huge":
        line = line + b"Z" * 100_000
    elif how == "bad_date":
        month = draw(st.sampled_from([b"00", b"13", b"99"]))
        line = line[:23] + month + line[25:]
    else:
        line = draw(st.sampled_from([b"B", b"Z", b"1", b"-"])) + line[1:]
    lines[index] = line + b"\n"
    return lines, index + 1


@FUZZ
@given(damaged_ncic())
def test_damaged_ncic_line_is_named_by_number(case):
    lines, number = case
    _, bad = split(list(parse_ncic(lines)))
    assert [e.line for e in bad] == [number]


@pytest.fixture(scope="module")
def loaded_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzzdb") / "alpr.db"
    with Hotlist(path) as hotlist:
        hotlist.import_file(DATA / "extract.ncic", "ncic")
    return path


def _snapshot(path: Path) -> list[tuple]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT e.id, e.plate, e.state, e.list_kind, e.updated_at, l.version FROM hotlist_entries e "
            "LEFT JOIN hotlist_lists l USING (list_kind) ORDER BY e.id"
        ).fetchall()
    finally:
        conn.close()


@FUZZ
@given(case=damaged_ncic(), fmt=st.sampled_from(["ncic", "clew", "csv"]))
def test_refused_fuzzed_import_leaves_the_list_in_force_unchanged(loaded_db, tmp_path_factory, case, fmt):
    lines, _ = case
    path = tmp_path_factory.mktemp("fuzzfile") / ("svs.tbl" if fmt == "clew" else f"in.{fmt}")
    path.write_bytes(b"".join(lines))
    before = _snapshot(loaded_db)
    with Hotlist(loaded_db) as hotlist, pytest.raises(ImportRefused) as refused:
        hotlist.import_file(path, fmt)
    assert refused.value.errors or "no entries" in str(refused.value)
    assert _snapshot(loaded_db) == before


# ---------------------------------------------------------------- the confusion table


def test_every_confusion_group_shares_one_skeleton():
    for group in CONFUSION_GROUPS:
        assert len({skeleton(c) for c in group}) == 1
    assert skeleton("0ODQ1ILT2Z5S8B6G") == skeleton("O0QD7"[:0] + "0ODQ1ILT2Z5S8B6G")
    assert normalize_read(" 7-abc.123 ") == "7ABC123"


plates = st.text(alphabet=ALPHABET, min_size=1, max_size=9)


def _related(read: str, entry: str) -> bool:
    """Brute force: same skeleton, or one character removed from one gives the other's skeleton."""
    rs, es = skeleton(read), skeleton(entry)
    if len(rs) == len(es):
        return rs == es
    longer, shorter = (rs, es) if len(rs) > len(es) else (es, rs)
    return len(longer) == len(shorter) + 1 and any(
        longer[:i] + longer[i + 1 :] == shorter for i in range(len(longer))
    )


@settings(max_examples=400, deadline=None)
@given(read=plates, entry=plates)
def test_probe_codes_find_exactly_the_related_plates(read, entry):
    assert (skeleton_code(entry) in set(probe_codes(read).tolist())) == _related(read, entry)
    assert (align(read, entry) is not None) == _related(read, entry)


@settings(max_examples=200, deadline=None)
@given(entry=plates, data=st.data())
def test_one_dropped_or_confused_character_is_always_found(entry, data):
    i = data.draw(st.integers(0, len(entry) - 1))
    confusable = next((g for g in CONFUSION_GROUPS if entry[i] in g), entry[i])
    variants = [entry[:i] + data.draw(st.sampled_from(confusable)) + entry[i + 1 :]]
    if len(entry) > 1:
        variants.append(entry[:i] + entry[i + 1 :])
    variants.append(entry[:i] + data.draw(st.sampled_from(ALPHABET)) + entry[i:])
    for read in variants:
        assert skeleton_code(entry) in set(probe_codes(read).tolist())
