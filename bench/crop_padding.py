"""Benchmark: which crop padding reads best. Detects once per image, then reads the annotated
plate's detection with each padding in a grid; prints one JSON object with the exact-read rate
per padding, the best one and the configured one (the baseline), for the stills and for
drive-by frames made from them (what the daemon actually sees: smaller, blurred plates). The
configured padding should be chosen by the drive-by grid.

    python bench/crop_padding.py [--sets DIR ...] [--every 3]
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
from edge.driveby import drive_by  # noqa: E402
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
    ap.add_argument("--every", type=int, default=3, help="use every Nth drive-by frame")
    args = ap.parse_args()
    config = load_config()
    rec = FrameRecognizer.from_config(config)
    stills, frames = [], []
    samples = [s for folder in args.sets for s in load_dataset(folder)]
    for n, s in enumerate(samples):
        image = cv2.imread(str(s.image_path), cv2.IMREAD_COLOR)
        stills.append(_case(rec, image, s.box, s.plate))
        for i, f in enumerate(drive_by(image, s.box, seed=n)):
            if i % args.every == 0:
                frames.append(_case(rec, f.image, f.box, s.plate))
        print(f"\rdetecting {n + 1}/{len(samples)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    configured = f"{config.ocr.crop_pad_x:.2f},{config.ocr.crop_pad_y:.2f}"
    out: dict = {"bench": "crop_padding", "stills": len(stills), "driveby_frames": len(frames)}
    for name, cases in (("stills", stills), ("driveby", frames)):
        grid = _grid(rec, cases)
        best = max(grid, key=grid.__getitem__)
        out[name] = {
            "exact_rate_by_pad_x_pad_y": grid,
            "best": {"pad": best, "exact_rate": grid[best]},
            "configured": {"pad": configured, "exact_rate": grid.get(configured)},
        }
    print(json.dumps(out, indent=2))
    return 0


def _case(rec: FrameRecognizer, image, box, plate: str):
    dets = rec.detector.detect(still_frame(image))
    best = max(dets, key=lambda d: d.box.iou(box), default=None)
    found = best.box if best is not None and best.box.iou(box) > 0.1 and rec.readable(best.box) else None
    return image, found, plate


def _grid(rec: FrameRecognizer, cases) -> dict[str, float]:
    grid = {}
    for px, py in itertools.product(PAD_X, PAD_Y):
        crops = [crop_plate(img, box, px, py) for img, box, _ in cases if box is not None]
        truths = [t for _, box, t in cases if box is not None]
        texts = rec.reader.read(crops) if crops else []
        right = sum(t.text == truth for t, truth in zip(texts, truths, strict=True))
        grid[f"{px:.2f},{py:.2f}"] = round(right / len(cases), 4)
    return grid


if __name__ == "__main__":
    raise SystemExit(main())
