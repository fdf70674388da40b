"""The MDT page's API over real HTTP: a real uvicorn server on loopback, a real SQLite file.

Covers login, sessions, CSRF, lockouts, hits over Server-Sent Events, answers, BOLO and
suppression forms, searches and the status strip. The page itself runs in Chromium in
test_mdt_browser.py (which imports the helpers below).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import pytest

from edge.driveby import render_plate
from edge.hotlist import Hotlist, HotlistSettings
from edge.hotlist_formats import HotlistRecord, ListKind
from edge.mdt import MdtServer, MdtSettings
from edge.officers import (
    LoginOutcome,
    OfficersFileError,
    hash_pin,
    load_officers,
    verify_pin,
)
from edge.store import Store, StoredHit
from edge.types import Box, PlateRead

PIN = "4821"
OFFICER = "B1234"
PIN_HASH = hash_pin(PIN)  # full-strength scrypt (~50 ms): hashed once for the whole module


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


def write_officers(path: Path, *, lapsed: bool = False) -> Path:
    officers = [
        {
            "id": OFFICER,
            "name": "J. Rivera",
            "pin_hash": PIN_HASH,
            "training_valid_until": "2020-01-01" if lapsed else "2099-12-31",
        },
        {"id": "B9999", "name": "K. Osei", "pin_hash": PIN_HASH, "training_valid_until": "2099-12-31"},
    ]
    path.write_text(json.dumps({"officers": officers}))
    return path


LISTED = HotlistRecord(
    plate="7ABC123",
    state="CA",
    list_kind=ListKind.STOLEN_VEHICLE,
    source_record_id="V123456789",
    agency="CA0194200",
    vehicle_year=2019,
    make="HOND",
    model="CIVIC",
    color="BLU",
    description="stolen from driveway, keys taken",
)


def load_hotlist(hotlist: Hotlist, records: list[HotlistRecord] | None = None) -> None:
    hotlist.import_records(records or [LISTED], source="csv", lists=None, version="v1")


@dataclass
class RecordingAlert:
    """An AlertSink that records calls (API tests; the browser test plays real tones)."""

    raised: list[tuple[str, int]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)

    def raise_alert(self, hit_id: str, priority: int) -> None:
        self.raised.append((hit_id, priority))

    def acknowledge(self, hit_id: str) -> None:
        self.acked.append(hit_id)

    def last_started_mono(self, hit_id: str) -> float | None:
        return None

    def status(self) -> dict:
        return {"state": "ok", "active_hits": len(self.raised) - len(self.acked)}

    def close(self) -> None:
        pass


def crop_jpeg(text: str) -> bytes:
    ok, enc = cv2.imencode(".jpg", render_plate(text, height=60))
    assert ok
    return enc.tobytes()


def plate_read(text: str, *, at: float, crop: bool = True) -> PlateRead:
    return PlateRead(
        read_id=str(uuid.uuid4()),
        camera_id="front",
        text=text,
        confidence=0.97,
        char_confidences=tuple([0.97] * len(text)),
        region="United States",
        first_seen=at - 0.5,
        last_seen=at,
        observations=4,
        best_crop_jpeg=crop_jpeg(text) if crop else b"",
        best_box=Box(10, 10, 200, 60),
    )


def store_hit(store: Store, hotlist: Hotlist, text: str, *, at: float, crop: bool = True) -> StoredHit:
    """A read and its hit stored as the daemon stores them: read, hotlist match, hits."""
    read = plate_read(text, at=at, crop=crop)
    store.save_read(read)
    (hit,) = store.save_hits(read.read_id, hotlist.match(read.text, None))
    return hit


def fake_status() -> dict:
    return {
        "cameras": {"front": {"state": "ok", "cause": None, "fps": 30.0}},
        "gps_fix": {"has_fix": False, "mode": 1},
        "hotlist": [{"list": "stolen_vehicle", "entries": 1, "age_s": 3600.0, "freshness": "fresh"}],
        "outbox": {"hits": 1, "reads": 2, "images": 2},
    }


@dataclass
class Mdt:
    server: MdtServer
    store: Store
    hotlist: Hotlist
    alert: RecordingAlert
    clock: Clock
    db: Path

    @property
    def url(self) -> str:
        return self.server.url

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=5.0)

    def login(self, client: httpx.Client, officer: str = OFFICER, pin: str = PIN) -> str:
        r = client.post("/api/login", json={"officer_id": officer, "pin": pin})
        assert r.status_code == 200, r.text
        return r.json()["csrf_token"]

    def audit(self) -> list[tuple]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(
                "SELECT actor, action, subject, reason, outcome, details FROM audit ORDER BY id"
            ).fetchall()
        finally:
            conn.close()

    def outbox(self, kind: str) -> list[tuple]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(
                "SELECT lane, record_id FROM outbox WHERE kind = ? ORDER BY seq", (kind,)
            ).fetchall()
        finally:
            conn.close()


def start_mdt(tmp_path: Path, *, status=fake_status, **settings) -> Mdt:
    db = tmp_path / "alpr.db"
    clock = Clock()
    store = Store(db, clock=clock)
    hotlist = Hotlist(db, HotlistSettings(), clock=clock)
    load_hotlist(hotlist)
    alert = RecordingAlert()
    server = MdtServer(
        MdtSettings(host="127.0.0.1", port=0, **settings),
        store=Store(db, clock=clock),
        hotlist=Hotlist(db, HotlistSettings(), clock=clock),
        officers=load_officers(write_officers(tmp_path / "officers.json")),
        status=status,
        alert=alert,
        clock=clock,
    )
    server.start()
    return Mdt(server=server, store=store, hotlist=hotlist, alert=alert, clock=clock, db=db)


@pytest.fixture
def mdt(tmp_path: Path) -> Iterator[Mdt]:
    m = start_mdt(tmp_path, max_failed_logins=3, lockout_s=600.0, session_idle_s=600.0)
    try:
        yield m
    finally:
        m.server.close()
        m.hotlist.close()
        m.store.close()


def read_events(lines: Iterator[str], wanted: int, kind: str = "hit") -> list[dict]:
    """The data of the next `wanted` events of `kind` from an SSE response's `iter_lines()`."""
    got: list[dict] = []
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == kind:
            got.append(json.loads(line[6:]))
            if len(got) == wanted:
                return got
    raise AssertionError(f"stream ended after {len(got)} {kind} event(s)")


# ---------------------------------------------------------------- officers file


def test_pin_hash_verifies_only_the_right_pin_and_is_salted():
    assert verify_pin(PIN, PIN_HASH) and not verify_pin("4822", PIN_HASH)
    assert hash_pin(PIN) != PIN_HASH  # a fresh salt each time
    assert not verify_pin(PIN, "scrypt$garbage")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("not json", "not a JSON officer file"),
        (
            '{"officers": [{"id": "B1", "pin_hash": "plain-4821"}]}',
            "officers[0]: pin_hash is not a scrypt hash",
        ),
        ('{"officers": [{"id": "B1", "pin_hash": "%s"}, {"id": "b1", "pin_hash": "%s"}]}', "listed twice"),
        ('{"officers": [{"id": "B1", "pin": "4821"}]}', "unknown key"),
    ],
)
def test_malformed_officer_file_is_refused_whole_naming_the_entry(tmp_path, content, fragment):
    path = tmp_path / "officers.json"
    path.write_text(content.replace("%s", PIN_HASH))
    with pytest.raises(OfficersFileError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_officers(path)


def test_officer_with_lapsed_training_cannot_log_in_even_with_the_right_pin(tmp_path):
    registry = load_officers(write_officers(tmp_path / "o.json", lapsed=True))
    assert registry.authenticate(OFFICER, PIN, now=time.time())[0] is LoginOutcome.TRAINING_LAPSED
    assert registry.authenticate(OFFICER, "0000", now=time.time())[0] is LoginOutcome.BAD_PIN
    assert registry.authenticate("NOBODY", PIN, now=time.time())[0] is LoginOutcome.UNKNOWN_OFFICER


# ---------------------------------------------------------------- login, sessions, CSRF


def test_every_api_endpoint_refuses_a_request_without_a_session(mdt):
    hit = store_hit(mdt.store, mdt.hotlist, "7ABC123", at=mdt.clock())
    gets = [
        "/api/session",
        "/api/events",
        "/api/hits",
        f"/api/hits/{hit.hit_id}",
        f"/api/hits/{hit.hit_id}/crop.jpg",
        f"/api/reads/{hit.read_id}/crop.jpg",
        "/api/bolos",
        "/api/suppressions",
        "/api/status",
        "/api/config",
    ]
    posts = [
        "/api/logout",
        f"/api/hits/{hit.hit_id}/answer",
        "/api/bolos",
        "/api/bolos/remove",
        "/api/suppressions",
        "/api/suppressions/1/remove",
        "/api/search",
    ]
    with mdt.client() as c:
        for path in gets:
            assert c.get(path).status_code == 401, path
        for path in posts:
            assert c.post(path, json={}).status_code == 401, path
        assert c.get("/").status_code == 200  # the login page itself
    assert mdt.store.answers_for([hit.hit_id])[hit.hit_id] == []


def test_login_sets_an_httponly_samesite_strict_cookie_and_is_audited(mdt):
    with mdt.client() as c:
        r = c.post("/api/login", json={"officer_id": "b1234", "pin": PIN})
        assert r.status_code == 200
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert r.json()["officer"] == {"id": OFFICER, "name": "J. Rivera"}
        assert c.get("/api/session").json()["csrf_token"] == r.json()["csrf_token"]
    assert mdt.audit()[-1][:2] == (OFFICER, "login")
    assert [int(row[1]) for row in mdt.outbox("audit")] == [1], "the login's audit row is queued for upload"


def test_wrong_pin_is_refused_with_one_message_for_any_cause_and_audited(mdt):
    with mdt.client() as c:
        wrong = c.post("/api/login", json={"officer_id": OFFICER, "pin": "0000"})
        unknown = c.post("/api/login", json={"officer_id": "B7777", "pin": PIN})
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json() == {"error": "wrong officer id or PIN"}
        assert "set-cookie" not in wrong.headers
    assert [(a[0], a[1], a[4]) for a in mdt.audit()] == [
        (OFFICER, "login.failed", "bad_pin"),
        ("B7777", "login.failed", "unknown_officer"),
    ]


def test_repeated_failures_lock_out_the_officer_id_until_the_lockout_ends(mdt):
    with mdt.client() as c:
        for _ in range(3):
            assert c.post("/api/login", json={"officer_id": OFFICER, "pin": "1111"}).status_code == 401
        locked = c.post("/api/login", json={"officer_id": OFFICER, "pin": PIN})
        assert locked.status_code == 429 and "too many failed logins" in locked.json()["error"]
        assert mdt.audit()[-1][1:2] == ("login.locked",)
        mdt.clock.now += 601
        assert c.post("/api/login", json={"officer_id": OFFICER, "pin": PIN}).status_code == 200


def test_one_client_guessing_many_officer_ids_is_locked_out(mdt):
    with mdt.client() as c:
        for officer in ("A1", "A2", "A3"):
            assert c.post("/api/login", json={"officer_id": officer, "pin": "1111"}).status_code == 401
        # B9999 never failed, but this client did three times.
        assert c.post("/api/login", json={"officer_id": "B9999", "pin": PIN}).status_code == 429


def test_session_expires_after_the_idle_limit(mdt):
    with mdt.client() as c:
        mdt.login(c)
        mdt.clock.now += 599
        assert c.get("/api/status").status_code == 200  # use keeps it alive
        mdt.clock.now += 599
        assert c.get("/api/status").status_code == 200
        mdt.clock.now += 601
        r = c.get("/api/status")
        assert r.status_code == 401 and "expired" in r.json()["error"]


def test_session_expires_at_the_maximum_age_however_busy(tmp_path):
    m = start_mdt(tmp_path, session_idle_s=600.0, session_max_s=1000.0)
    try:
        with m.client() as c:
            m.login(c)
            for _ in range(2):
                m.clock.now += 500
                assert c.get("/api/status").status_code == 200
            m.clock.now += 1
            assert c.get("/api/status").status_code == 401
    finally:
        m.server.close()
        m.hotlist.close()
        m.store.close()


def test_state_changing_requests_without_the_csrf_token_store_nothing(mdt):
    hit = store_hit(mdt.store, mdt.hotlist, "7ABC123", at=mdt.clock())
    path = f"/api/hits/{hit.hit_id}/answer"
    with mdt.client() as c:
        token = mdt.login(c)
        missing = c.post(path, json={"answer": "confirmed_match"})
        forged = c.post(path, json={"answer": "confirmed_match"}, headers={"X-CSRF-Token": "x" + token[1:]})
        # A cross-site form post: right cookie, no JSON.
        form = c.post(path, data={"answer": "confirmed_match"}, headers={"X-CSRF-Token": token})
        assert (missing.status_code, forged.status_code, form.status_code) == (403, 403, 415)
        assert "CSRF" in missing.json()["error"]
        search = c.post("/api/search", json={"plate": "7ABC", "reason": "r"})
        assert search.status_code == 403
    assert mdt.store.answers_for([hit.hit_id])[hit.hit_id] == []
    assert mdt.alert.acked == []
    assert [a[1] for a in mdt.audit()] == ["login"]


# ---------------------------------------------------------------- hits and answers


def test_hit_reaches_an_open_page_over_sse_with_the_record_and_match_details(mdt):
    with mdt.client() as c:
        mdt.login(c)
        with c.stream("GET", "/api/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = response.iter_lines()
            (status,) = read_events(events, 1, "status")
            assert status["cameras"][0]["id"] == "front" and status["backlog"]["reads"] == 2
            read = plate_read("7A8C123", at=mdt.clock())  # B for 8: an approximate hit
            mdt.store.save_read(read)
            (hit,) = mdt.store.save_hits(read.read_id, mdt.hotlist.match(read.text, None))
            mdt.server.publish_hit(read, hit)
            (view,) = read_events(events, 1)
    assert view["hit_id"] == hit.hit_id and view["read_plate"] == "7A8C123"
    assert view["match_kind"] == "approximate" and view["differing_positions"] == [2]
    assert view["list_label"] == "STOLEN VEHICLE" and view["confidence"] == pytest.approx(0.97)
    entry = view["entry"]
    assert (entry["plate"], entry["state"], entry["record_id"], entry["agency"]) == (
        "7ABC123",
        "CA",
        "V123456789",
        "CA0194200",
    )
    assert (entry["vehicle_year"], entry["make"], entry["model"], entry["color"]) == (
        2019,
        "HOND",
        "CIVIC",
        "BLU",
    )
    assert entry["description"] == "stolen from driveway, keys taken"
    assert view["freshness"] == "fresh" and view["stale"] is False and view["list_age_s"] is not None


def test_page_that_connects_after_the_hit_is_sent_it_with_its_answer(mdt):
    hit = store_hit(mdt.store, mdt.hotlist, "7ABC123", at=mdt.clock())
    mdt.store.save_answer(hit.hit_id, officer="B9999", answer="misread", note="plate was 7ABC128")
    with mdt.client() as c:
        mdt.login(c)
        with c.stream("GET", "/api/events") as response:
            (view,) = read_events(response.iter_lines(), 1)
    assert view["hit_id"] == hit.hit_id
    assert [(a["officer"], a["answer"], a["note"]) for a in view["answers"]] == [
        ("B9999", "misread", "plate was 7ABC128")
    ]


def test_answer_is_stored_audited_queued_and_stops_the_tone(mdt):
    hit = store_hit(mdt.store, mdt.hotlist, "7ABC123", at=mdt.clock())
    answer_id = str(uuid.uuid4())
    with mdt.client() as c:
        token = mdt.login(c)
        body = {"answer": "confirmed_match", "note": "driver detained", "answer_id": answer_id}
        r = c.post(f"/api/hits/{hit.hit_id}/answer", json=body, headers={"X-CSRF-Token": token})
        assert r.status_code == 200, r.text
        assert r.json()["tone_stopped"] is True
        # The page retries after a timeout with the same id: stored once.
        again = c.post(f"/api/hits/{hit.hit_id}/answer", json=body, headers={"X-CSRF-Token": token})
        assert again.json()["answer"]["answer_id"] == answer_id
    (stored,) = mdt.store.answers_for([hit.hit_id])[hit.hit_id]
    assert (stored.officer, stored.answer, stored.note) == (OFFICER, "confirmed_match", "driver detained")
    assert mdt.outbox("answer") == [(0, answer_id)]
    row = next(a for a in mdt.audit() if a[1] == "hit.answer")
    assert row[0] == OFFICER and row[2] == hit.hit_id and row[4] == "confirmed_match"
    assert json.loads(row[5])["answer_id"] == answer_id
    assert mdt.alert.acked[0] == hit.hit_id


def test_answer_to_an_unknown_hit_is_refused_audited_and_nothing_stored(mdt):
    with mdt.client() as c:
        token = mdt.login(c)
        r = c.post(
            "/api/hits/no-such-hit/answer", json={"answer": "misread"}, headers={"X-CSRF-Token": token}
        )
        assert r.status_code == 404 and "was not stored" in r.json()["error"]
        bad = c.post("/api/hits/x/answer", json={"answer": "shrug"}, headers={"X-CSRF-Token": token})
        assert bad.status_code == 400 and "confirmed_match" in bad.json()["error"]
    assert mdt.outbox("answer") == []
    assert mdt.audit()[-1][1:5] == ("hit.answer", "no-such-hit", None, "refused_unknown_hit")
    assert mdt.alert.acked == []


def test_missing_crop_gives_a_placeholder_image_not_an_error(mdt):
    hit = store_hit(mdt.store, mdt.hotlist, "7ABC123", at=mdt.clock(), crop=False)
    with_crop = store_hit(mdt.store, mdt.hotlist, "7ABC123", at=mdt.clock() + 1)
    with mdt.client() as c:
        mdt.login(c)
        missing = c.get(f"/api/hits/{hit.hit_id}/crop.jpg")
        unknown = c.get("/api/hits/nothing/context.jpg")
        real = c.get(f"/api/hits/{with_crop.hit_id}/context.jpg")
    assert missing.status_code == unknown.status_code == 200
    assert missing.headers["content-type"] == "image/svg+xml" and b"no image stored" in missing.content
    assert real.headers["content-type"] == "image/jpeg" and real.content[:2] == b"\xff\xd8"


# ---------------------------------------------------------------- searches, BOLOs, suppressions


def test_search_without_a_reason_is_refused_and_the_refusal_audited(mdt):
    store_hit(mdt.store, mdt.hotlist, "7ABC123", at=mdt.clock())
    with mdt.client() as c:
        token = mdt.login(c)
        h = {"X-CSRF-Token": token}
        r = c.post("/api/search", json={"plate": "7ABC", "reason": "   "}, headers=h)
        assert r.status_code == 400 and "reason is required" in r.json()["error"]
        ok = c.post(
            "/api/search", json={"plate": "abc1", "hours": 2, "reason": "hit-and-run witness"}, headers=h
        )
        assert ok.status_code == 200
        assert [x["plate"] for x in ok.json()["reads"]] == ["7ABC123"]
    rows = [a for a in mdt.audit() if a[1] == "reads.search"]
    assert [(r[0], r[4]) for r in rows] == [(OFFICER, "refused"), (OFFICER, "ok")]
    assert rows[1][3] == "hit-and-run witness" and json.loads(rows[1][5])["results"] == 1


def test_search_needs_a_case_number_when_the_config_requires_one(tmp_path):
    m = start_mdt(tmp_path, search_requires_case_number=True)
    try:
        with m.client() as c:
            h = {"X-CSRF-Token": m.login(c)}
            r = c.post("/api/search", json={"plate": "7ABC", "reason": "robbery"}, headers=h)
            assert r.status_code == 400 and "case" in r.json()["error"]
            ok = c.post(
                "/api/search",
                json={"plate": "7ABC", "reason": "robbery", "case_number": "24-1187"},
                headers=h,
            )
            assert ok.status_code == 200
        details = [json.loads(a[5]) for a in m.audit() if a[1] == "reads.search"]
        assert [d["case_number"] for d in details] == [None, "24-1187"]
    finally:
        m.server.close()
        m.hotlist.close()
        m.store.close()


def test_bolo_and_suppression_forms_act_on_the_hotlist_in_the_officers_name(mdt):
    with mdt.client() as c:
        h = {"X-CSRF-Token": mdt.login(c)}
        r = c.post(
            "/api/bolos",
            json={"plate": "6lok 442", "state": "ca", "reason": "armed robbery", "hours": 4},
            headers=h,
        )
        assert r.status_code == 200, r.text
        assert r.json()["bolo"]["plate"] == "6LOK442"
        assert [b["plate"] for b in c.get("/api/bolos").json()["bolos"]] == ["6LOK442"]
        empty = c.post("/api/bolos", json={"plate": "6LOK442", "reason": " "}, headers=h)
        assert empty.status_code == 400 and "reason" in empty.json()["error"]
        s = c.post(
            "/api/suppressions",
            json={
                "plate": "7ABC123",
                "list_kind": "stolen_vehicle",
                "reason": "recovered, NCIC not yet cleared",
            },
            headers=h,
        )
        assert s.status_code == 200, s.text
        bad_list = c.post(
            "/api/suppressions", json={"plate": "X1", "list_kind": "parking", "reason": "r"}, headers=h
        )
        assert bad_list.status_code == 400
        sid = s.json()["suppression"]["id"]
        assert (
            c.post(f"/api/suppressions/{sid}/remove", json={"reason": "stolen again"}, headers=h).status_code
            == 200
        )
        assert (
            c.post(
                "/api/bolos/remove", json={"plate": "6LOK442", "state": "CA", "reason": "found"}, headers=h
            ).status_code
            == 200
        )
    mdt.hotlist.refresh()
    assert mdt.hotlist.match("6LOK442", "CA") == []
    actions = [(a[0], a[1]) for a in mdt.audit() if a[1].startswith("hotlist.")]
    assert actions == [
        (OFFICER, "hotlist.bolo.add"),
        (OFFICER, "hotlist.suppress.add"),
        (OFFICER, "hotlist.suppress.remove"),
        (OFFICER, "hotlist.bolo.remove"),
    ]


# ---------------------------------------------------------------- status and shutdown


def test_failing_status_source_shows_an_error_in_the_strip_not_a_crash(tmp_path):
    def broken() -> dict:
        raise RuntimeError("gps thread gone")

    m = start_mdt(tmp_path, status=broken)
    try:
        with m.client() as c:
            m.login(c)
            r = c.get("/api/status")
        assert r.status_code == 200 and "gps thread gone" in r.json()["error"]
        assert r.json()["alert"]["state"] == "ok"
    finally:
        m.server.close()
        m.hotlist.close()
        m.store.close()


def test_a_refused_hotlist_feed_shows_in_the_status_strip(tmp_path):
    refusal = {
        "at": 1.0,
        "cause": "signature does not verify (tampered?)",
        "from_version": 5,
        "to_version": 6,
    }
    m = start_mdt(tmp_path, status=lambda: {"hotlist_feed_refused": refusal})
    try:
        with m.client() as c:
            m.login(c)
            r = c.get("/api/status")
        assert r.status_code == 200 and r.json()["feed_refused"] == refusal
    finally:
        m.server.close()
        m.hotlist.close()
        m.store.close()


def test_stop_ends_open_event_streams_and_frees_the_port(mdt):
    with mdt.client() as c:
        mdt.login(c)
        with c.stream("GET", "/api/events") as response:
            events = response.iter_lines()
            read_events(events, 1, "status")
            port = mdt.server.port
            done = threading.Event()
            threading.Thread(target=lambda: (mdt.server.stop(), done.set()), daemon=True).start()
            assert done.wait(8.0), "stop() hung on an open event stream"
            try:
                for _ in events:
                    pass
            except httpx.ReadTimeout:
                pytest.fail("the event stream stayed open after stop()")
            except httpx.RemoteProtocolError:
                pass  # cut mid-stream by the closing server: ended all the same
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2.0)
