"""Plate detection: one `Detector` interface, backends in an explicit table.

Both backends letterbox the frame (keep aspect, pad grey) to the model's square input, decode
the model's output into `Detection`s in the frame's full-resolution pixels, and apply NMS where
the model has none. Inference libraries are imported only inside their backend's module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.types import Box, Detection, Frame

CONTAINED = 0.5  # a box overlapping a better one by this much of the smaller box is a duplicate


class DetectorError(Exception):
    """The detector could not be built or run."""


class ModelShapeError(DetectorError):
    """The model file's inputs or outputs are not what this backend decodes."""


class BackendUnavailableError(DetectorError):
    """The inference library for this backend is not installed."""


class Detector(Protocol):
    input_size: int

    def detect(self, frame: Frame) -> list[Detection]: ...


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the model's square input, to map boxes back."""

    scale: float  # model pixels per source pixel
    pad_x: float
    pad_y: float
    source_scale: float  # frame.image pixels per source (detector input image) pixel

    def to_frame(self, x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> np.ndarray:
        """Model-input coordinates to frame.image coordinates, as an Nx4 array."""
        k = self.source_scale / self.scale
        return np.stack(
            [(x1 - self.pad_x) * k, (y1 - self.pad_y) * k, (x2 - self.pad_x) * k, (y2 - self.pad_y) * k],
            axis=1,
        )


def letterbox(frame: Frame, size: int) -> tuple[np.ndarray, Letterbox]:
    """The detector view (lores if the camera gives one) fitted into size x size, as RGB uint8."""
    source = frame.lores if frame.lores is not None else frame.image
    source_scale = frame.image.shape[1] / source.shape[1]
    h, w = source.shape[:2]
    scale = min(size / w, size / h)
    nw, nh = round(w * scale), round(h * scale)
    resized = cv2.resize(source, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) else source
    pad_x, pad_y = (size - nw) // 2, (size - nh) // 2
    canvas = np.full((size, size, 3), 114, dtype=np.uint8)
    canvas[pad_y : pad_y + nh, pad_x : pad_x + nw] = resized
    cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB, dst=canvas)
    return canvas, Letterbox(scale=scale, pad_x=pad_x, pad_y=pad_y, source_scale=source_scale)


def to_detections(boxes: np.ndarray, scores: np.ndarray, frame: Frame) -> list[Detection]:
    w, h = frame.width, frame.height
    out = []
    for (x1, y1, x2, y2), s in zip(boxes.tolist(), scores.tolist(), strict=True):
        box = Box(max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
        if box.width >= 2 and box.height >= 2:
            out.append(Detection(box=box, score=float(s)))
    out.sort(key=lambda d: d.score, reverse=True)
    return out


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou: float, min_score: float) -> np.ndarray:
    """Indices kept by non-maximum suppression.

    Beyond plain IoU suppression, a box mostly inside a better one is dropped too: the detector
    sometimes gives a plate a second, squashed box whose IoU with the first stays under the
    threshold, and the tracker would take it for a second vehicle.
    """
    if len(scores) == 0:
        return np.empty(0, dtype=np.int64)
    xywh = np.column_stack(
        [
            boxes_xyxy[:, 0],
            boxes_xyxy[:, 1],
            boxes_xyxy[:, 2] - boxes_xyxy[:, 0],
            boxes_xyxy[:, 3] - boxes_xyxy[:, 1],
        ]
    )
    keep = np.asarray(
        cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), min_score, iou), dtype=np.int64
    ).reshape(-1)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    kept: list[int] = []
    for i in keep:
        x1, y1, x2, y2 = boxes_xyxy[i]
        area = max(1e-6, (x2 - x1) * (y2 - y1))
        inside = False
        for j in kept:
            a1, b1, a2, b2 = boxes_xyxy[j]
            inter = max(0.0, min(x2, a2) - max(x1, a1)) * max(0.0, min(y2, b2) - max(y1, b1))
            if inter / min(area, max(1e-6, (a2 - a1) * (b2 - b1))) >= CONTAINED:
                inside = True
                break
        if not inside:
            kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)


def _tflite(model_path: Path, threads: int, min_score: float, nms_iou: float) -> Detector:
    from edge.detect_tflite import TfliteYoloV5Detector

    return TfliteYoloV5Detector(model_path, threads=threads, min_score=min_score, nms_iou=nms_iou)


def _onnx(model_path: Path, threads: int, min_score: float, nms_iou: float) -> Detector:
    from edge.detect_onnx import OnnxEnd2EndDetector

    return OnnxEnd2EndDetector(model_path, threads=threads, min_score=min_score, nms_iou=nms_iou)


BACKENDS: dict[str, Callable[[Path, int, float, float], Detector]] = {
    "tflite": _tflite,
    "onnx": _onnx,
}


def make_detector(
    backend: str, model_path: Path, *, threads: int, min_score: float, nms_iou: float
) -> Detector:
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise DetectorError(f"unknown detector backend {backend!r} (known: {', '.join(BACKENDS)})") from None
    return factory(model_path, threads, min_score, nms_iou)
