"""Drive-by footage made by the project: for tests, the demo and the benchmarks.

`drive_by` turns one still (a photograph with a known plate box, or a rendered scene) into the
frames a patrol-car camera would see as that vehicle approaches: the view zooms in (the car gets
closer), drifts sideways, blurs with motion, gains sensor noise and passes through JPEG. Every
sequence is a pure function of its arguments and seed, so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.types import Box


@dataclass(frozen=True, eq=False)
class DriveByFrame:
    image: np.ndarray  # BGR, the output size
    box: Box  # where the plate is in this frame (may be partly outside it)


@dataclass(frozen=True, kw_only=True)
class DriveByStyle:
    """How a pass looks.

    The vehicle approaches until it is as close as in the still (scale 1.0 at the last frame, so
    nothing is upscaled beyond the photograph's own detail); at the first frame it is
    `start_scale` of that size, i.e. 1/start_scale times as far away.
    """

    frames: int = 24
    size: tuple[int, int] = (1280, 720)
    start_scale: float = 0.5
    end_scale: float = 1.0
    drift_px: float = 260.0  # sideways travel of the plate over the pass
    blur_px_max: float = 5.0  # motion blur length at the end of the pass (fastest apparent motion)
    noise_sigma: float = 4.0
    jpeg_quality: int = 80


def _motion_blur(img: np.ndarray, length: float) -> np.ndarray:
    n = round(length)
    if n < 2:
        return img
    kernel = np.zeros((n, n), np.float32)
    kernel[n // 2, :] = 1.0 / n
    return cv2.filter2D(img, -1, kernel)


def drive_by(
    still: np.ndarray, plate_box: Box, *, style: DriveByStyle = DriveByStyle(), seed: int = 0
) -> Iterator[DriveByFrame]:
    """Frames of a vehicle approaching, made from `still` whose plate is at `plate_box`."""
    rng = np.random.default_rng(seed)
    out_w, out_h = style.size
    cx, cy = plate_box.center
    direction = 1.0 if rng.random() < 0.5 else -1.0
    # Where the plate's centre sits in the output: start off to one side, drift across.
    start_x = out_w / 2 - direction * style.drift_px / 2 + rng.uniform(-60, 60)
    start_y = out_h * rng.uniform(0.45, 0.6)
    for i in range(style.frames):
        t = i / max(1, style.frames - 1)
        # Apparent size grows faster as the car gets closer (size ~ 1/distance, distance linear in t).
        scale = 1 / (1 / style.start_scale + t * (1 / style.end_scale - 1 / style.start_scale))
        px = start_x + direction * style.drift_px * t
        py = start_y + 40 * t
        m = np.array([[scale, 0, px - scale * cx], [0, scale, py - scale * cy]], dtype=np.float32)
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        img = cv2.warpAffine(still, m, (out_w, out_h), flags=interp, borderMode=cv2.BORDER_REPLICATE)
        img = _motion_blur(img, style.blur_px_max * t)
        if style.noise_sigma > 0:
            noise = rng.normal(0, style.noise_sigma, img.shape).astype(np.float32)
            img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, style.jpeg_quality])
        if ok:
            img = cv2.imdecode(enc, cv2.IMREAD_COLOR)
        box = Box(
            px + scale * (plate_box.x1 - cx),
            py + scale * (plate_box.y1 - cy),
            px + scale * (plate_box.x2 - cx),
            py + scale * (plate_box.y2 - cy),
        )
        yield DriveByFrame(image=img, box=box)


# --- Rendered scenes: footage the project makes without any photograph -------------------------

_CHAR_FONT = cv2.FONT_HERSHEY_DUPLEX


def render_plate(text: str, *, height: int = 110) -> np.ndarray:
    """A white plate with a dark border and bold black characters, BGR."""
    width = int(height * 4.2)
    plate = np.full((height, width, 3), 235, np.uint8)
    cv2.rectangle(plate, (3, 3), (width - 4, height - 4), (30, 30, 30), max(2, height // 28))
    thickness = max(2, height // 9)
    scale = cv2.getFontScaleFromHeight(_CHAR_FONT, int(height * 0.6), thickness)
    (tw, th), _ = cv2.getTextSize(text, _CHAR_FONT, scale, thickness)
    if tw > width * 0.9:
        scale *= width * 0.9 / tw
        (tw, th), _ = cv2.getTextSize(text, _CHAR_FONT, scale, thickness)
    org = ((width - tw) // 2, (height + th) // 2)
    cv2.putText(plate, text, org, _CHAR_FONT, scale, (20, 20, 20), thickness, cv2.LINE_AA)
    return plate


def render_vehicle_scene(
    text: str, *, seed: int = 0, size: tuple[int, int] = (1280, 720)
) -> tuple[np.ndarray, Box]:
    """A road scene with the back of a car carrying plate `text`; returns the image and the plate box."""
    rng = np.random.default_rng(seed)
    w, h = size
    scene = np.zeros((h, w, 3), np.uint8)
    scene[: h // 2] = (200, 170, 140)  # sky
    scene[h // 2 :] = (70, 72, 75)  # road
    cv2.line(scene, (w // 2, h // 2), (w // 2, h), (220, 220, 220), 6)
    body = tuple(int(v) for v in rng.integers(40, 200, 3))
    car_w, car_h = int(w * 0.5), int(h * 0.42)
    x0, y0 = (w - car_w) // 2, int(h * 0.35)
    cv2.rectangle(scene, (x0, y0), (x0 + car_w, y0 + car_h), body, -1)
    cv2.rectangle(scene, (x0 + car_w // 8, y0 - car_h // 3), (x0 + car_w * 7 // 8, y0), body, -1)
    cv2.rectangle(scene, (x0 + car_w // 6, y0 - car_h // 4), (x0 + car_w * 5 // 6, y0 - 8), (60, 50, 40), -1)
    for lx in (x0 + 20, x0 + car_w - 120):
        cv2.rectangle(scene, (lx, y0 + 30), (lx + 100, y0 + 70), (30, 30, 200), -1)
    plate = render_plate(text)
    ph, pw = plate.shape[:2]
    px, py = (w - pw) // 2, y0 + car_h - ph - 40
    scene[py : py + ph, px : px + pw] = plate
    return scene, Box(px, py, px + pw, py + ph)


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """Write BGR frames to an MJPG AVI (decodable by every OpenCV build)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write an MJPG video here")
    try:
        for f in frames:
            writer.write(f)
    finally:
        writer.release()
    return path
