"""The whole daemon: real video files through capture, models, tracking, GPS and the SQLite store."""

import sqlite3
import threading
from pathlib import Path

import cv2
import numpy as np

from edge.app import build_daemon
from edge.demo import DEMO_PLATES, render_demo_video, run_demo
from edge.driveby import DriveByStyle, drive_by, render_vehicle_scene, write_video
from edge.store import Store


def _run(config, **kw):
    daemon = build_daemon(config, **kw)
    summary = daemon.run(threading.Event(), stop_when_sources_end=True)
    status = daemon.status()
    daemon.store.close()
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
