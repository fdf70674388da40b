"""Benchmark: from the listed plate in front of the camera to the hit on the MDT page and the tone.

The real daemon (`build_daemon`: capture, detector, OCR, tracker, store, hotlist, alert, MDT page)
reads a rendered drive-by video replayed at camera pace (30 fps, `realtime = true`): `--passes`
vehicles, each a listed plate (hotlist entries imported first), with empty road between them so
every pass is its own. Chromium (Debian's, headless, via Playwright) is logged in to the page and
records the wall-clock time each hit card is first painted (`performance.timeOrigin +
performance.now()` at the next animation frame). The tone is the real ToneAlert playing through
aplay into an ALSA `file` device; its start time is when the player accepted it.

Per pass, wall-clock stages (ms):
- first_frame_to_read: capture of the first frame of the pass -> capture of the frame that
  completed the read (the tracker collecting enough agreeing reads);
- read_frame_to_hit: that frame's capture -> the hit stored and handed to tone and page
  (detector + OCR on that frame, store, hotlist match, store);
- hit_to_page: -> the card painted in Chromium (SSE + render);
- hit_to_tone: -> the tone started.
Totals: first frame -> page, first frame -> tone, and completing frame -> page / tone.
Prints one JSON object.

    python bench/alert_latency.py [--passes 22]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.app import build_daemon  # noqa: E402
from edge.config import load_config, parse_config  # noqa: E402
from edge.driveby import DriveByStyle, drive_by, render_vehicle_scene, write_video  # noqa: E402
from edge.hotlist_formats import HotlistRecord, ListKind  # noqa: E402
from edge.officers import hash_pin  # noqa: E402

FPS = 30.0
GAP_FRAMES = 45  # 1.5 s of empty road: longer than tracker.max_gap_s, so passes never merge
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


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(float(np.percentile(s, q * 100, method="higher")), 1)


def summary(values: list[float]) -> dict:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95), "n": len(values)}


def make_plates(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
    plates: list[str] = []
    while len(plates) < n:
        p = f"{rng.integers(1, 10)}{''.join(rng.choice(list(letters), 3))}{rng.integers(100, 1000)}"
        if p not in plates:
            plates.append(p)
    return plates


def render(folder: Path, plates: list[str], frames: int) -> Path:
    images = [np.full((720, 1280, 3), 80, np.uint8)] * 15
    for i, plate in enumerate(plates):
        scene, box = render_vehicle_scene(plate, seed=100 + i)
        style = DriveByStyle(frames=frames, start_scale=0.62, drift_px=120.0, blur_px_max=2.0)
        images += [f.image for f in drive_by(scene, box, style=style, seed=100 + i)]
        images += [np.full_like(scene, 80)] * GAP_FRAMES
    return write_video(folder / "passes.avi", images, FPS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=22)
    ap.add_argument("--frames", type=int, default=24, help="frames per pass")
    ap.add_argument("--models", type=Path, default=ROOT / "var" / "models")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    if not Path(CHROMIUM).exists() or shutil.which("aplay") is None:
        print("needs /usr/bin/chromium and aplay: run scripts/install-system-deps.sh", file=sys.stderr)
        return 2

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="alert-latency-") as tmp:
        folder = Path(tmp)
        import os

        home = folder / "home"
        home.mkdir()
        (home / ".asoundrc").write_text(
            f'pcm.benchfile {{\n  type file\n  slave.pcm "null"\n  file "{folder / "tone.wav"}"\n'
            '  format "wav"\n  truncate false\n}\n'
        )
        os.environ["HOME"] = str(home)  # aplay reads ~/.asoundrc

        plates = make_plates(args.passes, args.seed)
        video = render(folder, plates, args.frames)
        base = load_config().model_dump(mode="json", exclude={"base_dir"})
        base["device"]["data_dir"] = str(folder / "data")
        base["models"]["dir"] = str(args.models.resolve())
        base["gps"]["source"] = "none"
        base["cameras"] = [
            {"id": "front", "source": "video", "uri": str(video), "fps": FPS, "realtime": True}
        ]
        base["mdt"]["port"] = 0
        base["alert"].update(device="benchfile", startup_check=False)
        config = parse_config(base, "bench", folder)
        config.officers_path.parent.mkdir(parents=True, exist_ok=True)
        config.officers_path.write_text(
            json.dumps(
                {
                    "officers": [
                        {
                            "id": "B1",
                            "name": "Bench",
                            "pin_hash": hash_pin("4821"),
                            "training_valid_until": "2099-01-01",
                        }
                    ]
                }
            )
        )

        offset = time.time() - time.monotonic()
        hits: dict[str, dict] = {}

        def on_hit(read, hit) -> None:
            if read is None:
                return
            hits[hit.hit_id] = {
                "plate": read.text,
                "first_frame": read.first_seen,
                "read_frame": read.completed_mono + offset,
                "hit": time.time(),
            }

        daemon = build_daemon(config, on_hit=on_hit)
        daemon.hotlist.import_records(
            [HotlistRecord(plate=p, state="CA", list_kind=ListKind.STOLEN_VEHICLE) for p in plates],
            source="csv",
            lists=None,
            version="bench",
        )
        daemon.start_services()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(daemon.mdt.url)
            page.fill("#officer-id", "B1")
            page.fill("#pin", "4821")
            page.click("#login-button")
            page.wait_for_selector("#app:not([hidden])")
            page.wait_for_selector("#st-cameras.s-ok, #st-cameras.s-bad")

            runner = threading.Thread(
                target=lambda: daemon.run(threading.Event(), stop_when_sources_end=True), daemon=True
            )
            started = time.monotonic()
            runner.start()
            while runner.is_alive():
                page.wait_for_timeout(200)  # keeps the page's event loop turning
            page.wait_for_timeout(1500)
            painted = page.evaluate("() => window.mdtHitPainted")
            elapsed = time.monotonic() - started
            browser.close()
        tones = {h: daemon.alert.last_started_mono(h) for h in hits}
        alert_status = daemon.alert.status()
        frames = daemon.pipeline.stats
        daemon.close()

    stages: dict[str, list[float]] = {
        k: []
        for k in (
            "first_frame_to_read",
            "read_frame_to_hit",
            "hit_to_page",
            "hit_to_tone",
            "first_frame_to_page",
            "first_frame_to_tone",
            "read_frame_to_page",
            "read_frame_to_tone",
        )
    }
    missing_page, missing_tone = [], []
    for hit_id, h in hits.items():
        stages["first_frame_to_read"].append((h["read_frame"] - h["first_frame"]) * 1000)
        stages["read_frame_to_hit"].append((h["hit"] - h["read_frame"]) * 1000)
        page_ms = painted.get(hit_id)
        if page_ms is None:
            missing_page.append(h["plate"])
        else:
            stages["hit_to_page"].append(page_ms - h["hit"] * 1000)
            stages["first_frame_to_page"].append(page_ms - h["first_frame"] * 1000)
            stages["read_frame_to_page"].append(page_ms - h["read_frame"] * 1000)
        tone = tones.get(hit_id)
        if tone is None:
            missing_tone.append(h["plate"])
        else:
            tone_wall = tone + offset
            stages["hit_to_tone"].append((tone_wall - h["hit"]) * 1000)
            stages["first_frame_to_tone"].append((tone_wall - h["first_frame"]) * 1000)
            stages["read_frame_to_tone"].append((tone_wall - h["read_frame"]) * 1000)

    result = {
        "passes": len(plates),
        "hits": len(hits),
        "plates_without_hit": sorted(set(plates) - {h["plate"] for h in hits.values()}),
        "hits_not_on_page": missing_page,
        "hits_without_tone": missing_tone,
        "fps": FPS,
        "frames": frames.frames,
        "frames_detected": frames.frames_detected,
        "seconds": round(elapsed, 1),
        "alert": {"state": alert_status.state, "player": alert_status.player, "cause": alert_status.cause},
        "stages_ms": {k: summary(v) for k, v in stages.items()},
        "target_p95_ms": 500,
    }
    worst = max(
        ("first_frame_to_read", "read_frame_to_hit", "hit_to_page", "hit_to_tone"),
        key=lambda k: result["stages_ms"][k]["p95"] or 0,
    )
    p95s = [result["stages_ms"][k]["p95"] for k in ("first_frame_to_page", "first_frame_to_tone")]
    result["meets_target"] = all(p is not None and p <= 500 for p in p95s) and not missing_page
    result["dominant_stage"] = worst
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
