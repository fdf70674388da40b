"""The device audit log: append-only, written with its action, always queued for upload."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from test_mdt import load_hotlist, store_hit

from edge import audit
from edge.hotlist import Hotlist
from edge.store import HitNotFoundError, Lane, Store, StoreWriteError


def rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_audit_row_and_its_upload_entry_are_written_together(tmp_path):
    db = tmp_path / "alpr.db"
    with Store(db) as store:
        row_id = store.audit(actor="B1", action="login", outcome="ok", subject="10.0.0.5")
        (entry,) = store.outbox_pending(Lane.HITS, 10)
        assert (entry.kind, entry.record_id) == ("audit", str(row_id))
        (row,) = store.audit_rows()
        assert (row.actor, row.action, row.subject, row.outcome, row.details) == (
            "B1",
            "login",
            "10.0.0.5",
            "ok",
            {},
        )


def test_audit_rows_written_before_the_store_existed_are_queued_when_it_opens(tmp_path):
    db = tmp_path / "alpr.db"
    with Hotlist(db) as hotlist:  # the hotlist CLI on a fresh device: no store tables yet
        hotlist.add_bolo("6LOK442", "CA", reason="armed", officer="B1", expires_at=time.time() + 3600)
        hotlist.remove_bolo("6LOK442", "CA", officer="B1", reason="found")
    assert rows(db, "SELECT name FROM sqlite_master WHERE name = 'outbox'") == []
    with Store(db) as store:
        queued = [e.record_id for e in store.outbox_pending(Lane.HITS, 10) if e.kind == "audit"]
        assert queued == ["1", "2"]
        # From now on the hotlist queues its own rows as it writes them.
    with Hotlist(db) as hotlist:
        hotlist.add_bolo("6LOK443", None, reason="r", officer="B2", expires_at=time.time() + 3600)
    assert rows(db, "SELECT record_id FROM outbox WHERE kind = 'audit' ORDER BY seq") == [
        ("1",),
        ("2",),
        ("3",),
    ]


def test_acknowledged_audit_rows_are_not_queued_again_on_reopen(tmp_path):
    db = tmp_path / "alpr.db"
    with Store(db) as store:
        store.audit(actor="B1", action="login", outcome="ok")
        store.outbox_ack([e.seq for e in store.outbox_pending(Lane.HITS, 10)])
    with Store(db) as store:
        assert store.outbox_pending(Lane.HITS, 10) == []
        assert len(store.audit_rows()) == 1


def test_audit_rows_cannot_be_changed_or_deleted_through_sql(tmp_path):
    db = tmp_path / "alpr.db"
    with Store(db) as store:
        store.audit(actor="B1", action="reads.search", outcome="ok", reason="witness")
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit SET reason = 'none'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit")
    finally:
        conn.close()


def test_audit_row_without_actor_is_refused_and_nothing_is_written(tmp_path):
    db = tmp_path / "alpr.db"
    with Store(db) as store:
        with pytest.raises(StoreWriteError, match="actor"):
            store.audit(actor="", action="login", outcome="ok")
        assert store.audit_rows() == [] and store.outbox_pending(Lane.HITS, 10) == []


def test_answer_its_audit_row_and_both_upload_entries_commit_as_one(tmp_path):
    db = tmp_path / "alpr.db"
    with Store(db) as store, Hotlist(db) as hotlist:
        load_hotlist(hotlist)
        hit = store_hit(store, hotlist, "7ABC123", at=time.time())
        answer = store.save_answer(hit.hit_id, officer="B1", answer="wrong_state", note="TX plate")
    kinds = rows(
        db, "SELECT lane, kind, record_id FROM outbox WHERE kind IN ('answer', 'audit') ORDER BY seq"
    )
    (audit_row,) = rows(
        db,
        "SELECT id, actor, action, subject, reason, outcome, details FROM audit WHERE action = 'hit.answer'",
    )
    assert kinds == [(0, "answer", answer.answer_id), (0, "audit", str(audit_row[0]))]
    assert audit_row[1:6] == ("B1", "hit.answer", hit.hit_id, "TX plate", "wrong_state")
    assert json.loads(audit_row[6])["entry"] == "7ABC123/CA"


def test_answer_to_unknown_hit_or_with_unknown_value_leaves_no_trace(tmp_path):
    db = tmp_path / "alpr.db"
    with Store(db) as store, Hotlist(db) as hotlist:
        load_hotlist(hotlist)
        hit = store_hit(store, hotlist, "7ABC123", at=time.time())
        before = rows(db, "SELECT count(*) FROM outbox")
        with pytest.raises(HitNotFoundError):
            store.save_answer("nope", officer="B1", answer="misread")
        with pytest.raises(StoreWriteError, match="not an answer"):
            store.save_answer(hit.hit_id, officer="B1", answer="looks fine")
        assert rows(db, "SELECT count(*) FROM outbox") == before
        assert rows(db, "SELECT count(*) FROM answers") == [(0,)]
        assert store.audit_rows() == []


def test_answers_cannot_be_rewritten(tmp_path):
    db = tmp_path / "alpr.db"
    with Store(db) as store, Hotlist(db) as hotlist:
        load_hotlist(hotlist)
        hit = store_hit(store, hotlist, "7ABC123", at=time.time())
        store.save_answer(hit.hit_id, officer="B1", answer="misread")
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE answers SET answer = 'confirmed_match'")
    finally:
        conn.close()


def test_audit_module_lane_is_the_stores_hits_lane():
    assert audit.OUTBOX_LANE == Lane.HITS
