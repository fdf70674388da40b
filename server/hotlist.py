"""The department's hotlist, versioned, and the deltas devices pull from it.

Every import (NCIC extract, CLEW table, CSV or a JSON-lines delta, parsed by
`edge.hotlist_formats`) makes one new integer version. Each entry (keyed by plate, state, list)
remembers the version that last changed it; a removed entry stays as a tombstone, so the delta
from any version V to the current one is "every key changed after V": an add line with the
entry's current fields, or a remove line. A device at version 0 gets the whole list (adds only).

Import semantics follow the device's (`edge.hotlist`): a file of format F covering lists L
replaces the entries F put on L (NCIC covers every NCIC list, a CLEW table its one list, a CSV
the lists it names); a delta file adds and removes exactly what it says. A key given twice in
one file keeps its last line.

Guarantees:
- An import is all or nothing: a file with any bad line is refused with every bad line and
  why (nothing written, no version made); parsing happens before the write lock is taken.
- An import and its version row are one transaction: a crash leaves the previous version.
- Versions only grow; an entry's line is rewritten (and its version moved) only when its
  content changed, so a re-import of the same file yields an empty delta.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge.hotlist_formats import (
    NCIC_LISTS,
    DeltaChange,
    DeltaHeader,
    EntryKey,
    HotlistRecord,
    LineError,
    ListKind,
    clew_list_kind,
    delta_line,
    ncic_rows,
    parse_clew,
    parse_csv,
    parse_delta,
    row_record,
)
from server.db import Database

COMPONENT = "server.hotlist"
Format = Literal["ncic", "clew", "csv", "delta"]
FORMATS: tuple[str, ...] = ("ncic", "clew", "csv", "delta")


class HotlistError(Exception):
    """The department hotlist failed."""


class ImportRefused(HotlistError):
    """The file was refused as a whole (bad lines, unreadable, empty); nothing changed."""

    def __init__(self, message: str, errors: Sequence[LineError] = ()) -> None:
        super().__init__(message)
        self.errors = tuple(errors)


MIGRATIONS = (
    """
    CREATE TABLE hotlist_versions (
        version INTEGER PRIMARY KEY,
        imported_at REAL NOT NULL,
        format TEXT NOT NULL,
        file_name TEXT,
        sha256 TEXT,
        lists TEXT NOT NULL,
        added INTEGER NOT NULL,
        changed INTEGER NOT NULL,
        removed INTEGER NOT NULL
    );
    CREATE TABLE hotlist_entries (
        plate TEXT NOT NULL,
        state TEXT NOT NULL,
        list_kind TEXT NOT NULL,
        source TEXT NOT NULL,
        line TEXT NOT NULL,
        present INTEGER NOT NULL,
        changed_version INTEGER NOT NULL,
        PRIMARY KEY (plate, state, list_kind)
    ) WITHOUT ROWID;
    CREATE INDEX hotlist_entries_changed ON hotlist_entries (changed_version);
    """,
)

_STAGING = """CREATE TEMP TABLE IF NOT EXISTS hotlist_staging (
    plate TEXT NOT NULL, state TEXT NOT NULL, list_kind TEXT NOT NULL, op TEXT NOT NULL, line TEXT,
    PRIMARY KEY (plate, state, list_kind)) WITHOUT ROWID"""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportResult:
    version: int
    format: str
    lists: tuple[str, ...]
    records: int
    added: int
    changed: int
    removed: int


@dataclass(frozen=True, slots=True)
class Delta:
    """What a device at `from_version` needs to reach `to_version`."""

    from_version: int
    to_version: int
    lines: list[str]  # header line first, as `parse_delta` reads them; empty when not modified

    @property
    def not_modified(self) -> bool:
        return not self.lines


def _change_for(record: HotlistRecord) -> str:
    return delta_line(DeltaChange("add", record.key, record))


def _remove_line(plate: str, state: str, list_kind: str) -> str:
    return json.dumps(
        {"op": "remove", "plate": plate, "state": state, "list": list_kind}, separators=(",", ":")
    )


class DepartmentHotlist:
    """The versioned department list over the server database."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        db.migrate(COMPONENT, MIGRATIONS)

    def current_version(self) -> int:
        return int(self._db.query("SELECT coalesce(max(version), 0) FROM hotlist_versions")[0][0])

    def import_file(
        self, path: str | Path, fmt: Format, *, list_kind: ListKind | None = None
    ) -> ImportResult:
        path = Path(path)
        if fmt not in FORMATS:
            raise ImportRefused(f"unknown format '{fmt}' (one of {', '.join(FORMATS)})")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImportRefused(f"{path}: cannot read: {exc.strerror}") from exc
        lines = data.splitlines(keepends=True)
        digest = hashlib.sha256(data).hexdigest()
        changes: list[tuple[EntryKey, str | None]] = []  # (key, add line) or (key, None) = remove
        errors: list[LineError] = []
        covered: set[str] = set()
        if fmt == "delta":
            for item in parse_delta(lines):
                if isinstance(item, LineError):
                    errors.append(item)
                elif isinstance(item, DeltaHeader):
                    covered.update(k.value for k in item.lists)
                else:
                    changes.append((item.key, _change_for(item.record) if item.record is not None else None))
            replace = False
        else:
            items: Iterable[HotlistRecord | LineError]
            if fmt == "ncic":
                items = (x if isinstance(x, LineError) else row_record(x) for x in ncic_rows(lines))
                covered.update(k.value for k in NCIC_LISTS)
            elif fmt == "clew":
                kind = list_kind or clew_list_kind(path.name)
                if kind is None:
                    raise ImportRefused(f"{path.name}: not svs.tbl, sfr.tbl or slr.tbl; give --list-kind")
                items = parse_clew(lines, kind)
                covered.add(kind.value)
            else:
                items = parse_csv(lines, list_kind)
            for item in items:
                if isinstance(item, LineError):
                    errors.append(item)
                else:
                    changes.append((item.key, _change_for(item)))
                    covered.add(item.list_kind.value)
            replace = True
            if not changes and not errors:
                raise ImportRefused(f"{path.name}: no entries; refusing to empty the department's lists")
        if errors:
            raise ImportRefused(
                f"{path.name}: {len(errors)} bad line(s); nothing imported, the lists are unchanged", errors
            )
        return self._apply(
            changes, fmt=fmt, covered=covered, replace=replace, file_name=path.name, digest=digest
        )

    def _apply(
        self,
        changes: list[tuple[EntryKey, str | None]],
        *,
        fmt: str,
        covered: set[str],
        replace: bool,
        file_name: str,
        digest: str,
    ) -> ImportResult:
        lists = tuple(sorted(covered))
        with self._db.write() as conn:
            conn.execute(_STAGING)
            conn.execute("DELETE FROM temp.hotlist_staging")
            # last line for a key wins (INSERT OR REPLACE), as in a file applied top to bottom
            conn.executemany(
                "INSERT OR REPLACE INTO temp.hotlist_staging VALUES (?, ?, ?, ?, ?)",
                (
                    (k.plate, k.state, k.list_kind.value, "add" if line is not None else "remove", line)
                    for k, line in changes
                ),
            )
            version = (
                int(conn.execute("SELECT coalesce(max(version), 0) FROM hotlist_versions").fetchone()[0]) + 1
            )
            removed = 0
            if replace and lists:
                marks = ",".join("?" * len(lists))
                removed += conn.execute(
                    f"""UPDATE hotlist_entries SET present = 0, changed_version = ?
                        WHERE present = 1 AND source = ? AND list_kind IN ({marks})
                        AND NOT EXISTS (SELECT 1 FROM temp.hotlist_staging s
                            WHERE s.plate = hotlist_entries.plate AND s.state = hotlist_entries.state
                            AND s.list_kind = hotlist_entries.list_kind)""",
                    (version, fmt, *lists),
                ).rowcount
            removed += conn.execute(
                """UPDATE hotlist_entries SET present = 0, changed_version = ?
                   WHERE present = 1 AND EXISTS (SELECT 1 FROM temp.hotlist_staging s
                       WHERE s.op = 'remove' AND s.plate = hotlist_entries.plate
                       AND s.state = hotlist_entries.state AND s.list_kind = hotlist_entries.list_kind)""",
                (version,),
            ).rowcount
            added = conn.execute(
                """SELECT count(*) FROM temp.hotlist_staging s WHERE s.op = 'add' AND NOT EXISTS (
                       SELECT 1 FROM hotlist_entries e WHERE e.present = 1 AND e.plate = s.plate
                       AND e.state = s.state AND e.list_kind = s.list_kind)"""
            ).fetchone()[0]
            touched = conn.execute(
                """INSERT INTO hotlist_entries
                       (plate, state, list_kind, source, line, present, changed_version)
                   SELECT plate, state, list_kind, ?, line, 1, ? FROM temp.hotlist_staging WHERE op = 'add'
                   ON CONFLICT (plate, state, list_kind) DO UPDATE SET
                       source = excluded.source, line = excluded.line, present = 1,
                       changed_version = excluded.changed_version
                   WHERE hotlist_entries.present = 0 OR hotlist_entries.line != excluded.line
                       OR hotlist_entries.source != excluded.source""",
                (fmt, version),
            ).rowcount
            conn.execute(
                "INSERT INTO hotlist_versions (version, imported_at, format, file_name, sha256, lists, "
                "added, changed, removed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    version,
                    self._clock(),
                    fmt,
                    file_name,
                    digest,
                    json.dumps(lists),
                    added,
                    touched - added,
                    removed,
                ),
            )
            conn.execute("DROP TABLE temp.hotlist_staging")
        return ImportResult(
            version=version,
            format=fmt,
            lists=lists,
            records=len(changes),
            added=added,
            changed=touched - added,
            removed=removed,
        )

    def delta(self, since: int) -> Delta:
        """The delta from `since` to the current version (a whole list when `since` is 0).

        A device claiming a version newer than the server's gets the whole list at the current
        version; the device refuses it as a rollback and says so, which is what should happen
        when a server was restored from an old backup.
        """
        with self._db.read() as conn:
            current = int(
                conn.execute("SELECT coalesce(max(version), 0) FROM hotlist_versions").fetchone()[0]
            )
            if since == current or current == 0:
                return Delta(since, current, [])
            base = since if since < current else 0
            lists = sorted(
                {k for (row,) in conn.execute("SELECT lists FROM hotlist_versions") for k in json.loads(row)}
            )
            if base == 0:
                rows = conn.execute(
                    "SELECT 1, line, plate, state, list_kind FROM hotlist_entries WHERE present = 1 "
                    "ORDER BY plate, state, list_kind"
                )
            else:
                # removals first, then adds: the device applies runs of one op at a time
                rows = conn.execute(
                    "SELECT present, line, plate, state, list_kind FROM hotlist_entries "
                    "WHERE changed_version > ? ORDER BY present, plate, state, list_kind",
                    (base,),
                )
            header = json.dumps(
                {"version": current, "lists": lists, "base_version": base}, separators=(",", ":")
            )
            lines = [header]
            lines.extend(line if present else _remove_line(p, s, k) for present, line, p, s, k in rows)
        return Delta(base, current, lines)

    def versions(self) -> list[dict]:
        rows = self._db.query(
            "SELECT version, imported_at, format, file_name, lists, added, changed, removed "
            "FROM hotlist_versions ORDER BY version"
        )
        return [
            {
                "version": r[0],
                "imported_at": r[1],
                "format": r[2],
                "file_name": r[3],
                "lists": json.loads(r[4]),
                "added": r[5],
                "changed": r[6],
                "removed": r[7],
            }
            for r in rows
        ]

    def entry_count(self) -> int:
        return int(self._db.query("SELECT count(*) FROM hotlist_entries WHERE present = 1")[0][0])
