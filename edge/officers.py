"""Authorized officers: who may log in to the MDT page, from a provisioning file.

The file (JSON; written by the fleet technician now, distributed by the department server later):

    {"officers": [
        {"id": "B1234", "name": "J. Rivera", "pin_hash": "scrypt$16384$8$1$<salt b64>$<hash b64>",
         "training_valid_until": "2027-03-31"}
    ]}

Guarantees:
- PINs are never stored: only a salted scrypt hash (`hash_pin`; `alpr-edge officers hash-pin`
  makes one). Verification compares in constant time and costs the same for an unknown officer
  as for a known one, so timing does not tell which ids exist.
- An officer whose training has lapsed (`training_valid_until` in the past, or missing) cannot
  log in: `authenticate` says so instead of checking the PIN.
- A file that is missing, not JSON, or has a bad entry is refused as a whole (`OfficersFileError`
  naming the file and the entry): a half-read list never silently locks some officers out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path

__all__ = [
    "LoginOutcome",
    "Officer",
    "OfficerRegistry",
    "OfficersError",
    "OfficersFileError",
    "hash_pin",
    "load_officers",
    "verify_pin",
]


class OfficersError(Exception):
    """Anything about the authorized-officer list."""


class OfficersFileError(OfficersError):
    """The provisioning file is missing or malformed (permanent until it is fixed)."""


class BadPinError(OfficersError):
    """A PIN that cannot be hashed (too short, not digits)."""


SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PIN_DIGITS = 4
MAX_PIN_DIGITS = 12
_ID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


def hash_pin(pin: str, *, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    """A salted scrypt hash of a numeric PIN, as stored in the provisioning file."""
    if not (pin.isascii() and pin.isdigit() and MIN_PIN_DIGITS <= len(pin) <= MAX_PIN_DIGITS):
        raise BadPinError(f"a PIN is {MIN_PIN_DIGITS} to {MAX_PIN_DIGITS} digits")
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return "$".join(["scrypt", str(n), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def verify_pin(pin: str, stored: str) -> bool:
    """Whether `pin` matches the stored hash (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = _unb64(digest)
        got = hashlib.scrypt(
            pin.encode()[:64], salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(want)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


# Verifying against this for unknown ids keeps the time of a failed login the same.
_DUMMY_HASH = hash_pin("0000", salt=b"\0" * 16)


@dataclass(frozen=True, kw_only=True)
class Officer:
    id: str
    name: str
    pin_hash: str
    training_valid_until: date | None

    def training_current(self, today: date) -> bool:
        return self.training_valid_until is not None and today <= self.training_valid_until


class LoginOutcome(StrEnum):
    OK = "ok"
    BAD_PIN = "bad_pin"
    UNKNOWN_OFFICER = "unknown_officer"
    TRAINING_LAPSED = "training_lapsed"
    NO_OFFICERS = "no_officers"


class OfficerRegistry:
    """The officers allowed on this device. Immutable once loaded."""

    def __init__(self, officers: Mapping[str, Officer], *, source: str = "", problem: str | None = None):
        self._officers = dict(officers)
        self.source = source
        self.problem = problem  # why the list is empty (missing file ...), shown on the login page

    @classmethod
    def empty(cls, problem: str) -> OfficerRegistry:
        return cls({}, problem=problem)

    def __len__(self) -> int:
        return len(self._officers)

    def get(self, officer_id: str) -> Officer | None:
        return self._officers.get(officer_id.strip().upper())

    def all(self) -> list[Officer]:
        return sorted(self._officers.values(), key=lambda o: o.id)

    def authenticate(self, officer_id: str, pin: str, *, now: float) -> tuple[LoginOutcome, Officer | None]:
        if not self._officers:
            verify_pin(pin, _DUMMY_HASH)
            return LoginOutcome.NO_OFFICERS, None
        officer = self.get(officer_id)
        if officer is None:
            verify_pin(pin, _DUMMY_HASH)
            return LoginOutcome.UNKNOWN_OFFICER, None
        if not verify_pin(pin, officer.pin_hash):
            return LoginOutcome.BAD_PIN, officer
        if not officer.training_current(datetime.fromtimestamp(now, UTC).date()):
            return LoginOutcome.TRAINING_LAPSED, officer
        return LoginOutcome.OK, officer


def load_officers(path: Path) -> OfficerRegistry:
    """Read and check the whole provisioning file; refuse it as a whole on any problem."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OfficersFileError(f"{path}: no authorized-officer file (provision one for the MDT)") from exc
    except OSError as exc:
        raise OfficersFileError(f"{path}: cannot read the officer file: {exc.strerror}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OfficersFileError(f"{path}: not a JSON officer file: {exc}") from exc
    entries = data.get("officers") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise OfficersFileError(f'{path}: expected {{"officers": [...]}}')
    officers: dict[str, Officer] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: officers[{i}]"
        if not isinstance(entry, dict):
            raise OfficersFileError(f"{where}: not an object")
        unknown = set(entry) - {"id", "name", "pin_hash", "training_valid_until"}
        if unknown:
            raise OfficersFileError(f"{where}: unknown key(s) {sorted(unknown)}")
        oid = str(entry.get("id", "")).strip().upper()
        if not _ID.match(oid):
            raise OfficersFileError(f"{where}: id must be 1-32 letters, digits, '.', '_' or '-'")
        if oid in officers:
            raise OfficersFileError(f"{where}: officer {oid} is listed twice")
        pin_hash = entry.get("pin_hash")
        if not isinstance(pin_hash, str) or not pin_hash.startswith("scrypt$") or pin_hash.count("$") != 5:
            raise OfficersFileError(
                f"{where}: pin_hash is not a scrypt hash (use `alpr-edge officers hash-pin`)"
            )
        until = entry.get("training_valid_until")
        try:
            valid_until = date.fromisoformat(until) if until else None
        except (TypeError, ValueError) as exc:
            raise OfficersFileError(f"{where}: training_valid_until is not a YYYY-MM-DD date") from exc
        officers[oid] = Officer(
            id=oid, name=str(entry.get("name") or oid), pin_hash=pin_hash, training_valid_until=valid_until
        )
    return OfficerRegistry(officers, source=str(path))
