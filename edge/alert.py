"""The audible alert: a tone per hit, loud enough to pull the officer's eyes to the MDT.

Tones are made here with numpy (no sound files): three patterns, picked by the hit's hotlist
priority against `[alert]` thresholds.
- level 1 (priority >= `level1_min_priority`): fast alternating 1400/1000 Hz bursts, repeated
  every `repeat_interval_s` until the officer answers the hit (`repeat_level1`), for at most
  `max_repeat_minutes` after its first burst (a safety cap, so a forgotten hit cannot sound for
  the rest of the shift);
- level 2 (priority >= `level2_min_priority`): two 1000 Hz beeps, once;
- level 3 (below): one 800 Hz beep, once.

Playback goes through simpleaudio (`play_buffer`) and falls back to `aplay` (a WAV on its
stdin) when simpleaudio fails. simpleaudio can only open ALSA's "default" PCM, so any other
`device` is played with aplay alone.

Guarantees:
- `raise_alert`, `acknowledge`, `status` and `close` never raise into the caller and never wait
  for sound: playing happens on one background thread.
- One tone at a time: the highest-priority unanswered hit sounds (ties: the one raised first).
  A hit of higher priority than the one sounding stops it and sounds at once; the stopped tone
  is played again later if it had not repeated yet. Answering a hit stops its tone at once and
  moves on to the next unanswered one that has not been heard.
- A hit id sounds once per id: raising it again, or after it was answered, does nothing.
- No sound device (both players fail): the attempt is counted, logged at most once per
  `log_interval_s`, and `status()` says "degraded" with the cause; a level-1 hit keeps trying at
  its repeat interval, a level-2/3 tone that failed is not retried (the MDT still shows the hit).
  The next tone that plays sets the state back to "ok".
- `on_tone_started(hit_id, monotonic_time)` is called, and `last_started_mono(hit_id)` is set,
  when a player has accepted the tone: for simpleaudio once the device is open and playing; for
  aplay when aplay was started (an aplay that then fails shows in `status()`).
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import shutil
import subprocess
import threading
import time
import wave
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from edge.config import AlertConfig
from edge.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

Clock = Callable[[], float]
ToneStarted = Callable[[str, float], None]

SAMPLE_RATE = 44100
FADE_S = 0.005  # raised-cosine ramps: a tone switched on or off at full amplitude clicks
TONE_GAP_S = 0.2  # silence after a tone before another hit's tone, so two hits sound like two
CHECK_SILENCE_S = 0.05  # what the startup check plays
HANG_MARGIN_S = 5.0  # a player still busy this long after its tone should have ended is stuck
POLL_S = 0.01  # how often a playing tone looks for a stop request
LOG_INTERVAL_S = 30.0
REMEMBERED_HITS = 4096  # answered ids and start times kept, oldest forgotten first


class AlertError(Exception):
    """A tone could not be played."""


class PlaybackError(AlertError):
    """Transient: the player is there but this tone failed (no device, device busy, player hung)."""


class PlayerUnavailable(AlertError):
    """Permanent until someone installs it: the player itself is missing (no aplay, no simpleaudio)."""


# ---------------------------------------------------------------------------------------------
# Tones


@dataclass(frozen=True)
class Segment:
    """A stretch of one pure tone, or of silence when `freq_hz` is 0."""

    freq_hz: float
    duration_s: float


@dataclass(frozen=True)
class TonePattern:
    level: int
    segments: tuple[Segment, ...]

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.segments)


PATTERNS: dict[int, TonePattern] = {
    1: TonePattern(1, (Segment(1400, 0.125), Segment(1000, 0.125)) * 3),
    2: TonePattern(2, (Segment(1000, 0.15), Segment(0, 0.1), Segment(1000, 0.15))),
    3: TonePattern(3, (Segment(800, 0.3),)),
}


def alert_level(priority: int, config: AlertConfig) -> int:
    """1, 2 or 3 (1 most urgent) for a hotlist priority (higher more urgent)."""
    if priority >= config.level1_min_priority:
        return 1
    if priority >= config.level2_min_priority:
        return 2
    return 3


def render(pattern: TonePattern, *, volume: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The pattern as mono signed 16-bit samples."""
    fade = max(1, round(FADE_S * sample_rate))
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    parts = []
    for seg in pattern.segments:
        n = round(seg.duration_s * sample_rate)
        if seg.freq_hz <= 0:
            parts.append(np.zeros(n))
            continue
        wave_ = np.sin(2 * np.pi * seg.freq_hz * np.arange(n) / sample_rate)
        k = min(fade, n // 2)
        wave_[:k] *= ramp[:k]
        wave_[n - k :] *= ramp[:k][::-1]
        parts.append(wave_)
    return np.round(np.concatenate(parts) * (volume * 32767)).astype(np.int16)


@dataclass(frozen=True, eq=False)
class Tone:
    """Samples ready for a player: mono, signed 16-bit little-endian."""

    samples: np.ndarray
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    def pcm(self) -> bytes:
        return self.samples.astype("<i2").tobytes()

    def wav(self) -> bytes:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            out.writeframes(self.pcm())
        return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Players


@dataclass(frozen=True)
class PlayResult:
    player: str  # which player played it
    completed: bool  # False: stopped early by `cancel`
    fallback_errors: tuple[str, ...] = ()  # players tried first that failed


class Player(Protocol):
    name: str

    def play(self, tone: Tone, cancel: threading.Event, on_start: Callable[[], None]) -> PlayResult:
        """Play `tone` to its end, or until `cancel` is set; call `on_start` once it is playing.

        Raises `PlaybackError` or `PlayerUnavailable`; never returns before the tone is over.
        """
        ...


class SimpleaudioPlayer:
    """simpleaudio's `play_buffer`, on ALSA's "default" PCM (the only one it can open)."""

    name = "simpleaudio"

    def play(self, tone: Tone, cancel: threading.Event, on_start: Callable[[], None]) -> PlayResult:
        try:
            import simpleaudio
        except ImportError as exc:
            raise PlayerUnavailable(f"simpleaudio cannot be imported: {exc}") from exc
        sa_error = getattr(getattr(simpleaudio, "_simpleaudio", None), "SimpleaudioError", Exception)
        try:
            playing = simpleaudio.play_buffer(tone.pcm(), 1, 2, tone.sample_rate)
        except sa_error as exc:
            raise PlaybackError(str(exc)) from exc
        on_start()
        deadline = time.monotonic() + tone.duration_s + HANG_MARGIN_S
        while playing.is_playing():
            if cancel.wait(POLL_S):
                playing.stop()
                return PlayResult(self.name, completed=False)
            if time.monotonic() > deadline:
                playing.stop()
                raise PlaybackError(f"playback did not finish within {HANG_MARGIN_S:.0f} s of the tone's end")
        return PlayResult(self.name, completed=True)


class AplayPlayer:
    """ALSA's `aplay`, fed a WAV on stdin, on any PCM name."""

    name = "aplay"

    def __init__(self, device: str = "default", executable: str | None = None) -> None:
        self._device = device
        self._executable = executable

    def play(self, tone: Tone, cancel: threading.Event, on_start: Callable[[], None]) -> PlayResult:
        exe = self._executable or shutil.which("aplay")
        if exe is None:
            raise PlayerUnavailable("aplay is not installed (Debian package alsa-utils)")
        argv = [exe, "-q", "-D", self._device, "-"]
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise PlayerUnavailable(f"cannot start {exe}: {exc.strerror}") from exc
        with proc:
            # A separate writer, because a paced device takes the data only as fast as it plays
            # and this thread must stay free to notice a stop request.
            feeder = threading.Thread(target=_feed, args=(proc, tone.wav()), name="aplay-feed", daemon=True)
            feeder.start()
            on_start()
            stopped = hung = False
            deadline = time.monotonic() + tone.duration_s + HANG_MARGIN_S
            while proc.poll() is None:
                if cancel.wait(POLL_S):
                    stopped = True
                elif time.monotonic() > deadline:
                    hung = True
                if stopped or hung:
                    proc.kill()
                    proc.wait()
                    break
            feeder.join()
            stderr = proc.stderr.read() if proc.stderr else b""
        if stopped:
            return PlayResult(self.name, completed=False)
        if hung:
            raise PlaybackError(f"aplay -D {self._device} did not finish within {HANG_MARGIN_S:.0f} s")
        if proc.returncode != 0:
            lines = stderr.decode("utf-8", "replace").strip().splitlines()
            detail = lines[-1] if lines else "no message"
            if len(lines) > 1:
                detail = f"{lines[0]}; {detail}"
            raise PlaybackError(f"aplay -D {self._device} exited with {proc.returncode}: {detail}")
        return PlayResult(self.name, completed=True)


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, ValueError, OSError):
        # aplay exited early (device missing, or killed on a stop): its exit status says why.
        pass


class FallbackPlayer:
    """Each player in turn until one plays the tone."""

    def __init__(self, players: Sequence[Player]) -> None:
        if not players:
            raise ValueError("FallbackPlayer needs at least one player")
        self._players = tuple(players)
        self.name = "+".join(p.name for p in self._players)

    def play(self, tone: Tone, cancel: threading.Event, on_start: Callable[[], None]) -> PlayResult:
        errors: list[str] = []
        for player in self._players:
            try:
                result = player.play(tone, cancel, on_start)
            except AlertError as exc:
                errors.append(f"{player.name}: {exc}")
                continue
            return PlayResult(result.player, result.completed, (*result.fallback_errors, *errors))
        raise PlaybackError("; ".join(errors))


def default_player(device: str) -> Player:
    """simpleaudio then aplay on "default"; aplay alone on any other PCM (simpleaudio cannot)."""
    if device == "default":
        return FallbackPlayer([SimpleaudioPlayer(), AplayPlayer(device)])
    return FallbackPlayer([AplayPlayer(device)])


# ---------------------------------------------------------------------------------------------
# The alert sink

AlertState = Literal["ok", "degraded", "disabled"]


@dataclass(frozen=True, kw_only=True)
class AlertStatus:
    state: AlertState
    cause: str | None  # why degraded or disabled; None when ok
    device: str  # the ALSA PCM name from the config
    player: str | None  # the player of the last tone that played
    last_error: str | None  # the latest failure, kept after recovery (e.g. simpleaudio fell back)
    tones_played: int = 0
    tones_failed: int = 0
    repeats_capped: int = 0  # level-1 hits silenced by max_repeat_minutes while unanswered
    active_hits: int = 0  # raised and not yet answered
    sounding: str | None = None  # hit id of the tone playing now


class AlertSink(Protocol):
    def raise_alert(self, hit_id: str, priority: int) -> None: ...

    def acknowledge(self, hit_id: str) -> None: ...

    def last_started_mono(self, hit_id: str) -> float | None: ...

    def status(self) -> AlertStatus: ...

    def close(self) -> None: ...


@dataclass
class _Hit:
    hit_id: str
    priority: int
    level: int
    seq: int
    repeats: bool
    first_attempt: float | None = None
    last_attempt: float | None = None
    finished: bool = False  # nothing more to play for it (played once, failed, or capped)


@dataclass
class _Sounding:
    hit_id: str | None  # None: the startup check
    priority: int
    cancel: threading.Event = field(default_factory=threading.Event)


class ToneAlert:
    """Plays each hit's tone on a background thread; see the module docstring for the rules."""

    def __init__(
        self,
        config: AlertConfig,
        *,
        player: Player | None = None,
        on_tone_started: ToneStarted | None = None,
        monotonic: Clock = time.monotonic,
        log_interval_s: float = LOG_INTERVAL_S,
    ) -> None:
        self._config = config
        self._player = player if player is not None else default_player(config.device)
        self._on_tone_started = on_tone_started
        self._clock = monotonic
        self._log = RateLimitedLog(log, log_interval_s, monotonic)
        self._tones = {lvl: Tone(render(p, volume=config.volume)) for lvl, p in PATTERNS.items()}
        self._check_tone = Tone(np.zeros(round(CHECK_SILENCE_S * SAMPLE_RATE), dtype=np.int16))

        self._cond = threading.Condition()
        self._hits: dict[str, _Hit] = {}
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._started: OrderedDict[str, float] = OrderedDict()
        self._seq = itertools.count()
        self._sounding: _Sounding | None = None
        self._quiet_until = float("-inf")
        self._check_pending = config.startup_check
        self._closed = False

        self._state: AlertState = "ok"
        self._cause: str | None = None
        self._player_used: str | None = None
        self._last_error: str | None = None
        self._played = 0
        self._failed = 0
        self._capped = 0

        self._thread = threading.Thread(target=self._run, name="alert-tones", daemon=True)
        self._thread.start()

    # -- caller side ------------------------------------------------------------------------

    def raise_alert(self, hit_id: str, priority: int) -> None:
        try:
            with self._cond:
                if self._closed:
                    self._log.log(
                        logging.WARNING, "closed", "alert for hit %s after close: not sounded", hit_id
                    )
                    return
                if hit_id in self._hits or hit_id in self._answered:
                    return
                level = alert_level(priority, self._config)
                self._hits[hit_id] = _Hit(
                    hit_id=hit_id,
                    priority=priority,
                    level=level,
                    seq=next(self._seq),
                    repeats=level == 1 and self._config.repeat_level1,
                )
                sounding = self._sounding
                if sounding is not None and (sounding.hit_id is None or sounding.priority < priority):
                    sounding.cancel.set()
                self._cond.notify_all()
        except Exception:
            self._log.log(logging.ERROR, "raise", "cannot sound hit %s", hit_id, exc_info=True)

    def acknowledge(self, hit_id: str) -> None:
        try:
            with self._cond:
                known = self._hits.pop(hit_id, None) is not None
                self._remember(self._answered, hit_id, None)
                if self._sounding is not None and self._sounding.hit_id == hit_id:
                    self._sounding.cancel.set()
                self._cond.notify_all()
            if not known:
                log.debug("acknowledge of hit %s, which is not sounding", hit_id)
        except Exception:
            self._log.log(logging.ERROR, "ack", "cannot acknowledge hit %s", hit_id, exc_info=True)

    def last_started_mono(self, hit_id: str) -> float | None:
        with self._cond:
            return self._started.get(hit_id)

    def status(self) -> AlertStatus:
        with self._cond:
            return AlertStatus(
                state=self._state,
                cause=self._cause,
                device=self._config.device,
                player=self._player_used,
                last_error=self._last_error,
                tones_played=self._played,
                tones_failed=self._failed,
                repeats_capped=self._capped,
                active_hits=len(self._hits),
                sounding=self._sounding.hit_id if self._sounding else None,
            )

    def close(self) -> None:
        with self._cond:
            self._closed = True
            if self._sounding is not None:
                self._sounding.cancel.set()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=HANG_MARGIN_S + 1)
            if self._thread.is_alive():
                log.warning("the alert thread did not stop within %.0f s", HANG_MARGIN_S + 1)

    def __enter__(self) -> ToneAlert:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the tone thread --------------------------------------------------------------------

    @staticmethod
    def _remember(table: OrderedDict, key: str, value: object) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > REMEMBERED_HITS:
            table.popitem(last=False)

    def _next(self, now: float) -> tuple[_Hit | None, float]:
        """The hit that should sound and when; called with the lock held."""
        while True:
            waiting = [h for h in self._hits.values() if not h.finished]
            if not waiting:
                return None, 0.0
            hit = max(waiting, key=lambda h: (h.priority, -h.seq))
            cap_s = self._config.max_repeat_minutes * 60
            if hit.repeats and hit.first_attempt is not None and now - hit.first_attempt >= cap_s:
                hit.finished = True
                self._capped += 1
                self._log.log(
                    logging.WARNING,
                    "capped",
                    "hit %s unanswered after %.1f min: its tone stops repeating (alert.max_repeat_minutes)",
                    hit.hit_id,
                    self._config.max_repeat_minutes,
                )
                continue
            due = self._quiet_until
            if hit.repeats and hit.last_attempt is not None:
                due = max(due, hit.last_attempt + self._config.repeat_interval_s)
            return hit, due

    def _run(self) -> None:
        while True:
            with self._cond:
                hit, tone, sounding = self._wait_for_work()
                if sounding is None:
                    return
            try:
                on_start = functools.partial(self._started_now, hit)
                result: PlayResult | None = self._player.play(tone, sounding.cancel, on_start)
                error = None
            except AlertError as exc:
                result, error = None, str(exc)
            except Exception as exc:  # a bug in a player must not silence every later hit
                log.exception("alert player failed unexpectedly")
                result, error = None, f"{type(exc).__name__}: {exc}"
            with self._cond:
                self._finish(hit, tone, result, error)

    def _wait_for_work(self) -> tuple[_Hit | None, Tone, _Sounding | None]:
        """Block until something should sound; with the lock held. (None, _, None) = closed."""
        while not self._closed:
            if self._check_pending:
                self._check_pending = False
                self._sounding = _Sounding(None, -1)
                return None, self._check_tone, self._sounding
            now = self._clock()
            hit, due = self._next(now)
            if hit is not None and due <= now:
                hit.last_attempt = now
                if hit.first_attempt is None:
                    hit.first_attempt = now
                self._sounding = _Sounding(hit.hit_id, hit.priority)
                return hit, self._tones[hit.level], self._sounding
            self._cond.wait(timeout=None if hit is None else due - now)
        return None, self._check_tone, None

    def _started_now(self, hit: _Hit | None) -> None:
        if hit is None:
            return
        now = self._clock()
        with self._cond:
            self._remember(self._started, hit.hit_id, now)
        if self._on_tone_started is not None:
            try:
                self._on_tone_started(hit.hit_id, now)
            except Exception:
                self._log.log(logging.ERROR, "callback", "on_tone_started raised", exc_info=True)

    def _finish(self, hit: _Hit | None, tone: Tone, result: PlayResult | None, error: str | None) -> None:
        """Record one attempt's outcome; with the lock held."""
        now = self._clock()
        self._sounding = None
        if result is not None:
            if result.fallback_errors:
                self._last_error = "; ".join(result.fallback_errors)
                self._log.log(
                    logging.WARNING,
                    "fallback",
                    "alert tone played by %s after: %s",
                    result.player,
                    self._last_error,
                )
            self._player_used = result.player
            self._state, self._cause = "ok", None
            if hit is None:
                return
            if result.completed:
                self._played += 1
                started = hit.last_attempt if hit.last_attempt is not None else now
                self._quiet_until = max(now, started + tone.duration_s) + TONE_GAP_S
                if not hit.repeats:
                    hit.finished = True
            # Stopped early (answered, outranked, closing): no gap, and a one-shot tone that was
            # cut short plays again when it is the most urgent one left.
            return
        self._failed += 1
        self._last_error = error
        self._state = "degraded"
        self._cause = f"no sound on ALSA device '{self._config.device}': {error}"
        self._log.log(logging.WARNING, "failed", "alert tone not played: %s", self._cause)
        if hit is not None and not hit.repeats:
            hit.finished = True


class NullAlert:
    """`alert.enabled = false`: hits are shown on the MDT page only."""

    def raise_alert(self, hit_id: str, priority: int) -> None:
        return None

    def acknowledge(self, hit_id: str) -> None:
        return None

    def last_started_mono(self, hit_id: str) -> float | None:
        return None

    def status(self) -> AlertStatus:
        return AlertStatus(
            state="disabled", cause="alert.enabled is false", device="", player=None, last_error=None
        )

    def close(self) -> None:
        return None


def make_alert(config: AlertConfig, *, on_tone_started: ToneStarted | None = None) -> AlertSink:
    """The alert sink `[alert]` asks for."""
    if not config.enabled:
        return NullAlert()
    return ToneAlert(config, on_tone_started=on_tone_started)
