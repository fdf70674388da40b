"""The sync agent against the real department server (tests/server_harness.py): real mTLS,
real enrollment, real ingest and the real signed hotlist feed.

`enrolled_config` is imported by the LTE and crash tests.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from server_harness import start_server
from test_enroll import device_config
from test_sync_agent import make_hit, make_read

from edge.config import load_config
from edge.enroll import enroll, set_config_values
from edge.store import Lane, Store
from sync.agent import AgentRuntime
from sync.state import KEY_FEED_REFUSED

ROOT = Path(__file__).resolve().parent.parent

FAST = {
    "poll_interval_s": 0.05,
    "backoff_initial_s": 0.1,
    "backoff_max_s": 0.5,
    "heartbeat_interval_s": 3600.0,
    "hotlist_interval_s": 3600.0,
    "request_timeout_s": 10.0,
    "connect_timeout_s": 3.0,
}


def enrolled_config(server, folder: Path, *, server_url: str | None = None, **sync) -> Path:
    """A device config in `folder`, enrolled with `server` (for real), with fast sync timers."""
    folder.mkdir(parents=True, exist_ok=True)
    path = device_config(folder)
    enroll(
        server.url,
        server.enroll_token(),
        identity_dir=folder / "data" / "identity",
        config_path=path,
        ca_cert=server.ca_cert_path,
    )
    values = {k: v for k, v in {**FAST, **sync}.items()}
    if server_url:
        values["server_url"] = server_url
    text = path.read_text()
    for key, value in values.items():
        rendered = json.dumps(value)
        text = set_config_values(text, {"sync": {key: "@@"}}).replace('"@@"', rendered)
    path.write_text(text)
    return path


def run_agent(config_path: Path, seconds: float | None = None, *, until_drained: bool = True) -> AgentRuntime:
    runtime = AgentRuntime(load_config(config_path))
    stop = threading.Event()
    timer = threading.Timer(seconds or 20.0, stop.set)
    timer.start()
    try:
        runtime.agent.run(stop, until_drained=until_drained)
    finally:
        timer.cancel()
    return runtime


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("srv")) as s:
        yield s


def test_reads_hits_answers_audit_and_crops_reach_the_server_exactly_once(server, tmp_path):
    config_path = enrolled_config(server, tmp_path / "car")
    config = load_config(config_path)
    reads = [make_read(i, crop=b"\xff\xd8\xff\xe0" + bytes(300) + b"\xff\xd9") for i in range(30)]
    with Store(config.database_path) as store:
        for r in reads:
            store.save_read(r)
        (hit,) = store.save_hits(reads[5].read_id, [make_hit()])
        answer = store.save_answer(hit.hit_id, officer="o-7", answer="misread")
    before = {k: server.count(k) for k in ("read", "hit", "answer", "audit", "image")}
    runtime = run_agent(config_path)
    try:
        while runtime.agent._upload_once():  # the image lane, after reads are drained
            pass
        assert runtime.store.outbox_counts() == {Lane.HITS: 0, Lane.READS: 0, Lane.IMAGES: 0}
    finally:
        runtime.close()
    ids = set(server.stored_ids("read"))
    assert {r.read_id for r in reads} <= ids
    assert server.count("read") - before["read"] == 30
    assert hit.hit_id in server.stored_ids("hit") and answer.answer_id in server.stored_ids("answer")
    assert server.count("audit") - before["audit"] == 1
    assert server.count("image") - before["image"] == 30


def test_resent_batch_after_a_lost_ack_is_stored_once(server, tmp_path):
    config_path = enrolled_config(server, tmp_path / "car")
    config = load_config(config_path)
    reads = [make_read(i) for i in range(20)]
    with Store(config.database_path) as store:
        for r in reads:
            store.save_read(r)
        seqs = [e.seq for e in store.outbox_pending(Lane.READS, 100)]
    run_agent(config_path).close()
    # As if the ack had been lost: the same entries are queued again and sent again.
    with Store(config.database_path) as store, store._writing("requeue"):
        for r, seq in zip(reads, seqs, strict=True):
            store._conn.execute(
                "INSERT INTO outbox (seq, lane, kind, record_id, created_at) VALUES (?, 1, 'read', ?, 0)",
                (seq, r.read_id),
            )
    runtime = run_agent(config_path)
    try:
        assert runtime.agent.stats.duplicates_acked == 20
    finally:
        runtime.close()
    stored = server.stored_ids("read")
    assert sum(1 for i in stored if i in {r.read_id for r in reads}) == 20


def test_revoked_device_is_refused_and_keeps_its_reads(server, tmp_path, caplog):
    config_path = enrolled_config(server, tmp_path / "car")
    config = load_config(config_path)
    server.revoke(config.device.id)
    with Store(config.database_path) as store:
        store.save_read(make_read())
    with caplog.at_level(logging.WARNING):
        runtime = run_agent(config_path, 1.0)
    try:
        assert runtime.store.outbox_counts()[Lane.READS] == 1
        assert runtime.agent.stats.by_error.get("IdentityRefused", 0) >= 1
    finally:
        runtime.close()
    assert "refused this device" in caplog.text and "revoked" in caplog.text


def test_certificate_from_another_department_is_refused_in_the_handshake(server, tmp_path):
    with start_server(tmp_path / "other") as other:
        config_path = enrolled_config(other, tmp_path / "car", server_url=server.url)
        with Store(load_config(config_path).database_path) as store:
            store.save_read(make_read())
        # the device trusts only ITS department's CA: the first server's certificate does not verify
        runtime = run_agent(config_path, 1.0)
        try:
            assert runtime.agent.stats.by_error.get("TlsVerifyError", 0) >= 1
            assert runtime.store.outbox_counts()[Lane.READS] == 1
        finally:
            runtime.close()


def test_batch_naming_another_device_is_refused_and_kept(server, tmp_path):
    config_path = enrolled_config(server, tmp_path / "car")
    config = load_config(config_path)
    with Store(config.database_path) as store:
        store.save_read(make_read())
    runtime = AgentRuntime(config)
    try:
        object.__setattr__(runtime.agent.settings, "device_id", "dev-someone-else")
        assert runtime.agent._guarded(runtime.agent._upload_once) is None
        assert runtime.store.outbox_counts()[Lane.READS] == 1
        assert "IdentityRefused" in runtime.agent.stats.by_error
    finally:
        runtime.close()


def test_503_with_retry_after_is_honoured_and_nothing_is_lost(server, tmp_path):
    config_path = enrolled_config(server, tmp_path / "car", batch_max_records=50)
    config = load_config(config_path)
    reads = [make_read(i) for i in range(120)]
    with Store(config.database_path) as store:
        for r in reads:
            store.save_read(r)
    server.set_fault(status=503, retry_after=1, times=2)
    started = time.monotonic()
    runtime = run_agent(config_path)
    try:
        assert runtime.agent.stats.by_error.get("ServerBusy") == 2
        assert runtime.store.outbox_counts()[Lane.READS] == 0
    finally:
        runtime.close()
    assert time.monotonic() - started >= 2.0
    assert {r.read_id for r in reads} <= set(server.stored_ids("read"))


def test_agent_killed_mid_backlog_resumes_where_it_stopped(server, tmp_path):
    config_path = enrolled_config(server, tmp_path / "car", batch_max_records=40)
    config = load_config(config_path)
    reads = [make_read(i) for i in range(1200)]
    with Store(config.database_path) as store:
        for r in reads:
            store.save_read(r)
    cmd = [sys.executable, "-m", "sync.cli", "--config", str(config_path), "run"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        with Store(config.database_path) as store:
            while store.outbox_counts()[Lane.READS] > 600 and time.monotonic() < deadline:
                time.sleep(0.02)
        proc.kill()
    finally:
        proc.wait()
    with Store(config.database_path) as store:
        left = store.outbox_counts()[Lane.READS]
    assert 0 < left < 1200
    res = subprocess.run(
        [*cmd, "--until-drained"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["records_acked"] <= left + 40  # only what was left (plus the batch in flight)
    mine = {r.read_id for r in reads}
    assert sum(1 for i in server.stored_ids("read") if i in mine) == 1200


def test_hotlist_feed_is_pulled_applied_and_a_rotated_key_followed(server, tmp_path):
    config_path = enrolled_config(server, tmp_path / "car")
    config = load_config(config_path)
    lines = [
        json.dumps({"version": 1, "lists": ["stolen_vehicle"]}),
        json.dumps({"op": "add", "plate": "8FEED01", "state": "CA", "list": "stolen_vehicle"}),
    ]
    delta = tmp_path / "d.jsonl"
    delta.write_text("\n".join(lines) + "\n")
    server.import_hotlist(delta, "delta")
    server.rotate_feed_key()
    version = server.hotlist_version()
    runtime = AgentRuntime(config)
    try:
        runtime.agent.pull_feed()
        assert runtime.agent.stats.feeds_applied == 1
        assert runtime.feed.version_in_force() == version
        assert [h.entry.plate for h in runtime.hotlist.match("8FEED01")] == ["8FEED01"]
        runtime.agent.pull_feed()  # nothing new: signed "not modified", list confirmed current
        assert runtime.state.get(KEY_FEED_REFUSED) is None
        status = runtime.state.get("feed_ok")
        assert status["version"] == version
    finally:
        runtime.close()


def test_heartbeat_shows_health_on_the_server(server, tmp_path):
    config_path = enrolled_config(server, tmp_path / "car")
    config = load_config(config_path)
    status = {"cameras": {"front": {"state": "ok", "fps": 29.7}}, "gps": {"mode": 3}, "pipeline": {"fps": 29}}
    config.data_path(Path("status.json")).write_text(json.dumps(status))
    with Store(config.database_path) as store:
        store.save_read(make_read())
    runtime = AgentRuntime(config)
    try:
        runtime.agent.send_heartbeat()
    finally:
        runtime.close()
    (device,) = [d for d in server.dept.devices.list() if d.device_id == config.device.id]
    assert device.last_heartbeat_at is not None
    text = json.dumps(device.health)
    assert "front" in text and "29.7" in text


def test_expired_feed_from_the_server_is_refused_and_shown_by_status(tmp_path):
    with start_server(tmp_path / "frozen", feed_validity_s=-60) as frozen:
        config_path = enrolled_config(frozen, tmp_path / "car")
        lines = [
            json.dumps({"version": 1, "lists": ["stolen_vehicle"]}),
            json.dumps({"op": "add", "plate": "8FROZE1", "state": "CA", "list": "stolen_vehicle"}),
        ]
        delta = tmp_path / "d.jsonl"
        delta.write_text("\n".join(lines) + "\n")
        frozen.import_hotlist(delta, "delta")
        runtime = AgentRuntime(load_config(config_path))
        try:
            runtime.agent.pull_feed()
            assert runtime.agent.stats.feeds_refused == 1
            assert runtime.hotlist.match("8FROZE1") == [] and runtime.hotlist.status() == []
        finally:
            runtime.close()
    res = subprocess.run(
        [sys.executable, "-m", "sync.cli", "--config", str(config_path), "status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    assert "expired" in status["feed_refused"]["cause"] and status["feed_refused"]["to_version"] == 1
    assert status["backlog"] == {"hits": 0, "reads": 0, "images": 0} and status["set_aside"] == 0
