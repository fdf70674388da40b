"""Hotlist feed verification and application: real Ed25519 keys, a real hotlist database."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.hotlist import Hotlist
from sync.feed import FeedApplier, KeyRing
from sync.protocol import FeedKey, HotlistFeed, KeyEndorsement, canonical_bytes
from sync.state import KEY_FEED_OK, KEY_FEED_REFUSED, SyncState, connect

NOW = 1_790_000_000.0


def new_key(key_id: str) -> tuple[Ed25519PrivateKey, FeedKey]:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private, FeedKey(key_id=key_id, public_key=base64.b64encode(raw).decode())


def sign(private: Ed25519PrivateKey, feed: HotlistFeed) -> HotlistFeed:
    sig = base64.b64encode(private.sign(canonical_bytes(feed))).decode()
    return feed.model_copy(update={"signature": sig})


def delta(version: int, *changes: dict, base: int = 0) -> list[str]:
    header = {"version": version, "lists": ["stolen_vehicle"], "base_version": base}
    return [json.dumps(header)] + [json.dumps(c) for c in changes]


def add(plate: str) -> dict:
    return {"op": "add", "plate": plate, "state": "CA", "list": "stolen_vehicle", "make": "NISS"}


def feed(private, key_id, frm, to, lines, *, expires=NOW + 3600, not_modified=False) -> HotlistFeed:
    return sign(
        private,
        HotlistFeed(
            from_version=frm,
            to_version=to,
            not_modified=not_modified,
            issued_at=NOW - 10,
            expires_at=expires,
            key_id=key_id,
            delta=lines,
        ),
    )


class Rig:
    def __init__(self, db: Path, keys: list[FeedKey]) -> None:
        self.clock = [NOW]
        self.hotlist = Hotlist(db, clock=lambda: self.clock[0])
        self.conn = connect(db)
        self.state = SyncState(self.conn, clock=lambda: self.clock[0])
        self.keyring = KeyRing(keys)
        self.applier = FeedApplier(self.hotlist, self.keyring, self.state, clock=lambda: self.clock[0])

    def plates(self) -> set[str]:
        return {h.entry.plate for p in ("7NEW001", "7NEW002", "7NEW003") for h in self.hotlist.match(p)}

    def close(self) -> None:
        self.hotlist.close()
        self.conn.close()


@pytest.fixture
def keys():
    return new_key("k1")


@pytest.fixture
def rig(tmp_path, keys):
    r = Rig(tmp_path / "alpr.db", [keys[1]])
    yield r
    r.close()


def test_signed_delta_is_applied_and_its_refresh_time_recorded(rig, keys):
    out = rig.applier.take(feed(keys[0], "k1", 0, 5, delta(5, add("7NEW001"), add("7NEW002"))))
    assert out.status == "applied" and out.version == 5 and out.added == 2
    assert rig.plates() == {"7NEW001", "7NEW002"}
    (status,) = rig.hotlist.status()
    assert status.version == "5" and status.refreshed_at == NOW
    assert rig.state.get(KEY_FEED_OK) == {"at": NOW, "version": 5}
    assert rig.applier.version_in_force() == 5


def test_feed_with_one_flipped_byte_is_refused_and_the_list_in_force_kept(rig, keys):
    rig.applier.take(feed(keys[0], "k1", 0, 5, delta(5, add("7NEW001"))))
    good = feed(
        keys[0],
        "k1",
        5,
        6,
        delta(6, {"op": "remove", "plate": "7NEW001", "state": "CA", "list": "stolen_vehicle"}, base=5),
    )
    tampered = good.model_copy(update={"delta": [good.delta[0], good.delta[1].replace("7NEW001", "7NEW00I")]})
    out = rig.applier.take(tampered)
    assert out.status == "refused" and "does not verify" in out.cause
    assert rig.plates() == {"7NEW001"} and rig.applier.version_in_force() == 5
    refused = rig.state.get(KEY_FEED_REFUSED)
    assert refused["to_version"] == 6 and "tampered" in refused["cause"]
    # what the daemon's status (and so the MDT status strip) reads, through the hotlist
    shown = rig.hotlist.feed_refusal()
    assert shown is not None and shown.to_version == 6 and "tampered" in shown.cause
    # the genuine feed still goes in, and clears the refusal the MDT shows
    assert rig.applier.take(good).status == "applied"
    assert rig.plates() == set() and rig.state.get(KEY_FEED_REFUSED) is None
    assert rig.hotlist.feed_refusal() is None


def test_rollback_to_an_older_version_is_refused(rig, keys):
    rig.applier.take(feed(keys[0], "k1", 0, 7, delta(7, add("7NEW001"))))
    out = rig.applier.take(feed(keys[0], "k1", 0, 4, delta(4, add("7NEW002"))))
    assert out.status == "refused" and "rollback" in out.cause
    assert rig.plates() == {"7NEW001"}


def test_expired_feed_is_refused_as_a_freeze_attack(rig, keys):
    out = rig.applier.take(feed(keys[0], "k1", 0, 3, delta(3, add("7NEW001")), expires=NOW - 1))
    assert out.status == "refused" and "expired" in out.cause
    assert rig.plates() == set() and rig.hotlist.status() == []


def test_feed_signed_by_an_unknown_key_is_refused(rig):
    stranger, _ = new_key("k9")
    out = rig.applier.take(feed(stranger, "k1", 0, 3, delta(3, add("7NEW001"))))
    assert out.status == "refused" and rig.plates() == set()
    out = rig.applier.take(feed(stranger, "k9", 0, 3, delta(3, add("7NEW001"))))
    assert "unknown key 'k9'" in out.cause


def test_rotated_key_is_trusted_through_its_endorsement_and_a_forged_one_is_not(rig, keys):
    new_private, new_public = new_key("k2")
    endorsement = KeyEndorsement(
        key=new_public,
        endorsed_by="k1",
        signature=base64.b64encode(keys[0].sign(canonical_bytes(new_public))).decode(),
    )
    forger, forged_public = new_key("k3")
    forged = KeyEndorsement(
        key=forged_public, endorsed_by="k1", signature=base64.b64encode(forger.sign(b"x" * 64)).decode()
    )
    assert rig.keyring.add_endorsements([forged, endorsement], now=NOW) == ["k2"]
    assert rig.applier.take(feed(new_private, "k2", 0, 2, delta(2, add("7NEW003")))).status == "applied"
    assert rig.applier.take(feed(forger, "k3", 2, 3, delta(3, add("7NEW001"), base=2))).status == "refused"
    assert rig.plates() == {"7NEW003"}


def test_key_past_its_not_after_signs_nothing(tmp_path):
    private, public = new_key("old")
    r = Rig(tmp_path / "alpr.db", [public.model_copy(update={"not_after": NOW - 60})])
    try:
        out = r.applier.take(feed(private, "old", 0, 2, delta(2, add("7NEW001"))))
        assert out.status == "refused" and "not_after" in out.cause
    finally:
        r.close()


def test_not_modified_answer_keeps_the_list_fresh_for_every_process(rig, keys, tmp_path):
    rig.applier.take(feed(keys[0], "k1", 0, 5, delta(5, add("7NEW001"))))
    daemon = Hotlist(tmp_path / "alpr.db", clock=lambda: rig.clock[0])
    try:
        daemon.load()
        rig.clock[0] = NOW + 40 * 3600
        (hit,) = daemon.match("7NEW001")
        assert hit.list_age_s == pytest.approx(40 * 3600)
        out = rig.applier.take(feed(keys[0], "k1", 5, 5, [], expires=rig.clock[0] + 60, not_modified=True))
        assert out.status == "current"
        daemon.refresh()
        (hit,) = daemon.match("7NEW001")
        assert hit.list_age_s == pytest.approx(0) and not hit.stale
    finally:
        daemon.close()


def test_delta_whose_header_disagrees_with_the_signed_version_is_refused(rig, keys):
    out = rig.applier.take(feed(keys[0], "k1", 0, 9, delta(8, add("7NEW001"))))
    assert out.status == "refused" and "header" in out.cause and rig.plates() == set()


def test_feed_that_skips_versions_is_refused_as_a_gap(rig, keys):
    rig.applier.take(feed(keys[0], "k1", 0, 5, delta(5, add("7NEW001"))))
    out = rig.applier.take(feed(keys[0], "k1", 7, 9, delta(9, add("7NEW002"), base=7)))
    assert out.status == "refused" and "gap" in out.cause
