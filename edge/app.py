"""The edge daemon, wired top to bottom: how a frame becomes a stored, GPS-tagged read.

    capture (CaptureManager: one thread per camera, bounded queues, reopen with backoff)
      -> Pipeline.process(frame): detect (every Nth frame) -> OCR (plates not yet locked)
         -> Tracker: one pass per vehicle, votes across frames -> ReadEmitted / PassEnded
      -> gps.current() stamped on each read
      -> Store.save_read (read + crop + outbox, one durable transaction)
      -> Hotlist.match -> Store.save_hits (hit + outbox); hotlist changes made by any process are
         noticed within `hotlist.check_interval_s` and retro-checked against recent reads
      -> each stored hit: AlertSink.raise_alert (the tone) -> MdtServer.publish_hit (the page, SSE)
      <- the officer's answer on the page: Store.save_answer (answer + audit + outbox), then
         AlertSink.acknowledge stops the tone

Start-up refuses missing or corrupt models and a bad config before any camera is opened. A
camera that fails is reopened and reported degraded; the daemon goes on. A store write that
fails transiently is retried and the read kept in memory meanwhile: nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.alert import AlertSink, make_alert
from edge.capture import CaptureManager
from edge.config import Config
from edge.gps import GpsSource, make_gps
from edge.hotlist import Hotlist, HotlistError, MatchKind
from edge.mdt import MdtServer, MdtSettings, MdtStartError
from edge.officers import OfficerRegistry, OfficersFileError, load_officers
from edge.pipeline import Pipeline
from edge.store import Store, StoredHit, StoreError, TransientStoreError
from edge.track import PassEnded, ReadEmitted, TrackEvent
from edge.types import PlateRead

log = logging.getLogger("edge.app")

STATUS_EVERY_S = 30.0  # status in the log
STATUS_FILE_EVERY_S = 5.0  # status.json for the sync agent's heartbeat
STATUS_FILE = "status.json"


@dataclass(frozen=True)
class DaemonSummary:
    frames: int
    frames_detected: int
    frames_dropped: int
    reads_stored: int
    reads_pending: int
    hits_stored: int
    latencies_ms: tuple[float, ...]  # capture of the completing frame -> read committed


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        capture: CaptureManager,
        pipeline: Pipeline,
        gps: GpsSource,
        store: Store,
        hotlist: Hotlist | None = None,
        on_read: Callable[[PlateRead], None] | None = None,
        on_hit: Callable[[PlateRead | None, StoredHit], None] | None = None,
        alert: AlertSink | None = None,
        mdt: MdtServer | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.capture = capture
        self.pipeline = pipeline
        self.gps = gps
        self.store = store
        self.hotlist = hotlist
        self.on_read = on_read
        self.on_hit = on_hit
        self.alert = alert
        self.mdt = mdt
        # Stored reads the hotlist has not checked yet: (read_id, text, the read when this run made it).
        self._unmatched: deque[tuple[str, str, PlateRead | None]] = deque()
        self.hits_stored = 0
        self._clock = clock
        self._mono = monotonic
        self._pending: deque[TrackEvent] = deque()  # events the store could not take yet
        self.reads_stored = 0
        self.latencies_ms: list[float] = []
        self._last_states: dict[str, str] = {}

    # --- events -> store ---------------------------------------------------------------------

    def _stamp(self, read: PlateRead) -> PlateRead:
        return dataclasses.replace(read, gps=self.gps.current())

    def handle(self, events: list[TrackEvent]) -> None:
        for ev in events:
            if isinstance(ev, ReadEmitted):
                ev = ReadEmitted(self._stamp(ev.read))
            self._pending.append(ev)
        self._drain_pending()

    def _drain_pending(self) -> None:
        while self._pending:
            ev = self._pending[0]
            try:
                if isinstance(ev, ReadEmitted):
                    self.store.save_read(ev.read)
                elif isinstance(ev, PassEnded):
                    self.store.finalize_read(ev.read_id, last_seen=ev.last_seen, observations=ev.observations)
            except TransientStoreError as exc:
                log.warning("store busy, %d event(s) held in memory and retried: %s", len(self._pending), exc)
                return
            self._pending.popleft()
            if isinstance(ev, ReadEmitted):
                self.reads_stored += 1
                self.latencies_ms.append((self._mono() - ev.read.completed_mono) * 1000)
                log.info(
                    "read %s camera=%s conf=%.2f id=%s",
                    ev.read.text,
                    ev.read.camera_id,
                    ev.read.confidence,
                    ev.read.read_id,
                )
                if self.on_read:
                    self.on_read(ev.read)
                if self.hotlist is not None:
                    self._unmatched.append((ev.read.read_id, ev.read.text, ev.read))
        self._match_pending()

    # --- reads -> hotlist -> hits --------------------------------------------------------------

    def _match_pending(self) -> None:
        while self._unmatched and self.hotlist is not None:
            read_id, text, read = self._unmatched[0]
            try:
                # The OCR's region is a country, not a state: the read's state is unknown here.
                hits = self.hotlist.match(text, None)
                stored = self.store.save_hits(read_id, hits, checked=True)
            except (HotlistError, TransientStoreError) as exc:
                log.warning(
                    "hotlist check of read %s deferred (%d waiting): %s",
                    read_id,
                    len(self._unmatched),
                    exc,
                )
                return
            self._unmatched.popleft()
            self._announce(read, stored)

    def _recover_unchecked(self) -> None:
        """Reads a previous run stored but did not check (crash, shutdown, hotlist down): check them."""
        try:
            left = self.store.unchecked_reads()
        except StoreError as exc:
            log.error("cannot list reads left unchecked by the last run: %s", exc)
            return
        if left:
            log.warning(
                "checking %d read(s) the last run stored but did not check against the hotlist", len(left)
            )
        self._unmatched.extend((r.read_id, r.plate, None) for r in left)
        self._match_pending()

    def _announce(self, read: PlateRead | None, stored: list[StoredHit]) -> None:
        for hit in stored:
            self.hits_stored += 1
            log.warning(
                "HIT %s %s on %s %s/%s (%s%s, list age %s)",
                "retroactive" if hit.retroactive else "live",
                read.text if read else hit.read_id,
                hit.list_kind,
                hit.entry_plate,
                hit.entry_state,
                hit.match_kind,
                ", state differs" if hit.state_mismatch else "",
                "unknown" if hit.list_age_s is None else f"{hit.list_age_s / 3600:.1f} h",
            )
            # The tone first: it needs no database and is what turns the officer's head.
            if self.alert is not None:
                self.alert.raise_alert(hit.hit_id, hit.priority)
            if self.mdt is not None:
                self.mdt.publish_hit(read, hit)
            if self.on_hit:
                self.on_hit(read, hit)

    def check_hotlist_changes(self) -> None:
        """Retro-check recent reads against entries added since the last check (by any process)."""
        if self.hotlist is None:
            return
        try:
            if not self.hotlist.changed():
                return
            self.hotlist.refresh()
            result = self.hotlist.retro_check()
            by_read: dict[str, list] = {}
            for hit in result.hits:
                by_read.setdefault(hit.read_id, []).append(hit)
            for read_id, hits in by_read.items():
                self._announce(None, self.store.save_hits(read_id, hits))
            self.hotlist.mark_retro_checked(result.checked_up_to)
        except (HotlistError, TransientStoreError) as exc:
            log.warning("hotlist retro-check deferred: %s", exc)

    # --- health ----------------------------------------------------------------------------

    def _report_camera_changes(self) -> None:
        for cam, st in self.capture.status().items():
            state = str(getattr(st.state, "value", st.state))
            if self._last_states.get(cam) != state:
                self._last_states[cam] = state
                level = logging.INFO if state in ("ok", "starting", "ended") else logging.WARNING
                log.log(level, "camera %s: %s%s", cam, state, f" ({st.cause})" if st.cause else "")

    def status(self) -> dict:
        gps = self.gps.status()
        fix = self.gps.current()
        return {
            "cameras": {
                cam: {
                    "state": str(getattr(st.state, "value", st.state)),
                    "cause": st.cause,
                    "fps": round(st.fps, 1),
                    "frames_captured": st.frames_captured,
                    "frames_dropped": st.frames_dropped,
                    "reopen_count": st.reopen_count,
                }
                for cam, st in self.capture.status().items()
            },
            "gps": dataclasses.asdict(gps) if dataclasses.is_dataclass(gps) else str(gps),
            "gps_fix": {"has_fix": fix.has_fix, "mode": int(fix.mode), "source": fix.source},
            "pipeline": dataclasses.asdict(self.pipeline.stats),
            "reads_stored": self.reads_stored,
            "reads_pending": len(self._pending),
            "hits_stored": self.hits_stored,
            "reads_awaiting_hotlist": len(self._unmatched),
            "hotlist": [
                {
                    "list": str(st.list_kind),
                    "entries": st.entries,
                    "version": st.version,
                    "age_s": st.age_s,
                    "freshness": str(st.freshness),
                }
                for st in (self.hotlist.status() if self.hotlist is not None else [])
            ],
            "hotlist_feed_refused": (
                dataclasses.asdict(refusal)
                if self.hotlist is not None and (refusal := self.hotlist.feed_refusal()) is not None
                else None
            ),
            "outbox": {lane.name.lower(): n for lane, n in self.store.outbox_counts().items()},
            "alert": dataclasses.asdict(self.alert.status()) if self.alert is not None else None,
            "mdt": {"url": self.mdt.url if self.mdt.running else None} if self.mdt is not None else None,
        }

    def start_services(self) -> None:
        """Start the MDT page (if any). A page that cannot start is logged; reading goes on."""
        if self.mdt is not None and not self.mdt.running:
            try:
                self.mdt.start()
            except MdtStartError as exc:
                log.error("MDT page not available: %s (hits are still stored and sounded)", exc)

    def write_status_file(self) -> None:
        """`<data_dir>/status.json`: the daemon's health for the sync agent's heartbeat.

        Written to a temporary file and renamed, so a reader never sees half of it.
        """
        path = self.config.data_path(Path(STATUS_FILE))
        tmp = path.with_name(f".{STATUS_FILE}.tmp")
        try:
            body = {"written_at": self._clock(), **self.status()}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(body, default=str))
            os.replace(tmp, path)
        except (OSError, HotlistError, StoreError) as exc:
            log.warning("cannot write %s: %s", path, exc)

    def close(self) -> None:
        """Stop the MDT page and the tones, release the database (after `run` has returned)."""
        if self.mdt is not None:
            self.mdt.close()
        if self.alert is not None:
            self.alert.close()
        if self.hotlist is not None:
            self.hotlist.close()
        self.store.close()

    def _purge_hotlist(self) -> None:
        assert self.hotlist is not None
        try:
            n = self.hotlist.purge_expired()
        except HotlistError as exc:
            log.warning("hotlist purge deferred: %s", exc)
            return
        if n:
            log.info("hotlist: %d expired entr%s purged", n, "y" if n == 1 else "ies")

    # --- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, stop_when_sources_end: bool = False) -> DaemonSummary:
        self.gps.start()
        self.start_services()
        if self.hotlist is not None:
            self.hotlist.load()
            self._recover_unchecked()
        self.capture.start()
        next_status = self._mono() + STATUS_EVERY_S
        next_hotlist_check = self._mono()
        next_status_file = self._mono()
        next_purge = self._mono()
        try:
            while not stop.is_set():
                frame = self.capture.get(timeout=0.2)
                if frame is not None:
                    self.handle(self.pipeline.process(frame))
                else:
                    self.handle(self.pipeline.tick(self._clock()))
                    if self.capture.all_ended:
                        self.handle(self.pipeline.flush())
                        if stop_when_sources_end:
                            break
                self._report_camera_changes()
                self._match_pending()
                now = self._mono()
                if self.hotlist is not None and now >= next_hotlist_check:
                    next_hotlist_check = now + self.config.hotlist.check_interval_s
                    self.check_hotlist_changes()
                if self.hotlist is not None and now >= next_purge:
                    next_purge = now + self.config.hotlist.purge_interval_s
                    self._purge_hotlist()
                if now >= next_status_file:
                    next_status_file = now + STATUS_FILE_EVERY_S
                    self.write_status_file()
                if self._mono() >= next_status:
                    next_status = self._mono() + STATUS_EVERY_S
                    log.info("status %s", self.status())
        finally:
            self.handle(self.pipeline.flush())
            self.capture.stop()
            self.gps.stop()
            self._report_camera_changes()
            deadline = self._mono() + 10.0
            while (self._pending or self._unmatched) and self._mono() < deadline:
                self._drain_pending()
                if self._pending or self._unmatched:
                    time.sleep(0.1)
            if self._pending:
                log.error("%d read event(s) could not be stored before shutdown", len(self._pending))
            self.write_status_file()
            if self._unmatched:
                log.error(
                    "%d stored read(s) not checked against the hotlist before shutdown; "
                    "the next start checks them",
                    len(self._unmatched),
                )

        dropped = sum(st.frames_dropped for st in self.capture.status().values())
        return DaemonSummary(
            frames=self.pipeline.stats.frames,
            frames_detected=self.pipeline.stats.frames_detected,
            frames_dropped=dropped,
            reads_stored=self.reads_stored,
            reads_pending=len(self._pending),
            hits_stored=self.hits_stored,
            latencies_ms=tuple(self.latencies_ms),
        )


def _exact_listing_check(hotlist: Hotlist) -> Callable[[str], bool]:
    """For the tracker's early alert: is this consensus text exactly a listed plate?"""

    def is_listed(text: str) -> bool:
        try:
            return any(hit.kind == MatchKind.EXACT for hit in hotlist.match(text, None))
        except HotlistError as exc:  # the normal path (lock_observations) still reads the plate
            log.warning("hotlist unavailable for the early-alert check: %s", exc)
            return False

    return is_listed


def build_daemon(
    config: Config,
    *,
    on_read: Callable[[PlateRead], None] | None = None,
    on_hit: Callable[[PlateRead | None, StoredHit], None] | None = None,
) -> Daemon:
    """Everything from the config: models are checked first, then the store, hotlist, GPS, cameras."""
    pipeline = Pipeline.from_config(config)  # refuses missing/corrupt models before anything opens
    store = Store(config.database_path, busy_timeout_s=config.store.busy_timeout_s)
    hotlist = Hotlist(config.database_path, config.hotlist.settings())
    pipeline.tracker.is_listed = _exact_listing_check(hotlist)
    cameras = [c for c in config.cameras if c.enabled]
    capture = CaptureManager(cameras, config.capture)
    gps = make_gps(config.gps)
    alert = make_alert(config.alert)
    daemon = Daemon(
        config,
        capture=capture,
        pipeline=pipeline,
        gps=gps,
        store=store,
        hotlist=hotlist,
        on_read=on_read,
        on_hit=on_hit,
        alert=alert,
    )
    if config.mdt.enabled:
        daemon.mdt = build_mdt(config, status=daemon.status, alert=alert)
    return daemon


def build_mdt(config: Config, *, status: Callable[[], dict], alert: AlertSink | None) -> MdtServer:
    """The MDT page over its own database connections (so page requests never queue behind reads)."""
    try:
        officers = load_officers(config.officers_path)
    except OfficersFileError as exc:
        log.error("MDT: nobody can log in: %s", exc)
        officers = OfficerRegistry.empty(str(exc))
    return MdtServer(
        MdtSettings.from_config(config),
        store=Store(config.database_path, busy_timeout_s=config.store.busy_timeout_s),
        hotlist=Hotlist(config.database_path, config.hotlist.settings()),
        officers=officers,
        status=status,
        alert=alert,
    )
