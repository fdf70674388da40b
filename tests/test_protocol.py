import gzip
import uuid

import pytest

from sync.protocol import (
    MAX_BATCH_BYTES,
    HotlistFeed,
    ProtocolError,
    ReadRecord,
    UploadBatch,
    canonical_bytes,
    decode_batch,
    encode_batch,
)


def _read(i: int) -> ReadRecord:
    return ReadRecord(
        id=str(uuid.UUID(int=i + 10**30)),
        camera="front",
        plate=f"7ABC{i % 1000:03d}",
        confidence=0.97,
        first_seen=1796400000.0 + i * 3.1,
        last_seen=1796400001.4 + i * 3.1,
        observations=6,
        lat=37.77512 + i * 1e-5,
        lon=-122.41801 - i * 1e-5,
        speed_mps=12.4,
        heading_deg=181.0,
        fix_mode=3,
        fix_time=1796400001.0 + i * 3.1,
    )


def test_batch_round_trips_through_gzip_json():
    batch = UploadBatch(
        device_id="car-17", batch_id=str(uuid.uuid4()), sent_at=1.0, records=[_read(1), _read(2)]
    )
    assert decode_batch(encode_batch(batch)) == batch


def test_reads_cost_well_under_200_bytes_each_on_the_wire():
    batch = UploadBatch(
        device_id="car-17", batch_id=str(uuid.uuid4()), sent_at=1.0, records=[_read(i) for i in range(200)]
    )
    assert len(encode_batch(batch)) / 200 < 150


def test_gzip_bomb_is_refused_without_inflating_it():
    bomb = gzip.compress(b"[" + b" " * (MAX_BATCH_BYTES + 10) + b"]")
    with pytest.raises(ProtocolError, match="more than"):
        decode_batch(bomb)


def test_garbage_and_html_bodies_are_protocol_errors():
    with pytest.raises(ProtocolError, match="not gzip"):
        decode_batch(b"<html>503 Service Unavailable</html>")
    with pytest.raises(ProtocolError, match="not a valid v1 upload batch"):
        decode_batch(gzip.compress(b'{"protocol": 1, "records": "x"}'))


def test_unknown_fields_and_bad_ids_are_refused():
    good = UploadBatch(device_id="car-1", batch_id=str(uuid.uuid4()), sent_at=1.0, records=[_read(1)])
    raw = good.model_dump_json(by_alias=True).replace('"c":"front"', '"c":"front","extra":1')
    with pytest.raises(ProtocolError):
        decode_batch(raw.encode(), gzipped=False)
    with pytest.raises(ValueError):
        ReadRecord(
            id="not-a-uuid", camera="f", plate="A", confidence=1, first_seen=0, last_seen=0, observations=1
        )


def test_canonical_bytes_ignore_the_signature_and_key_order():
    feed = HotlistFeed(
        from_version=1, to_version=2, issued_at=10.0, expires_at=20.0, key_id="k1", delta=["{}"]
    )
    signed = feed.model_copy(update={"signature": "c2ln"})
    assert canonical_bytes(feed) == canonical_bytes(signed)
    assert canonical_bytes({"b": 1, "a": 2}) == b'{"a":2,"b":1}'
