"""Feed-signing keys (Ed25519): generation, rotation with endorsements, and feed signatures.

A device learns the current feed key at enrollment (`EnrollResponse.feed_keys`). When the key is
rotated, the new key is published with a `KeyEndorsement`: the new key signed by the key before
it, so a device that trusts any key of the chain can walk forward to the current one without
re-enrolling (`GET /v1/device/keys` returns the whole chain, oldest first).

Storage: private keys are files `feed-<key_id>.key` (PKCS#8 PEM, mode 0600) in the keys folder;
the public half, creation and retirement times and the endorsement are rows of `feed_keys`
(schema component `server.feed`).

Guarantees:
- A key id is the first 16 hex digits of SHA-256 over the raw public key, so it names the key.
- Rotation writes the new private key file (fsynced) before the database row that makes it
  current; a crash in between leaves an unused file and the old key still current.
- Only the current (newest, not retired) key signs. A retired key's private file is kept so an
  operator can inspect it, but the server never signs with it again.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from server.db import Database
from sync.protocol import FeedKey, HotlistFeed, KeyEndorsement, canonical_bytes


class FeedKeyError(Exception):
    """The feed-signing keys failed."""


class NoFeedKey(FeedKeyError):
    """No key has been generated yet (run `alpr-server keys generate`)."""


class FeedKeyExists(FeedKeyError):
    """`generate` when a key exists already: rotation is the way to replace it."""


class KeyFileMissing(FeedKeyError):
    """The current key's private file is gone or unreadable (permanent until restored)."""


def _schema_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE feed_keys (
            key_id TEXT PRIMARY KEY,
            public_key TEXT NOT NULL,
            created_at REAL NOT NULL,
            retired_at REAL,
            endorsed_by TEXT REFERENCES feed_keys (key_id),
            endorsement TEXT
        )"""
    )


MIGRATIONS = (_schema_v1,)
COMPONENT = "server.feed"


def key_id_for(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def verify_signature(public_key_b64: str, signature_b64: str, message: bytes) -> bool:
    """True when `signature_b64` is a valid Ed25519 signature of `message` by the key."""
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64, validate=True))
        key.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_feed(feed: HotlistFeed, keys: Iterable[FeedKey]) -> bool:
    """True when the feed is signed by one of `keys` (matched by key id)."""
    by_id = {k.key_id: k for k in keys}
    key = by_id.get(feed.key_id)
    return key is not None and verify_signature(key.public_key, feed.signature, canonical_bytes(feed))


def verify_endorsement(endorsement: KeyEndorsement, trusted: Iterable[FeedKey]) -> bool:
    """True when the endorsement is signed by a trusted key and names its own key id correctly."""
    by_id = {k.key_id: k for k in trusted}
    signer = by_id.get(endorsement.endorsed_by)
    if signer is None:
        return False
    raw = base64.b64decode(endorsement.key.public_key)
    if key_id_for(raw) != endorsement.key.key_id:
        return False
    return verify_signature(signer.public_key, endorsement.signature, canonical_bytes(endorsement.key))


class FeedKeys:
    """The department's feed keys over the server database and a keys folder."""

    def __init__(self, db: Database, folder: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self.folder = Path(folder)
        self._clock = clock
        self._lock = threading.Lock()
        self._private: dict[str, ed25519.Ed25519PrivateKey] = {}
        db.migrate(COMPONENT, MIGRATIONS)

    def _key_path(self, key_id: str) -> Path:
        return self.folder / f"feed-{key_id}.key"

    def _new_key(self) -> tuple[ed25519.Ed25519PrivateKey, FeedKey]:
        private = ed25519.Ed25519PrivateKey.generate()
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        key = FeedKey(key_id=key_id_for(raw), public_key=_b64(raw))
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path = self._key_path(key.key_id)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, pem)
                os.fsync(fd)
            finally:
                os.close(fd)
            dirfd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError as exc:
            raise FeedKeyError(f"{path}: cannot write the new feed key: {exc}") from exc
        return private, key

    def generate(self) -> FeedKey:
        """The first key. Refused when one exists (use `rotate`)."""
        if self._current_row() is not None:
            raise FeedKeyExists("a feed key exists already; use `alpr-server keys rotate` to replace it")
        private, key = self._new_key()
        with self._db.write() as conn:
            if conn.execute("SELECT 1 FROM feed_keys WHERE retired_at IS NULL").fetchone():
                raise FeedKeyExists("a feed key was generated concurrently; use `keys rotate`")
            conn.execute(
                "INSERT INTO feed_keys (key_id, public_key, created_at) VALUES (?, ?, ?)",
                (key.key_id, key.public_key, self._clock()),
            )
        self._private[key.key_id] = private
        return key

    def rotate(self) -> KeyEndorsement:
        """A new current key, endorsed by the current one, which is retired."""
        with self._lock:
            old_id, old_private = self._current_private()
            private, key = self._new_key()
            signature = _b64(old_private.sign(canonical_bytes(key)))
            endorsement = KeyEndorsement(key=key, endorsed_by=old_id, signature=signature)
            now = self._clock()
            with self._db.write() as conn:
                retired = conn.execute(
                    "UPDATE feed_keys SET retired_at = ? WHERE key_id = ? AND retired_at IS NULL",
                    (now, old_id),
                ).rowcount
                if retired != 1:
                    raise FeedKeyError(f"key {old_id} was rotated concurrently; nothing changed")
                conn.execute(
                    "INSERT INTO feed_keys (key_id, public_key, created_at, endorsed_by, endorsement) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (key.key_id, key.public_key, now, old_id, signature),
                )
            self._private[key.key_id] = private
            return endorsement

    def _current_row(self) -> tuple[str, str] | None:
        rows = self._db.query(
            "SELECT key_id, public_key FROM feed_keys WHERE retired_at IS NULL "
            "ORDER BY created_at DESC LIMIT 1"
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def current(self) -> FeedKey:
        row = self._current_row()
        if row is None:
            raise NoFeedKey("no feed-signing key yet (run `alpr-server keys generate`)")
        return FeedKey(key_id=row[0], public_key=row[1])

    def _current_private(self) -> tuple[str, ed25519.Ed25519PrivateKey]:
        key_id = self.current().key_id
        private = self._private.get(key_id)
        if private is None:
            path = self._key_path(key_id)
            try:
                loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (OSError, ValueError) as exc:
                raise KeyFileMissing(f"{path}: cannot load the current feed key: {exc}") from exc
            if not isinstance(loaded, ed25519.Ed25519PrivateKey):
                raise KeyFileMissing(f"{path}: not an Ed25519 key")
            private = self._private[key_id] = loaded
        return key_id, private

    def endorsements(self) -> list[KeyEndorsement]:
        """Every rotation, oldest first: walk it from any trusted key to the current one."""
        rows = self._db.query(
            "SELECT key_id, public_key, endorsed_by, endorsement FROM feed_keys "
            "WHERE endorsed_by IS NOT NULL ORDER BY created_at, rowid"
        )
        return [
            KeyEndorsement(key=FeedKey(key_id=r[0], public_key=r[1]), endorsed_by=r[2], signature=r[3])
            for r in rows
        ]

    def all_keys(self) -> list[tuple[FeedKey, float, float | None]]:
        """(key, created_at, retired_at) for every key, oldest first."""
        rows = self._db.query(
            "SELECT key_id, public_key, created_at, retired_at FROM feed_keys ORDER BY created_at, rowid"
        )
        return [(FeedKey(key_id=r[0], public_key=r[1]), r[2], r[3]) for r in rows]

    def sign(self, feed: HotlistFeed) -> HotlistFeed:
        """The feed with `key_id` set to the current key and its signature filled in."""
        key_id, private = self._current_private()
        unsigned = feed.model_copy(update={"key_id": key_id, "signature": ""})
        return unsigned.model_copy(update={"signature": _b64(private.sign(canonical_bytes(unsigned)))})
