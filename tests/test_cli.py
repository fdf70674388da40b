import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli(models_dir, tmp_path):
    cfg = tmp_path / "device.toml"
    cfg.write_text(f'[device]\ndata_dir = "{tmp_path / "data"}"\n[models]\ndir = "{models_dir}"\n')

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONWARNINGS": "error"}
        return subprocess.run(
            [sys.executable, "-m", "edge.cli", "--config", str(cfg), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=300,
        )

    return run


def _commands(parser, prefix=""):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield f"{prefix}{name}"
                yield from _commands(sub, f"{prefix}{name} ")


def test_every_cli_command_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for command in _commands(build_parser()):
        assert f"alpr-edge {command}" in readme, f"`alpr-edge {command}` is not in README.md"


def test_read_prints_json_with_plate_confidences_and_region(cli, plates_dir):
    image = plates_dir / "br" / "AYO9034.jpg"
    res = cli("read", str(image))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    (plate,) = out["plates"]
    assert plate["plate"] == "AYO9034"
    assert len(plate["char_confidences"]) == 7 and plate["region"] == "Brazil"
    assert plate["detection_score"] > 0.35 and len(plate["box"]) == 4


def test_read_reports_an_unreadable_file_and_goes_on(cli, plates_dir, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    res = cli("read", str(bad), str(tmp_path / "absent.jpg"), str(plates_dir / "br" / "AYO9034.jpg"))
    assert res.returncode == 1
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert lines[0] == {"image": str(bad), "error": "not a readable image"}
    assert lines[1]["error"] == "no such file"
    assert lines[2]["plates"][0]["plate"] == "AYO9034"
    assert "broken.jpg: not a readable image" in res.stderr


def test_eval_prints_the_metrics_as_json(cli, plates_dir, tmp_path):
    folder = tmp_path / "subset"
    folder.mkdir()
    for name in ("AYO9034", "AZJ6991", "FZB9581"):
        for ext in (".jpg", ".txt"):
            (folder / f"{name}{ext}").symlink_to(plates_dir / "br" / f"{name}{ext}")
    res = cli("eval", str(folder), "--misreads")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["images"] == 3
    assert set(out) >= {
        "exact_read_rate",
        "exact_read_rate_o0_folded",
        "detection_recall_iou50",
        "latency_ms_median",
        "latency_ms_p95",
    }
    assert out["detection_recall_iou50"] == 1.0
    assert out["exact_read_rate"] == round(1 - len(out["misreads"]) / 3, 4)
    assert re.search(r"eval: 3/3 images", res.stderr)


def test_eval_on_a_folder_without_annotations_is_a_clear_error(cli, tmp_path):
    res = cli("eval", str(tmp_path))
    assert res.returncode == 2
    assert "no annotation files" in res.stderr and str(tmp_path) in res.stderr


def test_eval_names_the_bad_annotation_line(cli, tmp_path):
    (tmp_path / "x.txt").write_text("x.jpg\t1\t2\n")
    res = cli("eval", str(tmp_path))
    assert res.returncode == 2 and "x.txt:1: expected 6 tab-separated fields" in res.stderr


@pytest.mark.parametrize("program", ["alpr-sync", "alpr-server"])
def test_every_sync_and_server_command_is_documented_in_the_readme(program):
    import importlib

    module = importlib.import_module({"alpr-sync": "sync.cli", "alpr-server": "server.cli"}[program])
    readme = (ROOT / "README.md").read_text()
    for command in _commands(module.build_parser()):
        assert f"{program} {command}" in readme, f"`{program} {command}` is not in README.md"
