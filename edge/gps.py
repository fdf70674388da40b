"""The GPS stage: where the car is when a plate is read.

Sources, one `GpsSource` interface (`start`, `stop`, `current`, `status`):
- `GpsdSource`: a client of gpsd (the recommended set-up), through the `gpsdclient` library.
- `NmeaSerialSource`: a serial NMEA 0183 receiver read directly (pyserial + pynmea2).
- `FallbackGpsSource`: gpsd, and the NMEA receiver only while gpsd is unreachable.
- `NullGpsSource`: no receiver at all (`gps.source = "none"`).
`make_gps(config)` picks one from `[gps]`.

Guarantees:
- `current()` never blocks on I/O and is safe from any thread: it returns the latest fix, or
  `edge.types.NO_FIX` when there is none, when the receiver reports no fix (gpsd mode 0/1, RMC
  status V, GGA quality 0), or when the latest fix is older than `max_fix_age_s` by the injected
  monotonic clock. No fix is never 0,0: a receiver reporting exactly 0,0 is treated as no fix.
- A receiver that goes away (gpsd stopped, USB receiver unplugged) never raises into the caller:
  the background thread reconnects with capped exponential backoff and `status()` says
  "degraded" with the cause until it is back.
- Nothing is dropped silently: bad NMEA checksums, garbage lines and undecodable gpsd reports
  are counted in `status()` and logged at most once per `LOG_INTERVAL_S` per kind.
- The NMEA fallback opens the serial device only while gpsd is unreachable and closes it as soon
  as gpsd is back, because gpsd normally owns that same device and two readers of one tty would
  each get half the sentences.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime
from typing import Any, Literal, Protocol

import pynmea2
import serial
from gpsdclient import GPSDClient

from edge.config import GpsConfig
from edge.ratelog import RateLimitedLog
from edge.types import NO_FIX, FixMode, GpsFix

log = logging.getLogger(__name__)


class GpsError(Exception):
    """A GPS source cannot deliver positions."""


class GpsUnavailable(GpsError):
    """Transient: gpsd or the serial device is not reachable right now; retried with backoff."""


class GpsProtocolError(GpsError):
    """Permanent until someone fixes the set-up: the peer does not speak gpsd's protocol.

    Still retried (at the backoff cap), because the daemon must keep running without GPS.
    """


KNOTS_TO_MPS = 1852.0 / 3600.0
LOG_INTERVAL_S = 60.0
_MAX_LINE_BYTES = 1024  # an NMEA sentence is at most 82 characters; anything longer is noise

Clock = Callable[[], float]
State = Literal["connected", "degraded", "stopped", "disabled"]


@dataclass(frozen=True, kw_only=True)
class GpsStatus:
    """Health of a source, for the status page and logs."""

    source: str  # "gpsd", "nmea", "none"
    state: State
    cause: str | None = None  # why it is degraded; None when connected
    connected: bool = False  # gpsd socket up / serial device open
    reports: int = 0  # position reports (TPV, RMC, GGA) accepted
    bad_checksum: int = 0  # NMEA sentences whose checksum did not match
    garbage: int = 0  # lines that were not a usable report
    reconnects: int = 0  # connections made after the first


class GpsSource(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def current(self) -> GpsFix: ...

    def status(self) -> GpsStatus: ...


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _position_or_none(lat: float | None, lon: float | None) -> tuple[float, float] | None:
    if lat is None or lon is None or not (-90.0 <= lat <= 90.0) or not (-180.0 <= lon <= 180.0):
        return None
    if lat == 0.0 and lon == 0.0:
        # Receivers without a fix fill the fields with zeros; a patrol car is never at 0,0.
        return None
    return lat, lon


def _parse_gpsd_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # gpsd time is always UTC
    return parsed.timestamp()


def fix_from_tpv(report: Mapping[str, Any]) -> GpsFix:
    """A gpsd TPV report as a fix; NO_FIX for mode 0/1 or a report without a usable position."""
    mode = report.get("mode")
    if not isinstance(mode, int) or mode < FixMode.FIX_2D:
        return NO_FIX
    position = _position_or_none(_finite(report.get("lat")), _finite(report.get("lon")))
    if position is None:
        return NO_FIX
    speed = _finite(report.get("speed"))
    track = _finite(report.get("track"))
    return GpsFix(
        mode=FixMode.FIX_3D if mode >= FixMode.FIX_3D else FixMode.FIX_2D,
        lat=position[0],
        lon=position[1],
        speed_mps=speed if speed is not None and speed >= 0 else None,
        heading_deg=track % 360.0 if track is not None else None,
        fix_time=_parse_gpsd_time(report.get("time")),
        source="gpsd",
    )


class _LatestFix:
    """The newest fix and the monotonic time it arrived, behind a lock."""

    def __init__(self, clock: Clock, max_age_s: float) -> None:
        self._clock = clock
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._fix: GpsFix = NO_FIX
        self._received: float | None = None

    def publish(self, fix: GpsFix) -> None:
        now = self._clock()
        with self._lock:
            self._fix = fix
            self._received = now

    def clear(self) -> None:
        with self._lock:
            self._fix = NO_FIX
            self._received = None

    def current(self) -> GpsFix:
        now = self._clock()
        with self._lock:
            fix, received = self._fix, self._received
        if received is None or not fix.has_fix or now - received > self._max_age_s:
            return NO_FIX
        return fix


class _BackgroundSource:
    """A source fed by one restartable reader thread. Subclasses write `_run` and `_interrupt`."""

    kind = "none"

    def __init__(self, *, max_fix_age_s: float, clock: Clock, thread_name: str) -> None:
        if max_fix_age_s <= 0:
            raise ValueError("max_fix_age_s must be positive")
        self._clock = clock
        self._latest = _LatestFix(clock, max_fix_age_s)
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._logs = RateLimitedLog(log, LOG_INTERVAL_S, clock)
        self._connected = False
        self._cause: str | None = None
        self._reports = 0
        self._bad_checksum = 0
        self._garbage = 0
        self._connections = 0
        self._last_report: float | None = None  # monotonic; None until the first report

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop_event = threading.Event()
        self._latest.clear()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop_event,), name=self._thread_name, daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop_event.set()
        self._interrupt()
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("%s reader did not stop within %.1f s", self.kind, timeout_s)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def current(self) -> GpsFix:
        return self._latest.current()

    def _run(self, stop: threading.Event) -> None:
        raise NotImplementedError

    def _interrupt(self) -> None:
        raise NotImplementedError

    def _silence_cause(self, now: float) -> str | None:
        return None

    def status(self) -> GpsStatus:
        now = self._clock()
        with self._lock:
            connected, cause = self._connected, self._cause
            counters = {
                "reports": self._reports,
                "bad_checksum": self._bad_checksum,
                "garbage": self._garbage,
                "reconnects": max(0, self._connections - 1),
            }
        if not self.running:
            return GpsStatus(source=self.kind, state="stopped", cause=cause, connected=False, **counters)
        if connected:
            cause = self._silence_cause(now)
            state: State = "degraded" if cause else "connected"
        else:
            state = "degraded"
            cause = cause or "connecting"
        return GpsStatus(source=self.kind, state=state, cause=cause, connected=connected, **counters)

    def _set_connected(self) -> None:
        with self._lock:
            self._connected = True
            self._connections += 1
            self._cause = None

    def _set_disconnected(self, error: GpsError) -> None:
        with self._lock:
            self._connected = False
            self._cause = str(error)

    def _count_report(self) -> None:
        now = self._clock()
        with self._lock:
            self._reports += 1
            self._last_report = now

    def _count_bad(self, kind: Literal["bad_checksum", "garbage"], detail: str) -> None:
        with self._lock:
            if kind == "bad_checksum":
                self._bad_checksum += 1
                total = self._bad_checksum
            else:
                self._garbage += 1
                total = self._garbage
        self._logs.log(
            logging.WARNING, kind, "%s: skipped a %s line (%d so far): %s", self.kind, kind, total, detail
        )

    def _backoff_wait(self, stop: threading.Event, error: GpsError, delay_s: float) -> None:
        level = logging.ERROR if isinstance(error, GpsProtocolError) else logging.WARNING
        self._logs.log(level, "disconnected", "%s: %s; retrying in %.1f s", self.kind, error, delay_s)
        stop.wait(delay_s)


class GpsdSource(_BackgroundSource):
    """Positions from gpsd's TPV reports, over its JSON socket protocol.

    A silent gpsd (connected but no TPV for `read_timeout_s`, e.g. its receiver was unplugged) is
    reported as degraded, and the connection is remade, which also gets past a hung gpsd.
    """

    kind = "gpsd"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2947,
        *,
        max_fix_age_s: float = 3.0,
        reconnect_backoff_max_s: float = 30.0,
        reconnect_backoff_initial_s: float = 0.5,
        read_timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
        client_factory: Callable[..., GPSDClient] = GPSDClient,
    ) -> None:
        super().__init__(max_fix_age_s=max_fix_age_s, clock=clock, thread_name=f"gpsd-{host}:{port}")
        self.host = host
        self.port = port
        self._backoff_max_s = reconnect_backoff_max_s
        self._backoff_initial_s = min(reconnect_backoff_initial_s, reconnect_backoff_max_s)
        self._read_timeout_s = read_timeout_s
        self._client_factory = client_factory
        self._client: GPSDClient | None = None
        self._first_connected: float | None = None

    def _run(self, stop: threading.Event) -> None:
        try:
            self._reconnect_loop(stop)
        finally:
            with self._lock:
                self._connected = False

    def _reconnect_loop(self, stop: threading.Event) -> None:
        backoff = self._backoff_initial_s
        while not stop.is_set():
            client = self._client_factory(host=self.host, port=self.port, timeout=self._read_timeout_s)
            with self._lock:
                self._client = client
            try:
                self._session(client, stop)
                if stop.is_set():
                    return
                raise GpsUnavailable(f"gpsd at {self.host}:{self.port} closed the connection")
            except GpsError as exc:
                with self._lock:
                    was_connected = self._connected
                self._set_disconnected(exc)
                if stop.is_set():
                    return
                if was_connected:
                    backoff = self._backoff_initial_s
                elif isinstance(exc, GpsProtocolError):
                    backoff = self._backoff_max_s
                self._backoff_wait(stop, exc, backoff)
                backoff = min(backoff * 2, self._backoff_max_s)
            finally:
                with self._lock:
                    self._client = None
                client.close()

    def _session(self, client: GPSDClient, stop: threading.Event) -> None:
        """Read one connection until it ends; gpsdclient's errors become GpsError here."""
        where = f"{self.host}:{self.port}"
        stream = client.json_stream(filter=["TPV", "VERSION"])
        try:
            for line in stream:
                if stop.is_set():
                    return
                self._handle_line(line)
        except TimeoutError as exc:
            raise GpsUnavailable(
                f"gpsd at {where} sent no report for {self._read_timeout_s:g} s; reconnecting"
            ) from exc
        except OSError as exc:
            if exc.errno is None and "version header" in str(exc):
                first = str(exc).split("\n")[1][:60] if "\n" in str(exc) else ""
                raise GpsProtocolError(f"{where} does not speak the gpsd protocol (sent {first!r})") from exc
            if stop.is_set():
                return
            reason = exc.strerror or str(exc) or type(exc).__name__
            if not self._connected:
                raise GpsUnavailable(f"cannot connect to gpsd at {where}: {reason}") from exc
            raise GpsUnavailable(f"lost the connection to gpsd at {where}: {reason}") from exc
        except UnicodeDecodeError as exc:
            raise GpsUnavailable(f"gpsd at {where} sent bytes that are not UTF-8") from exc
        finally:
            stream.close()  # releases gpsdclient's socket file now, not at garbage collection

    def _handle_line(self, line: str) -> None:
        try:
            report = json.loads(line)
        except ValueError:
            self._count_bad("garbage", f"undecodable gpsd report {line[:80]!r}")
            return
        if not isinstance(report, dict):
            self._count_bad("garbage", f"gpsd report is not an object: {line[:80]!r}")
            return
        if report.get("class") == "VERSION":
            self._set_connected()
            with self._lock:
                if self._first_connected is None:
                    self._first_connected = self._clock()
            log.info("connected to gpsd %s at %s:%s", report.get("release", "?"), self.host, self.port)
            return
        if report.get("class") != "TPV":
            return  # the class filter is a regex on the raw text; a nested match is not a TPV
        fix = fix_from_tpv(report)
        self._count_report()
        self._latest.publish(fix)

    def _interrupt(self) -> None:
        with self._lock:
            client = self._client
        sock = getattr(client, "sock", None)
        if sock is None:
            return
        # Wakes the reader blocked in recv(); close() from another thread would not. OSError: the
        # reader closed it first.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _silence_cause(self, now: float) -> str | None:
        with self._lock:
            since = self._last_report if self._last_report is not None else self._first_connected
        if since is not None and now - since > self._read_timeout_s:
            return f"connected to gpsd but no position report for {now - since:.0f} s"
        return None


class SerialPort(Protocol):
    """What NmeaSerialSource needs of a pyserial `Serial`."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def close(self) -> None: ...


def open_serial(device: str, baud: int, timeout_s: float) -> SerialPort:
    return serial.Serial(port=device, baudrate=baud, timeout=timeout_s)


@dataclass(frozen=True)
class _Rmc:
    time_of_day: dtime
    valid: bool
    position: tuple[float, float] | None
    speed_mps: float | None
    heading_deg: float | None
    fix_time: float | None


@dataclass(frozen=True)
class _Gga:
    time_of_day: dtime
    quality: int
    has_altitude: bool


class NmeaSerialSource(_BackgroundSource):
    """Positions from a serial NMEA 0183 receiver: RMC for position, speed, course and time; GGA
    for fix quality (quality 0 overrides an RMC that claims a fix; an altitude makes it 3D).

    Every sentence must carry a valid checksum: on a serial line a flipped bit would otherwise
    move the car.
    """

    kind = "nmea"

    def __init__(
        self,
        device: str = "/dev/ttyACM0",
        baud: int = 9600,
        *,
        max_fix_age_s: float = 3.0,
        reconnect_backoff_max_s: float = 30.0,
        reconnect_backoff_initial_s: float = 0.5,
        read_timeout_s: float = 0.2,
        silence_timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
        serial_factory: Callable[[str, int, float], SerialPort] = open_serial,
    ) -> None:
        super().__init__(max_fix_age_s=max_fix_age_s, clock=clock, thread_name=f"nmea-{device}")
        self.device = device
        self.baud = baud
        self._backoff_max_s = reconnect_backoff_max_s
        self._backoff_initial_s = min(reconnect_backoff_initial_s, reconnect_backoff_max_s)
        self._read_timeout_s = read_timeout_s
        self._silence_timeout_s = silence_timeout_s
        self._serial_factory = serial_factory
        self._port: SerialPort | None = None
        self._opened_at: float | None = None
        self._rmc: _Rmc | None = None
        self._gga: _Gga | None = None

    def _run(self, stop: threading.Event) -> None:
        backoff = self._backoff_initial_s
        self._rmc = self._gga = None
        while not stop.is_set():
            port: SerialPort | None = None
            try:
                port = self._open()
                with self._lock:
                    self._port = port
                    self._opened_at = self._clock()
                self._set_connected()
                log.info("reading NMEA from %s at %d baud", self.device, self.baud)
                backoff = self._backoff_initial_s
                self._read_loop(port, stop)
            except GpsError as exc:
                self._set_disconnected(exc)
                if stop.is_set():
                    break
                self._backoff_wait(stop, exc, backoff)
                backoff = min(backoff * 2, self._backoff_max_s)
            finally:
                with self._lock:
                    self._port = None
                if port is not None:
                    self._close(port)
        with self._lock:
            self._connected = False

    def _close(self, port: SerialPort) -> None:
        try:
            port.close()
        except (serial.SerialException, OSError) as exc:
            # An unplugged USB device can fail even this; the fd is gone either way.
            self._logs.log(logging.WARNING, "close", "nmea: closing %s failed: %s", self.device, exc)

    def _open(self) -> SerialPort:
        try:
            return self._serial_factory(self.device, self.baud, self._read_timeout_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise GpsUnavailable(f"cannot open NMEA device {self.device}: {exc}") from exc

    def _read_loop(self, port: SerialPort, stop: threading.Event) -> None:
        pending = bytearray()
        while not stop.is_set():
            try:
                chunk = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                if stop.is_set():
                    return
                raise GpsUnavailable(f"NMEA device {self.device} failed: {exc}") from exc
            if not chunk:
                continue
            pending += chunk
            *lines, rest = pending.split(b"\n")
            pending = bytearray(rest)
            for line in lines:
                self._handle_line(bytes(line))
            if len(pending) > _MAX_LINE_BYTES:
                self._count_bad("garbage", f"{len(pending)} bytes without a line end")
                pending.clear()

    def _interrupt(self) -> None:
        with self._lock:
            port = self._port
        cancel = getattr(port, "cancel_read", None)
        if cancel is not None:
            # On failure the reader's short read timeout ends the read soon anyway.
            with contextlib.suppress(serial.SerialException, OSError):
                cancel()

    def _silence_cause(self, now: float) -> str | None:
        with self._lock:
            since = self._last_report if self._last_report is not None else self._opened_at
            if since is not None and self._opened_at is not None:
                since = max(since, self._opened_at)
        if since is not None and now - since > self._silence_timeout_s:
            return f"no NMEA position sentence from {self.device} for {now - since:.0f} s"
        return None

    def _handle_line(self, raw: bytes) -> None:
        text = raw.strip(b"\r\n\x00 ")
        if not text:
            return
        try:
            line = text.decode("ascii")
        except UnicodeDecodeError:
            self._count_bad("garbage", f"non-ASCII bytes {text[:40]!r}")
            return
        if not line.startswith("$"):
            self._count_bad("garbage", repr(line[:80]))
            return
        try:
            msg = pynmea2.parse(line, check=True)
        except pynmea2.ChecksumError:
            self._count_bad("bad_checksum", repr(line[:82]))
            return
        except pynmea2.SentenceTypeError:
            return  # a well-formed sentence this stage has no use for
        except pynmea2.ParseError:
            self._count_bad("garbage", repr(line[:80]))
            return
        try:
            if isinstance(msg, pynmea2.RMC):
                self._rmc = _rmc_from(msg)
            elif isinstance(msg, pynmea2.GGA):
                self._gga = _gga_from(msg)
            else:
                return
        except ValueError as exc:
            self._count_bad("garbage", f"malformed {msg.sentence_type}: {exc}: {line[:80]!r}")
            return
        self._count_report()
        rmc, gga = self._rmc, self._gga
        gga_of_another_second = (
            isinstance(msg, pynmea2.GGA)
            and gga is not None
            and gga.quality != 0
            and (rmc is None or rmc.time_of_day != gga.time_of_day)
        )
        if gga_of_another_second:
            # It says nothing new about the last RMC's position; publishing would make an old
            # position look fresh when the receiver stops sending RMC.
            return
        self._latest.publish(self._combine())

    def _combine(self) -> GpsFix:
        rmc, gga = self._rmc, self._gga
        # GGA only speaks for the RMC of the same second; receivers order the two either way.
        same_epoch_gga = (
            gga if gga is not None and rmc is not None and gga.time_of_day == rmc.time_of_day else None
        )
        if rmc is None or not rmc.valid or rmc.position is None:
            return NO_FIX
        if same_epoch_gga is not None and same_epoch_gga.quality == 0:
            return NO_FIX
        mode = (
            FixMode.FIX_3D if same_epoch_gga is not None and same_epoch_gga.has_altitude else FixMode.FIX_2D
        )
        return GpsFix(
            mode=mode,
            lat=rmc.position[0],
            lon=rmc.position[1],
            speed_mps=rmc.speed_mps,
            heading_deg=rmc.heading_deg,
            fix_time=rmc.fix_time,
            source="nmea",
        )


def _nmea_position(msg: Any) -> tuple[float, float] | None:
    if not msg.lat or not msg.lon or msg.lat_dir not in ("N", "S") or msg.lon_dir not in ("E", "W"):
        return None  # pynmea2 would turn empty fields into 0.0
    return _position_or_none(float(msg.latitude), float(msg.longitude))


def _time_of_day(msg: Any) -> dtime:
    value = msg.timestamp
    if not isinstance(value, dtime):
        raise ValueError(f"bad time {value!r}")
    return value


def _optional_float(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, float) or not math.isfinite(value):
        raise ValueError(f"bad {what} {value!r}")
    return value


def _rmc_from(msg: pynmea2.RMC) -> _Rmc:
    time_of_day = _time_of_day(msg)
    mode_indicator = msg.mode_indicator or ""
    valid = msg.status == "A" and mode_indicator != "N"
    speed_kn = _optional_float(msg.spd_over_grnd, "speed")
    course = _optional_float(msg.true_course, "course")
    fix_time = None
    if isinstance(msg.datestamp, date):
        fix_time = datetime.combine(msg.datestamp, time_of_day.replace(tzinfo=UTC)).timestamp()
    return _Rmc(
        time_of_day=time_of_day,
        valid=valid,
        position=_nmea_position(msg) if valid else None,
        speed_mps=speed_kn * KNOTS_TO_MPS if speed_kn is not None and speed_kn >= 0 else None,
        heading_deg=course % 360.0 if course is not None else None,
        fix_time=fix_time,
    )


def _gga_from(msg: pynmea2.GGA) -> _Gga:
    quality = msg.gps_qual
    if not isinstance(quality, int):
        raise ValueError(f"bad fix quality {quality!r}")
    return _Gga(
        time_of_day=_time_of_day(msg),
        quality=quality,
        has_altitude=isinstance(msg.altitude, float),
    )


class FallbackGpsSource:
    """gpsd first; the NMEA receiver while gpsd has been unreachable for `fallback_after_s`.

    The grace period keeps a quick gpsd restart from grabbing the serial device.
    """

    def __init__(
        self,
        primary: GpsSource,
        fallback: GpsSource,
        *,
        fallback_after_s: float = 2.0,
        poll_interval_s: float = 0.25,
        clock: Clock = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self._fallback_after_s = fallback_after_s
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._fallback_active = False
        self._lock = threading.Lock()

    @property
    def fallback_active(self) -> bool:
        with self._lock:
            return self._fallback_active

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop_event = threading.Event()
        self.primary.start()
        self._thread = threading.Thread(
            target=self._watch, args=(self._stop_event,), name="gps-fallback", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self._set_fallback(False)
        self.primary.stop()

    def _watch(self, stop: threading.Event) -> None:
        down_since: float | None = None
        while not stop.is_set():
            now = self._clock()
            if self.primary.status().connected:
                down_since = None
                if self.fallback_active:
                    log.info("gpsd is back; closing the NMEA fallback")
                    self._set_fallback(False)
            else:
                down_since = now if down_since is None else down_since
                if not self.fallback_active and now - down_since >= self._fallback_after_s:
                    log.warning(
                        "gpsd unreachable for %.1f s; reading the NMEA receiver directly", now - down_since
                    )
                    self._set_fallback(True)
            stop.wait(self._poll_interval_s)

    def _set_fallback(self, active: bool) -> None:
        with self._lock:
            if self._fallback_active == active:
                return
            self._fallback_active = active
        if active:
            self.fallback.start()
        else:
            self.fallback.stop()

    def current(self) -> GpsFix:
        if self.fallback_active:
            fix = self.fallback.current()
            if fix.has_fix:
                return fix
        # gpsd's last fix is still good until it ages out, even while the fallback warms up.
        return self.primary.current()

    def status(self) -> GpsStatus:
        primary = self.primary.status()
        if not self.fallback_active:
            return primary
        nmea = self.fallback.status()
        return GpsStatus(
            source="nmea",
            state="degraded",
            cause=f"{primary.cause or 'gpsd unreachable'}; using the NMEA receiver ({nmea.state}"
            + (f": {nmea.cause})" if nmea.cause else ")"),
            connected=nmea.connected,
            reports=nmea.reports,
            bad_checksum=nmea.bad_checksum,
            garbage=nmea.garbage,
            reconnects=nmea.reconnects,
        )


class NullGpsSource:
    """No receiver fitted: every read is stored with no fix."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def current(self) -> GpsFix:
        return NO_FIX

    def status(self) -> GpsStatus:
        return GpsStatus(source="none", state="disabled", cause="gps.source is 'none'")


def make_gps(config: GpsConfig, *, clock: Clock = time.monotonic) -> GpsSource:
    """The source `[gps]` asks for, not yet started."""
    if config.source == "none":
        return NullGpsSource()
    nmea = NmeaSerialSource(
        config.nmea_device,
        config.nmea_baud,
        max_fix_age_s=config.max_fix_age_s,
        reconnect_backoff_max_s=config.reconnect_backoff_max_s,
        clock=clock,
    )
    if config.source == "nmea":
        return nmea
    gpsd = GpsdSource(
        config.gpsd_host,
        config.gpsd_port,
        max_fix_age_s=config.max_fix_age_s,
        reconnect_backoff_max_s=config.reconnect_backoff_max_s,
        clock=clock,
    )
    if not config.nmea_fallback:
        return gpsd
    return FallbackGpsSource(gpsd, nmea, clock=clock)
