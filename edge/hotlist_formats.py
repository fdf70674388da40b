"""Parsers for the hotlist files the device imports: NCIC extract, CLEW tables, CSV, deltas.

Every parser takes the file as an iterable of raw byte lines and yields, in file order,
`HotlistRecord`s (or `DeltaChange`s) and `LineError`s; it never raises on bad content and
never stops early, so the importer can refuse a file with *every* bad line and why. Whole-file
problems (empty file, header only, missing footer) are `LineError`s too, with the line number
where the problem shows (0 for an empty file). Parsers do not touch the database.

Formats (columns are 0-based, end exclusive):
- NCIC LPR extract, fixed width, first line a header: list code at 0 (see NCIC_CODES), record
  id 1-10 and entering agency (ORI) 10-19 (not in the extract's public description; read when
  present), incident date YYYYMMDD 19-27, plate 27-37, state 37-39, vehicle year 45-49, make
  49-53, model 53-58, colour from 58.
- CLEW tables (`svs.tbl` stolen vehicles, `sfr.tbl` felony vehicles, `slr.tbl` stolen plates):
  plate 0-8, state 8-10, county 10-12, date of loss YYYYMMDD 12-20; a header line first and a
  `TOTAL RECORD...` footer last (a missing footer means a truncated file; a count in the footer
  must equal the data lines).
- CSV with a header row: plate, state, list (a ListKind value or NCIC letter), priority,
  description, expires (ISO date or date-time; a date means the end of that day, UTC),
  source_id, agency, year, make, model, color, entered. Other columns are ignored.
- Delta, JSON Lines: first line {"version": N, "lists": [...], "base_version": M}, then one
  change per line: {"op": "add", <CSV fields>} or {"op": "remove", "plate", "state", "list"}.
"""

from __future__ import annotations

import csv
import functools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Literal

from edge.plate_confusions import MAX_PLATE_LEN, is_valid_plate, normalize_plate, skeleton_code

MAX_FIXED_LINE = 256
MAX_CSV_FIELD = 1000
MAX_DELTA_LINE = 8192


class ListKind(StrEnum):
    AMBER_ALERT = "amber_alert"
    FELONY_VEHICLE = "felony_vehicle"
    WANTED_PERSON = "wanted_person"
    STOLEN_VEHICLE = "stolen_vehicle"
    STOLEN_PLATE = "stolen_plate"
    MISSING_PERSON = "missing_person"
    SUPERVISED_RELEASE = "supervised_release"
    PROTECTION_ORDER = "protection_order"
    PROTECTIVE_INTEREST = "protective_interest"
    VIOLENT_PERSON = "violent_person"
    STOLEN_CANADIAN_VEHICLE = "stolen_canadian_vehicle"
    GANG_TERRORIST = "gang_terrorist"
    SEX_OFFENDER = "sex_offender"
    OFFICER_BOLO = "officer_bolo"


NCIC_CODES: dict[str, ListKind] = {
    "A": ListKind.AMBER_ALERT,
    "F": ListKind.FELONY_VEHICLE,
    "W": ListKind.WANTED_PERSON,
    "V": ListKind.STOLEN_VEHICLE,
    "P": ListKind.STOLEN_PLATE,
    "M": ListKind.MISSING_PERSON,
    "C": ListKind.SUPERVISED_RELEASE,
    "H": ListKind.PROTECTION_ORDER,
    "K": ListKind.PROTECTIVE_INTEREST,
    "L": ListKind.VIOLENT_PERSON,
    "R": ListKind.STOLEN_CANADIAN_VEHICLE,
    "T": ListKind.GANG_TERRORIST,
    "X": ListKind.SEX_OFFENDER,
}
_NCIC_VALUES: dict[str, str] = {code: kind.value for code, kind in NCIC_CODES.items()}
NCIC_LISTS: frozenset[ListKind] = frozenset(NCIC_CODES.values())
CLEW_FILES: dict[str, ListKind] = {
    "svs": ListKind.STOLEN_VEHICLE,
    "sfr": ListKind.FELONY_VEHICLE,
    "slr": ListKind.STOLEN_PLATE,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class HotlistRecord:
    """One entry as read from a file: keyed by (plate, state, list_kind). Plate is normalized."""

    plate: str
    state: str  # two letters, or "" when the source gives none
    list_kind: ListKind
    priority: int | None = None  # explicit override of the list's configured priority
    source_record_id: str | None = None
    agency: str | None = None
    vehicle_year: int | None = None
    make: str | None = None
    model: str | None = None
    color: str | None = None
    description: str | None = None
    entered_on: str | None = None  # ISO date
    expires_at: float | None = None  # epoch seconds; None = no expiry

    @property
    def key(self) -> EntryKey:
        return EntryKey(self.plate, self.state, self.list_kind)


@dataclass(frozen=True, slots=True)
class EntryKey:
    plate: str
    state: str
    list_kind: ListKind


# The column order of the importer's staging table: plate, state, list_kind, skel_code,
# priority, source_record_id, agency, vehicle_year, make, model, color, description,
# entered_on, expires_at.
StagingRow = tuple


def record_row(r: HotlistRecord) -> StagingRow:
    return (
        r.plate,
        r.state,
        r.list_kind.value,
        skeleton_code(r.plate),
        r.priority,
        r.source_record_id,
        r.agency,
        r.vehicle_year,
        r.make,
        r.model,
        r.color,
        r.description,
        r.entered_on,
        r.expires_at,
    )


def row_record(row: StagingRow) -> HotlistRecord:
    return HotlistRecord(
        plate=row[0],
        state=row[1],
        list_kind=ListKind(row[2]),
        priority=row[4],
        source_record_id=row[5],
        agency=row[6],
        vehicle_year=row[7],
        make=row[8],
        model=row[9],
        color=row[10],
        description=row[11],
        entered_on=row[12],
        expires_at=row[13],
    )


@dataclass(frozen=True, slots=True)
class LineError:
    line: int  # 1-based; 0 = the file as a whole (empty)
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class DeltaHeader:
    version: int
    lists: frozenset[ListKind]
    base_version: int | None = None


@dataclass(frozen=True, slots=True)
class DeltaChange:
    op: Literal["add", "remove"]
    key: EntryKey
    record: HotlistRecord | None  # set for "add"


class _Bad(ValueError):
    """A field failed validation; the message says why (internal to the parsers)."""


# ---------------------------------------------------------------- field validation


@functools.lru_cache(maxsize=65536)
def _yyyymmdd(text: str, what: str) -> str | None:
    if not text.strip():
        return None
    if len(text) != 8 or not text.isdigit():
        raise _Bad(f"{what} '{text}' is not YYYYMMDD")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:])).isoformat()
    except ValueError as exc:
        raise _Bad(f"{what} '{text}' is not a calendar date") from exc


def _plate(raw: str) -> str:
    plate = normalize_plate(raw.strip())
    if not plate:
        raise _Bad("plate is blank")
    if not is_valid_plate(plate):
        if len(plate) > MAX_PLATE_LEN:
            raise _Bad(f"plate '{plate[:20]}' is longer than {MAX_PLATE_LEN} characters")
        raise _Bad(f"plate '{plate[:20]}' has characters other than A-Z and 0-9")
    return plate


_STATE = re.compile(r"[A-Z]{2}")
_FAST_PLATE = re.compile(rf"[A-Z0-9]{{1,{MAX_PLATE_LEN}}}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _state(raw: str) -> str:
    state = raw.strip().upper()
    if state and _STATE.fullmatch(state) is None:
        raise _Bad(f"state '{state[:10]}' is not a two-letter code")
    return state


def _year(raw: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    if not raw.isdigit() or len(raw) != 4 or not 1900 <= int(raw) <= 2100:
        raise _Bad(f"vehicle year '{raw[:10]}' is not a year")
    return int(raw)


def _text(raw: str | None) -> str | None:
    if raw is None:
        return None
    raw = raw.strip()
    return raw or None


def _list_kind(raw: str) -> ListKind:
    value = raw.strip()
    if value.upper() in NCIC_CODES:
        return NCIC_CODES[value.upper()]
    try:
        return ListKind(value.lower())
    except ValueError as exc:
        raise _Bad(f"list '{value[:30]}' is not a known list") from exc


def _priority(raw: str | None) -> int | None:
    if raw is None or not str(raw).strip():
        return None
    try:
        value = int(str(raw).strip())
    except ValueError as exc:
        raise _Bad(f"priority '{str(raw)[:10]}' is not an integer") from exc
    if not 0 <= value <= 1000:
        raise _Bad(f"priority {value} is outside 0..1000")
    return value


def _expires(raw: str | None) -> float | None:
    if raw is None or not str(raw).strip():
        return None
    text = str(raw).strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day + timedelta(days=1), time(), UTC).timestamp()
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _Bad(f"expiry '{text[:40]}' is not an ISO date or date-time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _iso_date(raw: str | None, what: str) -> str | None:
    if raw is None or not str(raw).strip():
        return None
    text = str(raw).strip()
    if len(text) == 8 and text.isdigit():
        return _yyyymmdd(text, what)
    if len(text) != 10:
        raise _Bad(f"{what} '{text[:40]}' is not a date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise _Bad(f"{what} '{text[:40]}' is not a date (YYYY-MM-DD)") from exc


def _ascii_line(raw: bytes, number: int) -> str | LineError:
    line = raw.rstrip(b"\r\n")
    if len(line) > MAX_FIXED_LINE:
        return LineError(number, f"line is {len(line)} characters long, at most {MAX_FIXED_LINE} expected")
    if not line.isascii():
        column = next(i for i, b in enumerate(line) if b > 127)
        return LineError(number, f"non-ASCII byte 0x{line[column]:02x} at column {column}")
    text = line.decode("ascii")
    if not text.isprintable():
        column = next(i for i, c in enumerate(text) if not c.isprintable())
        return LineError(number, f"control character 0x{ord(text[column]):02x} at column {column}")
    return text


# ---------------------------------------------------------------- NCIC

NCIC_MIN_LEN = 39  # through the state field


def ncic_rows(lines: Iterable[bytes]) -> Iterator[StagingRow | LineError]:
    """NCIC LPR extract (fixed width; first line a header), as staging rows.

    The importer's fast path: a national extract has millions of lines, so valid fields are
    taken without building a `HotlistRecord` each; `parse_ncic` gives the records.
    """
    number = 0
    fast_plate = _FAST_PLATE.fullmatch
    for number, raw in enumerate(lines, start=1):
        if number == 1:
            continue  # header
        if len(raw) > MAX_FIXED_LINE + 2 or not raw.isascii():
            yield _ascii_line(raw, number)  # type: ignore[misc]  # always a LineError here
            continue
        text = raw.decode("ascii").rstrip("\r\n")
        if len(text) > MAX_FIXED_LINE or not text.isprintable():
            yield _ascii_line(raw, number)  # type: ignore[misc]
            continue
        if not text or (text[0] == " " and not text.strip()):
            yield LineError(number, "blank line")
            continue
        if len(text) < NCIC_MIN_LEN:
            yield LineError(number, f"line is {len(text)} characters long, at least {NCIC_MIN_LEN} needed")
            continue
        kind = _NCIC_VALUES.get(text[0])
        if kind is None:
            yield LineError(number, f"list code '{text[0]}' at column 0 is not an NCIC list code")
            continue
        try:
            plate = text[27:37].strip()
            if fast_plate(plate) is None:
                plate = _plate(plate)
            state = text[37:39]
            if state == "  ":
                state = ""
            elif _STATE.fullmatch(state) is None:
                state = _state(state)
            year = text[45:49]
            yield (
                plate,
                state,
                kind,
                skeleton_code(plate),
                None,
                text[1:10].strip() or None,
                text[10:19].strip() or None,
                int(year) if year.isdigit() and len(year) == 4 and 1900 <= int(year) <= 2100 else _year(year),
                text[49:53].strip() or None,
                text[53:58].strip() or None,
                text[58:].strip() or None,
                None,
                _yyyymmdd(text[19:27], "incident date"),
                None,
            )
        except _Bad as exc:
            yield LineError(number, str(exc))
    if number == 0:
        yield LineError(0, "empty file (not even a header line)")


def parse_ncic(lines: Iterable[bytes]) -> Iterator[HotlistRecord | LineError]:
    """NCIC LPR extract (fixed width; first line a header)."""
    for item in ncic_rows(lines):
        yield item if isinstance(item, LineError) else row_record(item)


def ncic_line(record: HotlistRecord) -> str:
    """The fixed-width NCIC line for a record (fixtures, benchmarks, round-trip tests)."""
    code = next(c for c, k in NCIC_CODES.items() if k is record.list_kind)
    entered = (record.entered_on or "").replace("-", "")
    return (
        f"{code}{(record.source_record_id or ''):<9.9}{(record.agency or ''):<9.9}{entered:<8.8}"
        f"{record.plate:<10.10}{record.state:<2.2}{'':6}{record.vehicle_year or '':<4}"
        f"{(record.make or ''):<4.4}{(record.model or ''):<5.5}{record.color or ''}"
    )


# ---------------------------------------------------------------- CLEW

_FOOTER = re.compile(r"\s*TOTAL\s+RECORD", re.IGNORECASE)
CLEW_MIN_LEN = 10


def parse_clew(lines: Iterable[bytes], list_kind: ListKind) -> Iterator[HotlistRecord | LineError]:
    """A California DOJ CLEW table; every record goes on `list_kind`."""
    number = 0
    data_lines = 0
    footer_seen = False
    for number, raw in enumerate(lines, start=1):
        if number == 1:
            continue
        text = _ascii_line(raw, number)
        if isinstance(text, LineError):
            yield text
            continue
        if footer_seen:
            yield LineError(number, "line after the TOTAL RECORD footer")
            continue
        if _FOOTER.match(text):
            footer_seen = True
            counts = re.findall(r"\d+", text)
            if counts and int(counts[-1]) != data_lines:
                yield LineError(
                    number, f"footer counts {int(counts[-1])} records but the file has {data_lines}"
                )
            continue
        data_lines += 1
        if not text.strip():
            yield LineError(number, "blank line")
            continue
        if len(text) < CLEW_MIN_LEN:
            yield LineError(number, f"line is {len(text)} characters long, at least {CLEW_MIN_LEN} needed")
            continue
        try:
            county = _text(text[10:12])
            if county is not None and not county.isdigit():
                raise _Bad(f"county '{county}' is not a number")
            yield HotlistRecord(
                plate=_plate(text[0:8]),
                state=_state(text[8:10]),
                list_kind=list_kind,
                entered_on=_yyyymmdd(text[12:20], "date of loss"),
                agency=f"county {county}" if county else None,
                description=_text(text[20:]),
            )
        except _Bad as exc:
            yield LineError(number, str(exc))
    if number == 0:
        yield LineError(0, "empty file (not even a header line)")
    elif not footer_seen:
        yield LineError(number + 1, "no TOTAL RECORD footer: the file is truncated")


def clew_list_kind(file_name: str) -> ListKind | None:
    """svs.tbl -> stolen_vehicle and so on; None for a name that is not a CLEW table."""
    stem = file_name.rsplit("/", 1)[-1].split(".", 1)[0].lower()
    return CLEW_FILES.get(stem)


# ---------------------------------------------------------------- CSV

CSV_COLUMNS = (
    "plate",
    "state",
    "list",
    "priority",
    "description",
    "expires",
    "source_id",
    "agency",
    "year",
    "make",
    "model",
    "color",
    "entered",
)


def _decoded(lines: Iterable[bytes]) -> Iterator[str]:
    for raw in lines:
        yield raw.decode("utf-8", errors="surrogateescape")


def _record_from_fields(fields: dict[str, str | None], default_list: ListKind | None) -> HotlistRecord:
    for name, value in fields.items():
        if value is not None and len(value) > MAX_CSV_FIELD:
            raise _Bad(f"field '{name}' is {len(value)} characters long, at most {MAX_CSV_FIELD} allowed")
        if value is not None and not value.isascii() and _SURROGATE.search(value):
            raise _Bad(f"field '{name}' has bytes that are not UTF-8")
    list_raw = fields.get("list")
    if list_raw and list_raw.strip():
        kind = _list_kind(list_raw)
    elif default_list is not None:
        kind = default_list
    else:
        raise _Bad("no list given (column 'list' is blank and no --list-kind)")
    return HotlistRecord(
        plate=_plate(fields.get("plate") or ""),
        state=_state(fields.get("state") or ""),
        list_kind=kind,
        priority=_priority(fields.get("priority")),
        description=_text(fields.get("description")),
        expires_at=_expires(fields.get("expires")),
        source_record_id=_text(fields.get("source_id")),
        agency=_text(fields.get("agency")),
        vehicle_year=_year(fields.get("year") or ""),
        make=_text(fields.get("make")),
        model=_text(fields.get("model")),
        color=_text(fields.get("color")),
        entered_on=_iso_date(fields.get("entered"), "entry date"),
    )


def parse_csv(
    lines: Iterable[bytes], default_list: ListKind | None = None
) -> Iterator[HotlistRecord | LineError]:
    """CSV with a header row naming the columns (see CSV_COLUMNS; 'plate' is required)."""
    reader = csv.reader(_decoded(lines), strict=True)
    header: list[str] | None = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield LineError(reader.line_num, f"not valid CSV: {exc}")
            continue
        if header is None:
            header = [h.strip().lower().lstrip("\ufeff") for h in row]
            if "plate" not in header:
                yield LineError(reader.line_num, "header has no 'plate' column")
                return
            continue
        if not any(cell.strip() for cell in row):
            continue  # blank lines in CSV exports are common and carry nothing
        if len(row) > len(header):
            yield LineError(reader.line_num, f"{len(row)} fields but the header names {len(header)}")
            continue
        fields = {name: (row[i] if i < len(row) else None) for i, name in enumerate(header) if name}
        try:
            yield _record_from_fields(fields, default_list)
        except _Bad as exc:
            yield LineError(reader.line_num, str(exc))
    if header is None:
        yield LineError(0, "empty file (no header row)")


# ---------------------------------------------------------------- delta


def parse_delta(lines: Iterable[bytes]) -> Iterator[DeltaHeader | DeltaChange | LineError]:
    """A JSON Lines delta: the header line, then one add/remove per line."""
    header: DeltaHeader | None = None
    number = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip(b"\r\n")
        if len(line) > MAX_DELTA_LINE:
            yield LineError(number, f"line is {len(line)} bytes long, at most {MAX_DELTA_LINE} expected")
            if number == 1:
                return
            continue
        if not line.strip():
            yield LineError(number, "blank line")
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield LineError(number, f"bytes that are not UTF-8 at column {exc.start}")
            continue
        except json.JSONDecodeError as exc:
            yield LineError(number, f"not JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(obj, dict):
            yield LineError(number, "not a JSON object")
            continue
        try:
            if number == 1:
                header = _delta_header(obj)
                yield header
            else:
                yield _delta_change(obj)
        except _Bad as exc:
            yield LineError(number, str(exc))
            if number == 1:
                return
    if number == 0:
        yield LineError(0, "empty file (no delta header)")


def _delta_header(obj: dict) -> DeltaHeader:
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise _Bad("header 'version' must be a non-negative integer")
    base = obj.get("base_version")
    if base is not None and (not isinstance(base, int) or isinstance(base, bool)):
        raise _Bad("header 'base_version' must be an integer")
    lists = obj.get("lists", [])
    if not isinstance(lists, list) or not all(isinstance(x, str) for x in lists):
        raise _Bad("header 'lists' must be a list of list names")
    return DeltaHeader(version=version, lists=frozenset(_list_kind(x) for x in lists), base_version=base)


_CSV_COLUMN_SET = frozenset(CSV_COLUMNS)


def _delta_change(obj: dict) -> DeltaChange:
    op = obj.get("op")
    fields: dict[str, str | None] = {}
    for name, value in obj.items():
        if name not in _CSV_COLUMN_SET or value is None:
            continue
        if isinstance(value, str):
            fields[name] = value
        elif isinstance(value, int) and not isinstance(value, bool):
            fields[name] = str(value)
        else:
            raise _Bad(f"field '{name}' must be a string")
    if op == "add":
        record = _record_from_fields(fields, None)
        return DeltaChange("add", record.key, record)
    if op == "remove":
        key = EntryKey(
            _plate(fields.get("plate") or ""),
            _state(fields.get("state") or ""),
            _list_kind(fields.get("list") or ""),
        )
        return DeltaChange("remove", key, None)
    raise _Bad(f"op must be 'add' or 'remove', not {str(op)[:20]!r}")


def delta_line(change: DeltaChange) -> str:
    """A change as one JSON line (the inverse of the parser, for the sync agent and tests)."""
    key = change.key
    obj: dict[str, object] = {
        "op": change.op,
        "plate": key.plate,
        "state": key.state,
        "list": key.list_kind.value,
    }
    rec = change.record
    if rec is not None:
        extra = {
            "priority": rec.priority,
            "description": rec.description,
            "expires": None
            if rec.expires_at is None
            else datetime.fromtimestamp(rec.expires_at, UTC).isoformat(),
            "source_id": rec.source_record_id,
            "agency": rec.agency,
            "year": rec.vehicle_year,
            "make": rec.make,
            "model": rec.model,
            "color": rec.color,
            "entered": rec.entered_on,
        }
        obj.update({k: v for k, v in extra.items() if v is not None})
    return json.dumps(obj, separators=(",", ":"))
