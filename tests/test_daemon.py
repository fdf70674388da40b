"""The whole daemon: real video files through capture, models, tracking, GPS and the SQLite store."""

import json
import sqlite3
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.app import build_daemon
from edge.demo import DEMO_PLATES, render_demo_video, run_demo
from edge.driveby import DriveByStyle, drive_by, render_vehicle_scene, write_video
from edge.store import Lane, Store


def _run(config, **kw):
    daemon = build_daemon(config, **kw)
    summary = daemon.run(threading.Event(), stop_when_sources_end=True)
    status = daemon.status()
    daemon.close()
    return summary, status


def _video(tmp_path: Path, plates: list[str], name: str = "pass.avi", seed: int = 3) -> Path:
    frames = []
    for i, p in enumerate(plates):
        scene, box = render_vehicle_scene(p, seed=seed + i)
        style = DriveByStyle(frames=24, start_scale=0.62, drift_px=120.0, blur_px_max=2.0)
        frames += [f.image for f in drive_by(scene, box, style=style, seed=seed + i)]
        frames += [np.full_like(scene, 80)] * 20
    return write_video(tmp_path / name, frames, 15.0)


def test_demo_reads_every_rendered_plate_once_and_stores_them(make_config, tmp_path):
    lines = []
    summary = run_demo(make_config(), tmp_path / "demo", printer=lines.append)
    assert summary.reads_stored == len(DEMO_PLATES)
    assert sorted(line.split()[1] for line in lines if line.startswith("READ")) == sorted(DEMO_PLATES)
    db = sqlite3.connect(tmp_path / "demo" / "alpr.db")
    try:
        rows = db.execute("SELECT plate, lat, lon, fix_mode, observations FROM reads").fetchall()
        assert sorted(r[0] for r in rows) == sorted(DEMO_PLATES)
        # No GPS fix is stored as no fix: NULL position, never 0,0.
        assert all(r[1] is None and r[2] is None for r in rows)
        assert all(r[4] >= 2 for r in rows)
        kinds = dict(db.execute("SELECT kind, count(*) FROM outbox GROUP BY kind").fetchall())
        assert kinds == {"read": len(DEMO_PLATES), "read_image": len(DEMO_PLATES)}
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_demo_video_is_deterministic(tmp_path):
    a = render_demo_video(tmp_path / "a.avi")
    b = render_demo_video(tmp_path / "b.avi")
    assert a.read_bytes() == b.read_bytes()


def test_two_cameras_at_once_each_read_is_tagged_with_its_camera(make_config, tmp_path):
    front = _video(tmp_path, ["4FRN221"], "front.avi", seed=11)
    rear = _video(tmp_path, ["8REA735"], "rear.avi", seed=21)
    config = make_config(
        cameras=[
            {"id": "front", "source": "video", "uri": str(front), "fps": 15.0, "realtime": False},
            {"id": "rear", "source": "video", "uri": str(rear), "fps": 15.0, "realtime": False},
        ],
        capture={"queue_frames": 64},
    )
    summary, status = _run(config)
    with Store(config.database_path) as store:
        got = {r.camera_id: r.plate for r in store.recent_reads()}
    assert got == {"front": "4FRN221", "rear": "8REA735"}
    assert set(status["cameras"]) == {"front", "rear"}
    assert summary.frames == 2 * 44
    # The health the sync agent's heartbeat reports, as the daemon last wrote it.
    health = json.loads((config.database_path.parent / "status.json").read_text())
    assert health["cameras"]["front"]["state"] == "ended" and health["reads_stored"] == 2
    assert health["outbox"]["reads"] == 2


def test_truncated_video_ends_with_a_cause_and_keeps_what_was_read(make_config, tmp_path):
    video = _video(tmp_path, ["3TRN555", "9CUT101"], "full.avi", seed=5)
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.7)])  # the second car's pass is cut off mid-way
    config = make_config(
        cameras=[{"id": "front", "source": "video", "uri": str(cut), "fps": 15.0, "realtime": False}],
        capture={"queue_frames": 64},
    )
    summary, status = _run(config)
    cam = status["cameras"]["front"]
    assert cam["state"] == "ended"
    assert "truncated" in (cam["cause"] or "") and str(cut) in cam["cause"]
    with Store(config.database_path) as store:
        plates = [r.plate for r in store.recent_reads()]
        assert "3TRN555" in plates
        assert store.integrity_ok()
    assert summary.reads_pending == 0


def test_missing_camera_is_reported_and_the_other_camera_goes_on(make_config, tmp_path):
    video = _video(tmp_path, ["6GWW777"], seed=8)
    config = make_config(
        cameras=[
            {"id": "front", "source": "video", "uri": str(video), "fps": 15.0, "realtime": False},
            {"id": "gone", "source": "video", "uri": str(tmp_path / "unplugged.avi"), "fps": 15.0},
        ],
        capture={"queue_frames": 64},
    )
    _summary, status = _run(config)
    assert status["cameras"]["gone"]["state"] == "ended"
    assert "unplugged.avi" in status["cameras"]["gone"]["cause"]
    with Store(config.database_path) as store:
        assert [r.plate for r in store.recent_reads()] == ["6GWW777"]


def test_unreadable_image_in_a_folder_camera_is_skipped(make_config, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    scene, box = render_vehicle_scene("2FLD909", seed=4)
    style = DriveByStyle(frames=16, start_scale=0.7, drift_px=80.0)
    for i, f in enumerate(drive_by(scene, box, style=style, seed=4)):
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), f.image)
    (folder / "005b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    config = make_config(
        cameras=[{"id": "dash", "source": "folder", "uri": str(folder), "fps": 15.0, "realtime": False}],
        capture={"queue_frames": 64},
    )
    summary, _ = _run(config)
    assert summary.frames == 16
    with Store(config.database_path) as store:
        assert [r.plate for r in store.recent_reads()] == ["2FLD909"]


def test_reads_carry_the_gpsd_fix_from_gpsfake(make_config, tmp_path, gpsfake_executable):
    from test_gps import GpsFake, free_port

    port = free_port()
    fake = GpsFake(
        gpsfake_executable, Path(__file__).parent / "data/gps/drive.nmea", port, tmp_path / "gf.err"
    )
    try:
        frames = [np.full((720, 1280, 3), 80, np.uint8)] * 30  # 2 s of empty road: gpsd gets a fix
        scene, box = render_vehicle_scene("5GPS246", seed=9)
        style = DriveByStyle(frames=20, start_scale=0.7, drift_px=80.0)
        frames += [f.image for f in drive_by(scene, box, style=style, seed=9)]
        video = write_video(tmp_path / "gps.avi", frames, 15.0)
        config = make_config(
            cameras=[{"id": "front", "source": "video", "uri": str(video), "fps": 15.0, "realtime": True}],
            gps={"source": "gpsd", "gpsd_port": port, "nmea_fallback": False, "max_fix_age_s": 5.0},
        )
        _run(config)
    finally:
        fake.stop()
    with Store(config.database_path) as store:
        (read,) = store.recent_reads()
    assert read.plate == "5GPS246"
    assert read.gps.has_fix, fake.describe()
    # drive.nmea drives around 37.775-37.780 N, 122.415-122.420 W.
    assert 37.77 < read.gps.lat < 37.79 and -122.43 < read.gps.lon < -122.41
    assert read.gps.source == "gpsd" and read.gps.fix_time is not None


def _csv_hotlist(path: Path, rows: list[str]) -> Path:
    header = "plate,state,list,priority,description,expires,source_id,agency,year,make,model,color,entered\n"
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def _import(config, csv_path: Path) -> None:
    from edge.hotlist import Hotlist

    with Hotlist(config.database_path, config.hotlist.settings()) as hotlist:
        hotlist.import_file(csv_path, "csv")


def test_listed_plate_is_stored_as_a_hit_with_entry_kind_age_and_version(make_config, tmp_path):
    video = _video(tmp_path, ["4FRN221", "8REA735"], seed=20)
    config = make_config(
        cameras=[{"id": "front", "source": "video", "uri": str(video), "fps": 15.0, "realtime": False}],
        capture={"queue_frames": 64},
    )
    config.database_path.parent.mkdir(parents=True)
    _import(
        config,
        _csv_hotlist(
            tmp_path / "list.csv",
            [
                "4FRN221,CA,stolen_vehicle,,grey sedan,,V123,CA0340000,2015,TOYT,CAM,GRY,2026-11-30",
                # 8REA73S: the read 8REA735 differs by a 5/S confusion in the last position.
                "8REA73S,NV,amber_alert,,child abduction,,A77,NV0020000,,,,,2026-12-01",
            ],
        ),
    )
    seen = []
    summary, status = _run(config, on_hit=lambda read, hit: seen.append((read.text, hit.entry_plate)))
    assert summary.hits_stored == 2
    assert sorted(seen) == [("4FRN221", "4FRN221"), ("8REA735", "8REA73S")]
    with Store(config.database_path) as store:
        by_plate = {r.plate: r for r in store.recent_reads()}
        (exact,) = store.hits_for_read(by_plate["4FRN221"].read_id)
        (approx,) = store.hits_for_read(by_plate["8REA735"].read_id)
        queued = store.outbox_pending(Lane.HITS, 10)
    assert exact.match_kind == "exact" and exact.list_kind == "stolen_vehicle"
    assert exact.entry["agency"] == "CA0340000" and exact.entry["make"] == "TOYT"
    assert exact.list_version and exact.list_age_s is not None and exact.list_age_s < 600
    assert exact.freshness == "fresh" and not exact.stale and not exact.retroactive
    assert approx.match_kind == "approximate" and approx.differing_positions == (6,)
    assert approx.list_kind == "amber_alert" and approx.priority > exact.priority
    assert {q.record_id for q in queued} == {exact.hit_id, approx.hit_id}
    assert {h["list"] for h in status["hotlist"]} == {"stolen_vehicle", "amber_alert"}
    assert status["hotlist_feed_refused"] is None


def test_hotlist_import_by_another_process_is_seen_within_a_second_and_retro_checked(make_config, tmp_path):
    import subprocess
    import sys
    import time

    frames = []
    scene, box = render_vehicle_scene("7RET456", seed=12)
    frames += [f.image for f in drive_by(scene, box, style=DriveByStyle(frames=20, start_scale=0.7), seed=12)]
    frames += [np.full_like(scene, 80)] * 120  # 8 s of empty road: the daemon keeps running
    video = write_video(tmp_path / "retro.avi", frames, 15.0)
    config = make_config(
        cameras=[{"id": "front", "source": "video", "uri": str(video), "fps": 15.0, "realtime": True}]
    )
    cfg_file = tmp_path / "device.toml"
    cfg_file.write_text(
        f'[device]\ndata_dir = "{config.database_path.parent}"\n[models]\ndir = "{config.models_dir}"\n'
    )
    daemon = build_daemon(config)
    stop = threading.Event()
    worker = threading.Thread(target=daemon.run, args=(stop,), kwargs={"stop_when_sources_end": True})
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not daemon.reads_stored and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.reads_stored == 1 and daemon.hits_stored == 0
        listed = _csv_hotlist(
            tmp_path / "new.csv", ["7RET456,CA,felony_vehicle,,armed robbery,,F9,CA0190000,,,,,"]
        )
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge.cli",
                "--config",
                str(cfg_file),
                "hotlist",
                "import",
                str(listed),
                "--format",
                "csv",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        imported_at = time.monotonic()
        assert res.returncode == 0, res.stderr
        while not daemon.hits_stored and time.monotonic() < imported_at + 5:
            time.sleep(0.02)
        seen_after = time.monotonic() - imported_at
    finally:
        stop.set()
        worker.join(timeout=30)
        daemon.close()
    assert daemon.hits_stored == 1
    assert seen_after <= 1.0, f"hotlist change seen after {seen_after:.2f} s"
    with Store(config.database_path) as store:
        (hit,) = store.recent_hits()
    assert hit.retroactive and hit.entry_plate == "7RET456" and hit.list_kind == "felony_vehicle"


def test_onnx_backend_runs_the_same_daemon(make_config, tmp_path, plates_dir):
    from edge.evaluate import load_dataset

    (sample,) = [s for s in load_dataset(plates_dir / "br") if s.plate == "AYO9034"]
    still = cv2.imread(str(sample.image_path))
    frames = [f.image for f in drive_by(still, sample.box, style=DriveByStyle(frames=16), seed=1)]
    video = write_video(tmp_path / "photo.avi", frames, 15.0)
    config = make_config(
        cameras=[{"id": "front", "source": "video", "uri": str(video), "fps": 15.0, "realtime": False}],
        capture={"queue_frames": 64},
        detector={"backend": "onnx", "model": "yolo-v9-t-416-dynint8"},
    )
    summary, _ = _run(config)
    with Store(config.database_path) as store:
        assert [r.plate for r in store.recent_reads()] == ["AYO9034"]
    assert summary.frames_detected < summary.frames


def test_detector_model_of_the_other_backend_is_a_config_error(make_config):
    from edge.config import ConfigError

    config = make_config(detector={"backend": "onnx", "model": "yolov5-plate-int8"})
    with pytest.raises(ConfigError, match=r"detector\.model: yolov5-plate-int8 is a tflite model"):
        build_daemon(config)


def test_a_read_stored_but_not_checked_before_a_crash_is_checked_at_the_next_start(make_config, tmp_path):
    import uuid

    from edge.types import Box, PlateRead

    video = write_video(tmp_path / "road.avi", [np.full((720, 1280, 3), 80, np.uint8)] * 10, 15.0)
    config = make_config(
        cameras=[{"id": "front", "source": "video", "uri": str(video), "fps": 15.0, "realtime": False}]
    )
    config.database_path.parent.mkdir(parents=True)
    # The last run stored this read and died before matching it.
    read = PlateRead(
        read_id=str(uuid.uuid4()),
        camera_id="front",
        text="5CRS404",
        confidence=0.95,
        char_confidences=(0.95,) * 7,
        region=None,
        first_seen=1.0,
        last_seen=2.0,
        observations=4,
        best_crop_jpeg=b"",
        best_box=Box(1, 1, 50, 12),
    )
    with Store(config.database_path) as store:
        store.save_read(read)
    _import(config, _csv_hotlist(tmp_path / "l.csv", ["5CRS404,CA,stolen_plate,,,,P1,CA0010000,,,,,"]))
    seen = []
    summary, _ = _run(config, on_hit=lambda r, hit: seen.append((r, hit.read_id, hit.entry_plate)))
    assert seen == [(None, read.read_id, "5CRS404")] and summary.hits_stored == 1
    with Store(config.database_path) as store:
        assert store.unchecked_reads() == []
        (hit,) = store.hits_for_read(read.read_id)
    assert hit.match_kind == "exact" and not hit.retroactive
