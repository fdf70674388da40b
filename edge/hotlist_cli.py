"""`alpr-edge hotlist ...`: thin commands over `edge.hotlist`.

`register(subparsers)` adds the `hotlist` command group; each command's handler is stored as
`func` (called with the parsed args, returns the exit status) and expects `args.config`, a
loaded `edge.config.Config`, whose `database_path` is the device database.

Exit status: 0 done, 1 refused (bad file, bad officer entry), 2 database unavailable.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from edge.hotlist import (
    DeltaRejected,
    DeltaResult,
    Hotlist,
    HotlistError,
    HotlistUnavailable,
    ImportRefused,
    ListKind,
    OfficerEntryError,
)

COMMANDS = {
    "import": "Import a hotlist file (all or nothing; --skip-bad leaves bad lines out).",
    "status": "Per list: entries, version, age and fresh/aging/stale.",
    "bolo add": "Add an officer BOLO plate with a reason and an expiry.",
    "bolo remove": "Remove an officer BOLO plate.",
    "bolo list": "List the officer BOLO plates in force.",
    "suppress add": "Suppress a known false hit for a plate, with a reason and an expiry.",
    "suppress remove": "End a suppression by its id.",
    "suppress list": "List the suppressions in force.",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `hotlist` and its subcommands to the CLI's subparsers."""
    hotlist = subparsers.add_parser("hotlist", help="Hotlist import, status and officer entries.")
    commands = hotlist.add_subparsers(dest="hotlist_command", required=True)

    imp = commands.add_parser("import", help=COMMANDS["import"])
    imp.add_argument("file", help="The file to import.")
    imp.add_argument("--format", required=True, choices=["ncic", "clew", "csv", "delta"], dest="fmt")
    imp.add_argument(
        "--list-kind",
        type=ListKind,
        choices=list(ListKind),
        metavar="KIND",
        help="CLEW: the list when the file name is not svs/sfr/slr.tbl; CSV: the list for rows "
        "whose 'list' column is blank.",
    )
    imp.add_argument("--skip-bad", action="store_true", help="Import without the bad lines; report them.")
    imp.add_argument("--version", dest="source_version", help="Source version to record (default: digest).")
    imp.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")
    imp.set_defaults(func=cmd_import)

    commands.add_parser("status", help=COMMANDS["status"]).set_defaults(func=cmd_status)

    bolo = commands.add_parser("bolo", help="Officer BOLO plates.").add_subparsers(
        dest="bolo_command", required=True
    )
    add = bolo.add_parser("add", help=COMMANDS["bolo add"])
    add.add_argument("plate")
    add.add_argument("--state", default="")
    _officer_args(add, expiry=True)
    add.add_argument("--description", default=None)
    add.set_defaults(func=cmd_bolo_add)
    rem = bolo.add_parser("remove", help=COMMANDS["bolo remove"])
    rem.add_argument("plate")
    rem.add_argument("--state", default="")
    _officer_args(rem, expiry=False)
    rem.set_defaults(func=cmd_bolo_remove)
    bolo.add_parser("list", help=COMMANDS["bolo list"]).set_defaults(func=cmd_bolo_list)

    sup = commands.add_parser("suppress", help="Suppressions of known false hits.").add_subparsers(
        dest="suppress_command", required=True
    )
    sadd = sup.add_parser("add", help=COMMANDS["suppress add"])
    sadd.add_argument("plate", help="The plate as read on the vehicle that keeps giving the false hit.")
    sadd.add_argument("--state", default=None)
    sadd.add_argument("--list-kind", type=ListKind, choices=list(ListKind), metavar="KIND")
    sadd.add_argument("--entry-plate", default=None, help="Only hits on entries with this plate.")
    _officer_args(sadd, expiry=True)
    sadd.set_defaults(func=cmd_suppress_add)
    srem = sup.add_parser("remove", help=COMMANDS["suppress remove"])
    srem.add_argument("id", type=int)
    _officer_args(srem, expiry=False)
    srem.set_defaults(func=cmd_suppress_remove)
    sup.add_parser("list", help=COMMANDS["suppress list"]).set_defaults(func=cmd_suppress_list)


def _officer_args(parser: argparse.ArgumentParser, *, expiry: bool) -> None:
    parser.add_argument("--officer", required=True, help="Officer ID making the change.")
    parser.add_argument("--reason", required=True, help="Why (stored in the audit log).")
    if expiry:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--hours", type=float, help="Expires this many hours from now.")
        group.add_argument("--expires", help="Expires at this ISO 8601 date-time (UTC when no offset).")


def _expiry(args: argparse.Namespace) -> float:
    if args.hours is not None:
        return time.time() + args.hours * 3600
    try:
        moment = datetime.fromisoformat(args.expires)
    except ValueError as exc:
        raise OfficerEntryError(f"--expires '{args.expires}' is not an ISO 8601 date-time") from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _open(args: argparse.Namespace) -> Hotlist:
    path = args.config.database_path
    path.parent.mkdir(parents=True, exist_ok=True)
    return Hotlist(path)


def _run(args: argparse.Namespace, body: Callable[[Hotlist], int]) -> int:
    try:
        with _open(args) as hotlist:
            return body(hotlist)
    except ImportRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return 1
    except (DeltaRejected, OfficerEntryError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except HotlistUnavailable as exc:
        print(f"database unavailable: {exc}", file=sys.stderr)
        return 2
    except HotlistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


class ProgressBar:
    """A one-line progress bar on a stream, redrawn at most ten times a second."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._last = 0.0
        self._drawn = False
        self._shown = (-1, -1)

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if (done < total and now - self._last < 0.1) or (done, total) == self._shown:
            return
        self._shown = (done, total)
        self._last = now
        frac = done / total if total else 1.0
        filled = int(frac * self._width)
        bar = "#" * filled + "-" * (self._width - filled)
        self._stream.write(f"\r{self._label} [{bar}] {frac * 100:5.1f}% {done / 1e6:8.1f} MB")
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def cmd_import(args: argparse.Namespace) -> int:
    bar = None if args.no_progress else ProgressBar(f"importing {args.file}")

    def body(hotlist: Hotlist) -> int:
        try:
            result = hotlist.import_file(
                args.file,
                args.fmt,
                list_kind=args.list_kind,
                skip_bad=args.skip_bad,
                version=args.source_version,
                progress=bar,
            )
        finally:
            if bar is not None:
                bar.finish()
        if isinstance(result, DeltaResult):
            print(
                f"delta {result.version} applied to {', '.join(result.lists)}: {result.added} added, "
                f"{result.updated} updated, {result.removed} removed ({result.seconds:.2f} s)"
            )
            return 0
        print(
            f"imported {result.records} records into {', '.join(result.lists)} (version {result.version}): "
            f"{result.added} added, {result.updated} updated, {result.removed} removed, "
            f"{result.duplicates_merged} duplicates merged ({result.seconds:.1f} s)"
        )
        if result.skipped_bad:
            print(f"skipped {result.skipped_bad} bad line(s):", file=sys.stderr)
            for err in result.errors:
                print(f"  {err}", file=sys.stderr)
        return 0

    return _run(args, body)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def cmd_status(args: argparse.Namespace) -> int:
    def body(hotlist: Hotlist) -> int:
        rows = hotlist.status()
        if not rows:
            print("no hotlist loaded")
            return 0
        print(f"{'list':<24} {'entries':>9} {'source':<8} {'version':<24} {'age':>9}  state")
        for s in rows:
            print(
                f"{s.list_kind.value:<24} {s.entries:>9} {s.source or '-':<8} {(s.version or '-')[:24]:<24} "
                f"{_age(s.age_s):>9}  {s.freshness.value}"
            )
        return 0

    return _run(args, body)


def cmd_bolo_add(args: argparse.Namespace) -> int:
    def body(hotlist: Hotlist) -> int:
        entry = hotlist.add_bolo(
            args.plate,
            args.state,
            reason=args.reason,
            officer=args.officer,
            expires_at=_expiry(args),
            description=args.description,
        )
        print(
            f"BOLO {entry.plate} {entry.state or '-'} added (entry {entry.id}), "
            f"expires {_when(entry.expires_at)}"
        )
        return 0

    return _run(args, body)


def cmd_bolo_remove(args: argparse.Namespace) -> int:
    def body(hotlist: Hotlist) -> int:
        if hotlist.remove_bolo(args.plate, args.state, officer=args.officer, reason=args.reason):
            print(f"BOLO {args.plate} removed")
            return 0
        print(f"no BOLO for {args.plate} {args.state or '-'}", file=sys.stderr)
        return 1

    return _run(args, body)


def _when(ts: float | None) -> str:
    return "never" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def cmd_bolo_list(args: argparse.Namespace) -> int:
    def body(hotlist: Hotlist) -> int:
        for e in hotlist.list_bolos():
            print(
                f"{e.plate:<10} {e.state or '-':<3} expires {_when(e.expires_at)} by {e.officer}: {e.reason}"
            )
        return 0

    return _run(args, body)


def cmd_suppress_add(args: argparse.Namespace) -> int:
    def body(hotlist: Hotlist) -> int:
        s = hotlist.add_suppression(
            args.plate,
            reason=args.reason,
            officer=args.officer,
            expires_at=_expiry(args),
            state=args.state,
            list_kind=args.list_kind,
            entry_plate=args.entry_plate,
        )
        print(f"suppression #{s.id} for {s.plate} added, expires {_when(s.expires_at)}")
        return 0

    return _run(args, body)


def cmd_suppress_remove(args: argparse.Namespace) -> int:
    def body(hotlist: Hotlist) -> int:
        if hotlist.remove_suppression(args.id, officer=args.officer, reason=args.reason):
            print(f"suppression #{args.id} ended")
            return 0
        print(f"no suppression #{args.id} in force", file=sys.stderr)
        return 1

    return _run(args, body)


def cmd_suppress_list(args: argparse.Namespace) -> int:
    def body(hotlist: Hotlist) -> int:
        for s in hotlist.list_suppressions():
            scope = ", ".join(
                x for x in (s.state, s.list_kind.value if s.list_kind else None, s.entry_plate) if x
            )
            print(
                f"#{s.id:<5} {s.plate:<10} {scope or 'any hit':<30} expires {_when(s.expires_at)} "
                f"by {s.officer}: {s.reason}"
            )
        return 0

    return _run(args, body)
