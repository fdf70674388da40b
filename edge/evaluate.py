"""Evaluation on annotated stills (`alpr-edge eval DIR`).

A folder holds `NAME.jpg` + `NAME.txt` pairs; the text file has one tab-separated line:
`filename  x  y  width  height  PLATE` (top-left corner and size of the plate box, pixels).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.recognize import FrameRecognizer
from edge.types import Box, Frame


class DatasetError(Exception):
    """The evaluation folder or one of its annotation files is unusable."""


@dataclass(frozen=True)
class Sample:
    image_path: Path
    box: Box
    plate: str


def load_dataset(folder: Path) -> list[Sample]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    samples = []
    for txt in sorted(folder.glob("*.txt")):
        line = txt.read_text("utf-8", errors="replace").strip().splitlines()
        parts = line[0].split("\t") if line else []
        if len(parts) != 6:
            raise DatasetError(
                f"{txt}:1: expected 6 tab-separated fields (file x y w h plate), got {len(parts)}"
            )
        name, x, y, w, h, plate = parts
        try:
            x0, y0, bw, bh = (float(v) for v in (x, y, w, h))
        except ValueError as exc:
            raise DatasetError(f"{txt}:1: box values must be numbers: {exc}") from exc
        image = txt.parent / name
        if not image.is_file():
            raise DatasetError(f"{txt}:1: image {image} does not exist")
        samples.append(Sample(image, Box(x0, y0, x0 + bw, y0 + bh), plate.strip().upper()))
    if not samples:
        raise DatasetError(f"{folder}: no annotation files (*.txt) found")
    return samples


def fold_o0(text: str) -> str:
    return text.replace("O", "0")


def still_frame(image: np.ndarray, seq: int = 0) -> Frame:
    now = time.time()
    return Frame(camera_id="still", seq=seq, captured_at=now, captured_mono=time.monotonic(), image=image)


def evaluate(
    recognizer: FrameRecognizer,
    folder: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    samples = load_dataset(folder)
    exact = folded = found = unreadable = 0
    latencies: list[float] = []
    misreads: list[dict] = []
    for i, s in enumerate(samples):
        image = cv2.imread(str(s.image_path), cv2.IMREAD_COLOR)
        if image is None:
            unreadable += 1
            print(f"eval: {s.image_path}: not a readable image, counted as a miss", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        plates = recognizer.recognize(still_frame(image, i))
        latencies.append((time.perf_counter() - t0) * 1000)
        best = max(plates, key=lambda p: p.detection.box.iou(s.box), default=None)
        iou = best.detection.box.iou(s.box) if best else 0.0
        found += iou >= 0.5
        # The read judged is the one at the annotated plate; a plate the detector missed is a miss.
        text = best.text.text if best is not None and best.text is not None and iou > 0.1 else ""
        exact += text == s.plate
        folded += fold_o0(text) == fold_o0(s.plate)
        if text != s.plate:
            misreads.append(
                {"image": s.image_path.name, "truth": s.plate, "read": text, "iou": round(iou, 2)}
            )
        if progress:
            progress(i + 1, len(samples))
    n = len(samples)
    lat = sorted(latencies)
    return {
        "folder": str(folder),
        "images": n,
        "unreadable_images": unreadable,
        "exact_read_rate": round(exact / n, 4),
        "exact_read_rate_o0_folded": round(folded / n, 4),
        "detection_recall_iou50": round(found / n, 4),
        "latency_ms_median": round(statistics.median(lat), 1) if lat else None,
        "latency_ms_p95": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1) if lat else None,
        "misreads": misreads,
    }
