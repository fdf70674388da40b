"""The typed values that cross stage boundaries in the edge daemon.

capture -> Frame -> detect -> Detection -> ocr -> PlateText -> track -> PlateRead -> store.
All are frozen; arrays inside them are never written after construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


@dataclass(frozen=True, eq=False, kw_only=True)
class Frame:
    """One image from one camera.

    `image` is the full-resolution BGR picture (picamera2's main stream) used for plate crops.
    `lores` is an optional smaller BGR view of the same instant (picamera2's lores stream) that
    the detector may use instead of downscaling `image` itself; boxes are always reported in
    `image` pixels.
    """

    camera_id: str
    seq: int
    captured_at: float  # wall clock, seconds since the epoch (UTC)
    captured_mono: float  # time.monotonic() at capture, for latency measurement
    image: np.ndarray
    lores: np.ndarray | None = None

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in image pixels, corners (x1, y1) top-left and (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        return max(0.0, self.y2 - self.y1)

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def padded(self, fraction_x: float, fraction_y: float, width: int, height: int) -> Box:
        """The box grown by a fraction of its size on every side, clipped to the image."""
        dx, dy = self.width * fraction_x, self.height * fraction_y
        return Box(
            max(0.0, self.x1 - dx),
            max(0.0, self.y1 - dy),
            min(float(width), self.x2 + dx),
            min(float(height), self.y2 + dy),
        )

    def as_ints(self) -> tuple[int, int, int, int]:
        return (math.floor(self.x1), math.floor(self.y1), math.ceil(self.x2), math.ceil(self.y2))


@dataclass(frozen=True)
class Detection:
    """A plate found in a frame: its box (in `Frame.image` pixels) and detector score 0..1."""

    box: Box
    score: float


@dataclass(frozen=True, eq=False, kw_only=True)
class PlateText:
    """What the OCR read in one crop.

    `slot_probs` is the model's full slots x alphabet probability table (pad slots included), so
    the tracker can vote with every frame's doubts, not only its best guess.
    """

    text: str
    char_confidences: tuple[float, ...]
    region: str | None = None
    region_confidence: float | None = None
    slot_probs: np.ndarray | None = None

    @property
    def confidence(self) -> float:
        """The weakest character's confidence: a plate is only as sure as its least sure character."""
        return min(self.char_confidences) if self.char_confidences else 0.0


class FixMode(IntEnum):
    """gpsd's fix modes."""

    NO_FIX = 1
    FIX_2D = 2
    FIX_3D = 3


@dataclass(frozen=True, kw_only=True)
class GpsFix:
    """A position. With `mode == NO_FIX` every measured field is None: no fix is never 0,0."""

    mode: FixMode
    lat: float | None = None
    lon: float | None = None
    speed_mps: float | None = None
    heading_deg: float | None = None
    fix_time: float | None = None  # seconds since the epoch, from the receiver
    source: str = "none"  # "gpsd", "nmea" or "none"

    @property
    def has_fix(self) -> bool:
        return self.mode >= FixMode.FIX_2D and self.lat is not None and self.lon is not None


NO_FIX = GpsFix(mode=FixMode.NO_FIX)


@dataclass(frozen=True, eq=False, kw_only=True)
class PlateRead:
    """One vehicle pass, read: the consensus of every frame the plate was tracked in."""

    read_id: str  # UUID made on the device
    camera_id: str
    text: str
    confidence: float  # 0..1, the consensus's weakest character
    char_confidences: tuple[float, ...]
    region: str | None
    first_seen: float  # wall clock of the first frame of the pass
    last_seen: float  # wall clock of the last frame of the pass
    observations: int  # frames whose OCR contributed
    best_crop_jpeg: bytes
    best_box: Box
    gps: GpsFix = NO_FIX
    completed_mono: float = 0.0  # monotonic capture time of the frame that completed the read
    alternatives: tuple[tuple[str, float], ...] = field(default_factory=tuple)
