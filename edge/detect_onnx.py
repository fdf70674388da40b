"""The ONNX Runtime detector backend: open-image-models' end-to-end YOLOv9 (NMS inside the model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.detect import BackendUnavailableError, DetectorError, ModelShapeError, letterbox, nms, to_detections
from edge.types import Detection, Frame


class OnnxEnd2EndDetector:
    """Input 1x3xSxS float32 RGB /255; output Nx7 rows of batch, x1, y1, x2, y2, class, score."""

    def __init__(self, model_path: Path, *, threads: int, min_score: float, nms_iou: float) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnx backend needs onnxruntime: pip install onnxruntime") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise DetectorError(f"{model_path}: not a loadable ONNX model: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ModelShapeError(f"{model_path}: expected 1 input, got {len(inputs)}")
        shape = inputs[0].shape
        if len(shape) != 4 or shape[1] != 3 or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise ModelShapeError(f"{model_path}: input shape {shape}, expected (1, 3, S, S)")
        oshape = outputs[0].shape
        if len(oshape) != 2 or oshape[1] != 7:
            raise ModelShapeError(
                f"{model_path}: output shape {oshape}, expected (N, 7) (batch, x1, y1, x2, y2, class, score)"
            )
        self.input_size = int(shape[2])
        self._input_name = inputs[0].name
        self._min_score = min_score
        self._nms_iou = nms_iou

    def detect(self, frame: Frame) -> list[Detection]:
        rgb, lb = letterbox(frame, self.input_size)
        x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)
        (out,) = self._session.run(None, {self._input_name: x})[:1]
        out = np.asarray(out, dtype=np.float32).reshape(-1, 7)
        out = out[out[:, 6] >= self._min_score]
        if len(out) == 0:
            return []
        boxes = lb.to_frame(out[:, 1], out[:, 2], out[:, 3], out[:, 4])
        scores = out[:, 6]
        # The model's NMS runs per class at its own threshold; this one merges what is left.
        keep = nms(boxes, scores, self._nms_iou, self._min_score)
        return to_detections(boxes[keep], scores[keep], frame)
