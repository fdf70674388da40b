"""The Raspberry Pi camera through picamera2: the only module that imports picamera2.

picamera2 is imported inside `Picamera2Source.open()`, so this module loads (and its tests run)
on machines without it. One camera request gives both streams of the same instant:

- `main`: `width` x `height`, format "RGB888", which picamera2 lays out as B, G, R bytes, so
  the array is already OpenCV's BGR. It becomes `Frame.image` (plate crops).
- `lores`: `lores_width` x `lores_height` in YUV420 (the only lores format the Pi 4 ISP
  gives), an array of shape (h * 3 / 2, stride) whose rows may be padded past the width; it is
  converted to BGR and the padding cut off. It becomes `Frame.lores` (the detector's input).

A capture that does not complete within `read_timeout_s` raises TransientCaptureError instead of
blocking, so the camera can be closed and reopened by the capture manager.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from edge.capture import (
    Clock,
    PermanentCaptureError,
    TransientCaptureError,
)
from edge.config import CameraConfig
from edge.types import Frame

log = logging.getLogger(__name__)

# libcamera queues a few buffers; at 1 fps and up a frame is due well within this.
DEFAULT_READ_TIMEOUT_S = 3.0


def lores_yuv420_to_bgr(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """picamera2's YUV420 (I420) lores array, (height * 3 / 2, stride), as a height x width BGR image.

    Each chroma row of a padded buffer is stride / 2 long, two to an array row, which is what
    OpenCV's I420 conversion of a stride-wide image expects; the padding columns are cut after.
    """
    expected_rows = height * 3 // 2
    if array.ndim != 2 or array.shape[0] != expected_rows or array.shape[1] < width:
        raise TransientCaptureError(
            f"lores array has shape {array.shape}, expected ({expected_rows}, >= {width}) for YUV420"
        )
    bgr = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_YUV2BGR_I420)
    if bgr.shape[1] != width:
        bgr = np.ascontiguousarray(bgr[:, :width])
    return bgr


class Picamera2Source:
    """A Pi camera (`uri` is its number, "" meaning 0) giving main + lores frames.

    `picamera2_factory(camera_num)` makes the Picamera2 object; None means picamera2.Picamera2.
    """

    def __init__(
        self,
        camera: CameraConfig,
        *,
        picamera2_factory: Callable[[int], Any] | None = None,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ):
        self.camera_id = camera.id
        self._camera = camera
        self._factory = picamera2_factory
        self._clock = clock
        self._monotonic = monotonic
        self._read_timeout_s = max(read_timeout_s, 3.0 / camera.fps)
        self._cam: Any = None
        self._lores_size = (camera.lores_width, camera.lores_height)
        self._seq = 0

    def _camera_num(self) -> int:
        uri = self._camera.uri.strip() or "0"
        try:
            return int(uri)
        except ValueError:
            raise PermanentCaptureError(
                f"camera {self.camera_id}: picamera2 uri must be a camera number, not {uri!r}"
            ) from None

    def open(self) -> None:
        num = self._camera_num()
        factory = self._factory
        if factory is None:
            try:
                from picamera2 import Picamera2
            except ImportError as exc:
                raise PermanentCaptureError(
                    f"camera {self.camera_id}: picamera2 is not installed "
                    "(on Raspberry Pi OS: apt install python3-picamera2)"
                ) from exc
            factory = Picamera2
        cam = None
        try:
            cam = factory(num)
            config = cam.create_video_configuration(
                main={"size": (self._camera.width, self._camera.height), "format": "RGB888"},
                lores={"size": (self._camera.lores_width, self._camera.lores_height), "format": "YUV420"},
                controls={"FrameRate": float(self._camera.fps)},
            )
            cam.configure(config)
            cam.start()
        except Exception as exc:  # picamera2/libcamera raise RuntimeError, IndexError, OSError...
            if cam is not None:
                _close_quietly(cam)
            raise TransientCaptureError(
                f"camera {self.camera_id}: picamera2 camera {num} could not be started: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        # libcamera may adjust sizes while configuring; picamera2 records what it settled on.
        settled = getattr(cam, "camera_config", None)
        if isinstance(settled, dict) and isinstance(settled.get("lores"), dict):
            width, height = settled["lores"]["size"]
            self._lores_size = (int(width), int(height))
        self._cam = cam

    def read(self) -> Frame:
        cam = self._cam
        if cam is None:
            raise TransientCaptureError(f"camera {self.camera_id}: read before open")
        try:
            job = cam.capture_arrays(["main", "lores"], wait=False)
            arrays, _metadata = cam.wait(job, timeout=self._read_timeout_s)
        except TimeoutError as exc:
            raise TransientCaptureError(
                f"camera {self.camera_id}: picamera2 gave no frame within {self._read_timeout_s:g} s"
            ) from exc
        except Exception as exc:
            raise TransientCaptureError(
                f"camera {self.camera_id}: picamera2 capture failed: {type(exc).__name__}: {exc}"
            ) from exc
        captured_at, captured_mono = self._clock(), self._monotonic()
        main, lores = arrays
        if main.ndim != 3 or main.shape[2] not in (3, 4):
            raise TransientCaptureError(
                f"camera {self.camera_id}: main array has shape {main.shape}, expected (h, w, 3)"
            )
        image = main[:, :, :3] if main.shape[2] == 4 else main
        width, height = self._lores_size
        frame = Frame(
            camera_id=self.camera_id,
            seq=self._seq,
            captured_at=captured_at,
            captured_mono=captured_mono,
            image=np.ascontiguousarray(image),
            lores=lores_yuv420_to_bgr(lores, width, height),
        )
        self._seq += 1
        return frame

    def close(self) -> None:
        if self._cam is not None:
            cam, self._cam = self._cam, None
            _close_quietly(cam)


def _close_quietly(cam: Any) -> None:
    # The camera is being given up on; a failure to stop it is logged but must not hide why.
    for name in ("stop", "close"):
        try:
            getattr(cam, name)()
        except Exception:
            log.warning("picamera2 %s() failed while closing the camera", name, exc_info=True)
