"""`alpr-edge hotlist ...` commands, run through argparse against a real database file."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import pytest

from edge.config import parse_config
from edge.hotlist_cli import COMMANDS, register

DATA = Path(__file__).parent / "data" / "hotlist"


@pytest.fixture
def config(tmp_path):
    return parse_config({"device": {"data_dir": str(tmp_path / "var")}}, "test", tmp_path)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="alpr-edge")
    register(top.add_subparsers(dest="command", required=True))
    return top


def run(config, *argv: str) -> int:
    args = parser().parse_args(["hotlist", *argv])
    args.config = config
    return args.func(args)


def test_import_shows_progress_on_stderr_and_a_summary(config, capsys):
    assert run(config, "import", str(DATA / "extract.ncic"), "--format", "ncic") == 0
    out, err = capsys.readouterr()
    assert "imported 6 records" in out and "1 duplicates merged" in out
    assert "importing" in err and "100.0%" in err
    assert config.database_path.exists()


def test_import_of_a_bad_file_exits_1_naming_every_bad_line(config, capsys):
    assert run(config, "import", str(DATA / "bad.ncic"), "--format", "ncic", "--no-progress") == 1
    _, err = capsys.readouterr()
    assert "refused" in err
    assert all(f"line {n}:" in err for n in (3, 5, 6))


def test_import_with_skip_bad_reports_the_skipped_lines(config, capsys):
    assert (
        run(config, "import", str(DATA / "bad.ncic"), "--format", "ncic", "--skip-bad", "--no-progress") == 0
    )
    out, err = capsys.readouterr()
    assert "skipped 3 bad line(s)" in err and "imported 6 records" in out


def test_clew_file_with_an_unknown_name_needs_list_kind(config, tmp_path, capsys):
    odd = tmp_path / "other.tbl"
    odd.write_bytes((DATA / "svs.tbl").read_bytes())
    assert run(config, "import", str(odd), "--format", "clew", "--no-progress") == 1
    assert "--list-kind" in capsys.readouterr().err
    assert (
        run(config, "import", str(odd), "--format", "clew", "--list-kind", "stolen_plate", "--no-progress")
        == 0
    )


def test_status_prints_each_list_with_entries_version_age_and_freshness(config, capsys):
    run(config, "import", str(DATA / "extract.ncic"), "--format", "ncic", "--no-progress")
    run(config, "import", str(DATA / "delta-101.jsonl"), "--format", "delta", "--no-progress")
    capsys.readouterr()
    assert run(config, "status") == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("stolen_vehicle"))
    assert line.split()[1:3] == ["2", "delta"] and "101" in line and line.endswith("fresh")


def test_bolo_add_list_remove_round_trip_is_audited(config, capsys):
    assert (
        run(
            config,
            "bolo",
            "add",
            "6LOK442",
            "--state",
            "CA",
            "--officer",
            "B1",
            "--reason",
            "armed",
            "--hours",
            "4",
        )
        == 0
    )
    assert run(config, "bolo", "list") == 0
    assert "6LOK442" in capsys.readouterr().out
    assert (
        run(config, "bolo", "remove", "6LOK442", "--state", "CA", "--officer", "B1", "--reason", "found") == 0
    )
    assert (
        run(config, "bolo", "remove", "6LOK442", "--state", "CA", "--officer", "B1", "--reason", "again") == 1
    )
    conn = sqlite3.connect(config.database_path)
    try:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit ORDER BY id")]
    finally:
        conn.close()
    assert actions == ["hotlist.bolo.add", "hotlist.bolo.remove", "hotlist.bolo.remove"]


def test_bolo_with_an_expiry_in_the_past_is_refused(config, capsys):
    code = run(
        config, "bolo", "add", "X1", "--officer", "B1", "--reason", "r", "--expires", "2001-01-01T00:00:00"
    )
    assert code == 1 and "future" in capsys.readouterr().err


def test_suppress_add_list_remove(config, capsys):
    assert (
        run(
            config,
            "suppress",
            "add",
            "5SAMOD8",
            "--officer",
            "B7",
            "--reason",
            "fleet car",
            "--hours",
            "8",
            "--list-kind",
            "felony_vehicle",
        )
        == 0
    )
    out = capsys.readouterr().out
    sid = out.split("#")[1].split()[0]
    assert run(config, "suppress", "list") == 0
    assert "felony_vehicle" in capsys.readouterr().out
    assert run(config, "suppress", "remove", sid, "--officer", "B7", "--reason", "sold") == 0
    assert run(config, "suppress", "remove", sid, "--officer", "B7", "--reason", "sold") == 1


def test_every_hotlist_command_is_registered_and_documented():
    top = parser()
    hotlist = next(a for a in top._subparsers._group_actions[0].choices.items() if a[0] == "hotlist")[1]
    found: dict[str, str] = {}

    def walk(p: argparse.ArgumentParser, prefix: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {c.dest: c.help for c in action._choices_actions}
                for name, sub in action.choices.items():
                    if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                        walk(sub, f"{prefix}{name} ")
                    else:
                        found[f"{prefix}{name}"] = helps.get(name) or ""

    walk(hotlist, "")
    assert set(found) == set(COMMANDS)
    assert all(found[name] == COMMANDS[name] and COMMANDS[name] for name in COMMANDS)
