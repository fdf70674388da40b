import logging

from edge.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_repeats_within_the_interval_are_held_back_and_counted_in_the_next_line(caplog):
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t"), 10.0, clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(4):
            limited.warning("cam", "camera %s stalled", "front")
        limited.warning("gps", "gps down")  # another key is not held back by the first
        clock.now += 10.0
        limited.warning("cam", "camera %s stalled", "front")
    assert caplog.messages == [
        "camera front stalled",
        "gps down",
        "camera front stalled (3 similar lines held back)",
    ]


def test_ready_reports_how_many_were_held_back():
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t"), 5.0, clock)
    assert limited.ready("k") == 0
    assert limited.ready("k") is None and limited.ready("k") is None
    clock.now += 5.0
    assert limited.ready("k") == 2
