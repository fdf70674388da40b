"""Detector + OCR on one frame: the single-frame recogniser.

`alpr-edge read` and `alpr-edge eval` use it alone; the daemon uses its parts under the tracker,
which decides which frames to detect on and which plates still need reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.config import Config
from edge.detect import Detector, make_detector
from edge.models import load_manifest, lookup, resolve_model
from edge.ocr import PlateReader, crop_plate
from edge.types import Box, Detection, Frame, PlateText


@dataclass(frozen=True, eq=False)
class FramePlate:
    """A plate found and read in one frame."""

    detection: Detection
    text: PlateText | None  # None when the plate is too small to read
    crop: np.ndarray


def load_models(config: Config) -> tuple[Detector, PlateReader]:
    """Build the detector and the OCR from the manifest, refusing missing or altered model files."""
    manifest_path = config.manifest_path
    manifest = load_manifest(manifest_path)
    det_spec = lookup(manifest, config.detector.model, "detector", manifest_path)
    if det_spec.format != config.detector.backend:
        from edge.config import ConfigError

        raise ConfigError(
            f"detector.model: {det_spec.name} is a {det_spec.format} model but detector.backend is "
            f"{config.detector.backend!r}"
        )
    (det_path,) = resolve_model(det_spec, config.models_dir)[:1]
    ocr_spec = lookup(manifest, config.ocr.model, "ocr", manifest_path)
    ocr_paths = resolve_model(ocr_spec, config.models_dir)
    onnx_path = next(p for p in ocr_paths if p.suffix == ".onnx")
    yaml_path = next(p for p in ocr_paths if p.suffix in (".yaml", ".yml"))
    detector = make_detector(
        config.detector.backend,
        Path(det_path),
        threads=config.detector.threads,
        min_score=config.detector.min_score,
        nms_iou=config.detector.nms_iou,
    )
    reader = PlateReader(onnx_path, yaml_path, threads=config.ocr.threads)
    return detector, reader


class FrameRecognizer:
    def __init__(
        self, detector: Detector, reader: PlateReader, *, pad_x: float, pad_y: float, min_height: int
    ):
        self.detector = detector
        self.reader = reader
        self.pad_x, self.pad_y, self.min_height = pad_x, pad_y, min_height

    @classmethod
    def from_config(cls, config: Config) -> FrameRecognizer:
        detector, reader = load_models(config)
        return cls(
            detector,
            reader,
            pad_x=config.ocr.crop_pad_x,
            pad_y=config.ocr.crop_pad_y,
            min_height=config.ocr.min_plate_height_px,
        )

    def crop(self, frame: Frame, box: Box) -> np.ndarray:
        return crop_plate(frame.image, box, self.pad_x, self.pad_y)

    def readable(self, box: Box) -> bool:
        return box.height >= self.min_height and box.width >= 2 * self.min_height

    def read_boxes(self, frame: Frame, detections: list[Detection]) -> list[FramePlate]:
        crops = [self.crop(frame, d.box) for d in detections]
        wanted = [i for i, d in enumerate(detections) if self.readable(d.box) and crops[i].size]
        texts = dict(zip(wanted, self.reader.read([crops[i] for i in wanted]), strict=True))
        return [FramePlate(detection=d, text=texts.get(i), crop=crops[i]) for i, d in enumerate(detections)]

    def recognize(self, frame: Frame) -> list[FramePlate]:
        return self.read_boxes(frame, self.detector.detect(frame))
