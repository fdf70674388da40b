"""Device identity: one-time enrollment tokens, enrollment, revocation, authentication, heartbeats.

An administrator makes a token (`alpr-server devices enroll --name car-17`); the token is for one
device id chosen by the server. The technician runs `alpr-edge enroll --token ...` on the car:
the car makes its key pair, sends a CSR with the token, and gets a client certificate whose CN is
that device id. From then on the certificate is the device's identity on every request.

Guarantees:
- Tokens are 192-bit random strings; only their SHA-256 is stored. A token works once, before
  its expiry: it is marked used in the same transaction that records the device and its
  certificate serial, so two racing enrollments with one token give one device, and a failed
  enrollment (bad CSR, no feed key) leaves the token unused.
- `authenticate` runs on every device request: the certificate must be one this server issued
  and recorded (serial and CN both match a device row) and not revoked, so a revocation acts on
  the next request, without restarting the server or waiting for a CRL.
- Revocation is permanent for that certificate; the device needs a new token to come back.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography import x509

from server.ca import CertificateAuthority, common_name, serial_hex
from server.db import Database
from sync.protocol import Heartbeat

COMPONENT = "server.devices"
DEFAULT_TOKEN_TTL_S = 72 * 3600


class DeviceError(Exception):
    """A device-identity operation failed."""


class TokenRefused(DeviceError):
    """The enrollment token is unknown, used or expired (permanent for that token)."""


class NotAuthenticated(DeviceError):
    """The client certificate is missing, unknown to this server, or revoked."""


class UnknownDevice(DeviceError):
    """No device with that id."""


MIGRATIONS = (
    """
    CREATE TABLE enroll_tokens (
        token_hash TEXT PRIMARY KEY,
        device_id TEXT NOT NULL UNIQUE,
        name TEXT,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL
    );
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        name TEXT,
        hostname TEXT,
        enrolled_at REAL NOT NULL,
        cert_serial TEXT NOT NULL UNIQUE,
        cert_not_after REAL NOT NULL,
        revoked_at REAL,
        revoked_reason TEXT,
        last_heartbeat_at REAL,
        last_heartbeat TEXT
    );
    """,
)


@dataclass(frozen=True, slots=True)
class EnrollToken:
    token: str
    device_id: str
    name: str | None
    expires_at: float


@dataclass(frozen=True, slots=True)
class Enrollment:
    device_id: str
    certificate_pem: str
    serial: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceInfo:
    device_id: str
    name: str | None
    hostname: str | None
    enrolled_at: float
    cert_serial: str
    cert_not_after: float
    revoked_at: float | None
    last_heartbeat_at: float | None
    health: dict[str, Any] | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What the TLS layer verified: the client certificate's CN and serial."""

    common_name: str | None
    serial: str


@lru_cache(maxsize=4096)
def peer_certificate(der: bytes) -> PeerCertificate:
    """Parse a verified client certificate (DER); cached, since a device reuses one certificate."""
    cert = x509.load_der_x509_certificate(der)
    return PeerCertificate(common_name(cert), serial_hex(cert))


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def health_summary(hb: Heartbeat) -> dict[str, Any]:
    """The part of a heartbeat an administrator reads in `devices list`."""
    fps = {name: cam.get("fps") for name, cam in hb.cameras.items() if isinstance(cam, dict) and "fps" in cam}
    return {
        "software_version": hb.software_version,
        "sent_at": hb.sent_at,
        "cameras": {
            name: cam.get("state", "?") if isinstance(cam, dict) else "?" for name, cam in hb.cameras.items()
        },
        "fps": fps,
        "gps": hb.gps,
        "hotlist_versions": hb.hotlist_versions,
        "backlog": hb.backlog,
        "disk_free_bytes": hb.disk_free_bytes,
    }


class DeviceRegistry:
    """Tokens and devices over the server database."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        db.migrate(COMPONENT, MIGRATIONS)

    def create_token(self, name: str | None = None, *, ttl_s: float = DEFAULT_TOKEN_TTL_S) -> EnrollToken:
        token = secrets.token_urlsafe(24)
        device_id = f"dev-{secrets.token_hex(6)}"
        now = self._clock()
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO enroll_tokens (token_hash, device_id, name, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (_hash(token), device_id, name, now, now + ttl_s),
            )
        return EnrollToken(token=token, device_id=device_id, name=name, expires_at=now + ttl_s)

    def enroll(self, token: str, csr_pem: str, *, ca: CertificateAuthority, hostname: str = "") -> Enrollment:
        """Sign the CSR for the token's device and record it; the token is spent on success only."""
        token_hash = _hash(token)
        now = self._clock()
        row = self._db.query(
            "SELECT device_id, name FROM enroll_tokens WHERE token_hash = ? AND used_at IS NULL "
            "AND expires_at > ?",
            (token_hash, now),
        )
        if not row:
            raise TokenRefused("enrollment token is unknown, already used or expired")
        device_id, name = row[0]
        issued = ca.sign_device_csr(csr_pem, device_id)  # CSRRefused propagates; token stays unused
        with self._db.write() as conn:
            spent = conn.execute(
                "UPDATE enroll_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL "
                "AND expires_at > ?",
                (now, token_hash, now),
            ).rowcount
            if spent != 1:
                raise TokenRefused("enrollment token is unknown, already used or expired")
            conn.execute(
                "INSERT INTO devices (device_id, name, hostname, enrolled_at, cert_serial, cert_not_after) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, name, hostname[:255] or None, now, issued.serial, issued.not_after),
            )
        return Enrollment(device_id=device_id, certificate_pem=issued.pem, serial=issued.serial)

    def authenticate(self, cert_der: bytes | None) -> str:
        """The device id a verified client certificate belongs to; NotAuthenticated otherwise."""
        if not cert_der:
            raise NotAuthenticated("a client certificate is required (mutual TLS)")
        try:
            peer = peer_certificate(cert_der)
        except ValueError as exc:
            raise NotAuthenticated(f"the client certificate does not parse: {exc}") from exc
        rows = self._db.query(
            "SELECT device_id, revoked_at FROM devices WHERE cert_serial = ?", (peer.serial,)
        )
        if not rows or rows[0][0] != peer.common_name:
            raise NotAuthenticated(
                f"certificate serial {peer.serial} (CN {peer.common_name}) is not enrolled on this server"
            )
        device_id, revoked_at = rows[0]
        if revoked_at is not None:
            raise NotAuthenticated(f"device {device_id} is revoked")
        return device_id

    def revoke(self, device_id: str, *, reason: str = "") -> bool:
        """Revoke; False when it was revoked already. UnknownDevice when no such device."""
        with self._db.write() as conn:
            row = conn.execute("SELECT revoked_at FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if row is None:
                raise UnknownDevice(f"no device '{device_id}'")
            if row[0] is not None:
                return False
            conn.execute(
                "UPDATE devices SET revoked_at = ?, revoked_reason = ? WHERE device_id = ?",
                (self._clock(), reason or None, device_id),
            )
        return True

    def record_heartbeat(self, device_id: str, hb: Heartbeat) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE devices SET last_heartbeat_at = ?, last_heartbeat = ? WHERE device_id = ?",
                (self._clock(), json.dumps(health_summary(hb), sort_keys=True), device_id),
            )

    def list(self) -> list[DeviceInfo]:
        rows = self._db.query(
            "SELECT device_id, name, hostname, enrolled_at, cert_serial, cert_not_after, revoked_at, "
            "last_heartbeat_at, last_heartbeat FROM devices ORDER BY enrolled_at, device_id"
        )
        return [
            DeviceInfo(
                device_id=r[0],
                name=r[1],
                hostname=r[2],
                enrolled_at=r[3],
                cert_serial=r[4],
                cert_not_after=r[5],
                revoked_at=r[6],
                last_heartbeat_at=r[7],
                health=json.loads(r[8]) if r[8] else None,
            )
            for r in rows
        ]
