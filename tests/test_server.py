"""The department server over real mutual TLS on loopback: `alpr-server serve` in a subprocess,
certificates minted by the server's own CA code, the device side made with httpx."""

import base64
import gzip
import json
import sqlite3
import ssl
import uuid
from pathlib import Path

import httpx
import pytest
from server_harness import DeviceIdentity, fresh_reads, make_key_and_csr, measure_ingest_rate, start_server

from edge.hotlist import Hotlist
from edge.hotlist_formats import parse_delta
from server.ca import CertificateAuthority
from server.feed import verify_endorsement, verify_feed
from sync.protocol import (
    BATCH_PATH,
    ENROLL_PATH,
    HEARTBEAT_PATH,
    HOTLIST_PATH,
    KEYS_PATH,
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    MAX_IMAGE_BYTES,
    BatchAck,
    EnrollRequest,
    FeedKey,
    HitRecord,
    HotlistFeed,
    KeyEndorsement,
    UploadBatch,
    encode_batch,
)

GZIP = {"Content-Encoding": "gzip"}
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(200)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("dept")) as running:
        yield running


@pytest.fixture
def device(server, tmp_path) -> DeviceIdentity:
    return server.enroll_device(tmp_path, name="car-17")


def batch_for(device_id: str, records) -> UploadBatch:
    return UploadBatch(device_id=device_id, batch_id=str(uuid.uuid4()), sent_at=1.0, records=records)


def problem(res: httpx.Response) -> dict:
    assert res.headers["content-type"].startswith("application/problem+json"), res.text
    body = res.json()
    assert body["status"] == res.status_code
    return body


def anonymous(server) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, verify=ssl.create_default_context(cafile=str(server.ca_cert_path)), timeout=10
    )


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("plate,state,list,description\n" + "\n".join(rows) + "\n")
    return path


# ---------------------------------------------------------------- enrollment and identity


def test_enrollment_token_works_once(server, tmp_path):
    token = server.enroll_token("car-9")
    _, csr = make_key_and_csr()
    request = EnrollRequest(token=token, csr_pem=csr.decode(), hostname="pi-9").model_dump()
    with anonymous(server) as http:
        first = http.post(ENROLL_PATH, json=request)
        again = http.post(ENROLL_PATH, json=request)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["device_id"].startswith("dev-")
    assert answer["feed_keys"] == [server.feed_key().model_dump()]
    assert answer["ca_certificate_pem"] == server.ca_cert_path.read_text()
    assert again.status_code == 403
    assert "already used" in problem(again)["detail"]
    listed = {d.device_id: d for d in server.dept.devices.list()}
    assert listed[answer["device_id"]].name == "car-9" and not listed[answer["device_id"]].revoked


def test_expired_token_is_refused(server):
    token = server.dept.devices.create_token("late", ttl_s=-1).token
    _, csr = make_key_and_csr()
    with anonymous(server) as http:
        res = http.post(ENROLL_PATH, json={"token": token, "csr_pem": csr.decode()})
    assert res.status_code == 403 and "expired" in problem(res)["detail"]


def test_bad_csr_is_refused_and_leaves_the_token_usable(server):
    token = server.enroll_token()
    _, csr = make_key_and_csr()
    tampered = csr.decode().replace(csr.decode().splitlines()[3], csr.decode().splitlines()[3][::-1])
    with anonymous(server) as http:
        bad = http.post(ENROLL_PATH, json={"token": token, "csr_pem": tampered})
        good = http.post(ENROLL_PATH, json={"token": token, "csr_pem": csr.decode()})
    assert bad.status_code == 400 and "request" in problem(bad)["title"].lower()
    assert good.status_code == 200, good.text


def test_certificate_from_another_ca_is_refused_at_the_handshake(server, device, tmp_path):
    rogue = CertificateAuthority.init(tmp_path / "rogue")
    key_pem, csr = make_key_and_csr()
    # Same CN as a real device: only the issuer tells them apart.
    issued = rogue.sign_device_csr(csr, device.device_id)
    (tmp_path / "rogue.crt").write_text(issued.pem)
    (tmp_path / "rogue.key").write_bytes(key_pem)
    impostor = DeviceIdentity(
        device.device_id, tmp_path / "rogue.crt", tmp_path / "rogue.key", device.ca_path
    )
    before = server.counters()
    with impostor.client(server.url, timeout=10) as http, pytest.raises(httpx.TransportError):
        http.get(HOTLIST_PATH)
    after = server.counters()
    assert after.get("feeds", 0) == before.get("feeds", 0)
    assert after.get("refused_not_enrolled", 0) == before.get("refused_not_enrolled", 0)


def test_certificate_from_our_ca_but_never_enrolled_gets_403(server, tmp_path):
    # e.g. a certificate left over from a database restored from backup
    key_pem, csr = make_key_and_csr()
    issued = server.dept.ca.sign_device_csr(csr, "dev-000000000000")
    (tmp_path / "c.crt").write_text(issued.pem)
    (tmp_path / "c.key").write_bytes(key_pem)
    stranger = DeviceIdentity("dev-000000000000", tmp_path / "c.crt", tmp_path / "c.key", server.ca_cert_path)
    with stranger.client(server.url) as http:
        res = http.get(HOTLIST_PATH)
    assert res.status_code == 403 and "not enrolled" in problem(res)["detail"]


def test_device_endpoint_without_a_client_certificate_is_401(server):
    with anonymous(server) as http:
        res = http.post(BATCH_PATH, content=encode_batch(batch_for("dev-x", fresh_reads(1))), headers=GZIP)
    assert res.status_code == 401 and "mutual TLS" in problem(res)["detail"]


def test_revoked_certificate_gets_403_on_its_next_request_even_on_an_open_connection(server, device):
    with device.client(server.url) as http:
        assert http.get(HOTLIST_PATH).status_code == 200
        server.revoke(device.device_id)
        res = http.post(
            BATCH_PATH, content=encode_batch(batch_for(device.device_id, fresh_reads(2))), headers=GZIP
        )
    assert res.status_code == 403 and "revoked" in problem(res)["detail"]
    assert [d.revoked for d in server.dept.devices.list() if d.device_id == device.device_id] == [True]


def test_batch_naming_another_device_is_refused_and_nothing_is_stored(server, device, tmp_path):
    other = server.enroll_device(tmp_path, name="car-18")
    reads = fresh_reads(3)
    with device.client(server.url) as http:
        res = http.post(BATCH_PATH, content=encode_batch(batch_for(other.device_id, reads)), headers=GZIP)
    assert res.status_code == 403
    assert other.device_id in problem(res)["detail"] and device.device_id in problem(res)["detail"]
    assert not set(server.stored_ids("read")) & {r.id for r in reads}


# ---------------------------------------------------------------- ingest


def test_replayed_batch_is_acknowledged_as_duplicates_and_stored_once(server, device):
    reads = fresh_reads(5)
    reads.append(reads[0])  # the same id twice inside one batch, too
    body = encode_batch(batch_for(device.device_id, reads))
    before = server.count("read")
    with device.client(server.url) as http:
        first = BatchAck.model_validate_json(http.post(BATCH_PATH, content=body, headers=GZIP).content)
        replay = BatchAck.model_validate_json(http.post(BATCH_PATH, content=body, headers=GZIP).content)
    assert first.stored == [r.id for r in reads[:5]] and first.duplicate == [reads[0].id]
    assert replay.stored == [] and sorted(replay.duplicate) == sorted(r.id for r in reads)
    assert server.count("read") == before + 5


def test_a_read_requeued_when_its_pass_ended_keeps_the_final_extent(server, device):
    import sqlite3

    (early,) = fresh_reads(1)
    final = early.model_copy(
        update={"last_seen": early.last_seen + 4.0, "observations": early.observations + 9}
    )
    with device.client(server.url) as http:
        http.post(BATCH_PATH, content=encode_batch(batch_for(device.device_id, [early])), headers=GZIP)
        ack = BatchAck.model_validate_json(
            http.post(
                BATCH_PATH, content=encode_batch(batch_for(device.device_id, [final])), headers=GZIP
            ).content
        )
        # An older copy arriving late never shrinks the pass.
        http.post(BATCH_PATH, content=encode_batch(batch_for(device.device_id, [early])), headers=GZIP)
    assert ack.duplicate == [early.id]
    db = sqlite3.connect(server.dept.home.db_path)
    try:
        row = db.execute("SELECT last_seen, observations FROM reads WHERE id = ?", (early.id,)).fetchone()
    finally:
        db.close()
    assert row == (final.last_seen, final.observations)


def test_hits_answers_and_reads_land_in_their_own_kinds(server, device):
    (read,) = fresh_reads(1)
    hit = HitRecord(
        id=str(uuid.uuid4()),
        read_id=read.id,
        entry={"plate": read.plate, "list_kind": "stolen_vehicle"},
        match_kind="exact",
        differing_positions=[],
        state_mismatch=False,
        list_kind="stolen_vehicle",
        list_version="4",
        list_age_s=60.0,
        stale=False,
        retroactive=False,
        matched_at=read.last_seen,
    )
    with device.client(server.url) as http:
        res = http.post(
            BATCH_PATH, content=encode_batch(batch_for(device.device_id, [hit, read])), headers=GZIP
        )
    assert res.status_code == 200 and sorted(res.json()["stored"]) == sorted([hit.id, read.id])
    assert hit.id in server.stored_ids("hit") and read.id in server.stored_ids("read")
    assert server.dept.ingest.event(hit.id)["entry"]["plate"] == read.plate


def test_invalid_record_is_rejected_by_id_and_the_rest_of_the_batch_is_stored(server, device):
    good, bad = fresh_reads(2)
    raw = json.loads(batch_for(device.device_id, [good, bad]).model_dump_json(by_alias=True))
    raw["records"][1]["cf"] = 7.5  # confidence above 1
    with device.client(server.url) as http:
        res = http.post(BATCH_PATH, content=gzip.compress(json.dumps(raw).encode()), headers=GZIP)
    ack = BatchAck.model_validate_json(res.content)
    assert ack.stored == [good.id]
    assert [r.id for r in ack.rejected] == [bad.id] and "cf" in ack.rejected[0].reason
    assert bad.id not in server.stored_ids("read")


@pytest.mark.parametrize(
    ("body", "headers", "status", "words"),
    [
        (gzip.compress(b"[" + b" " * (MAX_BATCH_BYTES + 10) + b"]"), GZIP, 413, "decompresses"),
        (b"<html>502 Bad Gateway</html>", GZIP, 400, "not gzip"),
        (gzip.compress(b'{"protocol": 1, "records": "x"}'), GZIP, 400, "not a valid v1 upload batch"),
        (gzip.compress(b"\x00\x01garbage"), GZIP, 400, "not a valid"),
        (gzip.compress(json.dumps({"records": []}).encode())[:-6], GZIP, 400, "truncated"),
        (b"{}", {"Content-Encoding": "br"}, 415, "br"),
        (b"x" * (MAX_BATCH_BYTES + 1), GZIP, 413, "at most"),
    ],
    ids=["gzip-bomb", "html", "wrong-shape", "garbage", "truncated-gzip", "brotli", "oversized"],
)
def test_bad_batches_are_refused_with_a_problem_and_nothing_stored(
    server, device, body, headers, status, words
):
    before = server.count("read")
    with device.client(server.url) as http:
        res = http.post(BATCH_PATH, content=body, headers=headers)
    assert res.status_code == status, res.text
    assert words in problem(res)["detail"]
    assert server.count("read") == before


def test_batch_with_too_many_records_is_413(server, device):
    raw = json.loads(batch_for(device.device_id, fresh_reads(1)).model_dump_json(by_alias=True))
    raw["records"] = raw["records"] * (MAX_BATCH_RECORDS + 1)
    with device.client(server.url) as http:
        res = http.post(BATCH_PATH, content=gzip.compress(json.dumps(raw).encode()), headers=GZIP)
    assert res.status_code == 413 and str(MAX_BATCH_RECORDS) in problem(res)["detail"]


def test_acknowledged_reads_survive_a_server_kill(tmp_path):
    with start_server(tmp_path) as srv:
        device = srv.enroll_device(tmp_path)
        reads = fresh_reads(50)
        with device.client(srv.url) as http:
            res = http.post(
                BATCH_PATH, content=encode_batch(batch_for(device.device_id, reads)), headers=GZIP
            )
        assert len(res.json()["stored"]) == 50
        srv.kill()
        conn = sqlite3.connect(srv.dept.home.db_path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("SELECT count(*) FROM reads").fetchone() == (50,)
        finally:
            conn.close()
        srv.restart()
        with device.client(srv.url) as http:
            again = http.post(
                BATCH_PATH, content=encode_batch(batch_for(device.device_id, reads)), headers=GZIP
            )
        assert len(again.json()["duplicate"]) == 50


def test_many_batches_store_every_read_once_and_report_the_ingest_rate(server, device, capsys):
    before = server.count("read")
    rate = measure_ingest_rate(server, device, reads=5000, batch_size=500)
    assert server.count("read") == before + 5000
    with capsys.disabled():
        print(f"\nserver ingest over loopback mTLS, SQLite synchronous=FULL: {json.dumps(rate)}")


def test_images_are_stored_once_and_capped(server, device):
    (read,) = fresh_reads(1)
    path = f"/v1/device/images/{read.id}"
    with device.client(server.url) as http:
        first = http.put(path, content=JPEG, headers={"Content-Type": "image/jpeg"})
        again = http.put(path, content=JPEG, headers={"Content-Type": "image/jpeg"})
        not_jpeg = http.put(f"/v1/device/images/{uuid.uuid4()}", content=b"GIF89a...")
        huge = http.put(f"/v1/device/images/{uuid.uuid4()}", content=JPEG + bytes(MAX_IMAGE_BYTES))
        bad_id = http.put("/v1/device/images/not-a-uuid", content=JPEG)
    assert first.json() == {"record_id": read.id, "status": "stored"}
    assert again.json() == {"record_id": read.id, "status": "duplicate"}
    assert not_jpeg.status_code == 415 and problem(not_jpeg)
    assert huge.status_code == 413 and problem(huge)
    assert bad_id.status_code == 400 and "record_id" in problem(bad_id)["detail"]
    assert server.dept.ingest.image(read.id) == JPEG and server.count("image") == 1


def test_chunked_body_without_content_length_is_cut_off_at_the_limit(server, device):
    chunks = iter([JPEG] + [bytes(256 * 1024)] * 12)  # 3 MiB, streamed: no Content-Length to refuse up front
    with device.client(server.url) as http:
        res = http.put(f"/v1/device/images/{uuid.uuid4()}", content=chunks)
        after = http.get("/v1/device/nowhere")
    assert res.status_code == 413 and str(MAX_IMAGE_BYTES) in problem(res)["detail"]
    assert after.status_code == 404 and problem(after)


def test_heartbeat_is_stored_and_a_heartbeat_for_another_device_is_403(server, device):
    hb = {
        "device_id": device.device_id,
        "sent_at": 1.0,
        "software_version": "0.1.0",
        "cameras": {"front": {"state": "ok", "fps": 14.5}},
        "gps": {"mode": 3},
        "hotlist_versions": {"stolen_vehicle": "4"},
        "backlog": {"reads": 120, "images": 7},
        "disk_free_bytes": 12_000_000_000,
    }
    with device.client(server.url) as http:
        ok = http.post(HEARTBEAT_PATH, json=hb)
        wrong = http.post(HEARTBEAT_PATH, json={**hb, "device_id": "dev-somebodyelse"})
    assert ok.status_code == 200 and ok.json()["server_time"] > 0
    assert wrong.status_code == 403
    (info,) = [d for d in server.dept.devices.list() if d.device_id == device.device_id]
    assert info.health["fps"] == {"front": 14.5} and info.health["backlog"] == {"reads": 120, "images": 7}
    assert info.health["hotlist_versions"] == {"stolen_vehicle": "4"} and info.last_heartbeat_at


def test_fault_hook_answers_503_with_retry_after_then_recovers(server, device):
    body = encode_batch(batch_for(device.device_id, fresh_reads(2)))
    server.set_fault(status=503, retry_after=3, times=2)
    with device.client(server.url) as http:
        answers = [http.post(BATCH_PATH, content=body, headers=GZIP) for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["retry-after"] == "3"
    assert len(answers[2].json()["stored"]) == 2


# ---------------------------------------------------------------- hotlist feed and keys


def get_feed(server, device, since: int) -> tuple[HotlistFeed, bytes]:
    with device.client(server.url) as http:
        res = http.get(HOTLIST_PATH, params={"since": since})
    assert res.status_code == 200, res.text
    return HotlistFeed.model_validate_json(res.content), res.content


def apply_on_device(db: Path, feed: HotlistFeed) -> None:
    with Hotlist(db) as hotlist:
        hotlist.apply_delta(parse_delta(line.encode() for line in feed.delta))


def device_entries(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT plate, state, list_kind, description FROM hotlist_entries ORDER BY plate"
        ).fetchall()
    finally:
        conn.close()


def test_feed_signature_verifies_with_the_published_key_and_a_flipped_byte_fails(tmp_path):
    with start_server(tmp_path, feed_validity_s=3600) as srv:
        device = srv.enroll_device(tmp_path)
        srv.import_hotlist(write_csv(tmp_path / "l.csv", ["7ABC123,CA,V,grey Civic"]), "csv")
        feed, raw = get_feed(srv, device, 0)
        key = srv.feed_key()
        assert verify_feed(feed, [key])
        assert feed.expires_at - feed.issued_at == pytest.approx(3600)
        flipped = raw.replace(b"7ABC123", b"7ABC124")
        assert flipped != raw and not verify_feed(HotlistFeed.model_validate_json(flipped), [key])
        signature = bytearray(base64.b64decode(feed.signature))
        signature[10] ^= 0x01
        forged = feed.model_copy(update={"signature": base64.b64encode(bytes(signature)).decode()})
        assert not verify_feed(forged, [key])


def test_feed_since_a_version_carries_only_the_changes_and_the_device_ends_up_equal(server, device, tmp_path):
    start = server.hotlist_version()
    server.import_hotlist(write_csv(tmp_path / "a.csv", ["AAA111,CA,V,red", "BBB222,CA,V,blue"]), "csv")
    v1 = server.hotlist_version()
    server.import_hotlist(write_csv(tmp_path / "b.csv", ["BBB222,CA,V,green", "CCC333,NV,P,"]), "csv")
    v2 = server.hotlist_version()
    assert v2 == v1 + 1 == start + 2

    step, _ = get_feed(server, device, v1)
    assert (step.from_version, step.to_version, step.not_modified) == (v1, v2, False)
    changes = [json.loads(line) for line in step.delta[1:]]
    assert [(c["op"], c["plate"]) for c in changes] == [
        ("remove", "AAA111"),
        ("add", "BBB222"),
        ("add", "CCC333"),
    ]
    assert json.loads(step.delta[0]) == {
        "version": v2,
        "lists": ["stolen_plate", "stolen_vehicle"],
        "base_version": v1,
    }

    whole, _ = get_feed(server, device, 0)  # a new device: everything at the current version
    assert (whole.from_version, whole.to_version) == (0, v2)
    snapshot = tmp_path / "snapshot.db"
    apply_on_device(snapshot, whole)
    assert device_entries(snapshot) == [
        ("BBB222", "CA", "stolen_vehicle", "green"),
        ("CCC333", "NV", "stolen_plate", None),
    ]
    same, _ = get_feed(server, device, v2)
    assert same.not_modified and same.delta == [] and verify_feed(same, [server.feed_key()])


def test_incremental_feeds_bring_a_device_to_the_same_list_as_a_full_feed(tmp_path):
    with start_server(tmp_path) as srv:
        device = srv.enroll_device(tmp_path)
        on_car = tmp_path / "car.db"
        srv.import_hotlist(write_csv(tmp_path / "1.csv", ["AAA111,CA,V,red", "BBB222,CA,V,blue"]), "csv")
        apply_on_device(on_car, get_feed(srv, device, 0)[0])
        srv.import_hotlist(write_csv(tmp_path / "2.csv", ["BBB222,CA,V,green", "CCC333,NV,P,"]), "csv")
        delta = tmp_path / "3.jsonl"
        delta.write_text(
            '{"version": 1, "lists": []}\n{"op": "remove", "plate": "CCC333", "state": "NV", "list": "P"}\n'
        )
        srv.import_hotlist(delta, "delta")
        apply_on_device(on_car, get_feed(srv, device, 1)[0])
        fresh = tmp_path / "fresh.db"
        apply_on_device(fresh, get_feed(srv, device, 0)[0])
        assert (
            device_entries(on_car) == device_entries(fresh) == [("BBB222", "CA", "stolen_vehicle", "green")]
        )
        with Hotlist(on_car) as car:
            assert [h.entry.plate for h in car.match("BBB222", "CA")] == ["BBB222"]
            assert car.match("AAA111", "CA") == []


def test_key_rotation_is_endorsed_by_the_enrollment_key_and_new_feeds_use_the_new_key(tmp_path):
    with start_server(tmp_path) as srv:
        device = srv.enroll_device(tmp_path)
        enrolled_with = srv.feed_key()
        srv.rotate_feed_key()
        with device.client(srv.url) as http:
            chain = [KeyEndorsement.model_validate(e) for e in http.get(KEYS_PATH).json()]
        (endorsement,) = chain
        assert endorsement.endorsed_by == enrolled_with.key_id
        assert verify_endorsement(endorsement, [enrolled_with])
        trusted = [enrolled_with, endorsement.key]
        feed, _ = get_feed(srv, device, 0)
        assert feed.key_id == endorsement.key.key_id == srv.feed_key().key_id
        assert verify_feed(feed, trusted) and not verify_feed(feed, [enrolled_with])
        rogue = FeedKey(key_id=endorsement.key.key_id, public_key=enrolled_with.public_key)
        assert not verify_endorsement(endorsement.model_copy(update={"key": rogue}), [enrolled_with])
        assert not verify_endorsement(endorsement, [endorsement.key])  # not self-endorsing
        srv.rotate_feed_key()
        with device.client(srv.url) as http:
            chain = [KeyEndorsement.model_validate(e) for e in http.get(KEYS_PATH).json()]
        assert [e.endorsed_by for e in chain] == [enrolled_with.key_id, endorsement.key.key_id]
        assert verify_endorsement(chain[1], trusted)
