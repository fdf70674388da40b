"""The device configuration: one validated tree loaded from TOML.

Every key has a default and a description; unknown keys are errors. `load_config` raises
`ConfigError` whose message lists each problem by key path (`cameras[0].fps: ...`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.toml"
PROJECT_MANIFEST = Path(__file__).resolve().parent.parent / "models" / "manifest.toml"


class ConfigError(Exception):
    """The configuration file is missing, is not TOML, or does not validate."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Section):
    id: str = Field("unenrolled", description="Device id, written by `alpr-edge enroll`.")
    data_dir: Path = Field(
        Path("var"),
        description="Where the database, crops and fetched models live. Relative paths are "
        "relative to the config file's folder.",
    )


class CameraConfig(_Section):
    id: str = Field(description="Short name of the camera, stored with every read (e.g. 'front').")
    source: Literal["picamera2", "opencv", "video", "folder"] = Field(
        description="picamera2 (Pi camera), opencv (device index or RTSP/HTTP URL), "
        "video (a file), folder (a folder of images, in name order)."
    )
    uri: str = Field(
        "",
        description="Device index ('0'), URL, file or folder path; for picamera2 the camera number.",
    )
    width: int = Field(1280, ge=64, le=8192, description="Capture width in pixels (main stream).")
    height: int = Field(720, ge=64, le=8192, description="Capture height in pixels (main stream).")
    lores_width: int = Field(640, ge=64, le=4096, description="picamera2 lores (detector) stream width.")
    lores_height: int = Field(360, ge=64, le=4096, description="picamera2 lores (detector) stream height.")
    fps: float = Field(
        30.0,
        gt=0,
        le=240,
        description="Frame rate asked of the camera; for video and folder sources the replay rate "
        "(0 is not allowed; use realtime=false to go as fast as possible).",
    )
    realtime: bool = Field(
        True,
        description="video/folder: pace frames at `fps` like a live camera. false = as fast as "
        "the pipeline takes them (evaluation).",
    )
    loop: bool = Field(False, description="video/folder: start again at the end instead of stopping.")
    enabled: bool = Field(True, description="false keeps the entry but does not open the camera.")

    @model_validator(mode="after")
    def _uri_required(self) -> CameraConfig:
        if self.source in ("video", "folder", "opencv") and not self.uri:
            raise ValueError(f"source '{self.source}' needs a uri")
        return self


class CaptureConfig(_Section):
    stall_timeout_s: float = Field(
        5.0, gt=0, description="A camera that delivers no frame for this long is reopened."
    )
    reopen_backoff_initial_s: float = Field(0.5, gt=0, description="First wait before reopening a camera.")
    reopen_backoff_max_s: float = Field(30.0, gt=0, description="Cap on the reopen wait (doubling).")
    queue_frames: int = Field(
        2,
        ge=1,
        le=64,
        description="Frames held per camera while inference is busy; older frames are dropped "
        "(and counted) so reads are never made from stale frames.",
    )


class DetectorConfig(_Section):
    backend: Literal["tflite", "onnx"] = Field(
        "tflite", description="tflite (LiteRT, falling back to tflite-runtime) or onnx (ONNX Runtime)."
    )
    model: str = Field(
        "yolov5-plate-int8",
        description="Name of the detector in models/manifest.toml; its format must match `backend`.",
    )
    threads: int = Field(2, ge=1, le=16, description="Inference threads.")
    min_score: float = Field(0.35, gt=0, lt=1, description="Detections scoring below this are ignored.")
    nms_iou: float = Field(0.45, gt=0, lt=1, description="IoU above which overlapping boxes are merged.")
    every_n_frames: int = Field(
        3,
        ge=1,
        le=30,
        description="Run the detector on one frame in N per camera while no pass needs reading "
        "(nothing in view, or every plate in view already read); 1 = every frame.",
    )
    every_n_frames_reading: int = Field(
        2,
        ge=1,
        le=30,
        description="Run the detector on one frame in N while a plate in view is still being read.",
    )


class OcrConfig(_Section):
    model: str = Field("cct-xs-v2-global", description="Name of the OCR model in models/manifest.toml.")
    threads: int = Field(1, ge=1, le=16, description="Inference threads.")
    crop_pad_x: float = Field(
        0.12, ge=0, le=1, description="Crop padding left and right, as a fraction of the box width."
    )
    crop_pad_y: float = Field(
        0.18, ge=0, le=1, description="Crop padding above and below, as a fraction of the box height."
    )
    min_plate_height_px: int = Field(
        10, ge=4, description="Plates smaller than this in the main image are tracked but not read."
    )


class TrackerConfig(_Section):
    match_iou: float = Field(0.15, ge=0, lt=1, description="Minimum IoU to link a detection to a track.")
    max_gap_s: float = Field(
        1.0, gt=0, description="A track unseen for this long is closed and its read finalised."
    )
    min_observations: int = Field(2, ge=1, description="OCR reads needed before a pass gives a read.")
    lock_observations: int = Field(
        4, ge=1, description="After this many agreeing confident reads the text is locked: OCR stops."
    )
    early_alert_observations: int = Field(
        2,
        ge=1,
        description="A pass whose confident consensus is exactly a hotlist plate is emitted (and alerts) "
        "after this many reads instead of lock_observations.",
    )
    lock_confidence: float = Field(
        0.9, gt=0, le=1, description="Per-character vote share needed to lock the text early."
    )
    min_read_confidence: float = Field(
        0.2, ge=0, le=1, description="Passes whose consensus is weaker than this give no read."
    )


class GpsConfig(_Section):
    source: Literal["gpsd", "nmea", "none"] = Field(
        "gpsd", description="gpsd (recommended), nmea (serial receiver read directly), none."
    )
    gpsd_host: str = Field("127.0.0.1", description="gpsd host.")
    gpsd_port: int = Field(2947, ge=1, le=65535, description="gpsd port.")
    nmea_device: str = Field("/dev/ttyACM0", description="Serial device of an NMEA receiver.")
    nmea_baud: int = Field(9600, ge=300, description="Serial speed of the NMEA receiver.")
    nmea_fallback: bool = Field(
        True, description="With source = gpsd: read the NMEA device directly while gpsd is unreachable."
    )
    max_fix_age_s: float = Field(
        3.0, gt=0, description="A fix older than this is stored as no fix rather than as a stale position."
    )
    reconnect_backoff_max_s: float = Field(30.0, gt=0, description="Cap on the reconnect wait.")


class HotlistConfig(_Section):
    fresh_hours: float = Field(12.0, gt=0, description="A list refreshed within this many hours is fresh.")
    stale_hours: float = Field(
        48.0, gt=0, description="Older than this a list is stale (hits marked, MDT banner); between: aging."
    )
    retro_check_hours: float = Field(
        24.0, ge=0, description="When entries are added, reads from this many hours back are re-checked."
    )
    approximate_matching: bool = Field(
        True, description="Also hit on OCR-confusion look-alikes and one missing or extra character."
    )
    priorities: dict[str, int] = Field(
        default_factory=dict,
        description="Per-list priority overrides, higher is more urgent (list kinds as in `alpr-edge "
        "hotlist status`); unnamed lists keep the built-in order, AMBER alert highest.",
    )
    check_interval_s: float = Field(
        0.5,
        gt=0,
        le=1.0,
        description="How often the daemon looks for hotlist changes to retro-check (<= 1 s).",
    )
    purge_interval_s: float = Field(
        3600.0,
        gt=0,
        description="How often expired entries, BOLOs and suppressions are purged (and audited).",
    )

    @model_validator(mode="after")
    def _limits_ordered(self) -> HotlistConfig:
        from edge.hotlist_formats import ListKind

        unknown = sorted(k for k in self.priorities if k not in {str(v) for v in ListKind})
        if unknown:
            raise ValueError(
                f"priorities: unknown list kind(s) {unknown}; known: {sorted(map(str, ListKind))}"
            )
        if self.fresh_hours > self.stale_hours:
            raise ValueError("fresh_hours must not be more than stale_hours")
        return self

    def settings(self):
        """The hotlist module's settings object."""
        from edge.hotlist import HotlistSettings

        return HotlistSettings(
            priorities=dict(self.priorities),
            fresh_hours=self.fresh_hours,
            stale_hours=self.stale_hours,
            retro_check_hours=self.retro_check_hours,
            approximate_matching=self.approximate_matching,
        )


class AlertConfig(_Section):
    enabled: bool = Field(True, description="false = no tones (hits still go to the MDT page).")
    device: str = Field(
        "default",
        description="ALSA PCM the tones play on ('default', 'plughw:1,0', ...). simpleaudio can only "
        "open 'default'; any other name is played with aplay.",
    )
    level1_min_priority: int = Field(
        80, description="Hits of at least this priority get the level-1 tone (fast two-tone, repeats)."
    )
    level2_min_priority: int = Field(
        60, description="Hits of at least this priority (below level 1) get the level-2 tone (two beeps)."
    )
    repeat_level1: bool = Field(True, description="Repeat the level-1 tone until the officer answers.")
    repeat_interval_s: float = Field(
        3.0, ge=1.0, le=60.0, description="Level-1 repeats: seconds from the start of one burst to the next."
    )
    max_repeat_minutes: float = Field(
        10.0, gt=0, description="Safety cap: a level-1 tone stops repeating this long after it first played."
    )
    volume: float = Field(0.8, gt=0, le=1, description="Tone amplitude as a fraction of full scale.")
    startup_check: bool = Field(
        True,
        description="At start, open the device with a moment of silence so a missing device shows as "
        "degraded before the first hit.",
    )

    @model_validator(mode="after")
    def _levels_ordered(self) -> AlertConfig:
        if self.level1_min_priority <= self.level2_min_priority:
            raise ValueError("level1_min_priority must be more than level2_min_priority")
        return self


class MdtConfig(_Section):
    enabled: bool = Field(True, description="Serve the MDT page (live hits, answers, searches) on host:port.")
    host: str = Field(
        "127.0.0.1",
        description="Address the MDT page listens on: the car-LAN address (loopback = this device only).",
    )
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the MDT page (0 = any free port).")
    officers_file: Path = Field(
        Path("officers.json"),
        description="Authorized-officer list (ids, PIN hashes, training), relative to device.data_dir.",
    )
    session_idle_minutes: float = Field(
        30.0, gt=0, description="A session unused for this long expires (the officer logs in again)."
    )
    session_max_hours: float = Field(
        12.0, gt=0, description="A session expires this long after login however much it is used."
    )
    max_failed_logins: int = Field(
        5, ge=1, description="Failed logins (per officer id and per client) before a lockout."
    )
    lockout_minutes: float = Field(15.0, gt=0, description="How long a lockout lasts.")
    search_requires_case_number: bool = Field(
        False, description="Recent-read searches need a case/incident number as well as a reason."
    )
    search_max_hours: float = Field(
        72.0, gt=0, description="How far back a recent-read search may look from the MDT."
    )
    hit_history_hours: float = Field(
        12.0, gt=0, description="Hits from this far back are shown when the page (re)connects."
    )


class SyncConfig(_Section):
    server_url: str = Field(
        "",
        description="The department server, https:// only; written by `alpr-edge enroll`. "
        "Empty = not enrolled.",
    )
    identity_dir: Path = Field(
        Path("identity"),
        description="Device certificate, key (0600), department CA and feed keys, relative to "
        "device.data_dir.",
    )
    batch_max_records: int = Field(1000, ge=1, le=5000, description="Records per upload batch at most.")
    batch_max_bytes: int = Field(
        524288, ge=1024, le=4194304, description="JSON bytes (before gzip) per upload batch at most."
    )
    poll_interval_s: float = Field(
        0.2, gt=0, le=5, description="While idle, how often the agent looks for new data (cheap)."
    )
    idle_interval_s: float = Field(
        30.0, gt=0, description="While idle, look at the outbox at least this often."
    )
    backoff_initial_s: float = Field(1.0, gt=0, description="First wait after a failed upload.")
    backoff_max_s: float = Field(
        300.0, gt=0, description="Cap on the wait after failures (doubling, jittered)."
    )
    retry_after_max_s: float = Field(
        3600.0, gt=0, description="A server's Retry-After is honoured up to this many seconds."
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Timeout of one request once connected.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Timeout to connect to the server.")
    heartbeat_interval_s: float = Field(60.0, gt=0, description="How often device health is sent.")
    hotlist_interval_s: float = Field(300.0, gt=0, description="How often the hotlist feed is pulled.")
    image_budget_mb_per_day: float = Field(
        100.0,
        ge=-1,
        description="Plate-crop upload budget per UTC day over LTE, in MB; 0 = never, -1 = no limit.",
    )

    @model_validator(mode="after")
    def _https_only(self) -> SyncConfig:
        if self.server_url and not self.server_url.startswith("https://"):
            raise ValueError("server_url must start with https:// (TLS verification is always on)")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s must not be more than backoff_max_s")
        return self


class StoreConfig(_Section):
    path: Path = Field(Path("alpr.db"), description="SQLite database, relative to device.data_dir.")
    busy_timeout_s: float = Field(
        20.0, gt=0, description="How long a write waits for the other process (sync agent) to finish its own."
    )
    crop_jpeg_quality: int = Field(90, ge=10, le=100, description="JPEG quality of stored plate crops.")


class ModelsConfig(_Section):
    dir: Path = Field(
        Path("models"), description="Where fetched model files live, relative to device.data_dir."
    )
    manifest: str = Field(
        "",
        description="The model manifest (names, URLs, SHA-256); empty = the project's models/manifest.toml.",
    )
    mirror: str = Field(
        "",
        description="A folder to copy models from instead of downloading (ALPR_MODEL_MIRROR overrides).",
    )


class Config(_Section):
    device: DeviceConfig = DeviceConfig()
    cameras: Annotated[list[CameraConfig], Field(min_length=1)] = Field(
        default_factory=lambda: [CameraConfig(id="front", source="picamera2", uri="0")],
        description="One [[cameras]] table per camera.",
    )
    capture: CaptureConfig = CaptureConfig()
    detector: DetectorConfig = DetectorConfig()
    ocr: OcrConfig = OcrConfig()
    tracker: TrackerConfig = TrackerConfig()
    gps: GpsConfig = GpsConfig()
    hotlist: HotlistConfig = HotlistConfig()
    sync: SyncConfig = SyncConfig()
    alert: AlertConfig = AlertConfig()
    mdt: MdtConfig = MdtConfig()
    store: StoreConfig = StoreConfig()
    models: ModelsConfig = ModelsConfig()

    base_dir: Path = Field(Path("."), exclude=True, description="Folder of the config file (set on load).")

    @model_validator(mode="after")
    def _camera_ids_unique(self) -> Config:
        seen: set[str] = set()
        for cam in self.cameras:
            if cam.id in seen:
                raise ValueError(f"camera id '{cam.id}' is used twice")
            seen.add(cam.id)
        return self

    def data_path(self, relative: Path) -> Path:
        """A path under device.data_dir, which is itself relative to the config file's folder."""
        data_dir = self.device.data_dir
        if not data_dir.is_absolute():
            data_dir = self.base_dir / data_dir
        return relative if relative.is_absolute() else data_dir / relative

    @property
    def database_path(self) -> Path:
        return self.data_path(self.store.path)

    @property
    def officers_path(self) -> Path:
        return self.data_path(self.mdt.officers_file)

    @property
    def models_dir(self) -> Path:
        return self.data_path(self.models.dir)

    @property
    def manifest_path(self) -> Path:
        if not self.models.manifest:
            return PROJECT_MANIFEST
        path = Path(self.models.manifest)
        return path if path.is_absolute() else self.base_dir / path


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} error(s) in the configuration"]
    for err in exc.errors():
        path = _key_path(tuple(p for p in err["loc"] if p not in ("function-after",)))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against config.toml)"
        lines.append(f"  {path or '(top level)'}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>", base_dir: Path = Path(".")) -> Config:
    if "base_dir" in data:
        raise ConfigError(f"{source}: base_dir: unknown key (check the spelling against config.toml)")
    try:
        return Config.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def load_config(path: Path | str | None = None) -> Config:
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, str(path), path.resolve().parent)
