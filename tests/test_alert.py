"""The audible alert, played through real ALSA into a WAV file and checked with an FFT.

Each scenario runs in a fresh Python process whose HOME holds an `.asoundrc` making ALSA's
default PCM a `file` plugin (slave "null", format wav, truncate false: every opening of the
device writes the next of out.wav, out.wav.0001, ...), because alsa-lib reads ~/.asoundrc once,
when a process first opens a device. aplay (the fallback player) reads the same file.
A missing aplay or ALSA library skips these tests locally and fails them in CI (CI=true),
naming scripts/install-system-deps.sh.
"""

from __future__ import annotations

import ctypes.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge.alert import NullAlert, alert_level, make_alert
from edge.config import AlertConfig, ConfigError, parse_config

ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = "run scripts/install-system-deps.sh (Debian libasound2-dev and alsa-utils)"
FULL_SCALE = 32767

# The scenario runner: builds the alert from a JSON spec, runs its steps, prints what happened.
DRIVER = r"""
import json, logging, sys, time
spec = json.loads(sys.argv[1])
if spec.get("block_simpleaudio"):
    sys.modules["simpleaudio"] = None  # importing it now fails: the player must fall back to aplay
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="LOG %(levelname)s %(message)s")
from edge.alert import make_alert
from edge.config import AlertConfig

t0 = time.monotonic()
started, raised = [], {}
alert = make_alert(AlertConfig(**spec["config"]), on_tone_started=lambda h, t: started.append([h, t - t0]))

def wait(test, timeout):
    end = time.monotonic() + timeout
    while not test() and time.monotonic() < end:
        time.sleep(0.01)

for step in spec["steps"]:
    kind, args = step[0], step[1:]
    if kind == "raise":
        raised[args[0]] = time.monotonic() - t0
        alert.raise_alert(args[0], args[1])
    elif kind == "ack":
        alert.acknowledge(args[0])
    elif kind == "wait_played":
        wait(lambda: alert.status().tones_played >= args[0], args[1])
    elif kind == "wait_failed":
        wait(lambda: alert.status().tones_failed >= args[0], args[1])
    elif kind == "wait_state":
        wait(lambda: alert.status().state == args[0], args[1])
    elif kind == "sleep":
        time.sleep(args[0])
status = alert.status()
last = {h: alert.last_started_mono(h) for h in raised}
alert.close()
print(json.dumps({
    "kind": type(alert).__name__,
    "started": started,
    "raised": raised,
    "last_started": {h: (t - t0 if t is not None else None) for h, t in last.items()},
    "status": {k: getattr(status, k) for k in status.__dataclass_fields__},
}))
"""


def require_alsa() -> None:
    """aplay and libasound present, else skip locally and fail in CI."""
    missing = [
        what
        for what, present in (
            ("aplay", shutil.which("aplay") is not None),
            ("libasound", ctypes.util.find_library("asound") is not None),
        )
        if not present
    ]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed: {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class SoundHome:
    home: Path
    out: Path  # the WAV the default PCM writes; later openings add .0001, .0002, ...

    def wavs(self) -> list[Path]:
        found = [p for p in self.out.parent.iterdir() if p.name.startswith(self.out.name)]
        return sorted(found, key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)


def make_home(base: Path, default_pcm: str | None = None) -> SoundHome:
    """A HOME whose ~/.asoundrc makes the default PCM write WAV files (or, given, an other PCM)."""
    home, out_dir = base / "home", base / "sound"
    home.mkdir(parents=True)
    out_dir.mkdir(parents=True)
    out = out_dir / "out.wav"
    pcm = default_pcm or (
        f'type file\n    slave.pcm "null"\n    file "{out}"\n    format "wav"\n    truncate false'
    )
    (home / ".asoundrc").write_text(f"pcm.!default {{\n    {pcm}\n}}\n")
    return SoundHome(home, out)


@pytest.fixture
def sound_home(tmp_path: Path) -> SoundHome:
    require_alsa()
    return make_home(tmp_path)


def run_scenario(home: SoundHome, config: dict, steps: list, *, block_simpleaudio: bool = False) -> tuple:
    env = {**os.environ, "HOME": str(home.home), "XDG_CONFIG_HOME": str(home.home / ".config")}
    env.pop("ALSA_CONFIG_PATH", None)
    env["PYTHONPATH"] = str(ROOT)
    spec = {"config": config, "steps": steps, "block_simpleaudio": block_simpleaudio}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"scenario raised:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


# ---------------------------------------------------------------------------------------------
# Reading the WAVs


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64), w.getframerate()


def audible_span_s(x: np.ndarray, rate: int) -> float:
    loud = np.flatnonzero(np.abs(x) > 0.01 * FULL_SCALE)
    return 0.0 if loud.size == 0 else (loud[-1] - loud[0] + 1) / rate


def dominant_hz(x: np.ndarray, rate: int) -> float:
    n = 1 << 15
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    return float(np.argmax(spectrum) * rate / n)


def tone_runs(x: np.ndarray, rate: int, window_s: float = 0.01) -> list[tuple[int, float]]:
    """The signal as (frequency rounded to 50 Hz, 0 = silence; seconds) runs, 10 ms at a time."""
    size = round(window_s * rate)
    labels = []
    for i in range(0, len(x) - size + 1, size):
        chunk = x[i : i + size]
        rms = np.sqrt(np.mean(chunk**2))
        labels.append(0 if rms < 0.03 * FULL_SCALE else round(dominant_hz(chunk, rate) / 50) * 50)
    runs: list[list] = []
    for label in labels:
        if runs and runs[-1][0] == label:
            runs[-1][1] += 1
        else:
            runs.append([label, 1])
    # A window straddling a switch (both tones fading) reads as a 10 ms blip: fold it away.
    merged: list[list] = []
    for label, count in runs:
        if count < 2 and merged:
            continue
        if merged and merged[-1][0] == label:
            merged[-1][1] += count
        else:
            merged.append([label, count])
    while merged and merged[-1][0] == 0:
        merged.pop()
    return [(label, count * window_s) for label, count in merged]


def assert_pattern(path: Path, expected: list[tuple[int, float]], *, exact_length: bool = True) -> None:
    x, rate = read_wav(path)
    runs = tone_runs(x, rate)
    assert [f for f, _ in runs] == [f for f, _ in expected], f"{path.name}: {runs}"
    for (f, got), (_, want) in zip(runs, expected, strict=True):
        assert abs(got - want) <= 0.025, f"{path.name}: {f} Hz lasted {got:.3f} s, expected {want} s"
    total = sum(d for _, d in expected)
    assert abs(audible_span_s(x, rate) - total) < 0.005, f"{path.name}: audible {audible_span_s(x, rate)}"
    if exact_length:
        assert abs(len(x) / rate - total) < 0.001


LEVEL1 = [(1400, 0.125), (1000, 0.125)] * 3
LEVEL2 = [(1000, 0.15), (0, 0.1), (1000, 0.15)]
LEVEL3 = [(800, 0.3)]
QUIET = {"startup_check": False, "repeat_interval_s": 1.0}


# ---------------------------------------------------------------------------------------------
# Tones through ALSA


def test_each_priority_level_plays_its_own_frequencies_and_duration(sound_home):
    steps = [["raise", "amber", 100], ["raise", "stolen-plate", 60], ["raise", "offender", 30]]
    steps += [["wait_played", 3, 10], ["sleep", 1.2]]
    result, _ = run_scenario(sound_home, {**QUIET, "repeat_level1": False}, steps)

    assert result["kind"] == "ToneAlert"
    assert [h for h, _ in result["started"]] == ["amber", "stolen-plate", "offender"]
    wavs = sound_home.wavs()
    assert len(wavs) == 3, "with repeat_level1 = false the level-1 tone must play once"
    assert_pattern(wavs[0], LEVEL1)
    assert_pattern(wavs[1], LEVEL2)
    assert_pattern(wavs[2], LEVEL3)
    x, rate = read_wav(wavs[2])
    assert abs(dominant_hz(x, rate) - 800) < 3
    assert result["status"]["state"] == "ok" and result["status"]["tones_played"] == 3


def test_level1_repeats_until_acknowledged_then_the_next_highest_priority_sounds(sound_home):
    steps = [["raise", "amber", 100], ["raise", "offender", 30], ["raise", "stolen-plate", 60]]
    steps += [["wait_played", 3, 10], ["ack", "amber"], ["wait_played", 5, 10], ["sleep", 1.3]]
    result, _ = run_scenario(sound_home, QUIET, steps)

    order = [h for h, _ in result["started"]]
    assert order == ["amber", "amber", "amber", "stolen-plate", "offender"]
    wavs = sound_home.wavs()
    assert len(wavs) == 5, "amber must stop repeating once acknowledged"
    for path in wavs[:3]:
        assert_pattern(path, LEVEL1)
    assert_pattern(wavs[3], LEVEL2)
    assert_pattern(wavs[4], LEVEL3)

    amber_starts = [t for h, t in result["started"] if h == "amber"]
    assert all(b - a >= 1.0 - 0.01 for a, b in itertools.pairwise(amber_starts))
    assert amber_starts[0] >= result["raised"]["amber"]
    assert result["last_started"]["amber"] == pytest.approx(amber_starts[-1], abs=1e-6)
    assert result["status"]["active_hits"] == 2  # the two lower hits were heard but not answered


def test_level1_stops_repeating_at_the_safety_cap_without_an_answer(sound_home):
    cap_minutes = 1.5 / 60  # 1.5 s: bursts at 0 s and 1 s, none at 2 s
    steps = [["raise", "amber", 100], ["sleep", 3.2]]
    result, stderr = run_scenario(sound_home, {**QUIET, "max_repeat_minutes": cap_minutes}, steps)

    assert len(sound_home.wavs()) == 2
    assert result["status"]["repeats_capped"] == 1
    assert "stops repeating" in stderr


def test_aplay_fallback_writes_the_same_samples_when_simpleaudio_fails(sound_home, tmp_path):
    steps = [["raise", "amber", 100], ["wait_played", 1, 10]]
    direct, _ = run_scenario(sound_home, {**QUIET, "repeat_level1": False}, steps)
    other = make_home(tmp_path / "fallback")
    fallback, stderr = run_scenario(other, {**QUIET, "repeat_level1": False}, steps, block_simpleaudio=True)

    assert direct["status"]["player"] == "simpleaudio" and direct["status"]["last_error"] is None
    assert fallback["status"]["player"] == "aplay"
    assert fallback["status"]["state"] == "ok"
    assert "simpleaudio" in fallback["status"]["last_error"]
    assert "tone played by aplay" in stderr
    [a], [b] = sound_home.wavs(), other.wavs()
    x, rate_x = read_wav(a)
    y, rate_y = read_wav(b)
    assert rate_x == rate_y
    # aplay pads its last period with silence; the sound itself is identical sample for sample.
    assert np.array_equal(y[: len(x)], x)
    assert not np.any(y[len(x) :])
    assert_pattern(b, LEVEL1, exact_length=False)


def test_nonexistent_alsa_device_is_degraded_with_the_cause_and_never_raises(sound_home):
    config = {"device": "no_such_pcm", "startup_check": True, "repeat_interval_s": 1.0}
    steps = [["wait_state", "degraded", 5]]
    steps += [["raise", "amber", 100], ["wait_failed", 3, 10], ["ack", "amber"], ["raise", "other", 30]]
    steps += [["wait_failed", 4, 5]]
    result, stderr = run_scenario(sound_home, config, steps)

    status = result["status"]
    assert status["state"] == "degraded"
    assert "no_such_pcm" in status["cause"] and "aplay" in status["cause"]
    assert status["tones_failed"] >= 4 and status["tones_played"] == 0
    # simpleaudio cannot open a named PCM, so it is not tried; aplay's own error is kept.
    assert "simpleaudio" not in status["cause"]
    assert stderr.count("alert tone not played") == 1, "failures must be logged rate-limited"
    assert sound_home.wavs() == []


def test_no_working_player_on_the_default_device_is_degraded_before_the_first_hit(tmp_path):
    require_alsa()
    broken = make_home(tmp_path, default_pcm='type plug\n    slave.pcm "no_such_slave"')
    result, _ = run_scenario(broken, {"startup_check": True}, [["wait_state", "degraded", 5]])

    status = result["status"]
    assert status["state"] == "degraded" and status["active_hits"] == 0
    assert "simpleaudio" in status["cause"] and "aplay" in status["cause"]


# ---------------------------------------------------------------------------------------------
# Without sound


def test_priority_thresholds_come_from_the_config():
    shipped = AlertConfig()
    assert [alert_level(p, shipped) for p in (100, 80, 79, 60, 59, 30)] == [1, 1, 2, 2, 3, 3]
    strict = AlertConfig(level1_min_priority=95, level2_min_priority=85)
    assert [alert_level(p, strict) for p in (100, 90, 80)] == [1, 2, 3]


def test_level_thresholds_in_the_wrong_order_are_a_config_error():
    with pytest.raises(ConfigError, match=r"alert.*level1_min_priority must be more"):
        parse_config({"alert": {"level1_min_priority": 60, "level2_min_priority": 60}})


def test_disabled_alert_is_silent_and_reports_disabled():
    alert = make_alert(AlertConfig(enabled=False))
    assert isinstance(alert, NullAlert)
    alert.raise_alert("amber", 100)
    alert.acknowledge("amber")
    assert alert.last_started_mono("amber") is None
    assert alert.status().state == "disabled"
    alert.close()


def test_missing_aplay_fails_in_ci_naming_the_install_script(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"install-system-deps\.sh"):
        require_alsa()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"install-system-deps\.sh"):
        require_alsa()
