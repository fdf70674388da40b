"""The MDT page in a real browser: Debian's Chromium driven by Playwright (sync API).

A read of a listed plate goes through the daemon's own path (`Daemon.handle`: store the read,
match the hotlist, store the hit, sound the tone, push to the page); the officer logs in, sees
the hit with its details, confirms it; the answer's audit row exists and the tone has stopped.
The tone is the real ToneAlert playing through aplay into an ALSA `file` device.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_mdt import LISTED, OFFICER, PIN, load_hotlist, plate_read, write_officers

from edge.app import build_daemon
from edge.track import ReadEmitted

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def require(path: str | None, what: str) -> str:
    if path and Path(path).exists():
        return path
    message = f"{what} is missing: run scripts/install-system-deps.sh (as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    require(CHROMIUM if Path(CHROMIUM).exists() else None, "Debian's chromium (/usr/bin/chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def sound_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME whose ~/.asoundrc defines PCM `mdtfile`: WAV files instead of a speaker (aplay)."""
    require(shutil.which("aplay"), "aplay (alsa-utils)")
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "tone.wav"
    (home / ".asoundrc").write_text(
        f'pcm.mdtfile {{\n  type file\n  slave.pcm "null"\n  file "{out}"\n  format "wav"\n}}\n'
    )
    monkeypatch.setenv("HOME", str(home))
    return out


@pytest.fixture
def daemon(make_config, sound_file: Path):
    config = make_config(
        mdt={"port": 0},
        alert={"device": "mdtfile", "startup_check": False},
    )
    config.officers_path.parent.mkdir(parents=True, exist_ok=True)
    write_officers(config.officers_path)
    d = build_daemon(config)
    try:
        load_hotlist(d.hotlist)
        d.start_services()
        yield d
    finally:
        d.close()


def login(page, url: str, pin: str = PIN) -> None:
    page.goto(url)
    page.fill("#officer-id", OFFICER)
    page.fill("#pin", pin)
    page.click("#login-button")


def test_officer_sees_a_listed_plate_confirms_it_and_the_tone_stops(browser, daemon, sound_file):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        login(page, daemon.mdt.url)
        page.wait_for_selector("#app:not([hidden])")
        page.wait_for_selector("#st-cameras.s-bad, #st-cameras.s-ok")  # first status event arrived

        read = plate_read(LISTED.plate, at=time.time())
        daemon.handle([ReadEmitted(read)])
        (hit,) = daemon.store.hits_for_read(read.read_id)
        card = page.wait_for_selector(f'article.hit[data-hit-id="{hit.hit_id}"]', timeout=5000)

        assert card.query_selector(".list-label").inner_text() == "STOLEN VEHICLE"
        assert card.query_selector(".match").inner_text() == "EXACT MATCH"
        assert card.query_selector(".vcr").inner_text() == "VISUAL CONFIRMATION REQUIRED"
        assert card.query_selector(".read .plate").inner_text() == "7ABC123"
        record = card.query_selector("dl.record").inner_text()
        for text in ("2019 BLU HOND CIVIC", "V123456789", "CA0194200", "stolen from driveway"):
            assert text in record
        assert "check the plate is CA" in card.query_selector(".state-warn").inner_text()
        page.wait_for_function(
            "id => document.querySelector(`article[data-hit-id='${id}'] img.crop`).naturalWidth > 0",
            arg=hit.hit_id,
        )
        # The tone is sounding (a priority-70 hit: level 2) before the officer answers.
        deadline = time.monotonic() + 5
        while daemon.alert.last_started_mono(hit.hit_id) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert daemon.alert.last_started_mono(hit.hit_id) is not None, daemon.alert.status()
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / "mdt-hit.png"), full_page=True)

        card.query_selector("textarea.note").fill("driver detained, VIN checked")
        card.query_selector('button[data-answer="confirmed_match"]').click()
        page.wait_for_selector(f'article.hit.answered[data-hit-id="{hit.hit_id}"]', timeout=5000)
        assert "ANSWERED: Confirmed match" in card.query_selector(".answer-state").inner_text()
        page.screenshot(path=str(OUTPUT / "mdt-hit-answered.png"), full_page=True)
    finally:
        page.close()

    conn = sqlite3.connect(daemon.config.database_path)
    try:
        row = conn.execute(
            "SELECT actor, subject, reason, outcome FROM audit WHERE action = 'hit.answer'"
        ).fetchone()
        queued = conn.execute("SELECT count(*) FROM outbox WHERE kind = 'answer'").fetchone()[0]
    finally:
        conn.close()
    assert row == (OFFICER, hit.hit_id, "driver detained, VIN checked", "confirmed_match")
    assert queued == 1
    status = daemon.alert.status()
    assert status.active_hits == 0 and status.sounding is None, status
    assert sound_file.exists() and sound_file.stat().st_size > 44, "the tone reached the ALSA device"


def test_wrong_pin_and_a_search_without_reason_are_refused_on_the_page(browser, daemon):
    page = browser.new_page()
    try:
        login(page, daemon.mdt.url, pin="0000")
        page.wait_for_selector("#login-error:not(:empty)")
        assert page.inner_text("#login-error") == "wrong officer id or PIN"
        assert page.is_hidden("#app")
        page.fill("#officer-id", OFFICER)
        page.fill("#pin", PIN)
        page.click("#login-button")
        page.wait_for_selector("#app:not([hidden])")
        page.click('button[data-view="search-view"]')
        page.fill("#search-plate", "7ABC")
        page.click("#search-form button[type=submit]")
        page.wait_for_selector("#search-error:not(:empty)")
        assert "reason is required" in page.inner_text("#search-error")
    finally:
        page.close()
