"""Plate OCR: fast-plate-ocr's recognizer on padded plate crops.

Gives the text, each character's confidence, the full per-slot probabilities (for voting across
frames) and, for models with a region head (cct-xs-v2), the region.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.types import Box, PlateText


class OcrError(Exception):
    """The OCR model could not be loaded or run."""


def crop_plate(image: np.ndarray, box: Box, pad_x: float, pad_y: float) -> np.ndarray:
    """The plate's pixels with some margin around them (the recognizer was trained on loose crops)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box.padded(pad_x, pad_y, w, h).as_ints()
    return image[y1:y2, x1:x2]


class PlateReader:
    def __init__(self, model_path: Path, config_path: Path, *, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
            from fast_plate_ocr import LicensePlateRecognizer
        except ImportError as exc:
            raise OcrError("OCR needs fast-plate-ocr[onnx]: pip install 'fast-plate-ocr[onnx]'") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._rec = LicensePlateRecognizer(
                onnx_model_path=model_path,
                plate_config_path=config_path,
                providers=["CPUExecutionProvider"],
                sess_options=opts,
            )
        except Exception as exc:  # yaml, pydantic and onnxruntime errors alike
            raise OcrError(f"{model_path}: cannot load the OCR model with {config_path}: {exc}") from exc
        cfg = self._rec.config
        self.alphabet: str = cfg.alphabet
        self.pad_char: str = cfg.pad_char
        self.slots: int = cfg.max_plate_slots
        self._size = (cfg.img_width, cfg.img_height)
        self._rgb = cfg.image_color_mode == "rgb"
        self._regions: list[str] | None = list(cfg.plate_regions) if self._rec.has_region_head else None
        outputs = self._rec.model.get_outputs()
        plate_out = next(o for o in outputs if o.name == self._rec.plate_output_name)
        n = int(np.prod([d for d in plate_out.shape[1:] if isinstance(d, int)]))
        if n != self.slots * len(self.alphabet):
            raise OcrError(
                f"{model_path}: plate output has {n} values, config {config_path} implies "
                f"{self.slots} slots x {len(self.alphabet)} characters"
            )

    @property
    def has_region(self) -> bool:
        return self._regions is not None

    def _prepare(self, crop_bgr: np.ndarray) -> np.ndarray:
        img = cv2.resize(crop_bgr, self._size, interpolation=cv2.INTER_LINEAR)
        if self._rgb:
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None]

    def read(self, crops_bgr: list[np.ndarray]) -> list[PlateText]:
        """Read a batch of BGR crops. Empty crops are not allowed (the caller filters them)."""
        if not crops_bgr:
            return []
        batch = np.stack([self._prepare(c) for c in crops_bgr]).astype(np.uint8)
        names = [self._rec.plate_output_name]
        if self._regions is not None:
            names.append(self._rec.region_output_name)
        outs = self._rec.model.run(names, {"input": batch})
        probs = np.asarray(outs[0], dtype=np.float32).reshape(len(crops_bgr), self.slots, len(self.alphabet))
        region_probs = np.asarray(outs[1], dtype=np.float32) if len(outs) > 1 else None
        results = []
        for i in range(len(crops_bgr)):
            idx = probs[i].argmax(axis=1)
            conf = probs[i].max(axis=1)
            chars = [self.alphabet[j] for j in idx]
            # The model left-aligns the plate and pads the tail; keep the characters before the pad.
            n = len("".join(chars).rstrip(self.pad_char))
            text = "".join(chars[:n]).replace(self.pad_char, "")
            region = region_conf = None
            if region_probs is not None and self._regions is not None:
                r = int(region_probs[i].argmax())
                region, region_conf = self._regions[r], float(region_probs[i][r])
            results.append(
                PlateText(
                    text=text,
                    char_confidences=tuple(float(c) for c in conf[:n]),
                    region=region,
                    region_confidence=region_conf,
                    slot_probs=probs[i],
                )
            )
        return results
