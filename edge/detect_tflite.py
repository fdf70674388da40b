"""The TFLite detector backend: a full-integer YOLOv5 plate model on LiteRT.

LiteRT (`ai-edge-litert`) is the maintained interpreter; `tflite-runtime` is the fallback
where LiteRT has no wheel. This is the only module that imports either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.detect import BackendUnavailableError, DetectorError, ModelShapeError, letterbox, nms, to_detections
from edge.types import Detection, Frame


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise BackendUnavailableError(
                "no TFLite interpreter: install ai-edge-litert (or tflite-runtime where it has no wheel)"
            ) from exc
    return Interpreter


class TfliteYoloV5Detector:
    """YOLOv5 export: input 1xSxSx3 uint8 RGB, output 1xNx(5+classes) of normalized cx,cy,w,h,obj,cls."""

    def __init__(self, model_path: Path, *, threads: int, min_score: float, nms_iou: float) -> None:
        Interpreter = _interpreter_class()
        try:
            self._interp = Interpreter(model_path=str(model_path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise DetectorError(f"{model_path}: not a loadable TFLite model: {exc}") from exc
        inp = self._interp.get_input_details()
        out = self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ModelShapeError(
                f"{model_path}: expected 1 input and 1 output, got {len(inp)} and {len(out)}"
            )
        shape = tuple(int(v) for v in inp[0]["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or shape[1] != shape[2]:
            raise ModelShapeError(f"{model_path}: input shape {shape}, expected (1, S, S, 3) (YOLOv5 NHWC)")
        oshape = tuple(int(v) for v in out[0]["shape"])
        if len(oshape) != 3 or oshape[0] != 1 or oshape[2] < 6:
            raise ModelShapeError(f"{model_path}: output shape {oshape}, expected (1, N, 5+classes) (YOLOv5)")
        self.input_size = shape[1]
        self._in_index = inp[0]["index"]
        self._in_dtype = inp[0]["dtype"]
        self._in_scale, self._in_zero = inp[0]["quantization"]
        self._out_index = out[0]["index"]
        self._out_scale, self._out_zero = out[0]["quantization"]
        if out[0]["dtype"] == np.float32:
            self._out_scale, self._out_zero = 1.0, 0
        self._min_score = min_score
        self._nms_iou = nms_iou
        # Objectness alone must clear the score bar (score = obj * cls <= obj), so most of the
        # 25,200 candidates are dismissed on the raw quantized values without dequantizing them.
        self._obj_floor_q = min_score / self._out_scale + self._out_zero

    def _input_tensor(self, rgb: np.ndarray) -> np.ndarray:
        if self._in_dtype == np.uint8 and abs(self._in_scale - 1 / 255) < 1e-6 and self._in_zero == 0:
            return rgb[None]
        x = rgb.astype(np.float32) / 255.0
        if self._in_dtype == np.float32:
            return x[None]
        q = np.round(x / self._in_scale + self._in_zero)
        info = np.iinfo(self._in_dtype)
        return np.clip(q, info.min, info.max).astype(self._in_dtype)[None]

    def detect(self, frame: Frame) -> list[Detection]:
        rgb, lb = letterbox(frame, self.input_size)
        self._interp.set_tensor(self._in_index, self._input_tensor(rgb))
        self._interp.invoke()
        raw = self._interp.get_tensor(self._out_index)[0]
        cand = raw[raw[:, 4] > self._obj_floor_q]
        if len(cand) == 0:
            return []
        vals = (cand.astype(np.float32) - self._out_zero) * self._out_scale
        scores = vals[:, 4] * vals[:, 5:].max(axis=1)
        ok = scores >= self._min_score
        vals, scores = vals[ok], scores[ok]
        if len(scores) == 0:
            return []
        s = float(self.input_size)
        cx, cy, w, h = vals[:, 0] * s, vals[:, 1] * s, vals[:, 2] * s, vals[:, 3] * s
        boxes = lb.to_frame(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        keep = nms(boxes, scores, self._nms_iou, self._min_score)
        return to_detections(boxes[keep], scores[keep], frame)
