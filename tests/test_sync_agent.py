"""The sync agent's upload policy, run in-process against a real mutual-TLS server on loopback
whose answers each test scripts (garbage, HTML, refusals, wrong acknowledgements), over a real
device database written through edge.store.Store.

`AgentRig` and `make_read` are imported by the other sync tests.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_sync_transport import Pki, Reply, ScriptedServer, ack_everything, mint_pki

from edge import audit
from edge.hotlist import Freshness, Hit, HotlistEntry, MatchKind
from edge.hotlist_formats import ListKind
from edge.store import Lane, Store
from edge.types import Box, FixMode, GpsFix, PlateRead
from sync.agent import Agent, AgentSettings
from sync.outbox import OutboxReader
from sync.protocol import BatchAck, ReadRecord, UploadBatch, decode_batch, encode_batch
from sync.state import SyncState, connect
from sync.transport import Transport


def make_read(
    i: int = 0, *, crop: bytes = b"", t: float = 1_790_000_000.0, text: str | None = None
) -> PlateRead:
    return PlateRead(
        read_id=str(uuid.uuid4()),
        camera_id="front",
        text=text or f"7ABC{i % 1000:03d}",
        confidence=0.912345,
        char_confidences=(0.99, 0.95, 0.93, 0.97, 0.96, 0.98, 0.912345),
        region=None,
        first_seen=t + i * 2.37,
        last_seen=t + i * 2.37 + 1.4,
        observations=6,
        best_crop_jpeg=crop,
        best_box=Box(100.0, 200.0, 260.0, 250.0),
        gps=GpsFix(
            mode=FixMode.FIX_3D,
            lat=37.7751234 + i * 1e-5,
            lon=-122.4180123 - i * 1e-5,
            speed_mps=12.4,
            heading_deg=181.25,
            fix_time=t + i * 2.37 + 1.0,
            source="gpsd",
        ),
    )


def make_hit(plate: str = "7ABC001") -> Hit:
    entry = HotlistEntry(
        id=1, plate=plate, state="CA", list_kind=ListKind.STOLEN_VEHICLE, priority=70, source="delta"
    )
    return Hit(
        read_plate=plate,
        read_state=None,
        entry=entry,
        kind=MatchKind.EXACT,
        edits=(),
        differing_positions=(),
        state_mismatch=False,
        list_age_s=10.0,
        list_version="101",
        freshness=Freshness.FRESH,
        stale=False,
        matched_at=1_790_000_100.0,
    )


@dataclass
class AgentRig:
    """A device database, the agent's connections and an Agent pointed at `url`."""

    store: Store
    state: SyncState
    reader: OutboxReader
    transport: Transport
    agent: Agent
    conns: list

    @classmethod
    def build(cls, db: Path, url: str, pki_or_identity, **settings) -> AgentRig:
        identity = getattr(pki_or_identity, "device", pki_or_identity)
        store = Store(db)
        wc = connect(db)
        state = SyncState(wc)
        rc = connect(db, read_only=True)
        reader = OutboxReader(rc, instance_id=state.instance_id)
        transport = Transport(url, identity, timeout_s=5, connect_timeout_s=2)
        clock = settings.pop("clock", None) or time.time
        defaults = dict(
            device_id=settings.pop("device_id", "car-17"),
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            poll_interval_s=0.02,
            heartbeat_interval_s=3600,
        )
        defaults.update(settings)
        agent = Agent(
            settings=AgentSettings(**defaults),
            store=store,
            reader=reader,
            state=state,
            transport=transport,
            clock=clock,
        )
        return cls(store, state, reader, transport, agent, [wc, rc])

    def drain(self, timeout_s: float = 10.0) -> None:
        stop = threading.Event()
        timer = threading.Timer(timeout_s, stop.set)
        timer.start()
        try:
            self.agent.run(stop, until_drained=True)
        finally:
            timer.cancel()

    def run_for(self, seconds: float) -> None:
        stop = threading.Event()
        timer = threading.Timer(seconds, stop.set)
        timer.start()
        self.agent.run(stop)
        timer.cancel()

    def close(self) -> None:
        self.transport.close()
        for c in self.conns:
            c.close()
        self.store.close()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return mint_pki(tmp_path / "pki")


@pytest.fixture
def rig_factory(tmp_path: Path, pki: Pki):
    made: list = []

    def build(responder=ack_everything, **settings):
        server = ScriptedServer(pki, responder)
        rig = AgentRig.build(tmp_path / "alpr.db", server.url, pki, **settings)
        made.append((rig, server))
        return rig, server

    yield build
    for rig, server in made:
        rig.close()
        server.close()


def _batches(server: ScriptedServer) -> list[UploadBatch]:
    return [decode_batch(body) for m, p, _, body in server.requests if p.startswith("/v1/device/batches")]


def test_every_read_arrives_once_and_leaves_the_outbox(rig_factory):
    rig, server = rig_factory(batch_max_records=40)
    reads = [make_read(i) for i in range(100)]
    for r in reads:
        rig.store.save_read(r)
    rig.drain()
    sent = [rec.id for b in _batches(server) for rec in b.records]
    assert sorted(sent) == sorted(r.read_id for r in reads)
    assert rig.store.outbox_counts()[Lane.READS] == 0
    assert len(_batches(server)) == 3


def test_hits_answers_and_audit_rows_go_before_older_reads(rig_factory):
    rig, server = rig_factory(batch_max_records=10)
    reads = [make_read(i) for i in range(25)]
    for r in reads:
        rig.store.save_read(r)
    (hit,) = rig.store.save_hits(reads[-1].read_id, [make_hit()])
    rig.store.save_answer(hit.hit_id, officer="o-12", answer="confirmed_match", note="stopped")
    rig.drain()
    first = _batches(server)[0].records
    kinds = [r.kind for r in first]
    assert kinds[:3] == ["hit", "answer", "audit"], kinds
    assert {r.kind for r in first[3:]} == {"read"}
    audit_rec = first[2]
    assert audit_rec.action == "hit.answer" and str(uuid.UUID(audit_rec.id)) == audit_rec.id


def test_audit_upload_id_is_stable_across_agent_restarts(tmp_path, pki):
    db = tmp_path / "alpr.db"
    ids = []
    for _ in range(2):
        with ScriptedServer(pki) as server:
            rig = AgentRig.build(db, server.url, pki)
            if not ids:
                with rig.store._writing("audit row"):
                    audit.append(
                        rig.store._conn,
                        at=1.0,
                        actor="o-1",
                        action="mdt.login",
                        subject=None,
                        reason=None,
                        outcome="ok",
                    )
            rec = rig.reader.records(rig.reader.pending(Lane.HITS, 10)).records
            ids.append(rec[0][1].id)
            rig.close()
    assert ids[0] == ids[1]


def test_garbage_and_html_answers_leave_every_read_in_the_outbox(rig_factory, caplog):
    answers = iter(
        [
            Reply(200, b"<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"}),
            Reply(200, b"\x00\xff garbage \x13"),
            Reply(200, b'{"batch_id": "not even a uuid"}'),
        ]
    )

    def responder(*req):
        return next(answers, None) or ack_everything(*req)

    rig, _server = rig_factory(responder)
    reads = [make_read(i) for i in range(5)]
    for r in reads:
        rig.store.save_read(r)
    with caplog.at_level(logging.WARNING, logger="sync.agent"):
        rig.agent._upload_once_guarded = None
        for _ in range(3):
            assert rig.agent._guarded(rig.agent._upload_once) is None
            assert rig.store.outbox_counts()[Lane.READS] == 5
            rig.agent._not_before = 0
    assert "BadResponse" in caplog.text and "502 Bad Gateway" in caplog.text
    rig.drain()
    assert rig.store.outbox_counts()[Lane.READS] == 0
    assert rig.agent.stats.failures == 3


def test_ack_for_another_batch_deletes_nothing(rig_factory):
    def responder(method, path, headers, body):
        batch = decode_batch(body)
        ack = BatchAck(
            batch_id=str(uuid.uuid4()), stored=[r.id for r in batch.records], duplicate=[], server_time=0
        )
        return Reply(200, ack.model_dump_json().encode())

    rig, _ = rig_factory(responder)
    rig.store.save_read(make_read())
    assert rig.agent._guarded(rig.agent._upload_once) is None
    assert rig.store.outbox_counts()[Lane.READS] == 1


def test_partial_ack_deletes_only_the_records_named(rig_factory):
    def responder(method, path, headers, body):
        batch = decode_batch(body)
        ids = [r.id for r in batch.records]
        ack = BatchAck(batch_id=batch.batch_id, stored=ids[:2], duplicate=ids[2:3], server_time=0)
        return Reply(200, ack.model_dump_json().encode())

    rig, _ = rig_factory(responder)
    for i in range(5):
        rig.store.save_read(make_read(i))
    assert rig.agent._guarded(rig.agent._upload_once) is True
    assert rig.store.outbox_counts()[Lane.READS] == 2


def test_batch_refused_whole_is_split_until_the_bad_record_is_set_aside(rig_factory, caplog):
    reads = [make_read(i) for i in range(9)]
    poison = reads[6].read_id

    def responder(method, path, headers, body):
        batch = decode_batch(body)
        if any(r.id == poison for r in batch.records):
            return Reply(422, b'{"status": 422, "title": "unprocessable"}')
        return ack_everything(method, path, headers, body)

    rig, _ = rig_factory(responder)
    for r in reads:
        rig.store.save_read(r)
    with caplog.at_level(logging.ERROR, logger="sync.agent"):
        rig.drain()
    assert rig.store.outbox_counts()[Lane.READS] == 1  # kept, not deleted
    assert rig.state.set_aside_count() == 1
    assert rig.reader.pending(Lane.READS, 10) == []
    assert "set aside" in caplog.text and poison in caplog.text


def test_rejected_records_are_set_aside_not_deleted(rig_factory):
    def responder(method, path, headers, body):
        batch = decode_batch(body)
        ids = [r.id for r in batch.records]
        ack = {
            "batch_id": batch.batch_id,
            "stored": ids[1:],
            "duplicate": [],
            "rejected": [{"id": ids[0], "reason": "plate has lower case"}],
            "server_time": 0,
        }
        return Reply(200, json.dumps(ack).encode())

    rig, _ = rig_factory(responder)
    for i in range(3):
        rig.store.save_read(make_read(i))
    rig.drain()
    assert rig.store.outbox_counts()[Lane.READS] == 1
    assert rig.state.set_aside_count() == 1


def test_retry_after_is_honoured_before_the_next_attempt(rig_factory):
    calls = []

    def responder(*req):
        if "batches" not in req[1]:
            return ack_everything(*req)
        calls.append(time.monotonic())
        if len(calls) == 1:
            return Reply(503, b"{}", {"Retry-After": "1"})
        return ack_everything(*req)

    rig, _ = rig_factory(responder)
    rig.store.save_read(make_read())
    rig.drain()
    assert len(calls) == 2 and calls[1] - calls[0] >= 1.0


def test_backoff_doubles_with_jitter_and_stops_at_the_cap(rig_factory):
    rig, _ = rig_factory(backoff_initial_s=1, backoff_max_s=8)
    delays = []
    for _ in range(7):
        now = rig.agent._mono()
        rig.agent._failed(ConnectionError("down"))
        delays.append(rig.agent._not_before - now)
    for n, d in enumerate(delays):
        ceiling = min(8, 2**n)
        assert ceiling / 2 - 1e-3 <= d <= ceiling + 1e-3
    assert max(delays) <= 8 + 1e-3


def test_unknown_kind_stays_in_the_outbox_without_blocking_the_lane(rig_factory, caplog):
    rig, _server = rig_factory()
    with rig.store._writing("future kind"):
        rig.store._conn.execute(
            "INSERT INTO outbox (lane, kind, record_id, created_at) VALUES (0, 'tow_request', 'x1', 1.0)"
        )
    rig.store.save_read(make_read())
    with caplog.at_level(logging.WARNING, logger="sync.outbox"):
        rig.drain()
        rig.agent._upload_once()
    assert rig.store.outbox_counts() == {Lane.HITS: 1, Lane.READS: 0, Lane.IMAGES: 0}
    assert "tow_request: 1" in caplog.text and "left in the outbox" in caplog.text


def test_image_budget_stops_crops_for_the_day_and_keeps_them(rig_factory):
    rig, server = rig_factory(image_budget_bytes_per_day=2500)
    for i in range(4):
        rig.store.save_read(make_read(i, crop=b"\xff\xd8" + bytes(1000) + b"\xff\xd9"))
    rig.drain()
    while rig.agent._upload_once():
        pass
    puts = [p for m, p, _, _ in server.requests if m == "PUT"]
    assert len(puts) == 2
    assert rig.store.outbox_counts()[Lane.IMAGES] == 2
    assert rig.state.get("image_budget")["bytes"] == 2008


def test_clock_jump_is_logged_and_uploads_go_on(rig_factory, caplog):
    now = [1_790_000_000.0]
    rig, _server = rig_factory(clock=lambda: now[0])
    rig.store.save_read(make_read(0))
    rig.agent._check_clock()
    now[0] -= 86_400 * 3  # the RTC forgot three days
    with caplog.at_level(logging.WARNING, logger="sync.agent"):
        rig.drain()
    assert "device clock jumped by -259200 s" in caplog.text
    assert rig.store.outbox_counts()[Lane.READS] == 0


def test_read_costs_under_200_bytes_on_the_wire(rig_factory):
    rig, _ = rig_factory()
    for i in range(500):
        rig.store.save_read(make_read(i))
    prepared = rig.reader.records(rig.reader.pending(Lane.READS, 500))
    batch = UploadBatch(
        device_id="car-17", batch_id=str(uuid.uuid4()), sent_at=1.0, records=[r for _, r in prepared.records]
    )
    per_read = len(encode_batch(batch)) / 500
    assert per_read <= 200
    rec = prepared.records[0][1]
    assert isinstance(rec, ReadRecord) and rec.lat == 37.775123 and rec.confidence == 0.912
