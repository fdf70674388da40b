"""The GPS stage against a real gpsd (run by gpsfake on loopback) and real ttys (pty pairs).

gpsfake comes from Debian's gpsd-clients. Without it these tests skip on a workstation and fail in
CI (CI=true), naming scripts/install-system-deps.sh.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import tty
from collections.abc import Callable, Iterator
from functools import reduce
from pathlib import Path
from typing import Any

import pytest

from edge.config import GpsConfig
from edge.gps import (
    FallbackGpsSource,
    GpsdSource,
    GpsSource,
    NmeaSerialSource,
    NullGpsSource,
    fix_from_tpv,
    make_gps,
)
from edge.types import NO_FIX, FixMode, GpsFix

DATA = Path(__file__).parent / "data" / "gps"
DRIVE_LOG = DATA / "drive.nmea"
NOFIX_LOG = DATA / "nofix.nmea"
INSTALL_HINT = "run scripts/install-system-deps.sh (Debian gpsd and gpsd-clients)"


def _epoch(second: int) -> float:
    return float(calendar.timegm((2024, 3, 15, 12, 0, second)))


# What drive.nmea says, worked out by hand: ddmm.mmmm -> degrees, knots * 1852/3600 -> m/s.
DRIVE: dict[float, tuple[float, float, float, float]] = {
    _epoch(0): (37.775, -122.420, 0.0, 30.0),
    _epoch(1): (37.776, -122.419, 5.0, 45.0),
    _epoch(2): (37.777, -122.418, 10.0, 44.5),
    _epoch(3): (37.778, -122.417, 15.0, 47.0),
    _epoch(4): (37.779, -122.416, 15.0, 90.0),
    _epoch(5): (37.780, -122.415, 10.0, 180.0),
}


def assert_matches_drive(fix: GpsFix, source: str) -> None:
    assert fix.source == source
    assert fix.has_fix
    assert fix.fix_time in DRIVE, f"fix time {fix.fix_time} is not one of the log's epochs"
    lat, lon, speed, heading = DRIVE[fix.fix_time]
    assert fix.lat == pytest.approx(lat, abs=1e-6)
    assert fix.lon == pytest.approx(lon, abs=1e-6)
    assert fix.speed_mps == pytest.approx(speed, abs=0.01)
    assert fix.heading_deg == pytest.approx(heading, abs=1e-6)


def drive_sentences() -> list[str]:
    return [line for line in DRIVE_LOG.read_text().splitlines() if line.startswith("$")]


def nmea(body: str) -> str:
    return f"${body}*{reduce(lambda acc, ch: acc ^ ord(ch), body, 0):02X}"


def wait_for(
    predicate: Callable[[], Any], what: str, timeout_s: float = 8.0, context: Callable[[], str] = str
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}. {context()}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ManualClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------
# gpsfake


def require_tool(name: str, extra_path: str = "") -> str:
    """The tool's path; a missing tool skips locally and fails in CI."""
    search = os.environ.get("PATH", "") + extra_path
    found = shutil.which(name, path=search)
    if found:
        return found
    message = f"{name} is not installed: {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class GpsFake:
    """One gpsfake (and the gpsd it runs) replaying a log in a loop on a loopback port."""

    def __init__(self, executable: str, log: Path, port: int, stderr_path: Path) -> None:
        self.port = port
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        env = {
            **os.environ,
            "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin",
            # gpsd leaves its control socket behind in TMPDIR when gpsfake kills it.
            "TMPDIR": str(stderr_path.parent),
        }
        self.proc = subprocess.Popen(
            [executable, "-q", "-P", str(port), "-c", "0.1", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=env,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGINT lets gpsfake kill its gpsd; SIGTERM would orphan it still holding the port.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._stderr.close()

    def describe(self) -> str:
        self._stderr.flush()
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"gpsfake on port {self.port} {state}; stderr: {self.stderr_path.read_text()[-500:]!r}"


@pytest.fixture(scope="session")
def gpsfake_executable() -> str:
    require_tool("gpsd", ":/usr/sbin:/sbin")
    return require_tool("gpsfake")


@pytest.fixture
def gpsfake(gpsfake_executable: str, tmp_path: Path) -> Iterator[Callable[[Path, int], GpsFake]]:
    started: list[GpsFake] = []

    def start(log: Path, port: int) -> GpsFake:
        fake = GpsFake(gpsfake_executable, log, port, tmp_path / f"gpsfake-{len(started)}.err")
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


@pytest.fixture
def run() -> Iterator[Callable[[GpsSource], GpsSource]]:
    """Starts a source and stops it at teardown, even when the test fails."""
    sources: list[GpsSource] = []

    def start(source: GpsSource) -> GpsSource:
        sources.append(source)
        source.start()
        return source

    yield start
    for source in reversed(sources):
        source.stop()


def gpsd_source(port: int, **kwargs: Any) -> GpsdSource:
    kwargs.setdefault("reconnect_backoff_initial_s", 0.05)
    kwargs.setdefault("reconnect_backoff_max_s", 0.2)
    return GpsdSource("127.0.0.1", port, **kwargs)


# ---------------------------------------------------------------------------------------------
# pty receivers


class PtyReceiver:
    """A pty pair standing in for a USB receiver: tests write NMEA into the master end and the
    source opens the slave end by path with real pyserial."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo back into the master while nobody has the port open
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self._fds: tuple[int, ...] = (self.master, self.slave)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, *lines: str | bytes, end: bytes = b"\r\n") -> None:
        if not self._fds:
            raise RuntimeError("the pty is closed")
        for line in lines:
            data = line.encode("ascii") if isinstance(line, str) else line
            # BlockingIOError: nobody is reading and the tty buffer is full, like a receiver nobody hears.
            with contextlib.suppress(BlockingIOError):
                os.write(self.master, data + end)

    def repeat(self, lines: list[str], interval_s: float = 0.02) -> None:
        """Keep sending, like a receiver at a fast rate; needed because opening a port flushes it."""

        def loop() -> None:
            while not self._stop.is_set():
                for line in lines:
                    if self._stop.wait(interval_s):
                        return
                    self.send(line)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        # Close once only: a second os.close() could hit an fd number the source has reused.
        fds, self._fds = self._fds, ()
        for fd in fds:
            os.close(fd)


@pytest.fixture
def receiver() -> Iterator[PtyReceiver]:
    pty = PtyReceiver()
    yield pty
    pty.close()


def nmea_source(device: str, **kwargs: Any) -> NmeaSerialSource:
    kwargs.setdefault("reconnect_backoff_initial_s", 0.05)
    kwargs.setdefault("reconnect_backoff_max_s", 0.2)
    kwargs.setdefault("read_timeout_s", 0.05)
    return NmeaSerialSource(device, 9600, **kwargs)


# ---------------------------------------------------------------------------------------------
# gpsd through gpsfake


def test_gpsd_fix_has_the_logs_position_speed_heading_and_time(gpsfake, run) -> None:
    port = free_port()
    fake = gpsfake(DRIVE_LOG, port)
    source = run(gpsd_source(port))

    seen: set[float] = set()
    for _ in range(3):
        fix = wait_for(
            lambda: (f := source.current()).fix_time is not None and f.fix_time not in seen and f,
            "a timed fix from gpsd",
            context=fake.describe,
        )
        assert_matches_drive(fix, "gpsd")
        seen.add(fix.fix_time)
    # gpsd reports 2D on the epoch's RMC and 3D once the GGA brought the altitude.
    wait_for(lambda: source.current().mode == FixMode.FIX_3D, "a 3D fix from gpsd")
    status = source.status()
    assert status.state == "connected" and status.connected and status.cause is None


def test_gpsd_no_fix_log_gives_no_fix_never_zero_zero(gpsfake, run) -> None:
    port = free_port()
    fake = gpsfake(NOFIX_LOG, port)
    source = run(gpsd_source(port))

    # Past a full pass of the log, so both the empty and the zero-filled sentences were read.
    wait_for(lambda: source.status().reports >= 8, "no-fix reports from gpsd", context=fake.describe)
    fix = source.current()
    assert fix == NO_FIX
    assert fix.lat is None and fix.lon is None and not fix.has_fix
    assert source.status().connected


def test_gpsd_fix_older_than_max_age_becomes_no_fix(gpsfake, run) -> None:
    clock = ManualClock()
    port = free_port()
    fake = gpsfake(DRIVE_LOG, port)
    source = run(gpsd_source(port, max_fix_age_s=3.0, clock=clock))
    wait_for(lambda: source.current().has_fix, "a fix from gpsd", context=fake.describe)

    fake.stop()  # the receiver falls silent; nothing refreshes the fix any more
    wait_for(lambda: not source.status().connected, "the gpsd connection to drop")
    assert source.current().has_fix  # the last fix is kept while it is young

    clock.now += 2.9
    assert source.current().has_fix
    clock.now += 0.2
    assert source.current() == NO_FIX


def test_gpsd_going_away_is_degraded_then_reconnected_when_it_returns(gpsfake, run) -> None:
    port = free_port()
    first = gpsfake(DRIVE_LOG, port)
    source = run(gpsd_source(port))
    wait_for(lambda: source.current().has_fix, "a fix from gpsd", context=first.describe)

    first.stop()
    status = wait_for(lambda: (s := source.status()).state == "degraded" and s, "degraded status")
    assert not status.connected
    assert f"127.0.0.1:{port}" in status.cause
    reports_while_down = source.status().reports

    second = gpsfake(DRIVE_LOG, port)
    wait_for(
        lambda: source.status().reports > reports_while_down + 2,
        "reports after gpsd came back",
        context=second.describe,
    )
    status = source.status()
    assert status.state == "connected" and status.cause is None
    assert status.reconnects >= 1
    assert_matches_drive(wait_for(lambda: (f := source.current()).fix_time and f, "a timed fix"), "gpsd")


def test_gpsd_unreachable_is_degraded_with_cause_and_no_fix(run) -> None:
    port = free_port()  # nothing listens here
    source = run(gpsd_source(port))
    status = wait_for(lambda: (s := source.status()).cause not in (None, "connecting") and s, "a cause")
    assert status.state == "degraded" and not status.connected
    assert "cannot connect to gpsd" in status.cause and str(port) in status.cause
    assert source.current() == NO_FIX


def test_peer_that_is_not_gpsd_is_degraded_as_not_speaking_gpsd(run) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.1)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            source = run(gpsd_source(server.getsockname()[1]))
            status = wait_for(
                lambda: (s := source.status()).cause not in (None, "connecting") and s, "a cause"
            )
            assert "does not speak the gpsd protocol" in status.cause
            assert source.current() == NO_FIX
            source.stop()
        finally:
            stop.set()
            thread.join(5)


def test_tpv_without_a_real_position_is_no_fix() -> None:
    assert fix_from_tpv({"class": "TPV", "mode": 1, "lat": 37.7, "lon": -122.4}) == NO_FIX
    assert fix_from_tpv({"class": "TPV", "mode": 0}) == NO_FIX
    assert fix_from_tpv({"class": "TPV", "mode": 3, "lat": 0.0, "lon": 0.0}) == NO_FIX
    assert fix_from_tpv({"class": "TPV", "mode": 3, "lat": 37.7}) == NO_FIX
    assert fix_from_tpv({"class": "TPV", "mode": 2, "lat": 91.0, "lon": 0.5}) == NO_FIX
    fix = fix_from_tpv(
        {"class": "TPV", "mode": 2, "lat": 37.7, "lon": -122.4, "time": "2024-03-15T12:00:05Z"}
    )
    assert fix.mode == FixMode.FIX_2D and fix.fix_time == _epoch(5)
    assert fix.speed_mps is None and fix.heading_deg is None


# ---------------------------------------------------------------------------------------------
# NMEA over a real tty


def test_nmea_over_pty_gives_fix_with_position_speed_heading_and_time(receiver, run) -> None:
    receiver.repeat(drive_sentences())
    source = run(nmea_source(receiver.path))

    seen: set[float] = set()
    for _ in range(3):
        fix = wait_for(
            lambda: (f := source.current()).has_fix and f.fix_time not in seen and f, "an NMEA fix"
        )
        assert_matches_drive(fix, "nmea")
        seen.add(fix.fix_time)
    # RMC then GGA per epoch: whenever the GGA of the RMC's second has been read, the fix is 3D.
    wait_for(lambda: source.current().mode == FixMode.FIX_3D, "a 3D fix")
    assert source.status().state == "connected"
    assert source.status().bad_checksum == 0 and source.status().garbage == 0


def test_nmea_bad_checksum_and_garbage_lines_are_counted_and_skipped(receiver, run) -> None:
    source = run(nmea_source(receiver.path))
    wait_for(lambda: source.status().connected, "the port to open")
    good = drive_sentences()
    rmc0, rmc1, rmc2 = good[0], good[2], good[4]
    # The second epoch with its latitude changed but the checksum left: one flipped digit on the wire.
    corrupted = rmc1.replace("3746.5600", "3746.9600")
    assert corrupted != rmc1

    receiver.send(rmc0, "hello, not NMEA", b"\x00\xff\xfe binary noise", "$GPRMC,120001.00,A*ZZ", corrupted)
    wait_for(lambda: source.status().bad_checksum == 1, "the corrupted sentence to be counted")
    fix = source.current()
    assert fix.fix_time == _epoch(0)  # the corrupted epoch-1 sentence was not used
    assert_matches_drive(fix, "nmea")
    assert source.status().garbage == 3

    receiver.send(rmc2)
    fix = wait_for(lambda: (f := source.current()).fix_time == _epoch(2) and f, "the next good sentence")
    assert_matches_drive(fix, "nmea")
    status = source.status()
    assert (status.bad_checksum, status.garbage) == (1, 3)


def test_nmea_sentence_split_across_reads_is_reassembled(receiver, run) -> None:
    source = run(nmea_source(receiver.path))
    wait_for(lambda: source.status().connected, "the port to open")
    rmc = drive_sentences()[2]
    receiver.send(rmc[:20], end=b"")
    time.sleep(0.15)  # longer than the port's read timeout, so the halves arrive in separate reads
    receiver.send(rmc[20:])
    fix = wait_for(lambda: (f := source.current()).has_fix and f, "the reassembled sentence")
    assert fix.fix_time == _epoch(1)
    assert_matches_drive(fix, "nmea")
    assert source.status().garbage == 0


def test_nmea_receiver_losing_its_fix_gives_no_fix_at_once_not_zero_zero(receiver, run) -> None:
    source = run(nmea_source(receiver.path, max_fix_age_s=60.0))
    wait_for(lambda: source.status().connected, "the port to open")
    rmc0 = drive_sentences()[0]
    void_lines = [line for line in NOFIX_LOG.read_text().splitlines() if line.startswith("$")]

    for void in (void_lines[0], void_lines[6]):  # empty fields, then zero-filled fields
        receiver.send(rmc0)
        wait_for(lambda: source.current().has_fix, "a fix")
        before = source.status().reports
        receiver.send(void)
        wait_for(lambda b=before: source.status().reports > b, "the void sentence to be read")
        fix = source.current()
        assert fix == NO_FIX and fix.lat is None and fix.lon is None


def test_nmea_gga_quality_zero_overrides_an_rmc_claiming_a_fix(receiver, run) -> None:
    source = run(nmea_source(receiver.path, max_fix_age_s=60.0))
    wait_for(lambda: source.status().connected, "the port to open")
    rmc0 = drive_sentences()[0]
    receiver.send(rmc0)
    fix = wait_for(lambda: (f := source.current()).has_fix and f, "a fix from RMC alone")
    assert fix.mode == FixMode.FIX_2D
    receiver.send(nmea("GPGGA,120000.00,3746.5000,N,12225.2000,W,0,00,99.99,,,,,,"))
    wait_for(lambda: source.status().reports >= 2, "the GGA to be read")
    assert source.current() == NO_FIX


def test_nmea_gga_of_a_later_second_does_not_refresh_an_old_rmc_position(receiver, run) -> None:
    clock = ManualClock()
    source = run(nmea_source(receiver.path, max_fix_age_s=3.0, clock=clock))
    wait_for(lambda: source.status().connected, "the port to open")
    receiver.send(drive_sentences()[0])
    wait_for(lambda: source.current().has_fix, "a fix")
    clock.now += 3.5
    assert source.current() == NO_FIX
    # The receiver stopped sending RMC but still sends GGA with a fix: no new RMC, no fresh fix.
    receiver.send(nmea("GPGGA,120004.00,3746.7400,N,12224.9600,W,1,08,0.9,16.0,M,-25.0,M,,"))
    wait_for(lambda: source.status().reports >= 2, "the GGA to be read")
    assert source.current() == NO_FIX


def test_unplugged_nmea_receiver_is_degraded_then_reopened_when_it_returns(tmp_path, run) -> None:
    link = tmp_path / "gps0"  # what a udev rule would make
    first, second = PtyReceiver(), PtyReceiver()
    try:
        link.symlink_to(first.path)
        first.repeat(drive_sentences())
        source = run(nmea_source(str(link)))
        wait_for(lambda: source.current().has_fix, "a fix from the first receiver")

        first.close()  # unplugged: reads on the port fail with EIO, reopening finds no device
        status = wait_for(lambda: (s := source.status()).state == "degraded" and s, "degraded status")
        assert str(link) in status.cause
        link.unlink()
        link.symlink_to(second.path)
        second.repeat(drive_sentences())
        wait_for(lambda: source.status().state == "connected" and source.current().has_fix, "a fix again")
        assert source.status().reconnects >= 1
    finally:
        first.close()
        second.close()


def test_missing_nmea_device_is_degraded_with_cause(tmp_path, run) -> None:
    device = tmp_path / "ttyACM9"
    source = run(nmea_source(str(device)))
    status = wait_for(lambda: (s := source.status()).cause not in (None, "connecting") and s, "a cause")
    assert status.state == "degraded" and str(device) in status.cause
    assert source.current() == NO_FIX


# ---------------------------------------------------------------------------------------------
# fallback and wiring


def test_fallback_reads_nmea_while_gpsd_is_down_and_releases_it_when_gpsd_returns(
    gpsfake, receiver, run
) -> None:
    port = free_port()  # gpsd is not running yet
    receiver.repeat(drive_sentences())
    gpsd, serial_rx = gpsd_source(port), nmea_source(receiver.path)
    source = run(FallbackGpsSource(gpsd, serial_rx, fallback_after_s=0.2, poll_interval_s=0.02))

    fix = wait_for(lambda: (f := source.current()).source == "nmea" and f, "an NMEA fix while gpsd is down")
    assert_matches_drive(fix, "nmea")
    assert source.fallback_active
    status = source.status()
    assert status.state == "degraded" and "cannot connect to gpsd" in status.cause

    fake = gpsfake(DRIVE_LOG, port)
    fix = wait_for(
        lambda: (f := source.current()).source == "gpsd" and f, "a gpsd fix", context=fake.describe
    )
    assert_matches_drive(wait_for(lambda: (f := source.current()).fix_time and f, "a timed fix"), "gpsd")
    wait_for(lambda: serial_rx.status().state == "stopped", "the serial port to be released")
    assert not source.fallback_active
    assert source.status().state == "connected"


def test_fallback_never_opens_the_serial_port_while_gpsd_is_up(gpsfake, receiver, run) -> None:
    port = free_port()
    fake = gpsfake(DRIVE_LOG, port)
    serial_rx = nmea_source(receiver.path)
    source = run(FallbackGpsSource(gpsd_source(port), serial_rx, fallback_after_s=5.0, poll_interval_s=0.02))
    wait_for(lambda: source.current().source == "gpsd", "a gpsd fix", context=fake.describe)
    assert serial_rx.status().state == "stopped" and serial_rx.status().reports == 0


def test_make_gps_builds_the_configured_source_and_none_never_has_a_fix() -> None:
    none = make_gps(GpsConfig(source="none"))
    assert isinstance(none, NullGpsSource)
    none.start()
    assert none.current() == NO_FIX and none.status().state == "disabled"
    none.stop()

    fallback = make_gps(GpsConfig(source="gpsd", gpsd_port=2950, nmea_device="/dev/ttyUSB3"))
    assert isinstance(fallback, FallbackGpsSource)
    assert isinstance(fallback.primary, GpsdSource) and fallback.primary.port == 2950
    assert isinstance(fallback.fallback, NmeaSerialSource) and fallback.fallback.device == "/dev/ttyUSB3"

    gpsd_only = make_gps(GpsConfig(source="gpsd", nmea_fallback=False))
    assert isinstance(gpsd_only, GpsdSource)
    serial_only = make_gps(GpsConfig(source="nmea", nmea_baud=4800))
    assert isinstance(serial_only, NmeaSerialSource) and serial_only.baud == 4800


def test_missing_gpsfake_fails_under_ci_instead_of_skipping(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"install-system-deps\.sh"):
        require_tool("gpsfake")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"install-system-deps\.sh"):
        require_tool("gpsfake")
