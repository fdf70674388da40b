"""Benchmark: which crop padding reads best. Detects once per still, then reads the annotated
plate's detection with each padding in a grid; prints one JSON object with the exact-read rate
per padding, the best one and the configured one (the baseline).

    python bench/crop_padding.py [--sets DIR ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.config import load_config  # noqa: E402
from edge.evaluate import load_dataset, still_frame  # noqa: E402
from edge.ocr import crop_plate  # noqa: E402
from edge.recognize import FrameRecognizer  # noqa: E402

PAD_X = (0.0, 0.04, 0.08, 0.12, 0.16)
PAD_Y = (0.0, 0.06, 0.12, 0.18, 0.25)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sets",
        nargs="+",
        type=Path,
        default=[ROOT.parent / "shared/data/plates/eu", ROOT.parent / "shared/data/plates/br"],
    )
    args = ap.parse_args()
    config = load_config()
    rec = FrameRecognizer.from_config(config)
    cases = []
    for folder in args.sets:
        for s in load_dataset(folder):
            image = cv2.imread(str(s.image_path), cv2.IMREAD_COLOR)
            dets = rec.detector.detect(still_frame(image))
            best = max(dets, key=lambda d: d.box.iou(s.box), default=None)
            cases.append((image, best.box if best and best.box.iou(s.box) > 0.1 else None, s.plate))
    grid = {}
    for px, py in itertools.product(PAD_X, PAD_Y):
        crops = [crop_plate(img, box, px, py) for img, box, _ in cases if box is not None]
        truths = [t for _, box, t in cases if box is not None]
        texts = rec.reader.read(crops)
        grid[f"{px:.2f},{py:.2f}"] = round(
            sum(t.text == truth for t, truth in zip(texts, truths, strict=True)) / len(cases), 4
        )
    best = max(grid, key=grid.__getitem__)
    configured = f"{config.ocr.crop_pad_x:.2f},{config.ocr.crop_pad_y:.2f}"
    print(
        json.dumps(
            {
                "bench": "crop_padding",
                "images": len(cases),
                "exact_rate_by_pad_x_pad_y": grid,
                "best": {"pad": best, "exact_rate": grid[best]},
                "configured": {"pad": configured, "exact_rate": grid.get(configured)},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
