"""Tracking and consensus: detections linked across frames into one pass per vehicle.

Each camera has its own tracks. A detection joins the track whose predicted box it overlaps (or
whose centre is near), unless its text plainly belongs to another plate. Every read crop adds the
OCR's full per-slot probabilities to the track's vote, weighted by how sure that frame was, so
a blurred or distant frame counts for less than a sharp close one. When the vote is decisive
(`lock_observations` reads, every character above `lock_confidence`; only
`early_alert_observations` when the consensus is a listed plate, so a hit alerts sooner) the read
is emitted at once (early alert) and the track stops paying for OCR; when the track is lost for
`max_gap_s` the pass ends and its read is emitted (if not already) or finalised with the pass's
last sighting.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.config import TrackerConfig
from edge.types import Box, Detection, PlateRead, PlateText


@dataclass(frozen=True)
class ReadEmitted:
    """A pass has a read (early, when its consensus locked, or when the pass ended)."""

    read: PlateRead


@dataclass(frozen=True)
class PassEnded:
    """A pass whose read was already emitted has ended: the stored read gets its final sighting."""

    read_id: str
    last_seen: float
    observations: int


TrackEvent = ReadEmitted | PassEnded


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@dataclass
class _Track:
    track_id: int
    camera_id: str
    box: Box
    first_seen: float
    last_seen: float
    velocity: tuple[float, float] = (0.0, 0.0)  # box centre pixels per second
    # Per read length: the weighted sum of slots x alphabet probabilities, and the weight. A read
    # that dropped or gained a character shifts every slot after it, so it only votes with
    # reads of its own length; the length itself is voted first.
    votes: dict[int, np.ndarray] = field(default_factory=dict)
    length_weight: dict[int, float] = field(default_factory=dict)
    weight: float = 0.0
    observations: int = 0  # OCR reads that voted
    sightings: int = 0  # detections linked, read or not
    region_votes: dict[str, float] = field(default_factory=dict)
    best_score: float = -1.0
    best_crop: np.ndarray | None = None
    best_box: Box | None = None
    completed_mono: float = 0.0
    locked: bool = False
    read_id: str | None = None  # set once the read has been emitted

    def predicted(self, t: float) -> Box:
        dt = t - self.last_seen
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        return Box(self.box.x1 + dx, self.box.y1 + dy, self.box.x2 + dx, self.box.y2 + dy)


class Tracker:
    def __init__(
        self,
        config: TrackerConfig,
        *,
        alphabet: str,
        pad_char: str,
        jpeg_quality: int = 90,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        is_listed: Callable[[str], bool] | None = None,
    ) -> None:
        self.config = config
        # Is this text an exact hotlist plate? Such a pass locks after early_alert_observations.
        self.is_listed = is_listed
        self.alphabet = alphabet
        self.pad_index = alphabet.index(pad_char)
        self.jpeg_quality = jpeg_quality
        self._new_id = new_id
        self._tracks: dict[str, list[_Track]] = {}
        self._next_track = 1

    # --- association -----------------------------------------------------------------------

    def active(self, camera_id: str) -> list[_Track]:
        return self._tracks.get(camera_id, [])

    def needs_ocr(self, track: _Track | None) -> bool:
        return track is None or not track.locked

    def associate(self, camera_id: str, detections: list[Detection], t: float) -> list[_Track | None]:
        """The existing track each detection continues (None: a new vehicle). Greedy by overlap."""
        tracks = self.active(camera_id)
        pairs = []
        for di, det in enumerate(detections):
            for ti, tr in enumerate(tracks):
                pred = tr.predicted(t)
                iou = det.box.iou(pred)
                (cx, cy), (px, py) = det.box.center, pred.center
                near = abs(cx - px) < 1.2 * max(pred.width, det.box.width) and abs(cy - py) < 1.5 * max(
                    pred.height, det.box.height
                )
                if iou >= self.config.match_iou or near:
                    pairs.append((iou + (0.01 if near else 0.0), di, ti))
        pairs.sort(reverse=True)
        result: list[_Track | None] = [None] * len(detections)
        used: set[int] = set()
        for _, di, ti in pairs:
            if result[di] is None and ti not in used:
                result[di] = tracks[ti]
                used.add(ti)
        return result

    # --- updates -------------------------------------------------------------------------

    def update(
        self,
        camera_id: str,
        t: float,
        mono: float,
        detections: list[Detection],
        matches: list[_Track | None],
        texts: list[PlateText | None],
        crops: list[np.ndarray],
    ) -> list[TrackEvent]:
        """Fold one detected frame into the tracks. `t` is the frame's wall-clock capture time."""
        events: list[TrackEvent] = []
        tracks = self._tracks.setdefault(camera_id, [])
        for det, track, text, crop in zip(detections, matches, texts, crops, strict=True):
            if track is not None and text is not None and self._belongs_elsewhere(track, text):
                track = None
            if track is None:
                track = _Track(self._next_track, camera_id, det.box, t, t)
                self._next_track += 1
                tracks.append(track)
            else:
                dt = t - track.last_seen
                if dt > 0:
                    (cx, cy), (ox, oy) = det.box.center, track.box.center
                    track.velocity = ((cx - ox) / dt, (cy - oy) / dt)
                track.box = det.box
                track.last_seen = t
            track.sightings += 1
            if text is not None and not track.locked:
                self._vote(track, det, text, crop, mono)
                event = self._maybe_emit_locked(track)
                if event:
                    events.append(event)
            elif track.locked:
                track.completed_mono = track.completed_mono or mono
        events.extend(self.expire(camera_id, t))
        return events

    def _belongs_elsewhere(self, track: _Track, text: PlateText) -> bool:
        """A confident read that differs from a confident consensus in most characters is another plate."""
        if not track.votes or track.observations < 2 or text.confidence < 0.8:
            return False
        consensus, conf = self._consensus(track)
        if min(conf, default=0.0) < 0.8:
            return False
        return _edit_distance(consensus, text.text) > max(2, len(consensus) // 2)

    def _vote(self, track: _Track, det: Detection, text: PlateText, crop: np.ndarray, mono: float) -> None:
        probs = text.slot_probs
        if probs is None:  # a reader without probabilities: one-hot votes at its confidences
            probs = np.zeros((len(text.text) + 1, len(self.alphabet)), np.float32)
            for i, (ch, c) in enumerate(zip(text.text, text.char_confidences, strict=True)):
                probs[i, self.alphabet.index(ch)] = c
            probs[len(text.text), self.pad_index] = 1.0
        # A frame counts by how sure it was of its whole plate; size tempers tiny, distant plates.
        certainty = float(np.exp(np.log(np.clip(probs.max(axis=1), 1e-6, 1)).mean()))
        size = min(1.0, det.box.height / 28.0)
        w = certainty * size
        n = len(text.text)
        if n not in track.votes:
            track.votes[n] = np.zeros(probs.shape, dtype=np.float64)
            track.length_weight[n] = 0.0
        if track.votes[n].shape == probs.shape:
            track.votes[n] += w * probs
            track.length_weight[n] += w
        track.weight += w
        track.observations += 1
        if text.region:
            track.region_votes[text.region] = track.region_votes.get(text.region, 0.0) + w * (
                text.region_confidence or 1.0
            )
        score = w * det.box.height
        if score > track.best_score:
            track.best_score, track.best_crop, track.best_box = score, crop, det.box
        track.completed_mono = mono

    def _consensus(self, track: _Track) -> tuple[str, list[float]]:
        """The voted text and, per character, the share of the vote behind it (length share included)."""
        assert track.votes and track.weight > 0
        length = max(track.length_weight, key=track.length_weight.__getitem__)
        length_share = track.length_weight[length] / track.weight
        share = track.votes[length] / max(track.length_weight[length], 1e-12)
        chars, conf = [], []
        for slot in range(min(length, share.shape[0])):
            row = share[slot].copy()
            row[self.pad_index] = -1.0  # within this length every slot holds a character
            j = int(row.argmax())
            chars.append(self.alphabet[j])
            conf.append(float(row[j]) * length_share)
        return "".join(chars), conf

    def _maybe_emit_locked(self, track: _Track) -> TrackEvent | None:
        needed = self.config.lock_observations
        if self.is_listed is not None:
            needed = min(needed, self.config.early_alert_observations)
        if track.observations < needed:
            return None
        text, conf = self._consensus(track)
        if not text or min(conf) < self.config.lock_confidence:
            return None
        if track.observations < self.config.lock_observations and not (
            self.is_listed and self.is_listed(text)
        ):
            return None
        track.locked = True
        return ReadEmitted(self._make_read(track, text, conf))

    def _make_read(self, track: _Track, text: str, conf: list[float]) -> PlateRead:
        track.read_id = self._new_id()
        jpeg = b""
        if track.best_crop is not None and track.best_crop.size:
            ok, enc = cv2.imencode(".jpg", track.best_crop, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            jpeg = enc.tobytes() if ok else b""
        region = max(track.region_votes, key=track.region_votes.__getitem__) if track.region_votes else None
        ranked = sorted(track.region_votes.items(), key=lambda kv: -kv[1])
        return PlateRead(
            read_id=track.read_id,
            camera_id=track.camera_id,
            text=text,
            confidence=min(conf) if conf else 0.0,
            char_confidences=tuple(round(c, 4) for c in conf),
            region=region,
            first_seen=track.first_seen,
            last_seen=track.last_seen,
            observations=track.observations,
            best_crop_jpeg=jpeg,
            best_box=track.best_box or track.box,
            completed_mono=track.completed_mono,
            alternatives=tuple((r, round(v / track.weight, 3)) for r, v in ranked[1:3]),
        )

    # --- ending passes ---------------------------------------------------------------------

    def _end(self, track: _Track) -> TrackEvent | None:
        if track.read_id is not None:
            return PassEnded(track.read_id, track.last_seen, track.observations)
        if track.observations < self.config.min_observations or not track.votes:
            return None
        text, conf = self._consensus(track)
        if not text or min(conf) < self.config.min_read_confidence:
            return None
        return ReadEmitted(self._make_read(track, text, conf))

    def expire(self, camera_id: str, now: float) -> list[TrackEvent]:
        """End the camera's passes not seen for max_gap_s before `now` (wall clock)."""
        tracks = self._tracks.get(camera_id, [])
        keep, events = [], []
        for tr in tracks:
            if now - tr.last_seen > self.config.max_gap_s:
                ev = self._end(tr)
                if ev:
                    events.append(ev)
            else:
                keep.append(tr)
        self._tracks[camera_id] = keep
        return events

    def expire_all(self, now: float) -> list[TrackEvent]:
        return [ev for cam in list(self._tracks) for ev in self.expire(cam, now)]

    def flush(self, camera_id: str | None = None) -> list[TrackEvent]:
        """End every pass (the camera's stream ended, or the daemon is stopping)."""
        cams = [camera_id] if camera_id is not None else list(self._tracks)
        events = []
        for cam in cams:
            for tr in self._tracks.pop(cam, []):
                ev = self._end(tr)
                if ev:
                    events.append(ev)
        return events
