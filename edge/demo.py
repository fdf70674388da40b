"""`alpr-edge demo`: the full daemon on footage the project renders itself.

Renders a few vehicles with plates, turns each into an approaching drive-by, writes them with
empty road between as one video, and runs the daemon on it (video camera at its real frame
rate, GPS off, a fresh database in the demo folder), printing each read as it is stored.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from edge.app import DaemonSummary, build_daemon
from edge.config import Config, parse_config
from edge.driveby import DriveByStyle, drive_by, render_vehicle_scene, write_video
from edge.types import PlateRead

DEMO_PLATES = ("7ABC123", "KHT4512", "BV62XRT", "5LMN820")
DEMO_FPS = 15.0
EMPTY_ROAD_FRAMES = 20


def render_demo_video(path: Path, plates: tuple[str, ...] = DEMO_PLATES, *, seed: int = 7) -> Path:
    style = DriveByStyle(frames=30, start_scale=0.62, end_scale=1.0, drift_px=160.0, blur_px_max=3.0)
    frames: list[np.ndarray] = []
    road = None
    for i, text in enumerate(plates):
        scene, box = render_vehicle_scene(text, seed=seed + i)
        if road is None:
            road = np.empty_like(scene)
            road[: scene.shape[0] // 2] = (200, 170, 140)
            road[scene.shape[0] // 2 :] = (70, 72, 75)
        frames.extend([road] * EMPTY_ROAD_FRAMES)
        frames.extend(f.image for f in drive_by(scene, box, style=style, seed=seed + i))
    frames.extend([road] * EMPTY_ROAD_FRAMES)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, frames, DEMO_FPS)


def demo_config(base: Config, folder: Path, video: Path) -> Config:
    data = base.model_dump(mode="json", exclude={"base_dir"})
    data["cameras"] = [
        {
            "id": "demo",
            "source": "video",
            "uri": str(video),
            "fps": DEMO_FPS,
            "realtime": True,
            "width": 1280,
            "height": 720,
        }
    ]
    data["gps"] = {**data["gps"], "source": "none"}
    # The demo's plates are on no hotlist, so no tone will sound: skip the sound-device probe,
    # which on a machine without speakers only prints ALSA's complaints.
    data["alert"] = {**data["alert"], "startup_check": False}
    # Nobody can log in to the MDT page without a provisioned officer list; the demo prints reads.
    data["mdt"] = {**data["mdt"], "enabled": False}
    data["device"] = {**data["device"], "data_dir": str(folder)}
    # The models stay where `alpr-edge models fetch` put them for the base config.
    data["models"] = {**data["models"], "dir": str(base.models_dir)}
    return parse_config(data, "demo configuration", base.base_dir)


def run_demo(base: Config, folder: Path, *, printer=print) -> DaemonSummary:
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / base.store.path.name
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    video = render_demo_video(folder / "driveby.avi")
    config = demo_config(base, folder, video)
    printer(f"demo: rendered {len(DEMO_PLATES)} vehicles into {video}; plates: {', '.join(DEMO_PLATES)}")

    def show(read: PlateRead) -> None:
        where = f"{read.gps.lat:.5f},{read.gps.lon:.5f}" if read.gps.has_fix else "no GPS fix"
        printer(
            f"READ {read.text:<9} confidence {read.confidence:.2f}  camera {read.camera_id}  "
            f"frames {read.observations}  {where}  id {read.read_id}"
        )

    daemon = build_daemon(config, on_read=show)
    summary = daemon.run(threading.Event(), stop_when_sources_end=True)
    daemon.close()
    found = sorted({r.plate for r in _stored_plates(config)})
    printer(
        f"demo: {summary.frames} frames, detector ran on {summary.frames_detected}, "
        f"{summary.frames_dropped} dropped, {summary.reads_stored} reads stored in {config.database_path}"
    )
    printer(f"demo: read {len(set(found) & set(DEMO_PLATES))} of {len(DEMO_PLATES)} plates")
    return summary


def _stored_plates(config: Config):
    from edge.store import Store

    with Store(config.database_path) as store:
        return store.recent_reads(limit=1000)
