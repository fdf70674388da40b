"""`alpr-server` commands as an administrator runs them, the published OpenAPI document, and the
department hotlist's versions (library level, real SQLite files)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import make_key_and_csr

from server.app import openapi_document
from server.feed import verify_endorsement
from server.home import Department, ServerHome
from server.hotlist import ImportRefused
from sync.protocol import FeedKey, Heartbeat, KeyEndorsement

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "hotlist"


def alpr_server(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        timeout=60,
    )


def test_openapi_document_in_the_repo_is_current():
    committed = json.loads((ROOT / "sync" / "openapi-v1.json").read_text())
    assert committed == openapi_document(), (
        "sync/openapi-v1.json is stale: run `alpr-server openapi --output sync/openapi-v1.json`"
    )


def test_openapi_document_names_every_route_and_the_mtls_rule():
    doc = openapi_document()
    assert set(doc["paths"]) == {
        "/v1/enroll",
        "/v1/device/batches",
        "/v1/device/images/{record_id}",
        "/v1/device/hotlist",
        "/v1/device/keys",
        "/v1/device/heartbeat",
    }
    assert "mutual TLS" in doc["info"]["description"]
    body = doc["paths"]["/v1/device/batches"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/UploadBatch"
    assert "ReadRecord" in doc["components"]["schemas"] and "/test/faults" not in doc["paths"]


def test_administrator_sets_up_a_department_and_sees_a_device_with_its_heartbeat(tmp_path):
    home = tmp_path / "dept"
    assert alpr_server(home, "ca", "init", "--name", "Test PD CA").returncode == 0
    keys = alpr_server(home, "keys", "generate")
    assert keys.returncode == 0, keys.stderr
    assert alpr_server(home, "tls", "issue", "--host", "alpr.test.pd", "--host", "10.0.0.5").returncode == 0
    enroll = alpr_server(home, "devices", "enroll", "--name", "car-17")
    assert enroll.returncode == 0, enroll.stderr
    token = next(line.split()[-1] for line in enroll.stdout.splitlines() if line.startswith("token:"))
    device_id = next(line.split()[2] for line in enroll.stdout.splitlines() if line.startswith("device id:"))

    with Department(ServerHome(home)) as dept:
        _, csr = make_key_and_csr()
        enrolled = dept.devices.enroll(token, csr.decode(), ca=dept.ca, hostname="pi-17")
        assert enrolled.device_id == device_id
        dept.devices.record_heartbeat(
            device_id,
            Heartbeat(
                device_id=device_id,
                sent_at=1.0,
                software_version="0.1.0",
                cameras={"front": {"state": "ok", "fps": 15.0}, "rear": {"state": "degraded", "fps": 0.0}},
                gps={"mode": 3},
                hotlist_versions={"stolen_vehicle": "7"},
                backlog={"reads": 42},
                disk_free_bytes=5_000_000_000,
            ),
        )
    listing = alpr_server(home, "devices", "list")
    assert listing.returncode == 0, listing.stderr
    text = listing.stdout
    assert device_id in text and "car-17" in text and enrolled.serial in text and "active" in text
    assert "'rear': 'degraded'" in text and "'reads': 42" in text and "5000000000" in text
    (row,) = [json.loads(line) for line in alpr_server(home, "devices", "list", "--json").stdout.splitlines()]
    assert row["revoked"] is False and row["health"]["hotlist_versions"] == {"stolen_vehicle": "7"}

    assert alpr_server(home, "devices", "revoke", device_id, "--reason", "stolen unit").returncode == 0
    assert "REVOKED" in alpr_server(home, "devices", "list").stdout
    unknown = alpr_server(home, "devices", "revoke", "dev-nosuchdevice")
    assert unknown.returncode == 1 and "no device" in unknown.stderr


def test_ca_init_never_overwrites_an_existing_ca(tmp_path):
    home = tmp_path / "dept"
    assert alpr_server(home, "ca", "init").returncode == 0
    before = (home / "ca" / "ca.key").read_bytes()
    again = alpr_server(home, "ca", "init")
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert (home / "ca" / "ca.key").read_bytes() == before
    assert oct((home / "ca" / "ca.key").stat().st_mode & 0o777) == "0o600"


def test_tokens_cannot_be_made_before_the_ca_exists(tmp_path):
    res = alpr_server(tmp_path / "dept", "devices", "enroll")
    assert res.returncode == 2 and "ca init" in res.stderr


def test_keys_generate_twice_is_refused_and_rotate_prints_an_endorsement_by_the_old_key(tmp_path):
    home = tmp_path / "dept"
    first = FeedKey.model_validate_json(alpr_server(home, "keys", "generate").stdout)
    again = alpr_server(home, "keys", "generate")
    assert again.returncode == 1 and "keys rotate" in again.stderr
    rotated = alpr_server(home, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    endorsement = KeyEndorsement.model_validate_json(rotated.stdout)
    assert endorsement.endorsed_by == first.key_id and verify_endorsement(endorsement, [first])
    listing = alpr_server(home, "keys", "list").stdout.splitlines()
    assert [line.split()[0] for line in listing] == [first.key_id, endorsement.key.key_id]
    assert "retired" in listing[0] and "current" in listing[1]
    assert oct((home / "keys" / f"feed-{first.key_id}.key").stat().st_mode & 0o777) == "0o600"


def test_serve_refuses_to_start_without_a_feed_key(tmp_path):
    home = tmp_path / "dept"
    assert alpr_server(home, "ca", "init").returncode == 0
    res = alpr_server(home, "serve", "--port", "0")
    assert res.returncode == 2 and "keys generate" in res.stderr


def test_hotlist_import_of_a_bad_file_lists_every_bad_line_and_makes_no_version(tmp_path):
    home = tmp_path / "dept"
    bad = alpr_server(home, "hotlist", "import", str(DATA / "bad.ncic"), "--format", "ncic")
    assert bad.returncode == 1
    assert "bad line(s)" in bad.stderr and "line 3:" in bad.stderr
    assert alpr_server(home, "hotlist", "versions").stdout == ""
    good = alpr_server(home, "hotlist", "import", str(DATA / "extract.ncic"), "--format", "ncic")
    assert good.returncode == 0, good.stderr
    result = json.loads(good.stdout)
    assert result["version"] == 1 and 0 < result["added"] <= result["records"]
    clew = alpr_server(home, "hotlist", "import", str(DATA / "svs.tbl"), "--format", "clew")
    assert json.loads(clew.stdout)["lists"] == ["stolen_vehicle"]
    versions = [json.loads(line) for line in alpr_server(home, "hotlist", "versions").stdout.splitlines()]
    assert [(v["version"], v["format"]) for v in versions] == [(1, "ncic"), (2, "clew")]


# ---------------------------------------------------------------- department hotlist versions


@pytest.fixture
def dept(tmp_path):
    with Department(ServerHome(tmp_path / "dept")) as d:
        yield d


def lines_of(delta) -> list[dict]:
    return [json.loads(line) for line in delta.lines]


def test_new_ncic_extract_removes_absent_keys_and_keeps_other_sources(dept, tmp_path):
    dept.hotlist.import_file(DATA / "hotlist.csv", "csv")
    first = dept.hotlist.import_file(DATA / "extract.ncic", "ncic")
    extract = (DATA / "extract.ncic").read_text().splitlines()
    (tmp_path / "smaller.ncic").write_text("\n".join([extract[0], extract[2]]) + "\n")  # 8XYZ999 only
    second = dept.hotlist.import_file(tmp_path / "smaller.ncic", "ncic")
    assert second.version == first.version + 1
    assert second.removed == first.added - 1 and second.added == 0 and second.changed == 0
    changes = lines_of(dept.hotlist.delta(first.version))[1:]
    assert {c["op"] for c in changes} == {"remove"} and len(changes) == second.removed
    whole = lines_of(dept.hotlist.delta(0))
    csv_rows = len((DATA / "hotlist.csv").read_text().splitlines()) - 1
    assert len(whole) - 1 == 1 + csv_rows  # the NCIC survivor plus the CSV entries


def test_reimporting_the_same_file_changes_nothing_but_the_version(dept):
    first = dept.hotlist.import_file(DATA / "extract.ncic", "ncic")
    again = dept.hotlist.import_file(DATA / "extract.ncic", "ncic")
    assert (again.version, again.added, again.changed, again.removed) == (first.version + 1, 0, 0, 0)
    assert lines_of(dept.hotlist.delta(first.version))[1:] == []


def test_refused_import_leaves_the_version_and_entries_untouched(dept):
    dept.hotlist.import_file(DATA / "extract.ncic", "ncic")
    before = (dept.hotlist.current_version(), dept.hotlist.entry_count())
    with pytest.raises(ImportRefused) as refused:
        dept.hotlist.import_file(DATA / "bad.ncic", "ncic")
    assert len(refused.value.errors) >= 2
    assert (dept.hotlist.current_version(), dept.hotlist.entry_count()) == before


def test_delta_for_a_device_ahead_of_the_server_is_the_whole_list_for_it_to_refuse(dept):
    dept.hotlist.import_file(DATA / "extract.ncic", "ncic")
    delta = dept.hotlist.delta(99)
    assert (delta.from_version, delta.to_version) == (0, 1)
    assert json.loads(delta.lines[0])["version"] == 1  # not newer than 99: the device's rollback check fires
