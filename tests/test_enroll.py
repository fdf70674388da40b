"""`alpr-edge enroll` against a real department server (subprocess, real TLS)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import start_server

from edge.config import DEFAULT_CONFIG_PATH, load_config
from edge.enroll import EnrollRefused, enroll, enroll_request, make_csr, make_key, set_config_values
from sync.protocol import EnrollRequest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("srv")) as s:
        yield s


def device_config(tmp_path: Path) -> Path:
    """The shipped config.toml with the data folder moved into tmp_path."""
    text = DEFAULT_CONFIG_PATH.read_text()
    text = set_config_values(text, {"device": {"data_dir": str(tmp_path / "data")}})
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_enroll_request_is_a_valid_protocol_enroll_request():
    body = enroll_request("t" * 32, make_csr(make_key(), "car-17.local"), "car-17.local")
    req = EnrollRequest.model_validate(body)
    assert req.csr_pem.startswith("-----BEGIN CERTIFICATE REQUEST-----") and req.hostname == "car-17.local"


def test_enroll_writes_identity_and_config_keeping_every_comment(server, tmp_path):
    config_path = device_config(tmp_path)
    before = config_path.read_text()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "--config",
            str(config_path),
            "enroll",
            "--server",
            server.url,
            "--token",
            server.enroll_token("car 17"),
            "--ca-cert",
            str(server.ca_cert_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    config = load_config(config_path)
    assert config.device.id.startswith("dev-") and config.sync.server_url == server.url
    assert config.device.id in {d.device_id for d in server.dept.devices.list()}
    identity = config.data_path(config.sync.identity_dir)
    key = identity / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(identity.stat().st_mode) == 0o700
    assert (identity / "feed_keys.json").read_text().count(server.feed_key().key_id) == 1
    after = config_path.read_text()
    comments = [ln for ln in before.splitlines() if ln.lstrip().startswith("#")]
    assert comments == [ln for ln in after.splitlines() if ln.lstrip().startswith("#")]
    assert len(after.splitlines()) == len(before.splitlines())
    assert f"enrolled as {config.device.id}" in res.stdout


def test_used_token_is_refused_and_nothing_is_written(server, tmp_path):
    token = server.enroll_token()
    first = tmp_path / "first"
    first.mkdir()
    enroll(
        server.url,
        token,
        identity_dir=first / "id",
        config_path=device_config(first),
        ca_cert=server.ca_cert_path,
    )
    second = tmp_path / "second"
    second.mkdir()
    config_path = device_config(second)
    before = config_path.read_bytes()
    with pytest.raises(EnrollRefused, match=r"401|403|token"):
        enroll(
            server.url,
            token,
            identity_dir=second / "id",
            config_path=config_path,
            ca_cert=server.ca_cert_path,
        )
    assert not (second / "id").exists() and config_path.read_bytes() == before


def test_server_not_verifiable_without_its_ca_is_refused(server, tmp_path):
    with pytest.raises(EnrollRefused, match="did not verify"):
        enroll(
            server.url,
            server.enroll_token(),
            identity_dir=tmp_path / "id",
            config_path=device_config(tmp_path),
        )
    assert not (tmp_path / "id").exists()


def test_missing_sections_and_keys_are_added_without_touching_other_lines():
    text = '# top\n[device]\n# the id\nid = "unenrolled"\n[store]\npath = "x.db"\n'
    out = set_config_values(text, {"device": {"id": "dev-1"}, "sync": {"server_url": "https://h:1"}})
    assert (
        out
        == '# top\n[device]\n# the id\nid = "dev-1"\n[store]\npath = "x.db"\n\n[sync]\nserver_url = "https://h:1"\n'
    )


def test_private_key_never_exists_with_wider_permissions(tmp_path):
    from edge.enroll import atomic_write

    old = os.umask(0)
    try:
        atomic_write(tmp_path / "k", b"secret", 0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
