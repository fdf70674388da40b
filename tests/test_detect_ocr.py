"""The detector backends and the OCR, on real photographs with the real (mirror) models."""

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.detect import DetectorError, ModelShapeError, make_detector
from edge.evaluate import load_dataset, still_frame
from edge.ocr import PlateReader
from edge.types import Frame

DETECTORS = {
    "tflite": "detector/yolov5-plate-int8.tflite",
    "onnx": "detector/yolo-v9-t-416-license-plates-end2end-dynint8.onnx",
}


def _samples(plates_dir: Path, n: int = 12):
    return load_dataset(plates_dir / "eu")[:n] + load_dataset(plates_dir / "br")[:n]


@pytest.mark.parametrize("backend", ["tflite", "onnx"])
def test_backend_finds_the_annotated_plate_in_real_photos(backend, models_dir, plates_dir):
    det = make_detector(backend, models_dir / DETECTORS[backend], threads=2, min_score=0.35, nms_iou=0.45)
    samples = _samples(plates_dir)
    hits = 0
    for s in samples:
        dets = det.detect(still_frame(cv2.imread(str(s.image_path))))
        hits += any(d.box.iou(s.box) >= 0.5 for d in dets)
        assert all(0.35 <= d.score <= 1.0 for d in dets)
    assert hits >= len(samples) - 1, f"{backend}: found {hits} of {len(samples)} plates"


def test_lores_view_gives_boxes_in_main_image_pixels(models_dir, plates_dir):
    det = make_detector("tflite", models_dir / DETECTORS["tflite"], threads=1, min_score=0.35, nms_iou=0.45)
    s = load_dataset(plates_dir / "br")[0]
    image = cv2.imread(str(s.image_path))
    lores = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    frame = Frame(camera_id="c", seq=0, captured_at=0.0, captured_mono=0.0, image=image, lores=lores)
    best = max(det.detect(frame), key=lambda d: d.box.iou(s.box))
    assert best.box.iou(s.box) >= 0.5


def test_empty_scene_gives_no_detections(models_dir):
    det = make_detector("onnx", models_dir / DETECTORS["onnx"], threads=1, min_score=0.35, nms_iou=0.45)
    assert det.detect(still_frame(np.full((720, 1280, 3), 90, np.uint8))) == []


def test_model_with_the_wrong_shape_is_refused_naming_the_file(models_dir):
    ocr_model = models_dir / "ocr/cct_xs_v2_global.onnx"
    with pytest.raises(ModelShapeError, match=r"cct_xs_v2_global.onnx: input shape"):
        make_detector("onnx", ocr_model, threads=1, min_score=0.35, nms_iou=0.45)


def test_a_file_that_is_not_a_model_is_refused_naming_it(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 100)
    with pytest.raises(DetectorError, match=r"junk\.tflite: not a loadable TFLite model"):
        make_detector("tflite", junk, threads=1, min_score=0.35, nms_iou=0.45)
    with pytest.raises(DetectorError, match="unknown detector backend 'tensorrt'"):
        make_detector("tensorrt", junk, threads=1, min_score=0.35, nms_iou=0.45)


def _crops(plates_dir: Path):
    folder = plates_dir / "ar-crops"
    with (folder / "annotations.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    seen = {}
    for r in rows:
        seen[Path(r["image_path"]).name] = r["plate_text"]
    return [(folder / "imgs" / name, text) for name, text in sorted(seen.items())]


@pytest.mark.parametrize("model", ["cct_xs_v1_global", "cct_xs_v2_global"])
def test_ocr_reads_real_plate_crops(model, models_dir, plates_dir):
    reader = PlateReader(models_dir / f"ocr/{model}.onnx", models_dir / f"ocr/{model}_plate_config.yaml")
    crops = _crops(plates_dir)
    images = [cv2.imread(str(p)) for p, _ in crops]
    results = reader.read(images)
    exact = sum(r.text == t for r, (_, t) in zip(results, crops, strict=True))
    assert exact / len(crops) >= 0.85, f"{model}: {exact}/{len(crops)}"
    for r in results:
        assert len(r.char_confidences) == len(r.text)
        assert all(0 < c <= 1 for c in r.char_confidences)
        assert r.slot_probs is not None and r.slot_probs.shape == (reader.slots, len(reader.alphabet))
    if model == "cct_xs_v2_global":
        assert reader.has_region
        assert sum(r.region == "Argentina" for r in results) / len(results) >= 0.8
    else:
        assert not reader.has_region and results[0].region is None


def test_nms_drops_a_squashed_duplicate_inside_a_better_box():
    from edge.detect import nms

    boxes = np.array([[100, 100, 200, 130], [105, 108, 195, 122], [400, 100, 500, 130]], dtype=np.float32)
    scores = np.array([0.9, 0.6, 0.8], dtype=np.float32)
    # IoU of the first two is 0.38, under the 0.45 threshold: plain NMS would keep both.
    assert sorted(nms(boxes, scores, iou=0.45, min_score=0.35).tolist()) == [0, 2]
