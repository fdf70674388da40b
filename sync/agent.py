"""The sync agent (`alpr-sync run`): uploads the outbox, pulls the hotlist feed, sends heartbeats.

A separate process sharing the device's SQLite file with the daemon. The outbox IS the agent's
state: nothing about uploads is kept in memory that a restart would need.

Guarantees:
- Exactly once, at the application level. Every record carries the UUID made on the device; the
  server stores each id once. An outbox entry is deleted (`Store.outbox_ack`, by seq) only when
  the server's `BatchAck` for that very batch lists the record's id under `stored` or
  `duplicate`, or its `ImageAck` names it. A crash or cut anywhere leaves the entry in place, so
  it is sent again and acknowledged as a duplicate: nothing is lost, nothing is stored twice.
- Priority: every batch is filled in lane order, hits/answers/audit first, then reads; images
  (one per request) go only while both those lanes are empty, and within a daily byte budget
  (`sync_state.image_budget`, device clock's UTC day). So a hit stored while a read backlog
  drains waits at most for the batch in flight.
- Batches are bounded by record count and by JSON bytes. A batch the server refuses as a whole
  (400, 413, 422) is split in halves until the one bad record is found; that record is set aside
  (`sync_state`), never deleted. Records the server rejects in its ack are set aside likewise.
- Failures (link down, timeouts, 5xx, 429, garbage or HTML answers, a busy database) back off
  exponentially with jitter up to a cap; `Retry-After` is honoured (bounded). A refused device
  certificate, or a server that answers with a path error, is retried at the cap: the records
  stay until the server is fixed. Every failure is logged with its cause, rate-limited.
- Waits use the monotonic clock: a wall-clock jump changes neither backoff nor timers; the jump
  itself, and a device clock far from the server's, are logged.
- Wakes on new data: `PRAGMA data_version` (free) is polled every `poll_interval_s` while idle,
  and the outbox is looked at anyway every `idle_interval_s`.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import math
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.config import Config
from edge.hotlist import Hotlist, HotlistError
from edge.ratelog import RateLimitedLog
from edge.store import Lane, OutboxEntry, Store, StoreError
from sync.feed import (
    KEY_ENDORSEMENTS,
    FeedApplier,
    FeedError,
    FeedUnavailable,
    KeyRing,
    load_keys,
    parse_endorsements,
)
from sync.outbox import OutboxReader, OutboxReadError, Record
from sync.protocol import MAX_BATCH_BYTES, MAX_BATCH_RECORDS, Heartbeat, UploadBatch, encode_batch
from sync.state import KEY_IMAGE_BUDGET, SyncState, SyncStateError
from sync.state import connect as state_connect
from sync.transport import (
    BadResponse,
    Identity,
    IdentityRefused,
    PermanentTransportError,
    Transport,
    TransportError,
)

log = logging.getLogger(__name__)

_SPLIT_STATUSES = frozenset({400, 413, 422})  # the server refused the batch's content itself


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    """The `[sync]` section's behaviour knobs, in the agent's own units."""

    device_id: str
    batch_max_records: int = 1000
    batch_max_bytes: int = 512 * 1024  # JSON before gzip
    poll_interval_s: float = 0.2
    idle_interval_s: float = 30.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    retry_after_max_s: float = 3600.0
    heartbeat_interval_s: float = 60.0
    hotlist_interval_s: float = 300.0
    image_budget_bytes_per_day: int | None = 100 * 1024 * 1024  # None: no limit
    clock_skew_warn_s: float = 300.0
    software_version: str = "0"
    status_path: Path | None = None  # the daemon's status.json
    data_dir: Path | None = None  # for disk free

    def __post_init__(self) -> None:
        if not 1 <= self.batch_max_records <= MAX_BATCH_RECORDS:
            raise ValueError(f"batch_max_records must be 1..{MAX_BATCH_RECORDS}")
        if not 1024 <= self.batch_max_bytes <= MAX_BATCH_BYTES // 2:
            raise ValueError(f"batch_max_bytes must be 1024..{MAX_BATCH_BYTES // 2}")
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_initial_s must be > 0 and <= backoff_max_s")


@dataclass(kw_only=True)
class AgentStats:
    batches_acked: int = 0
    records_acked: int = 0
    duplicates_acked: int = 0
    records_set_aside: int = 0
    images_acked: int = 0
    image_bytes: int = 0
    failures: int = 0
    heartbeats: int = 0
    feeds_applied: int = 0
    feeds_refused: int = 0
    clock_jumps: int = 0
    last_error: str = ""
    by_error: dict[str, int] = field(default_factory=dict)


class Agent:
    """One loop: upload a batch (or an image), send what is due, else wait for data or a timer."""

    def __init__(
        self,
        *,
        settings: AgentSettings,
        store: Store,
        reader: OutboxReader,
        state: SyncState,
        transport: Transport,
        feed: FeedApplier | None = None,
        hotlist: Hotlist | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._store = store
        self._reader = reader
        self._state = state
        self._transport = transport
        self._feed = feed
        self._hotlist = hotlist
        self._clock = clock
        self._mono = monotonic
        self._rng = rng or random.Random()
        self._logs = RateLimitedLog(log, 60.0, monotonic)
        self.stats = AgentStats()
        self._failures = 0
        self._not_before = 0.0  # monotonic: no upload attempt before this
        self._batch_limit = settings.batch_max_records
        self._next_heartbeat = 0.0
        self._next_feed = 0.0 if feed is not None else math.inf
        self._clock_ref: tuple[float, float] | None = None
        self._budget_note_day: str | None = None

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, until_drained: bool = False) -> AgentStats:
        """Until `stop` is set (or, with until_drained, until lanes hits and reads are empty)."""
        log.info("sync agent started for device %s", self.settings.device_id)
        last_version = -1
        idle_since = self._mono()
        while not stop.is_set():
            self._check_clock()
            now = self._mono()
            if now < self._not_before:
                stop.wait(min(self._not_before - now, 1.0))
                continue
            did = self._guarded(self._upload_once)
            if did is None:  # failed: backoff scheduled
                continue
            self._periodic()
            if did:
                idle_since = self._mono()
                continue
            if until_drained and self._drained():
                break
            # Idle: wake on the daemon's next commit, or the idle timer, or something due.
            while not stop.is_set():
                try:
                    version = self._reader.data_version()
                except OutboxReadError as exc:
                    self._failed(exc)
                    break
                if version != last_version:
                    last_version = version
                    break
                now = self._mono()
                if now - idle_since >= self.settings.idle_interval_s or now >= min(
                    self._next_heartbeat, self._next_feed
                ):
                    idle_since = now
                    break
                stop.wait(self.settings.poll_interval_s)
        log.info(
            "sync agent stopping: %d records acknowledged (%d duplicates), %d images, %d set aside",
            self.stats.records_acked,
            self.stats.duplicates_acked,
            self.stats.images_acked,
            self.stats.records_set_aside,
        )
        return self.stats

    def _drained(self) -> bool:
        return not self._reader.pending(Lane.HITS, 1) and not self._reader.pending(Lane.READS, 1)

    def _guarded(self, work: Callable[[], bool]) -> bool | None:
        try:
            result = work()
        except (
            TransportError,
            OutboxReadError,
            StoreError,
            SyncStateError,
            FeedUnavailable,
            HotlistError,
        ) as exc:
            self._failed(exc)
            return None
        return result

    # -- uploads -----------------------------------------------------------------------------

    def _upload_once(self) -> bool:
        """Send one batch of hits+reads, or else one image. True when something was acknowledged."""
        if self._send_batch():
            self._succeeded()
            return True
        if self._send_image():
            self._succeeded()
            return True
        self._reader.check_unknown_kinds()
        return False

    def _send_batch(self) -> bool:
        limit = self._batch_limit
        entries = self._reader.pending(Lane.HITS, limit)
        if len(entries) < limit:
            entries += self._reader.pending(Lane.READS, limit - len(entries))
        if not entries:
            return False
        prepared = self._reader.records(entries)
        if prepared.unusable:
            self._set_aside([(u.entry, u.reason) for u in prepared.unusable])
        records: list[tuple[OutboxEntry, Record]] = []
        size = 0
        for entry, record in prepared.records:
            n = len(record.model_dump_json(by_alias=True)) + 1
            if records and size + n > self.settings.batch_max_bytes:
                break
            records.append((entry, record))
            size += n
        if not records:
            return bool(prepared.unusable)
        batch = UploadBatch(
            device_id=self.settings.device_id,
            batch_id=str(uuid.uuid4()),
            sent_at=self._clock(),
            records=[r for _, r in records],
        )
        try:
            ack = self._transport.post_batch(encode_batch(batch))
        except IdentityRefused:
            raise
        except PermanentTransportError as exc:
            if exc.status not in _SPLIT_STATUSES:
                raise
            if len(records) == 1:
                entry = records[0][0]
                self._set_aside([(entry, f"server refused it alone: {exc}")])
                self._batch_limit = self.settings.batch_max_records
                return True
            self._batch_limit = max(1, len(records) // 2)
            log.warning("server refused a batch of %d records (%s): retrying in halves", len(records), exc)
            return True
        if ack.batch_id != batch.batch_id:
            raise BadResponse(
                f"acknowledgement names batch {ack.batch_id}, not the batch sent ({batch.batch_id})"
            )
        if self._batch_limit < self.settings.batch_max_records:
            self._batch_limit = min(self.settings.batch_max_records, self._batch_limit * 2)
        by_id = {r.id: e for e, r in records}
        done = [by_id[i].seq for i in (*ack.stored, *ack.duplicate) if i in by_id]
        rejected = [(by_id[r.id], f"server rejected it: {r.reason}") for r in ack.rejected if r.id in by_id]
        if done:
            self._store.outbox_ack(done)
        if rejected:
            self._set_aside(rejected)
        strangers = len(ack.stored) + len(ack.duplicate) + len(ack.rejected) - len(done) - len(rejected)
        if strangers and self._logs.ready("strangers") is not None:
            log.warning(
                "acknowledgement of batch %s names %d ids that were not in it", batch.batch_id, strangers
            )
        self.stats.batches_acked += 1
        self.stats.records_acked += len(done)
        self.stats.duplicates_acked += len([i for i in ack.duplicate if i in by_id])
        self._check_skew(ack.server_time)
        if not done and not rejected:
            raise BadResponse(
                f"acknowledgement of batch {batch.batch_id} lists none of its {len(records)} records"
            )
        return True

    def _send_image(self) -> bool:
        entries = self._reader.pending(Lane.IMAGES, 1)
        if not entries:
            return False
        entry = entries[0]
        jpeg = self._reader.image(entry.record_id)
        if jpeg is None:
            self._set_aside([(entry, f"image of read {entry.record_id} is missing locally")])
            return True
        day, used = self._budget_today()
        budget = self.settings.image_budget_bytes_per_day
        if budget is not None and used + len(jpeg) > budget:
            if self._budget_note_day != day:
                self._budget_note_day = day
                log.info(
                    "image budget for %s reached (%d of %d bytes): %d images wait for tomorrow",
                    day,
                    used,
                    budget,
                    self._reader.counts()["images"],
                )
            return False
        try:
            ack = self._transport.put_image(entry.record_id, jpeg)
        except IdentityRefused:
            raise
        except PermanentTransportError as exc:
            if exc.status not in _SPLIT_STATUSES and exc.status != 404:
                raise
            self._set_aside([(entry, f"server refused the image: {exc}")])
            return True
        if ack.record_id != entry.record_id:
            raise BadResponse(f"image acknowledgement names {ack.record_id}, not {entry.record_id}")
        self._store.outbox_ack([entry.seq])
        self._state.put(KEY_IMAGE_BUDGET, {"day": day, "bytes": used + len(jpeg)})
        self.stats.images_acked += 1
        self.stats.image_bytes += len(jpeg)
        return True

    def _budget_today(self) -> tuple[str, int]:
        day = dt.datetime.fromtimestamp(self._clock(), dt.UTC).date().isoformat()
        saved = self._state.get(KEY_IMAGE_BUDGET) or {}
        used = int(saved.get("bytes", 0)) if saved.get("day") == day else 0
        return day, used

    def _set_aside(self, items: list[tuple[OutboxEntry, str]]) -> None:
        self._state.set_aside([(e.seq, e.kind, e.record_id, why) for e, why in items])
        self.stats.records_set_aside += len(items)
        held = self._logs.ready("set_aside")
        if held is not None:
            log.error(
                "%d outbox entries set aside (kept, not sent again), e.g. %s %s: %s "
                "(%d more lines held back)",
                len(items),
                items[0][0].kind,
                items[0][0].record_id,
                items[0][1],
                held,
            )

    # -- heartbeat and feed ------------------------------------------------------------------

    def _periodic(self) -> None:
        """Heartbeat and feed when due. Their failures are logged but do not hold up uploads."""
        for due, interval, work in (
            ("_next_heartbeat", self.settings.heartbeat_interval_s, self.send_heartbeat),
            ("_next_feed", self.settings.hotlist_interval_s, self.pull_feed),
        ):
            now = self._mono()
            if now < getattr(self, due):
                continue
            setattr(self, due, now + interval)
            try:
                work()
            except (
                TransportError,
                OutboxReadError,
                StoreError,
                SyncStateError,
                FeedError,
                HotlistError,
            ) as exc:
                name = work.__name__
                self.stats.by_error[f"{name}:{type(exc).__name__}"] = (
                    self.stats.by_error.get(f"{name}:{type(exc).__name__}", 0) + 1
                )
                # Retry sooner than a full interval, but not in a tight loop.
                setattr(self, due, now + min(interval, max(self.settings.backoff_initial_s, 30.0)))
                held = self._logs.ready(name)
                if held is not None:
                    log.warning(
                        "sync: %s failed: %s: %s (%d similar lines held back)",
                        name,
                        type(exc).__name__,
                        exc,
                        held,
                    )

    def heartbeat(self) -> Heartbeat:
        status = _read_status(self.settings.status_path)
        versions: dict[str, str | None] = {}
        if self._hotlist is not None:
            versions = {str(s.list_kind): s.version for s in self._hotlist.status()}
        backlog = self._reader.counts()
        backlog["set_aside"] = self._state.set_aside_count()
        backlog["unknown_kind"] = self._reader.unknown_kind_entries
        disk = None
        if self.settings.data_dir is not None:
            try:
                disk = shutil.disk_usage(self.settings.data_dir).free
            except OSError:
                disk = None
        cameras = status.get("cameras")
        gps = status.get("gps")
        if isinstance(status.get("pipeline"), dict):
            # Heartbeat v1 has no pipeline field: the frame rates travel with the cameras.
            cameras = {**(cameras if isinstance(cameras, dict) else {}), "_pipeline": status["pipeline"]}
        try:
            return Heartbeat(
                device_id=self.settings.device_id,
                sent_at=self._clock(),
                software_version=self.settings.software_version,
                cameras=cameras if isinstance(cameras, dict) else {},
                gps=gps if isinstance(gps, dict) else {},
                hotlist_versions=versions,
                backlog=backlog,
                disk_free_bytes=disk,
            )
        except ValidationError as exc:
            if self._logs.ready("status_json") is not None:
                log.warning(
                    "status.json does not fit a heartbeat (%s); sending without it", str(exc).splitlines()[0]
                )
            return Heartbeat(
                device_id=self.settings.device_id,
                sent_at=self._clock(),
                software_version=self.settings.software_version,
                hotlist_versions=versions,
                backlog=backlog,
                disk_free_bytes=disk,
            )

    def send_heartbeat(self) -> None:
        ack = self._transport.heartbeat(self.heartbeat())
        self.stats.heartbeats += 1
        self._check_skew(ack.server_time)

    def pull_feed(self) -> None:
        """Fetch and take one feed (learning endorsed keys first when the signer is new)."""
        if self._feed is None:
            return
        since = self._feed.version_in_force()
        feed = self._transport.get_hotlist(since)
        if not self._feed.keyring.knows(feed.key_id):
            endorsements = parse_endorsements(self._transport.get_keys())
            added = self._feed.keyring.add_endorsements(endorsements, now=self._clock())
            if added:
                # Kept so a restart trusts them without asking the server again.
                self._state.put(KEY_ENDORSEMENTS, [e.model_dump(mode="json") for e in endorsements])
                log.info("feed keys endorsed and now trusted: %s", ", ".join(added))
        outcome = self._feed.take(feed)
        if outcome.status == "refused":
            self.stats.feeds_refused += 1
        elif outcome.status == "applied":
            self.stats.feeds_applied += 1
            self._next_feed = self._mono()  # more may be waiting behind this delta

    # -- failure policy ----------------------------------------------------------------------

    def _succeeded(self) -> None:
        if self._failures:
            log.info("link to the department server working again after %d failures", self._failures)
        self._failures = 0

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        self.stats.failures += 1
        kind = type(exc).__name__
        self.stats.by_error[kind] = self.stats.by_error.get(kind, 0) + 1
        self.stats.last_error = str(exc)
        cap = self.settings.backoff_max_s
        if isinstance(exc, (IdentityRefused, PermanentTransportError)):
            delay = cap  # needs a person (revoked device, wrong URL): keep trying, slowly
        else:
            ceiling = min(cap, self.settings.backoff_initial_s * 2 ** min(self._failures - 1, 30))
            delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), self.settings.retry_after_max_s))
        self._not_before = self._mono() + delay
        held = self._logs.ready(kind)
        if held is not None:
            level = (
                logging.ERROR if isinstance(exc, (PermanentTransportError, FeedError)) else logging.WARNING
            )
            log.log(
                level,
                "sync: %s: %s; next try in %.1f s (failure %d in a row, %d similar lines held back)",
                kind,
                exc,
                delay,
                self._failures,
                held,
            )

    def _check_clock(self) -> None:
        wall, mono = self._clock(), self._mono()
        if self._clock_ref is not None:
            jump = (wall - self._clock_ref[0]) - (mono - self._clock_ref[1])
            if abs(jump) > 60:
                self.stats.clock_jumps += 1
                log.warning(
                    "device clock jumped by %+.0f s; waits use the monotonic clock and are unaffected, "
                    "records keep the times they were stored with",
                    jump,
                )
        self._clock_ref = (wall, mono)

    def _check_skew(self, server_time: float) -> None:
        skew = self._clock() - server_time
        if abs(skew) > self.settings.clock_skew_warn_s and self._logs.ready("skew") is not None:
            log.warning("device clock is %+.0f s off the server's; check GPS/NTP time", skew)


def _read_status(path: Path | None) -> dict[str, Any]:
    """The daemon's status.json, or {} when absent or unreadable (a heartbeat goes out anyway)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read the daemon's status: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


class AgentSetupError(Exception):
    """The agent cannot start: not enrolled, identity files missing, database unusable."""


class AgentRuntime:
    """An agent wired from the device config, owning its connections (close() releases them)."""

    def __init__(self, config: Config, *, until_drained: bool = False) -> None:
        from edge.store import Store

        if not config.sync.server_url or config.device.id == "unenrolled":
            raise AgentSetupError(
                "this device is not enrolled: run `alpr-edge enroll --server URL --token TOKEN`"
            )
        identity_dir = config.data_path(config.sync.identity_dir)
        identity = Identity.in_dir(identity_dir)
        for path in (
            identity.cert_path,
            identity.key_path,
            identity.ca_path,
            identity_dir / "feed_keys.json",
        ):
            if not path.is_file():
                raise AgentSetupError(f"{path}: identity file missing; enroll this device again")
        self._closers: list[Callable[[], None]] = []
        try:
            db = config.database_path
            self.store = Store(db, busy_timeout_s=config.store.busy_timeout_s)
            self._closers.append(self.store.close)
            write_conn = state_connect(db, busy_timeout_s=config.store.busy_timeout_s)
            self._closers.append(write_conn.close)
            self.state = SyncState(write_conn)
            read_conn = state_connect(db, busy_timeout_s=config.store.busy_timeout_s, read_only=True)
            self._closers.append(read_conn.close)
            self.reader = OutboxReader(read_conn, instance_id=self.state.instance_id)
            self.hotlist = Hotlist(db, config.hotlist.settings())
            self._closers.append(self.hotlist.close)
            keyring = KeyRing(load_keys(identity_dir / "feed_keys.json"))
            saved = self.state.get(KEY_ENDORSEMENTS) or []
            keyring.add_endorsements(parse_endorsements(saved), now=time.time())
            self.feed = FeedApplier(self.hotlist, keyring, self.state)
            s = config.sync
            self.transport = Transport(
                s.server_url, identity, timeout_s=s.request_timeout_s, connect_timeout_s=s.connect_timeout_s
            )
            self._closers.append(self.transport.close)
        except (StoreError, SyncStateError, HotlistError, FeedError, TransportError) as exc:
            self.close()
            raise AgentSetupError(str(exc)) from exc
        budget = s.image_budget_mb_per_day
        self.agent = Agent(
            settings=AgentSettings(
                device_id=config.device.id,
                batch_max_records=s.batch_max_records,
                batch_max_bytes=s.batch_max_bytes,
                poll_interval_s=s.poll_interval_s,
                idle_interval_s=s.idle_interval_s,
                backoff_initial_s=s.backoff_initial_s,
                backoff_max_s=s.backoff_max_s,
                retry_after_max_s=s.retry_after_max_s,
                heartbeat_interval_s=s.heartbeat_interval_s,
                hotlist_interval_s=s.hotlist_interval_s,
                image_budget_bytes_per_day=None if budget < 0 else int(budget * 1024 * 1024),
                software_version=_software_version(),
                status_path=config.data_path(Path("status.json")),
                data_dir=config.data_path(Path(".")),
            ),
            store=self.store,
            reader=self.reader,
            state=self.state,
            transport=self.transport,
            feed=self.feed,
            hotlist=self.hotlist,
        )

    def close(self) -> None:
        while self._closers:
            try:
                self._closers.pop()()
            except Exception as exc:  # closing must go on: report and continue
                log.warning("while closing the sync agent: %s", exc)

    def __enter__(self) -> AgentRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _software_version() -> str:
    try:
        return importlib.metadata.version("alpr")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
