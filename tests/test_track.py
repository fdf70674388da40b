"""Tracking and consensus on constructed OCR outputs (no models): the voting rules themselves."""

import itertools

import numpy as np
import pytest

from edge.config import TrackerConfig
from edge.track import PassEnded, ReadEmitted, Tracker
from edge.types import Box, Detection, PlateText

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
SLOTS = 10


def text(plate: str, conf: float = 0.95, *, doubt: dict[int, tuple[str, float]] | None = None) -> PlateText:
    """An OCR result for `plate`, each character at `conf`; `doubt` puts a rival character's weight."""
    probs = np.full((SLOTS, len(ALPHABET)), 1e-4, np.float32)
    padded = plate.ljust(SLOTS, "_")
    for i, ch in enumerate(padded):
        probs[i, ALPHABET.index(ch)] = conf
        if doubt and i in doubt:
            rival, w = doubt[i]
            probs[i, ALPHABET.index(rival)] = w
    return PlateText(text=plate, char_confidences=(conf,) * len(plate), slot_probs=probs)


def det(x: float, y: float = 300.0, h: float = 40.0) -> Detection:
    return Detection(box=Box(x, y, x + 4 * h, y + h), score=0.9)


def make(**overrides) -> Tracker:
    ids = (f"00000000-0000-4000-8000-{i:012d}" for i in itertools.count())
    return Tracker(TrackerConfig(**overrides), alphabet=ALPHABET, pad_char="_", new_id=lambda: next(ids))


def feed(
    tr: Tracker, t: float, detections: list[Detection], texts: list[PlateText | None], cam: str = "front"
):
    matches = tr.associate(cam, detections, t)
    crops = [np.zeros((10, 40, 3), np.uint8) for _ in detections]
    return tr.update(cam, t, t, detections, matches, texts, crops)


def reads(events) -> list:
    return [e.read for e in events if isinstance(e, ReadEmitted)]


def test_confident_frames_outvote_a_blurred_misread():
    tr = make(lock_observations=10)
    seq = [text("ABC123"), text("A8C123", 0.55, doubt={1: ("B", 0.4)}), text("ABC123"), text("ABC123", 0.9)]
    for i, t in enumerate(seq):
        assert feed(tr, i * 0.05, [det(100 + 5 * i)], [t]) == []
    (read,) = reads(tr.flush())
    assert read.text == "ABC123"
    assert read.observations == 4
    assert read.confidence > 0.6


def test_characters_are_voted_per_position_not_per_whole_string():
    tr = make(lock_observations=10)
    # No frame reads the plate right, but each character is right in most frames.
    seq = ["XBC123", "AYC123", "ABZ123", "ABC923", "ABC123"]
    for i, s in enumerate(seq):
        feed(tr, i * 0.05, [det(100 + 5 * i)], [text(s)])
    (read,) = reads(tr.flush())
    assert read.text == "ABC123"


def test_locked_pass_is_emitted_early_and_needs_no_more_ocr():
    tr = make(lock_observations=3, lock_confidence=0.9)
    events = []
    for i in range(3):
        events += feed(tr, i * 0.05, [det(100 + 5 * i)], [text("7XYZ442", 0.99)])
    (read,) = reads(events)
    assert read.text == "7XYZ442" and read.best_crop_jpeg.startswith(b"\xff\xd8")
    (track,) = tr.active("front")
    assert track.locked and not tr.needs_ocr(track)
    # The pass goes on without OCR; when it ends the stored read is finalised, not emitted again.
    feed(tr, 0.20, [det(120)], [None])
    ended = tr.expire("front", 0.20 + 1.5)
    assert ended == [PassEnded(read.read_id, 0.20, 3)]


def test_a_pass_with_too_few_reads_gives_no_read():
    tr = make(min_observations=2)
    feed(tr, 0.0, [det(100)], [text("ABC123")])
    assert tr.flush() == []


def test_weak_consensus_gives_no_read():
    tr = make(min_read_confidence=0.5)
    for i, s in enumerate(["ABC123", "XYZ789"]):
        feed(tr, i * 0.05, [det(100 + 5 * i)], [text(s, 0.4)])
    assert reads(tr.flush()) == []


def test_two_plates_in_view_are_two_passes():
    tr = make(lock_observations=10)
    for i in range(3):
        feed(tr, i * 0.05, [det(100 + 4 * i), det(800 - 4 * i)], [text("LEFT11"), text("RIGHT22")])
    assert sorted(r.text for r in reads(tr.flush())) == ["LEFT11", "RIGHT22"]


def test_cameras_are_tracked_separately():
    tr = make(lock_observations=10)
    for i in range(2):
        feed(tr, i * 0.05, [det(100)], [text("FRONT1")], cam="front")
        feed(tr, i * 0.05, [det(100)], [text("REAR22")], cam="rear")
    got = {r.camera_id: r.text for r in reads(tr.flush())}
    assert got == {"front": "FRONT1", "rear": "REAR22"}


def test_pass_ends_after_the_gap_and_a_new_car_in_the_same_place_is_a_new_pass():
    tr = make(max_gap_s=1.0, lock_observations=10)
    for i in range(3):
        feed(tr, i * 0.05, [det(100)], [text("FIRST1")])
    events = feed(tr, 2.0, [det(100)], [text("SECOND2")])
    assert [r.text for r in reads(events)] == ["FIRST1"]
    feed(tr, 2.05, [det(100)], [text("SECOND2")])
    assert [r.text for r in reads(tr.flush())] == ["SECOND2"]


def test_a_different_confident_plate_at_the_predicted_spot_starts_its_own_pass():
    tr = make(lock_observations=10)
    for i in range(3):
        feed(tr, i * 0.05, [det(100)], [text("AAA111")])
    for i in range(3, 6):
        feed(tr, i * 0.05, [det(100)], [text("ZZZ999")])
    assert sorted(r.text for r in reads(tr.flush())) == ["AAA111", "ZZZ999"]


def test_moving_plate_is_followed_by_its_velocity():
    tr = make(lock_observations=10, match_iou=0.5)
    # 60 px per frame: consecutive boxes barely overlap, the prediction keeps them together.
    for i in range(6):
        feed(tr, i * 0.05, [det(100 + 60 * i, h=30)], [text("FAST123")])
    assert len(reads(tr.flush())) == 1


@pytest.mark.parametrize("region_votes", [("Brazil", "Brazil", "Argentina")])
def test_region_is_the_weighted_majority(region_votes):
    tr = make(lock_observations=10)
    for i, region in enumerate(region_votes):
        t = text("ABC1D23")
        t = PlateText(
            text=t.text,
            char_confidences=t.char_confidences,
            slot_probs=t.slot_probs,
            region=region,
            region_confidence=0.9,
        )
        feed(tr, i * 0.05, [det(100)], [t])
    (read,) = reads(tr.flush())
    assert read.region == "Brazil"


def test_a_listed_plate_is_emitted_after_fewer_reads_than_an_unlisted_one():
    listed = {"WNT4455"}
    tr = make(lock_observations=4, early_alert_observations=2)
    tr.is_listed = listed.__contains__
    first = feed(tr, 0.0, [det(100), det(700)], [text("WNT4455"), text("OTHER12")])
    second = feed(tr, 0.05, [det(104), det(696)], [text("WNT4455"), text("OTHER12")])
    assert reads(first) == []
    assert [r.text for r in reads(second)] == ["WNT4455"]
    third = feed(tr, 0.10, [det(108), det(692)], [None, text("OTHER12")])
    fourth = feed(tr, 0.15, [det(112), det(688)], [None, text("OTHER12")])
    assert reads(third) == [] and [r.text for r in reads(fourth)] == ["OTHER12"]
