"""Hotlist pull: fetch the signed delta feed, verify it, apply it through the hotlist module.

Guarantees:
- A feed is applied only when ALL of these hold; otherwise it is refused, the list in force is
  left exactly as it was, and the refusal (time, cause, versions) is recorded in
  `sync_state.feed_refused` for the MDT status strip and `alpr-sync status`:
  - it is signed (Ed25519 over `canonical_bytes(feed)`) by a key the device trusts: one given at
    enrollment, or one endorsed by a trusted key (`KeyEndorsement`, rotation without
    re-enrolling), and that key's `not_after` has not passed;
  - it has not expired (`expires_at`, freeze protection) by the device clock;
  - it moves the device forward: `to_version` newer than the version in force (no rollback), and
    it starts at or before that version (no gap);
  - its delta parses and its header names `to_version`.
- The delta is applied by `Hotlist.apply_delta` in one transaction (all or nothing), which also
  records each list's version and refresh time (what staleness uses). A crash before the commit
  leaves the old list; after it, the new one. The version in force is read back from the
  hotlist's own table, never from a separate counter, so the two cannot disagree after a crash.
- A signed, unexpired "not modified" answer confirms the lists in force are current: their
  refresh time is set to now, so an unchanged list does not turn stale while the link works.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from edge.hotlist import DeltaRejected, Hotlist, HotlistUnavailable, ImportRefused
from edge.hotlist_formats import parse_delta
from sync.protocol import FeedKey, HotlistFeed, KeyEndorsement, canonical_bytes
from sync.state import KEY_FEED_OK, KEY_FEED_REFUSED, SyncState

log = logging.getLogger(__name__)

KEY_ENDORSEMENTS = "feed_endorsements"


class FeedError(Exception):
    """The hotlist feed could not be taken."""


class FeedRefused(FeedError):
    """This feed must not be applied (permanent for this feed: the list in force stays)."""


class UntrustedKey(FeedRefused):
    """Signed by a key the device does not trust, or one past its not_after."""


class BadSignature(FeedRefused):
    """The signature does not match the feed's bytes (tampered or corrupted)."""


class FeedExpired(FeedRefused):
    """The feed's expires_at has passed (a replayed or withheld feed: freeze attack)."""


class FeedRollback(FeedRefused):
    """The feed would not move the device forward (older or equal version, or a gap)."""


class BadDelta(FeedRefused):
    """The delta inside a correctly signed feed is malformed or refused by the hotlist."""


class FeedUnavailable(FeedError):
    """Transient: the hotlist database is busy or failing; try again later."""


# ---------------------------------------------------------------- keys


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FeedRefused(f"{what} is not base64") from exc


def _public_key(key: FeedKey) -> Ed25519PublicKey:
    raw = _b64(key.public_key, f"key {key.key_id}")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise UntrustedKey(f"key {key.key_id} is not a raw Ed25519 public key") from exc


class KeyRing:
    """The feed-signing keys this device trusts: enrollment's, plus endorsed rotations."""

    def __init__(self, keys: Iterable[FeedKey]) -> None:
        self._keys: dict[str, FeedKey] = {k.key_id: k for k in keys}

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def add_endorsements(self, endorsements: Iterable[KeyEndorsement], *, now: float) -> list[str]:
        """Trust each key endorsed by a key already trusted (chains resolved); return new ids.

        An endorsement whose signature does not verify is logged and ignored.
        """
        pending = [e for e in endorsements if e.key.key_id not in self._keys]
        added: list[str] = []
        progress = True
        while pending and progress:
            progress = False
            for e in list(pending):
                signer = self._keys.get(e.endorsed_by)
                if signer is None:
                    continue
                pending.remove(e)
                try:
                    self._check_usable(signer, now)
                    _public_key(signer).verify(_b64(e.signature, "endorsement"), canonical_bytes(e.key))
                    _public_key(e.key)
                except (InvalidSignature, FeedRefused) as exc:
                    log.warning(
                        "feed key %s endorsed by %s refused: %s",
                        e.key.key_id,
                        e.endorsed_by,
                        exc or "bad signature",
                    )
                    continue
                self._keys[e.key.key_id] = e.key
                added.append(e.key.key_id)
                progress = True
        return added

    def knows(self, key_id: str) -> bool:
        return key_id in self._keys

    def verify(self, feed: HotlistFeed, *, now: float) -> None:
        key = self._keys.get(feed.key_id)
        if key is None:
            raise UntrustedKey(
                f"feed signed by unknown key {feed.key_id!r} (trusted: {', '.join(self.key_ids)})"
            )
        self._check_usable(key, now)
        try:
            _public_key(key).verify(_b64(feed.signature, "feed signature"), canonical_bytes(feed))
        except InvalidSignature as exc:
            raise BadSignature(
                f"feed {feed.from_version}->{feed.to_version}: signature by {feed.key_id} does not verify "
                "(tampered or corrupted)"
            ) from exc

    @staticmethod
    def _check_usable(key: FeedKey, now: float) -> None:
        if key.not_after is not None and now > key.not_after:
            raise UntrustedKey(f"key {key.key_id} is past its not_after ({key.not_after:.0f})")


def parse_endorsements(payload: Any) -> list[KeyEndorsement]:
    """The endorsements in a KEYS_PATH answer: a list, or an object with an "endorsements" list."""
    items = payload.get("endorsements", []) if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        return []
    out = []
    for item in items:
        try:
            out.append(KeyEndorsement.model_validate(item))
        except ValidationError as exc:
            log.warning("ignoring a malformed key endorsement: %s", str(exc).splitlines()[0])
    return out


def load_keys(path: Any) -> list[FeedKey]:
    """The feed keys written at enrollment (a JSON list of FeedKey objects)."""
    try:
        data = json.loads(path.read_text())
        return [FeedKey.model_validate(k) for k in data]
    except (OSError, ValueError, ValidationError) as exc:
        raise FeedError(f"{path}: cannot load the feed keys written at enrollment: {exc}") from exc


# ---------------------------------------------------------------- pulling


@dataclass(frozen=True, kw_only=True)
class FeedOutcome:
    status: str  # "applied", "current", "refused"
    version: int
    cause: str = ""
    added: int = 0
    removed: int = 0


class FeedApplier:
    """Verifies feeds and applies them through the hotlist; records the outcome in sync_state."""

    def __init__(
        self,
        hotlist: Hotlist,
        keyring: KeyRing,
        state: SyncState,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hotlist = hotlist
        self._keys = keyring
        self._state = state
        self._clock = clock
        self._last_logged: tuple[str, float] | None = None

    @property
    def keyring(self) -> KeyRing:
        return self._keys

    def version_in_force(self) -> int:
        """The newest feed version applied: the highest delta version any list records."""
        try:
            statuses = self._hotlist.status()
        except HotlistUnavailable as exc:
            raise FeedUnavailable(str(exc)) from exc
        versions = [
            int(s.version) for s in statuses if s.source == "delta" and s.version and s.version.isdigit()
        ]
        return max(versions, default=0)

    def take(self, feed: HotlistFeed) -> FeedOutcome:
        """Verify and apply (or confirm) one feed; a refusal is recorded and returned, not raised."""
        current = self.version_in_force()
        try:
            result = self._take(feed, current)
        except FeedRefused as exc:
            self._refused(feed, str(exc))
            return FeedOutcome(status="refused", version=current, cause=str(exc))
        self._state.put(KEY_FEED_OK, {"at": self._clock(), "version": result.version})
        self._state.delete(KEY_FEED_REFUSED)
        try:
            self._hotlist.clear_feed_refusal()
        except HotlistUnavailable as exc:
            log.warning("cannot clear the recorded feed refusal: %s", exc)
        return result

    def _take(self, feed: HotlistFeed, current: int) -> FeedOutcome:
        now = self._clock()
        self._keys.verify(feed, now=now)
        if now >= feed.expires_at:
            raise FeedExpired(
                f"feed {feed.from_version}->{feed.to_version} expired {now - feed.expires_at:.0f} s ago "
                f"(device clock {now:.0f}); if the clock is wrong, fix it"
            )
        if feed.not_modified:
            if feed.to_version != current:
                raise FeedRollback(
                    f"'not modified' answer names version {feed.to_version} but version {current} is in force"
                )
            self._confirm_current(now)
            return FeedOutcome(status="current", version=current)
        if feed.to_version <= current:
            raise FeedRollback(
                f"feed to version {feed.to_version} is not newer than version {current} in force "
                "(rollback refused)"
            )
        if feed.from_version > current:
            raise FeedRollback(
                f"feed starts at version {feed.from_version} but version {current} is in force (gap)"
            )
        items = list(parse_delta(line.encode("utf-8") for line in feed.delta))
        header = items[0] if items else None
        if header is None or getattr(header, "version", None) != feed.to_version:
            raise BadDelta(f"delta header does not name version {feed.to_version}: {str(header)[:120]}")
        try:
            result = self._hotlist.apply_delta(items)
        except (DeltaRejected, ImportRefused) as exc:
            raise BadDelta(f"delta {feed.to_version} refused by the hotlist: {exc}") from exc
        except HotlistUnavailable as exc:
            raise FeedUnavailable(str(exc)) from exc
        log.info(
            "hotlist feed %d -> %d applied: %d added, %d updated, %d removed",
            feed.from_version,
            feed.to_version,
            result.added,
            result.updated,
            result.removed,
        )
        return FeedOutcome(
            status="applied", version=result.version, added=result.added, removed=result.removed
        )

    def _confirm_current(self, now: float) -> None:
        """The server confirmed our version is current: the delta-fed lists are fresh as of now."""
        try:
            self._hotlist.mark_refreshed(source="delta", at=now)
        except HotlistUnavailable as exc:
            raise FeedUnavailable(f"cannot record the hotlist refresh: {exc}") from exc

    def _refused(self, feed: HotlistFeed, cause: str) -> None:
        self._state.put(
            KEY_FEED_REFUSED,
            {
                "at": self._clock(),
                "cause": cause,
                "from_version": feed.from_version,
                "to_version": feed.to_version,
            },
        )
        try:  # for the MDT status strip, through the hotlist the daemon reads
            self._hotlist.record_feed_refusal(
                cause, from_version=feed.from_version, to_version=feed.to_version
            )
        except HotlistUnavailable as exc:
            log.warning("cannot record the feed refusal for the MDT: %s", exc)
        now = time.monotonic()
        if self._last_logged is None or self._last_logged[0] != cause or now - self._last_logged[1] > 300:
            log.error("hotlist feed refused, list in force kept: %s", cause)
            self._last_logged = (cause, now)
