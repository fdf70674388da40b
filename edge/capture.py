"""Capture: frames from every camera of the car, handed to inference one at a time.

Sources (`FrameSource`) open one camera and give `Frame`s: OpenCV (USB device index, RTSP/HTTP
URL, GStreamer pipeline), a video file, a folder of images, and picamera2 (in
`edge.picamera2_source`, the only module that imports picamera2). `make_source` picks one
from the literal `SOURCES` table by `CameraConfig.source`.

`CaptureManager` runs every enabled camera in its own threads and guarantees:

- A camera never takes the daemon down. A source that raises, or gives no frame for
  `capture.stall_timeout_s`, is closed and reopened after a capped exponential backoff; its
  status is "degraded" with the cause until frames flow again ("ok"). The other cameras go on.
- A permanent error (missing file, corrupt or truncated video, picamera2 not installed) is not
  retried: the camera is "ended" with the cause. A video or folder that simply runs out
  (without `loop`) is "ended" with no cause.
- Inference never works on stale frames: each camera keeps at most `capture.queue_frames`
  frames; when the queue is full the oldest is dropped, counted (`frames_dropped`) and logged
  at a limited rate.
- `Frame.seq` counts up per camera for the life of the manager, across reopens.
- `stop()` returns even when a source is stuck inside `read()` (a cv2 or libcamera call that
  never comes back): each source is read by its own daemon thread, and a stuck one is
  abandoned. An abandoned reader closes its own source if its read ever returns; no other
  thread touches that source, because cv2 objects are not safe to release from another thread
  in the middle of a read.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import cv2
import numpy as np

from edge.config import CameraConfig, CaptureConfig
from edge.ratelog import RateLimitedLog
from edge.types import Frame

log = logging.getLogger(__name__)


class CaptureError(Exception):
    """A camera could not be opened or read."""


class TransientCaptureError(CaptureError):
    """Reopening may fix it: a camera unplugged, a stream dropped, a read that timed out."""


class PermanentCaptureError(CaptureError):
    """Reopening will not fix it; the camera is ended with this as the cause."""


class SourceNotFoundError(PermanentCaptureError):
    """The video file or image folder named by the camera's uri does not exist."""


class CorruptVideoError(PermanentCaptureError):
    """The video file is not a readable video, or ends before its own header says it should."""


Clock = Callable[[], float]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})

# A live camera's read is allowed this long before FFmpeg gives up on it (URL sources only);
# without it a dead RTSP server can keep `VideoCapture.read()` blocked for ~30 s.
DEFAULT_IO_TIMEOUT_S = 5.0


@runtime_checkable
class FrameSource(Protocol):
    """One camera. Used by one thread at a time: open(), read() until None, close()."""

    camera_id: str

    def open(self) -> None:
        """Open the camera. Raises TransientCaptureError or PermanentCaptureError."""

    def read(self) -> Frame | None:
        """The next frame, blocking until it comes; None when the stream has ended for good."""

    def close(self) -> None:
        """Release the camera. Safe to call twice, or without a successful open()."""


def as_bgr(image: np.ndarray) -> np.ndarray:
    """A 3-channel uint8 BGR view of what a decoder gave (grey and BGRA happen with some cameras)."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


class _Pacer:
    """Spaces frames `1/fps` apart like a live camera; falls back in step rather than bursting.

    `stamp` gives a frame's capture time: the wall clock when paced, and the media time (first
    frame's wall clock + frames / fps) when not, so a recording replayed as fast as the
    pipeline goes keeps its own timing: two cars a second apart in the file stay a second apart
    for the tracker, however fast they are decoded.
    """

    def __init__(self, fps: float, realtime: bool, monotonic: Clock, sleep: Callable[[float], None]):
        self._period = 1.0 / fps
        self._realtime = realtime
        self._monotonic = monotonic
        self._sleep = sleep
        self._next: float | None = None
        self._media_start: float | None = None
        self._media_frames = 0

    def stamp(self, clock: Clock) -> float:
        if self._realtime:
            return clock()
        if self._media_start is None:
            self._media_start = clock()
        t = self._media_start + self._media_frames * self._period
        self._media_frames += 1
        return t

    def wait(self) -> None:
        if not self._realtime:
            return
        now = self._monotonic()
        if self._next is None or now - self._next > self._period:
            # First frame, or the consumer fell more than a frame behind: a live camera would
            # not deliver the missed frames in a burst either.
            self._next = now
        elif self._next > now:
            self._sleep(self._next - now)
        self._next += self._period


class OpenCVSource:
    """A camera through cv2.VideoCapture: a device index ("0"), a URL, or a GStreamer pipeline.

    A failed read is a transient error (unplugged, stream dropped), never the end of the stream.
    """

    def __init__(
        self,
        camera: CameraConfig,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        io_timeout_s: float = DEFAULT_IO_TIMEOUT_S,
    ):
        self.camera_id = camera.id
        self._camera = camera
        self._clock = clock
        self._monotonic = monotonic
        self._io_timeout_ms = int(io_timeout_s * 1000)
        self._cap: cv2.VideoCapture | None = None
        self._seq = 0

    def _describe(self) -> str:
        return f"camera {self.camera_id} ({self._camera.uri})"

    def open(self) -> None:
        uri = self._camera.uri.strip()
        try:
            if uri.isdigit():
                cap = cv2.VideoCapture(int(uri))
            elif "!" in uri:
                cap = cv2.VideoCapture(uri, cv2.CAP_GSTREAMER)
            else:
                params = [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                    self._io_timeout_ms,
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    self._io_timeout_ms,
                ]
                cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
        except cv2.error as exc:
            raise TransientCaptureError(f"{self._describe()}: cannot open: {exc}") from exc
        if not cap.isOpened():
            cap.release()
            raise TransientCaptureError(f"{self._describe()}: cannot open (unplugged or unreachable?)")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._camera.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._camera.height)
        cap.set(cv2.CAP_PROP_FPS, self._camera.fps)
        # The driver's default queue of several buffers would hand inference frames that are
        # already hundreds of milliseconds old; the manager does its own (counted) queueing.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._cap = cap

    def read(self) -> Frame | None:
        if self._cap is None:
            raise TransientCaptureError(f"{self._describe()}: read before open")
        try:
            ok, image = self._cap.read()
        except cv2.error as exc:
            raise TransientCaptureError(f"{self._describe()}: read failed: {exc}") from exc
        if not ok or image is None:
            raise TransientCaptureError(f"{self._describe()}: read failed (camera gone or stream dropped)")
        frame = Frame(
            camera_id=self.camera_id,
            seq=self._seq,
            captured_at=self._clock(),
            captured_mono=self._monotonic(),
            image=as_bgr(image),
        )
        self._seq += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class VideoFileSource:
    """A video file replayed as a camera, paced at `fps` when `realtime`, looping when `loop`.

    A truncated file is told from a finished one by the frame count in the file's header: ending
    more than a couple of frames short of it raises CorruptVideoError naming the file.
    """

    # Containers that only estimate their frame count (from duration x rate) may be off by one
    # or two; a real truncation loses far more.
    SHORT_FRAMES_TOLERATED = 2

    def __init__(
        self,
        camera: CameraConfig,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.camera_id = camera.id
        self.path = Path(camera.uri)
        self._camera = camera
        self._clock = clock
        self._monotonic = monotonic
        self._pacer = _Pacer(camera.fps, camera.realtime, monotonic, sleep)
        self._cap: cv2.VideoCapture | None = None
        self._expected_frames = 0
        self._frames_this_pass = 0
        self._seq = 0

    def open(self) -> None:
        if not self.path.exists():
            raise SourceNotFoundError(f"camera {self.camera_id}: video file not found: {self.path}")
        if not self.path.is_file():
            raise SourceNotFoundError(f"camera {self.camera_id}: not a video file: {self.path}")
        self._open_capture()

    def _open_capture(self) -> None:
        try:
            # FFmpeg explicitly: with CAP_ANY, OpenCV would also try the path as an image-sequence
            # pattern, and a corrupt file would then fail with a less useful message.
            cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        except cv2.error as exc:
            raise CorruptVideoError(f"camera {self.camera_id}: cannot read video {self.path}: {exc}") from exc
        if not cap.isOpened():
            cap.release()
            raise CorruptVideoError(
                f"camera {self.camera_id}: not a readable video (truncated or corrupt?): {self.path}"
            )
        self._cap = cap
        self._expected_frames = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        self._frames_this_pass = 0

    def read(self) -> Frame | None:
        if self._cap is None:
            raise TransientCaptureError(f"camera {self.camera_id}: read before open")
        image = self._next_image()
        if image is None:
            self._check_complete()
            if not self._camera.loop:
                return None
            self._cap.release()
            self._cap = None
            self._open_capture()
            image = self._next_image()
            if image is None:
                raise CorruptVideoError(f"camera {self.camera_id}: no frame on replay of {self.path}")
        self._frames_this_pass += 1
        self._pacer.wait()
        frame = Frame(
            camera_id=self.camera_id,
            seq=self._seq,
            captured_at=self._pacer.stamp(self._clock),
            captured_mono=self._monotonic(),
            image=as_bgr(image),
        )
        self._seq += 1
        return frame

    def _next_image(self) -> np.ndarray | None:
        assert self._cap is not None
        try:
            ok, image = self._cap.read()
        except cv2.error as exc:
            raise CorruptVideoError(f"camera {self.camera_id}: cannot decode {self.path}: {exc}") from exc
        return image if ok and image is not None else None

    def _check_complete(self) -> None:
        got, expected = self._frames_this_pass, self._expected_frames
        if got == 0:
            raise CorruptVideoError(f"camera {self.camera_id}: no frame could be decoded from {self.path}")
        if expected and got < expected - self.SHORT_FRAMES_TOLERATED:
            raise CorruptVideoError(
                f"camera {self.camera_id}: video ended after {got} of {expected} frames "
                f"(truncated or corrupt): {self.path}"
            )

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFolderSource:
    """The images of a folder in name order, as a camera; paced and looped like a video.

    Files whose suffix is not an image's are ignored. An image file that cannot be decoded is
    skipped, counted in `skipped` and logged by name once; later loops leave it out.
    """

    def __init__(
        self,
        camera: CameraConfig,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.camera_id = camera.id
        self.path = Path(camera.uri)
        self.skipped = 0
        self._camera = camera
        self._clock = clock
        self._monotonic = monotonic
        self._pacer = _Pacer(camera.fps, camera.realtime, monotonic, sleep)
        self._files: list[Path] = []
        self._unreadable: set[Path] = set()
        self._index = 0
        self._seq = 0
        self._read_this_pass = 0

    def open(self) -> None:
        if not self.path.is_dir():
            raise SourceNotFoundError(f"camera {self.camera_id}: image folder not found: {self.path}")
        self._files = sorted(
            (p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
            key=lambda p: p.name,
        )
        if not self._files:
            raise PermanentCaptureError(f"camera {self.camera_id}: no image files in {self.path}")
        self._index = 0
        self._read_this_pass = 0

    def read(self) -> Frame | None:
        while True:
            if self._index >= len(self._files):
                if not self._camera.loop:
                    return None
                if self._read_this_pass == 0:
                    raise PermanentCaptureError(f"camera {self.camera_id}: no readable image in {self.path}")
                self._files = [p for p in self._files if p not in self._unreadable]
                self._index = 0
                self._read_this_pass = 0
            path = self._files[self._index]
            self._index += 1
            image = self._decode(path)
            if image is not None:
                break
        self._read_this_pass += 1
        self._pacer.wait()
        frame = Frame(
            camera_id=self.camera_id,
            seq=self._seq,
            captured_at=self._pacer.stamp(self._clock),
            captured_mono=self._monotonic(),
            image=image,
        )
        self._seq += 1
        return frame

    def _decode(self, path: Path) -> np.ndarray | None:
        try:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        except cv2.error:
            image = None
        if image is None:
            self.skipped += 1
            self._unreadable.add(path)
            log.warning(
                "camera %s: skipped unreadable image %s (%d skipped)", self.camera_id, path, self.skipped
            )
        return image

    def close(self) -> None:
        self._files = []


def _picamera2_source(camera: CameraConfig, *, clock: Clock, monotonic: Clock) -> FrameSource:
    # Imported here so that no import of edge.capture ever loads the picamera2 backend module.
    from edge.picamera2_source import Picamera2Source

    return Picamera2Source(camera, clock=clock, monotonic=monotonic)


SOURCES: dict[str, Callable[..., FrameSource]] = {
    "opencv": OpenCVSource,
    "video": VideoFileSource,
    "folder": ImageFolderSource,
    "picamera2": _picamera2_source,
}


def make_source(
    camera: CameraConfig, *, clock: Clock = time.time, monotonic: Clock = time.monotonic
) -> FrameSource:
    """The source for a camera, by `camera.source`. Opening it is the caller's job."""
    try:
        factory = SOURCES[camera.source]
    except KeyError:
        raise PermanentCaptureError(f"camera {camera.id}: unknown source {camera.source!r}") from None
    return factory(camera, clock=clock, monotonic=monotonic)


class ReopenBackoff:
    """Waits before reopening a camera: initial, doubling each failure, never above the cap."""

    def __init__(self, initial_s: float, max_s: float):
        self._initial = initial_s
        self._max = max(max_s, initial_s)
        self._next = initial_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._max)
        return delay

    def reset(self) -> None:
        self._next = self._initial


CameraState = Literal["starting", "ok", "degraded", "ended"]


@dataclass(frozen=True, kw_only=True)
class CameraStatus:
    """One camera as the manager sees it now."""

    state: CameraState
    cause: str | None  # why degraded or ended early; None when ok or ended normally
    frames_captured: int
    frames_dropped: int  # taken off the queue unread because inference was behind
    reopen_count: int
    fps: float  # frames delivered per second over the last few seconds


class _Reader:
    """One source instance and the daemon thread that reads it. Abandoned, never interrupted."""

    def __init__(
        self,
        source: FrameSource,
        name: str,
        deliver: Callable[[_Reader, Frame], bool],
        on_finish: Callable[[], None],
    ):
        self.source = source
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.finished = False
        self.error: BaseException | None = None  # None once finished: the stream ended
        self._deliver = deliver
        self._on_finish = on_finish

    def _run(self) -> None:
        try:
            self.source.open()
            while True:
                frame = self.source.read()
                if frame is None:
                    break
                if not self._deliver(self, frame):
                    break
        except Exception as exc:  # any source failure is the supervisor's to judge, not a thread crash
            self.error = exc
        finally:
            try:
                self.source.close()
            except Exception:
                log.exception("camera %s: error while closing its source", self.source.camera_id)
            self.finished = True
            self._on_finish()


class _Camera:
    """Per-camera state; every field is guarded by the manager's condition lock."""

    FPS_WINDOW_S = 5.0

    def __init__(self, camera: CameraConfig, capture: CaptureConfig):
        self.config = camera
        self.queue: deque[Frame] = deque()
        self.state: CameraState = "starting"
        self.cause: str | None = None
        self.frames_captured = 0
        self.frames_dropped = 0
        self.reopen_count = 0
        self.next_seq = 0
        self.reader: _Reader | None = None
        self.readers: list[_Reader] = []
        self.last_progress = 0.0
        self.delivered_at: deque[float] = deque(maxlen=64)
        self.backoff = ReopenBackoff(capture.reopen_backoff_initial_s, capture.reopen_backoff_max_s)
        self.wake = threading.Event()
        self.supervisor: threading.Thread | None = None
        # A paced replay slower than the stall timeout would otherwise be "stalled" between frames.
        self.stall_timeout_s = max(capture.stall_timeout_s, 3.0 / camera.fps)

    def fps(self, now: float) -> float:
        times = [t for t in self.delivered_at if now - t <= self.FPS_WINDOW_S]
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])


class CaptureManager:
    """Runs every enabled camera and hands their frames to one consumer, fairly."""

    def __init__(
        self,
        cameras: list[CameraConfig],
        capture: CaptureConfig,
        *,
        source_factory: Callable[[CameraConfig], FrameSource] = make_source,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        backoff_sleep: Callable[[float], None] | None = None,
        join_timeout_s: float = 2.0,
        log_interval_s: float = 10.0,
    ):
        """`backoff_sleep(seconds)` replaces the wait before a reopen (tests record it); by default
        the wait ends early when stop() is called. `join_timeout_s` bounds how long stop() waits
        for each thread before abandoning it."""
        self._capture = capture
        self._factory = source_factory
        self._clock = clock
        self._monotonic = monotonic
        self._backoff_sleep = backoff_sleep
        self._join_timeout_s = join_timeout_s
        self._cond = threading.Condition()
        self._cameras = [_Camera(c, capture) for c in cameras if c.enabled]
        self._next_index = 0
        self._started = False
        self._stopping = threading.Event()
        self._ratelog = RateLimitedLog(log, log_interval_s, monotonic)

    # -- consumer API --------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            raise RuntimeError("CaptureManager.start() called twice")
        self._started = True
        for cam in self._cameras:
            cam.supervisor = threading.Thread(
                target=self._supervise, args=(cam,), name=f"capture-{cam.config.id}", daemon=True
            )
            cam.supervisor.start()

    def stop(self) -> None:
        """Stop every camera: joins the threads and closes the sources (see the module docstring
        for a source stuck in read())."""
        self._stopping.set()
        with self._cond:
            for cam in self._cameras:
                cam.reader = None
            self._cond.notify_all()
        for cam in self._cameras:
            cam.wake.set()
        deadline = time.monotonic() + self._join_timeout_s
        for cam in self._cameras:
            if cam.supervisor is not None:
                cam.supervisor.join(max(0.0, deadline - time.monotonic()))
        for cam in self._cameras:
            for reader in list(cam.readers):
                reader.thread.join(max(0.0, deadline - time.monotonic()))
                if reader.thread.is_alive():
                    log.warning(
                        "camera %s: a reader is still blocked in its source; abandoned (it closes "
                        "the source if the call ever returns)",
                        cam.config.id,
                    )

    def __enter__(self) -> CaptureManager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame, taking cameras in turn. None on timeout, or when nothing is queued and
        the manager is stopped or every camera has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                count = len(self._cameras)
                for i in range(count):
                    index = (self._next_index + i) % count
                    queue = self._cameras[index].queue
                    if queue:
                        self._next_index = (index + 1) % count
                        return queue.popleft()
                if self._stopping.is_set() or all(c.state == "ended" for c in self._cameras):
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    @property
    def all_ended(self) -> bool:
        """Every camera has ended and every frame it gave has been taken."""
        with self._cond:
            return all(c.state == "ended" and not c.queue for c in self._cameras)

    def status(self) -> dict[str, CameraStatus]:
        now = self._monotonic()
        with self._cond:
            return {
                c.config.id: CameraStatus(
                    state=c.state,
                    cause=c.cause,
                    frames_captured=c.frames_captured,
                    frames_dropped=c.frames_dropped,
                    reopen_count=c.reopen_count,
                    fps=c.fps(now),
                )
                for c in self._cameras
            }

    # -- per-camera supervision ----------------------------------------------------------------

    def _deliver(self, cam: _Camera, reader: _Reader, frame: Frame) -> bool:
        """Queue a frame from `reader`; False tells an abandoned or stopped reader to finish."""
        cam_id = cam.config.id
        with self._cond:
            if self._stopping.is_set():
                return False
            if reader is not cam.reader:
                # A stalled reader that was abandoned came back with a frame too late to trust.
                cam.frames_dropped += 1
                self._ratelog.log(
                    logging.INFO,
                    f"{cam_id}:late",
                    "camera %s: dropped a frame from a reader already abandoned",
                    cam_id,
                )
                return False
            frame = dataclasses.replace(frame, seq=cam.next_seq)
            cam.next_seq += 1
            if len(cam.queue) >= self._capture.queue_frames:
                cam.queue.popleft()
                cam.frames_dropped += 1
                self._ratelog.log(
                    logging.WARNING,
                    f"{cam_id}:drop",
                    "camera %s: inference is behind; dropped the oldest queued frame (%d dropped so far)",
                    cam_id,
                    cam.frames_dropped,
                )
            cam.queue.append(frame)
            cam.frames_captured += 1
            now = self._monotonic()
            cam.last_progress = now
            cam.delivered_at.append(now)
            if cam.state != "ok":
                if cam.state == "degraded":
                    self._ratelog.log(
                        logging.INFO, f"{cam_id}:recovered", "camera %s: frames flowing again", cam_id
                    )
                cam.state = "ok"
                cam.cause = None
                cam.backoff.reset()
            self._cond.notify_all()
        return True

    def _set_state(self, cam: _Camera, state: CameraState, cause: str | None) -> None:
        with self._cond:
            cam.state = state
            cam.cause = cause
            self._cond.notify_all()

    def _supervise(self, cam: _Camera) -> None:
        cam_id = cam.config.id
        attempt = 0
        while not self._stopping.is_set():
            if attempt:
                with self._cond:
                    cam.reopen_count += 1
            attempt += 1
            try:
                source = self._factory(cam.config)
            except Exception as exc:
                cause = _describe(exc)
                log.error("camera %s: cannot create its source: %s", cam_id, cause)
                self._set_state(cam, "ended", cause)
                return
            reader = _Reader(
                source,
                name=f"capture-{cam_id}-read{attempt}",
                deliver=lambda r, f: self._deliver(cam, r, f),
                on_finish=cam.wake.set,
            )
            with self._cond:
                if self._stopping.is_set():
                    return
                cam.reader = reader
                cam.readers = [r for r in cam.readers if not r.finished] + [reader]
                cam.last_progress = self._monotonic()
            reader.thread.start()

            outcome = self._watch(cam, reader)
            if outcome == "stopped":
                return
            if outcome == "stalled":
                cause = f"no frame for {cam.stall_timeout_s:g} s (stalled)"
            elif reader.error is None:
                log.info("camera %s: stream ended", cam_id)
                self._set_state(cam, "ended", None)
                return
            elif isinstance(reader.error, PermanentCaptureError):
                cause = _describe(reader.error)
                log.error("camera %s: ended: %s", cam_id, cause)
                self._set_state(cam, "ended", cause)
                return
            else:
                cause = _describe(reader.error)
            self._set_state(cam, "degraded", cause)
            delay = cam.backoff.next_delay()
            unexpected = reader.error if not isinstance(reader.error, CaptureError | None) else None
            self._ratelog.log(
                logging.WARNING,
                f"{cam_id}:reopen",
                "camera %s: degraded (%s); reopening in %.2f s (reopen %d)",
                cam_id,
                cause,
                delay,
                cam.reopen_count + 1,
                exc_info=unexpected,  # a traceback only for errors no source translated (bugs)
            )
            if self._backoff_sleep is not None:
                self._backoff_sleep(delay)
            else:
                self._stopping.wait(delay)

    def _watch(self, cam: _Camera, reader: _Reader) -> Literal["stopped", "finished", "stalled"]:
        """Wait until the reader finishes, stalls, or the manager stops."""
        while True:
            if self._stopping.is_set():
                return "stopped"
            if reader.finished:
                return "finished"
            with self._cond:
                remaining = cam.last_progress + cam.stall_timeout_s - self._monotonic()
                if remaining <= 0:
                    cam.reader = None  # abandoned: its next frame, if any, is dropped
                    return "stalled"
            cam.wake.wait(remaining)
            cam.wake.clear()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CaptureError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
