"""Capture: real video files and image folders on disk, real threads, and in-memory sources
that stall or raise on cue to exercise the supervisor."""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture import (
    SOURCES,
    CameraStatus,
    CaptureManager,
    CorruptVideoError,
    FrameSource,
    ImageFolderSource,
    OpenCVSource,
    PermanentCaptureError,
    RateLimitedLog,
    ReopenBackoff,
    SourceNotFoundError,
    TransientCaptureError,
    VideoFileSource,
    make_source,
)
from edge.config import CameraConfig, CaptureConfig
from edge.picamera2_source import Picamera2Source, lores_yuv420_to_bgr
from edge.types import Frame

EDGE_DIR = Path(__file__).resolve().parent.parent / "edge"
W, H = 96, 64


# -- helpers ---------------------------------------------------------------------------------------


def numbered_image(i: int) -> np.ndarray:
    """A frame whose number survives lossy coding: its grey level is 10 * i (+ a small colour)."""
    image = np.full((H, W, 3), (10 * i) % 250, np.uint8)
    image[:, :, 2] = 200
    return image


def frame_number(image: np.ndarray) -> int:
    return round(float(image[:, :, 0].mean()) / 10)


def write_video(path: Path, frames: int, fourcc: str = "MJPG", fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    assert writer.isOpened(), f"cannot write {fourcc} video {path}"
    try:
        for i in range(frames):
            writer.write(numbered_image(i))
    finally:
        writer.release()
    return path


def write_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        assert cv2.imwrite(str(folder / f"img_{i:03d}.png"), numbered_image(i))
    return folder


def cam(id: str, source: str, uri: str = "", **kw: object) -> CameraConfig:
    kw.setdefault("realtime", False)
    return CameraConfig(id=id, source=source, uri=uri, **kw)  # type: ignore[arg-type]


def fast_capture(**kw: float) -> CaptureConfig:
    values: dict[str, float] = {
        "stall_timeout_s": 5.0,
        "reopen_backoff_initial_s": 0.01,
        "reopen_backoff_max_s": 0.05,
        "queue_frames": 2,
    }
    values.update(kw)
    return CaptureConfig(**values)  # type: ignore[arg-type]


def read_all(source: FrameSource, limit: int = 1000) -> list[Frame]:
    frames = []
    source.open()
    try:
        while len(frames) < limit:
            frame = source.read()
            if frame is None:
                break
            frames.append(frame)
    finally:
        source.close()
    return frames


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def drain(manager: CaptureManager, timeout: float = 10.0) -> list[Frame]:
    frames = []
    deadline = time.monotonic() + timeout
    while not manager.all_ended:
        assert time.monotonic() < deadline, f"cameras never ended: {manager.status()}"
        frame = manager.get(timeout=0.2)
        if frame is not None:
            frames.append(frame)
    return frames


class ScriptedSource:
    """A real FrameSource made in memory. It gives `frames` frames (None: without end), then
    does `then`: "end" (read() returns None), "stall" (read() blocks until `release` is set)
    or "raise" (RuntimeError). `open_error` makes open() raise instead."""

    def __init__(
        self,
        camera_id: str,
        release: threading.Event,
        *,
        frames: int | None = None,
        then: str = "end",
        open_error: Exception | None = None,
        interval_s: float = 0.002,
    ):
        self.camera_id = camera_id
        self.release = release
        self.frames = frames
        self.then = then
        self.open_error = open_error
        self.interval_s = interval_s
        self.given = 0
        self.opened = False
        self.closed = False
        self.stalling = threading.Event()

    def open(self) -> None:
        if self.open_error is not None:
            raise self.open_error
        self.opened = True

    def read(self) -> Frame | None:
        if self.frames is not None and self.given >= self.frames:
            if self.then == "stall":
                self.stalling.set()
                self.release.wait()
                return None
            if self.then == "raise":
                raise RuntimeError(f"{self.camera_id}: sensor fell off the bus")
            return None
        time.sleep(self.interval_s)
        self.given += 1
        return Frame(
            camera_id=self.camera_id,
            seq=self.given - 1,
            captured_at=time.time(),
            captured_mono=time.monotonic(),
            image=np.zeros((8, 8, 3), np.uint8),
        )

    def close(self) -> None:
        self.closed = True


class Plan:
    """A source_factory giving each camera the next scripted source in its list; the last one
    repeats. Keeps every source it made."""

    def __init__(self, release: threading.Event, **plans: list[dict]):
        self.release = release
        self.plans = plans
        self.made: dict[str, list[ScriptedSource]] = {name: [] for name in plans}

    def __call__(self, camera: CameraConfig) -> ScriptedSource:
        made = self.made[camera.id]
        steps = self.plans[camera.id]
        spec = steps[min(len(made), len(steps) - 1)]
        source = ScriptedSource(camera.id, self.release, **spec)
        made.append(source)
        return source


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown so every stalled scripted read returns and its thread finishes."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def managers(release: threading.Event) -> Iterator[Callable[..., CaptureManager]]:
    made: list[CaptureManager] = []

    def make(*args: object, **kw: object) -> CaptureManager:
        manager = CaptureManager(*args, **kw)  # type: ignore[arg-type]
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.stop()


# -- video files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fourcc,suffix", [("MJPG", "avi"), ("mp4v", "mp4")])
def test_video_file_gives_every_frame_in_order_then_ends(tmp_path: Path, fourcc: str, suffix: str) -> None:
    path = write_video(tmp_path / f"clip.{suffix}", 12, fourcc)
    frames = read_all(VideoFileSource(cam("rear", "video", str(path))))
    assert [frame_number(f.image) for f in frames] == list(range(12))
    assert [f.seq for f in frames] == list(range(12))
    assert {f.camera_id for f in frames} == {"rear"}
    assert frames[0].image.shape == (H, W, 3) and frames[0].image.dtype == np.uint8


def test_video_loop_starts_again_at_the_first_frame(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", 5)
    frames = read_all(VideoFileSource(cam("rear", "video", str(path), loop=True)), limit=12)
    assert [frame_number(f.image) for f in frames] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert [f.seq for f in frames] == list(range(12))


def test_realtime_video_is_paced_at_the_configured_fps(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", 6)
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    source = VideoFileSource(
        cam("rear", "video", str(path), realtime=True, fps=20.0), monotonic=lambda: now[0], sleep=sleep
    )
    frames = read_all(source)
    assert len(frames) == 6
    assert slept == pytest.approx([0.05] * 5)
    assert [f.captured_mono for f in frames] == pytest.approx([100.0 + 0.05 * i for i in range(6)])


def test_truncated_avi_ends_with_corrupt_video_error_naming_the_file(tmp_path: Path) -> None:
    whole = write_video(tmp_path / "whole.avi", 30)
    cut = tmp_path / "cut.avi"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    source = VideoFileSource(cam("rear", "video", str(cut)))
    source.open()
    try:
        got = 0
        with pytest.raises(CorruptVideoError, match=re.escape(str(cut))) as err:
            while source.read() is not None:
                got += 1
    finally:
        source.close()
    assert 0 < got < 30
    assert f"after {got} of 30 frames" in str(err.value)


def test_truncated_mp4_cannot_be_opened_and_the_error_names_the_file(tmp_path: Path) -> None:
    whole = write_video(tmp_path / "whole.mp4", 30, "mp4v")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:-400])
    source = VideoFileSource(cam("rear", "video", str(cut)))
    with pytest.raises(CorruptVideoError, match=re.escape(str(cut))):
        source.open()
    source.close()


def test_missing_video_file_is_a_permanent_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "clip.mp4"
    source = VideoFileSource(cam("rear", "video", str(missing)))
    with pytest.raises(SourceNotFoundError, match=re.escape(str(missing))) as err:
        source.open()
    assert isinstance(err.value, PermanentCaptureError)


def test_truncated_video_camera_is_ended_with_the_cause_not_retried(tmp_path: Path, managers) -> None:
    whole = write_video(tmp_path / "whole.avi", 30)
    cut = tmp_path / "cut.avi"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    manager = managers([cam("rear", "video", str(cut))], fast_capture(queue_frames=64))
    manager.start()
    frames = drain(manager)
    status = manager.status()["rear"]
    assert status.state == "ended"
    assert status.cause is not None and str(cut) in status.cause and "truncated" in status.cause
    assert status.reopen_count == 0
    assert 0 < len(frames) < 30


def test_missing_file_camera_is_ended_with_the_path_and_the_other_goes_on(tmp_path: Path, managers) -> None:
    missing = tmp_path / "gone.avi"
    good = write_video(tmp_path / "good.avi", 8)
    manager = managers(
        [cam("front", "video", str(missing)), cam("rear", "video", str(good))], fast_capture(queue_frames=64)
    )
    manager.start()
    frames = drain(manager)
    status = manager.status()
    assert status["front"].state == "ended" and str(missing) in (status["front"].cause or "")
    assert status["rear"] == CameraStatus(
        state="ended", cause=None, frames_captured=8, frames_dropped=0, reopen_count=0, fps=status["rear"].fps
    )
    assert [f.seq for f in frames] == list(range(8))


# -- image folders ---------------------------------------------------------------------------------


def test_folder_images_come_in_name_order(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", 5)
    (folder / "notes.txt").write_text("not an image, not a frame")
    frames = read_all(ImageFolderSource(cam("side", "folder", str(folder))))
    assert [frame_number(f.image) for f in frames] == [0, 1, 2, 3, 4]
    assert frames[0].image.shape == (H, W, 3)


def test_unreadable_image_in_folder_is_skipped_counted_and_logged(tmp_path: Path, caplog) -> None:
    folder = write_images(tmp_path / "imgs", 4)
    bad = folder / "img_001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    source = ImageFolderSource(cam("side", "folder", str(folder), loop=True))
    with caplog.at_level(logging.WARNING, logger="edge.capture"):
        frames = read_all(source, limit=6)
    assert [frame_number(f.image) for f in frames] == [0, 2, 3, 0, 2, 3]
    assert source.skipped == 1  # left out of later loops, not counted again
    assert [r for r in caplog.records if str(bad) in r.getMessage()]


def test_folder_without_readable_images_is_permanent_error(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not a jpeg")
    source = ImageFolderSource(cam("side", "folder", str(folder), loop=True))
    source.open()
    try:
        with pytest.raises(PermanentCaptureError, match=re.escape(str(folder))):
            source.read()
    finally:
        source.close()
    assert source.skipped == 1


def test_missing_image_folder_is_an_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(SourceNotFoundError, match=re.escape(str(missing))):
        ImageFolderSource(cam("side", "folder", str(missing))).open()


# -- OpenCV source ---------------------------------------------------------------------------------


def test_opencv_source_reads_a_stream_and_a_lost_stream_is_transient(tmp_path: Path) -> None:
    path = write_video(tmp_path / "stream.avi", 4)
    source = OpenCVSource(cam("usb", "opencv", str(path)))
    source.open()
    try:
        frames = [source.read() for _ in range(4)]
        with pytest.raises(TransientCaptureError, match="read failed"):
            source.read()
    finally:
        source.close()
    assert [frame_number(f.image) for f in frames if f is not None] == [0, 1, 2, 3]


def test_opencv_source_unreachable_url_is_a_transient_error_naming_it() -> None:
    with socket_closed_port() as port:
        url = f"http://127.0.0.1:{port}/stream.mjpg"
        source = OpenCVSource(cam("ip", "opencv", url), io_timeout_s=2.0)
        with pytest.raises(TransientCaptureError, match=re.escape(url)):
            source.open()
        source.close()


class socket_closed_port:
    """A loopback port nothing listens on (bound without listen, so connections are refused)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# -- the manager -----------------------------------------------------------------------------------


def test_several_cameras_at_once_each_frame_carries_its_camera_id(tmp_path: Path, managers) -> None:
    cameras = [
        cam("front", "video", str(write_video(tmp_path / "front.avi", 10))),
        cam("rear", "video", str(write_video(tmp_path / "rear.mp4", 7, "mp4v"))),
        cam("side", "folder", str(write_images(tmp_path / "side", 5))),
    ]
    manager = managers(cameras, fast_capture(queue_frames=64))
    manager.start()
    frames = drain(manager)
    by_camera = {cid: [f for f in frames if f.camera_id == cid] for cid in ("front", "rear", "side")}
    assert {cid: [frame_number(f.image) for f in fs] for cid, fs in by_camera.items()} == {
        "front": list(range(10)),
        "rear": list(range(7)),
        "side": list(range(5)),
    }
    assert all([f.seq for f in fs] == list(range(len(fs))) for fs in by_camera.values())
    assert {cid: s.state for cid, s in manager.status().items()} == dict.fromkeys(by_camera, "ended")
    assert manager.get(timeout=0.01) is None


def test_disabled_camera_is_not_opened(tmp_path: Path, managers, release) -> None:
    plan = Plan(release, front=[{"frames": 3}], rear=[{"frames": 3}])
    manager = managers(
        [cam("front", "opencv", "0"), cam("rear", "opencv", "1", enabled=False)],
        fast_capture(),
        source_factory=plan,
    )
    manager.start()
    drain(manager)
    assert list(manager.status()) == ["front"]
    assert plan.made["rear"] == []


def test_oldest_frames_dropped_and_counted_when_the_consumer_is_slow(tmp_path: Path, managers) -> None:
    path = write_video(tmp_path / "clip.avi", 20)
    manager = managers([cam("rear", "video", str(path))], fast_capture(queue_frames=3))
    manager.start()
    wait_for(lambda: manager.status()["rear"].state == "ended", what="video end")
    kept = drain(manager)
    status = manager.status()["rear"]
    assert (status.frames_captured, status.frames_dropped) == (20, 17)
    # The newest frames are the ones kept: inference never works from stale ones.
    assert [f.seq for f in kept] == [17, 18, 19]
    assert [frame_number(f.image) for f in kept] == [17, 18, 19]


def test_get_takes_cameras_in_turn(managers, release) -> None:
    plan = Plan(release, a=[{"frames": None}], b=[{"frames": None}])
    manager = managers(
        [cam("a", "opencv", "0"), cam("b", "opencv", "1")], fast_capture(queue_frames=4), source_factory=plan
    )
    manager.start()
    wait_for(lambda: all(s.frames_captured >= 4 for s in manager.status().values()), what="both queues full")
    ids = [f.camera_id for f in (manager.get(timeout=1.0) for _ in range(6)) if f is not None]
    assert ids in (["a", "b"] * 3, ["b", "a"] * 3)
    assert all(s.fps > 0 for s in manager.status().values())


def test_stalled_camera_is_reopened_and_marked_degraded_then_ok_again(managers, release) -> None:
    plan = Plan(release, front=[{"frames": 3, "then": "stall"}, {"frames": None}])
    gate = threading.Event()
    delays: list[float] = []

    def backoff_sleep(seconds: float) -> None:
        delays.append(seconds)
        gate.wait(5.0)

    manager = managers(
        [cam("front", "opencv", "0")],
        fast_capture(stall_timeout_s=0.2),
        source_factory=plan,
        backoff_sleep=backoff_sleep,
    )
    manager.start()
    wait_for(lambda: manager.status()["front"].state == "degraded", what="degraded")
    status = manager.status()["front"]
    assert "stalled" in (status.cause or "")
    assert status.frames_captured == 3 and status.reopen_count == 0
    assert plan.made["front"][0].stalling.is_set()

    gate.set()
    wait_for(lambda: manager.status()["front"].state == "ok", what="recovery")
    status = manager.status()["front"]
    assert status.cause is None and status.reopen_count == 1
    assert len(plan.made["front"]) == 2
    wait_for(lambda: manager.status()["front"].frames_captured > 6, what="frames after reopen")
    seqs = [f.seq for f in (manager.get(timeout=1.0) for _ in range(4)) if f is not None]
    assert len(seqs) == 4 and seqs == sorted(seqs) and seqs[0] >= 3  # seq goes on across the reopen
    # The stalled source is only closed by its own thread, once its read returns.
    assert not plan.made["front"][0].closed
    release.set()
    wait_for(lambda: plan.made["front"][0].closed, what="abandoned source closed")


def test_failing_camera_does_not_stop_the_other(tmp_path: Path, managers, release) -> None:
    video = write_video(tmp_path / "rear.avi", 12)

    def factory(camera: CameraConfig) -> FrameSource:
        if camera.id == "front":
            return ScriptedSource("front", release, frames=1, then="raise")
        return make_source(camera)

    manager = managers(
        [cam("front", "opencv", "0"), cam("rear", "video", str(video))],
        fast_capture(queue_frames=64),
        source_factory=factory,
    )
    manager.start()
    rear = []
    while len(rear) < 12:
        frame = manager.get(timeout=5.0)
        assert frame is not None, manager.status()
        if frame.camera_id == "rear":
            rear.append(frame)
    assert [frame_number(f.image) for f in rear] == list(range(12))
    wait_for(lambda: manager.status()["front"].reopen_count >= 2, what="front reopened")
    wait_for(lambda: "sensor fell off the bus" in (manager.status()["front"].cause or ""), what="cause")
    assert manager.status()["rear"].state == "ended"
    assert not manager.all_ended


def test_reopen_backoff_doubles_and_is_capped(managers, release) -> None:
    plan = Plan(release, front=[{"open_error": TransientCaptureError("camera front: unplugged")}])
    delays: list[float] = []
    manager = managers(
        [cam("front", "opencv", "0")],
        fast_capture(reopen_backoff_initial_s=0.001, reopen_backoff_max_s=0.004),
        source_factory=plan,
        backoff_sleep=lambda s: (delays.append(s), time.sleep(0.001)),
    )
    manager.start()
    wait_for(lambda: len(delays) >= 6, what="six reopen waits")
    manager.stop()
    assert delays[:6] == [0.001, 0.002, 0.004, 0.004, 0.004, 0.004]
    status = manager.status()["front"]
    assert status.state == "degraded" and status.cause == "camera front: unplugged"
    assert status.reopen_count >= 5


def test_backoff_starts_over_once_frames_flow_again(managers, release) -> None:
    unplugged = TransientCaptureError("camera front: unplugged")
    plan = Plan(
        release,
        front=[
            {"open_error": unplugged},
            {"open_error": unplugged},
            {"frames": 2, "then": "raise"},
            {"frames": None},
        ],
    )
    delays: list[float] = []
    manager = managers(
        [cam("front", "opencv", "0")],
        fast_capture(reopen_backoff_initial_s=0.001, reopen_backoff_max_s=1.0),
        source_factory=plan,
        backoff_sleep=delays.append,
    )
    manager.start()
    wait_for(lambda: len(plan.made["front"]) == 4 and manager.status()["front"].state == "ok", what="ok")
    assert delays == [0.001, 0.002, 0.001]


def test_reopen_backoff_values() -> None:
    backoff = ReopenBackoff(0.5, 30.0)
    assert [backoff.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_stop_returns_while_a_source_is_blocked_in_read(managers, release) -> None:
    plan = Plan(release, front=[{"frames": 1, "then": "stall"}])
    manager = managers(
        [cam("front", "opencv", "0")],
        fast_capture(stall_timeout_s=60),
        source_factory=plan,
        join_timeout_s=0.1,
    )
    manager.start()
    wait_for(lambda: plan.made["front"] and plan.made["front"][0].stalling.is_set(), what="stall")
    stopper = threading.Thread(target=manager.stop, daemon=True)
    stopper.start()
    stopper.join(10.0)  # a hang detector, not a speed limit: stop() waits 0.1 s per thread here
    assert not stopper.is_alive(), "stop() hung on a source blocked in read()"
    leftover = list(iter(lambda: manager.get(timeout=0.01), None))
    assert len(leftover) <= 1  # the one frame given before the stall, if still queued
    source = plan.made["front"][0]
    assert not source.closed
    release.set()
    wait_for(lambda: source.closed, what="source closed by its own thread")


def test_source_factory_error_ends_the_camera_with_the_cause(managers) -> None:
    def factory(camera: CameraConfig) -> FrameSource:
        raise PermanentCaptureError(f"camera {camera.id}: unknown source")

    manager = managers([cam("front", "opencv", "0")], fast_capture(), source_factory=factory)
    manager.start()
    assert drain(manager) == []
    assert manager.status()["front"].cause == "camera front: unknown source"


def test_drops_and_reopens_are_logged_at_a_limited_rate(caplog) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("edge.capture"), interval_s=10.0, monotonic=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="edge.capture"):
        for i in range(5):
            limited.log(logging.WARNING, "front:drop", "dropped %d", i)
        now[0] = 10.5
        limited.log(logging.WARNING, "front:drop", "dropped %d", 5)
        limited.log(logging.WARNING, "rear:drop", "rear dropped")
    assert [r.getMessage() for r in caplog.records] == [
        "dropped 0",
        "dropped 5 (4 similar lines held back)",
        "rear dropped",
    ]


# -- picamera2 and the source table ----------------------------------------------------------------


class StandInPicamera2:
    """Behaves like picamera2.Picamera2 for the calls the source makes, and records them.

    main is "RGB888" (B, G, R bytes, h x w x 3); lores is YUV420 as libcamera lays it out,
    (h * 3 / 2, stride) with each row padded to the stride."""

    made: list[StandInPicamera2]

    def __init__(self, camera_num: int, *, lores_stride: int, bgr: tuple[int, int, int], stall: bool = False):
        self.camera_num = camera_num
        self.lores_stride = lores_stride
        self.bgr = bgr
        self.stall = stall
        self.config: dict | None = None
        self.calls: list[str] = []

    def create_video_configuration(self, main=None, lores=None, controls=None, **kw):
        self.calls.append("create_video_configuration")
        return {"main": dict(main), "lores": dict(lores), "controls": dict(controls or {}), **kw}

    def configure(self, config: dict) -> None:
        self.calls.append("configure")
        self.config = config
        self.camera_config = config

    def start(self) -> None:
        self.calls.append("start")

    def capture_arrays(self, names, wait=None):
        assert wait is False
        return ("job", tuple(names))

    def wait(self, job, timeout=None):
        assert timeout is not None and timeout > 0
        if self.stall:
            raise TimeoutError
        _, names = job
        return [self._array(name) for name in names], {"SensorTimestamp": 1}

    def _array(self, name: str) -> np.ndarray:
        assert self.config is not None
        w, h = self.config[name]["size"]
        bgr = np.empty((h, w, 3), np.uint8)
        bgr[:] = self.bgr
        if name == "main":
            return bgr
        i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).reshape(-1)
        y, u, v = i420[: w * h], i420[w * h : w * h * 5 // 4], i420[w * h * 5 // 4 :]
        s = self.lores_stride
        padded_y = np.zeros((h, s), np.uint8)
        padded_y[:, :w] = y.reshape(h, w)
        planes = [padded_y.reshape(-1)]
        for chroma in (u, v):
            padded = np.zeros((h // 2, s // 2), np.uint8)
            padded[:, : w // 2] = chroma.reshape(h // 2, w // 2)
            planes.append(padded.reshape(-1))
        return np.concatenate(planes).reshape(h * 3 // 2, s)

    def stop(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")


def test_picamera2_stand_in_gives_main_and_lores_frames_of_the_configured_sizes() -> None:
    made: list[StandInPicamera2] = []

    def factory(num: int) -> StandInPicamera2:
        made.append(StandInPicamera2(num, lores_stride=384, bgr=(30, 120, 220)))
        return made[-1]

    camera = cam(
        "front", "picamera2", "1", width=640, height=480, lores_width=320, lores_height=240, fps=15.0
    )
    source = Picamera2Source(camera, picamera2_factory=factory)
    frames = read_all(source, limit=2)
    (picam,) = made
    assert picam.camera_num == 1
    assert picam.config is not None
    assert picam.config["main"] == {"size": (640, 480), "format": "RGB888"}
    assert picam.config["lores"] == {"size": (320, 240), "format": "YUV420"}
    assert picam.config["controls"] == {"FrameRate": 15.0}
    assert picam.calls == ["create_video_configuration", "configure", "start", "stop", "close"]
    first = frames[0]
    assert [f.seq for f in frames] == [0, 1] and first.camera_id == "front"
    assert first.image.shape == (480, 640, 3) and first.lores is not None
    assert first.lores.shape == (240, 320, 3) and first.lores.dtype == np.uint8
    assert np.abs(first.image.astype(int) - (30, 120, 220)).max() == 0
    # YUV rounding leaves a few levels of error, not a wrong channel order or stride garbage.
    assert np.abs(first.lores.astype(int) - (30, 120, 220)).max() <= 4


def test_picamera2_capture_that_never_completes_is_a_transient_error() -> None:
    picam = StandInPicamera2(0, lores_stride=320, bgr=(0, 0, 0), stall=True)
    source = Picamera2Source(
        cam("front", "picamera2", "0", lores_width=320, lores_height=240), picamera2_factory=lambda n: picam
    )
    source.open()
    try:
        with pytest.raises(TransientCaptureError, match="no frame within"):
            source.read()
    finally:
        source.close()
    assert picam.calls[-2:] == ["stop", "close"]


def test_picamera2_start_failure_is_transient_and_releases_the_camera() -> None:
    picam = StandInPicamera2(0, lores_stride=320, bgr=(0, 0, 0))

    def failing_start() -> None:
        raise RuntimeError("Failed to start camera: Device or resource busy")

    picam.start = failing_start  # type: ignore[method-assign]
    source = Picamera2Source(cam("front", "picamera2", "0"), picamera2_factory=lambda n: picam)
    with pytest.raises(TransientCaptureError, match="resource busy"):
        source.open()
    assert picam.calls[-2:] == ["stop", "close"]


def test_picamera2_missing_is_a_permanent_error_saying_so() -> None:
    assert importlib.util.find_spec("picamera2") is None, "this test needs a machine without picamera2"
    source = Picamera2Source(cam("front", "picamera2", "0"))
    with pytest.raises(PermanentCaptureError, match="picamera2 is not installed"):
        source.open()


def test_lores_conversion_rejects_a_buffer_of_the_wrong_shape() -> None:
    with pytest.raises(TransientCaptureError, match="YUV420"):
        lores_yuv420_to_bgr(np.zeros((240, 320), np.uint8), 320, 240)


def test_make_source_uses_the_table_and_does_not_import_picamera2(tmp_path: Path) -> None:
    assert set(SOURCES) == {"opencv", "video", "folder", "picamera2"}
    assert isinstance(make_source(cam("a", "opencv", "0")), OpenCVSource)
    assert isinstance(make_source(cam("b", "video", str(tmp_path / "x.mp4"))), VideoFileSource)
    assert isinstance(make_source(cam("c", "folder", str(tmp_path))), ImageFolderSource)
    pi = make_source(cam("d", "picamera2", "0"))
    assert isinstance(pi, Picamera2Source) and isinstance(pi, FrameSource)
    assert "picamera2" not in sys.modules


def test_only_the_picamera2_backend_imports_picamera2() -> None:
    importers = sorted(
        p.name
        for p in EDGE_DIR.rglob("*.py")
        if re.search(r"^\s*(from picamera2\b|import picamera2\b)", p.read_text(), re.MULTILINE)
    )
    assert importers == ["picamera2_source.py"]


def test_video_replayed_faster_than_realtime_keeps_its_media_timing(tmp_path: Path) -> None:
    from edge.driveby import write_video

    frames = [np.full((48, 64, 3), i * 20, np.uint8) for i in range(6)]
    video = write_video(tmp_path / "fast.avi", frames, 10.0)
    cam = CameraConfig(id="rec", source="video", uri=str(video), fps=10.0, realtime=False)
    source = VideoFileSource(cam, clock=lambda: 1000.0)
    source.open()
    try:
        stamps = [source.read().captured_at for _ in range(6)]
    finally:
        source.close()
    # Decoded in a blink, stamped as recorded: 0.1 s apart from the first frame's wall clock.
    assert stamps == pytest.approx([1000.0 + i * 0.1 for i in range(6)])
