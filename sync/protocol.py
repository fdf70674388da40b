"""Wire protocol v1 between the car (sync agent) and the department server.

This module is the contract: the server (`server/`) and the agent (`sync/agent.py`) both import
these models, and the server's OpenAPI document (committed as `sync/openapi-v1.json`) is
generated from the routes that use them.

Transport
- HTTPS only. Every `/v1/device/...` endpoint requires mutual TLS: the client certificate,
  issued by the department CA at enrollment, names the device (subject CN = device id). A body
  that names another device is refused (403); the certificate, not the body, says who is
  talking.
- `POST /v1/enroll` is the only endpoint without a client certificate: it takes a one-time
  token and a CSR made on the device, and returns the signed certificate.
- Bodies are JSON; uploads are gzip JSON (`Content-Encoding: gzip`). Limits: an upload batch
  decompresses to at most MAX_BATCH_BYTES (413 beyond), at most MAX_BATCH_RECORDS records.

Exactly once
- Every record carries an `id` (UUID) made on the device when the record was created. The
  server stores each id once; a record it already has is acknowledged as a duplicate, so a
  retry after a lost response is harmless. The agent deletes an outbox entry only when the
  server's `BatchAck` lists its id under `stored` or `duplicate`.
- The server acknowledges only after its own commit is durable.

Hotlist feed
- `GET /v1/device/hotlist?since=V` returns a signed `HotlistFeed` taking the device from
  version V to `to_version` (or `not_modified`). The signature is Ed25519 over
  `canonical_bytes(feed without "signature")`, by one of the keys the device was given at
  enrollment (or endorsed since, see `KeyEndorsement`). The device refuses a bad signature, a
  feed whose `to_version` is not newer than what it has (rollback), and a feed past its
  `expires_at` (freeze attack); in each case the list in force stays untouched.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1
MAX_BATCH_BYTES = 8 * 1024 * 1024  # decompressed
MAX_BATCH_RECORDS = 5000
MAX_IMAGE_BYTES = 2 * 1024 * 1024

ENROLL_PATH = "/v1/enroll"
BATCH_PATH = "/v1/device/batches"
IMAGE_PATH = "/v1/device/images/{record_id}"  # PUT, body: the JPEG
HOTLIST_PATH = "/v1/device/hotlist"  # GET ?since=VERSION
KEYS_PATH = "/v1/device/keys"  # GET: the feed-signing keys with endorsements
HEARTBEAT_PATH = "/v1/device/heartbeat"

Uuid = Annotated[str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- records -----------------------------------------------------------------------------------
# Field names are short on purpose: reads are the bulk of LTE traffic (target <= 200 bytes a
# read on the wire, gzip included). Each alias is documented in the OpenAPI schema.


class ReadRecord(_Model):
    kind: Literal["read"] = "read"
    id: Uuid = Field(description="Read id, made on the device.")
    camera: str = Field(alias="c", max_length=64, description="Camera id.")
    plate: str = Field(alias="p", max_length=16, description="Consensus plate text.")
    confidence: float = Field(alias="cf", ge=0, le=1, description="Weakest character's vote share.")
    region: str | None = Field(None, alias="rg", max_length=64, description="OCR region (country), if any.")
    first_seen: float = Field(alias="t0", description="Epoch seconds of the pass's first frame.")
    last_seen: float = Field(alias="t1", description="Epoch seconds of the pass's last frame.")
    observations: int = Field(alias="n", ge=0, description="Frames whose OCR voted.")
    lat: float | None = Field(None, alias="la", ge=-90, le=90, description="Latitude; null = no fix.")
    lon: float | None = Field(None, alias="lo", ge=-180, le=180, description="Longitude; null = no fix.")
    speed_mps: float | None = Field(None, alias="sp", description="Speed over ground, m/s.")
    heading_deg: float | None = Field(None, alias="hd", description="Course over ground, degrees.")
    fix_mode: int = Field(1, alias="fm", ge=1, le=3, description="1 no fix, 2 2D, 3 3D.")
    fix_time: float | None = Field(None, alias="ft", description="Receiver time of the fix, epoch seconds.")


class HitRecord(_Model):
    kind: Literal["hit"] = "hit"
    id: Uuid
    read_id: Uuid
    entry: dict[str, Any] = Field(description="Snapshot of the hotlist entry at match time.")
    match_kind: Literal["exact", "approximate"]
    differing_positions: list[int]
    state_mismatch: bool
    list_kind: str
    list_version: str | None
    list_age_s: float | None
    stale: bool
    retroactive: bool
    matched_at: float


class AnswerRecord(_Model):
    kind: Literal["answer"] = "answer"
    id: Uuid
    hit_id: Uuid
    officer: str = Field(max_length=64)
    outcome: Literal[
        "confirmed_match", "misread", "wrong_state", "vehicle_mismatch", "entry_cleared", "not_actionable"
    ]
    note: str = Field("", max_length=2000)
    answered_at: float


class AuditRecord(_Model):
    kind: Literal["audit"] = "audit"
    id: Uuid
    at: str = Field(description="ISO 8601 UTC.")
    actor: str
    action: str
    subject: str | None = None
    reason: str | None = None
    outcome: str
    details: dict[str, Any] = Field(default_factory=dict)


Record = Annotated[ReadRecord | HitRecord | AnswerRecord | AuditRecord, Field(discriminator="kind")]


class UploadBatch(_Model):
    protocol: Literal[1] = PROTOCOL_VERSION
    device_id: str = Field(max_length=128, description="Must equal the client certificate's CN.")
    batch_id: Uuid
    sent_at: float = Field(description="Device clock, epoch seconds (informational: clocks jump).")
    records: list[Record] = Field(max_length=MAX_BATCH_RECORDS)


class Rejected(_Model):
    id: str
    reason: str


class BatchAck(_Model):
    batch_id: Uuid
    stored: list[str] = Field(description="Ids stored by this request.")
    duplicate: list[str] = Field(description="Ids the server already had: also safe to delete.")
    rejected: list[Rejected] = Field(
        default_factory=list, description="Ids refused for good (invalid); the device sets them aside."
    )
    server_time: float


class ImageAck(_Model):
    record_id: Uuid
    status: Literal["stored", "duplicate"]


# --- hotlist feed ------------------------------------------------------------------------------


class FeedKey(_Model):
    key_id: str
    public_key: str = Field(description="Raw Ed25519 public key, base64.")
    not_after: float | None = Field(
        None, description="Epoch seconds after which feeds signed by it are refused."
    )


class KeyEndorsement(_Model):
    """A new feed key, signed by a key the device already trusts (rotation without re-enrolling)."""

    key: FeedKey
    endorsed_by: str
    signature: str = Field(description="Ed25519 by `endorsed_by` over canonical_bytes(key), base64.")


class HotlistFeed(_Model):
    protocol: Literal[1] = PROTOCOL_VERSION
    from_version: int = Field(ge=0)
    to_version: int = Field(ge=0)
    not_modified: bool = False
    issued_at: float
    expires_at: float = Field(description="A device refuses this feed after this time (freeze protection).")
    key_id: str
    delta: list[str] = Field(
        default_factory=list,
        description="The delta as JSON lines (header line then add/remove lines), as "
        "`alpr-edge hotlist import --format delta` reads them.",
    )
    signature: str = Field("", description="Ed25519 over canonical_bytes(this feed minus signature), base64.")


# --- enrollment and heartbeat ------------------------------------------------------------------


class EnrollRequest(_Model):
    token: str = Field(min_length=16, max_length=256, description="One-time enrollment token.")
    csr_pem: str = Field(max_length=16384, description="PKCS#10 request made on the device.")
    hostname: str = Field("", max_length=255)


class EnrollResponse(_Model):
    device_id: str
    certificate_pem: str
    ca_certificate_pem: str
    feed_keys: list[FeedKey]


class Heartbeat(_Model):
    protocol: Literal[1] = PROTOCOL_VERSION
    device_id: str
    sent_at: float
    software_version: str
    cameras: dict[str, dict[str, Any]] = Field(default_factory=dict)
    gps: dict[str, Any] = Field(default_factory=dict)
    hotlist_versions: dict[str, str | None] = Field(default_factory=dict)
    backlog: dict[str, int] = Field(default_factory=dict)
    disk_free_bytes: int | None = None


class HeartbeatAck(_Model):
    server_time: float


class ProblemDetail(_Model):
    """Every error response body."""

    status: int
    title: str
    detail: str = ""


# --- encoding ----------------------------------------------------------------------------------


def canonical_bytes(obj: BaseModel | dict[str, Any]) -> bytes:
    """The bytes a signature covers: sorted keys, no whitespace, UTF-8, by alias, no 'signature'."""
    data = obj.model_dump(mode="json", by_alias=True) if isinstance(obj, BaseModel) else dict(obj)
    data.pop("signature", None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_batch(batch: UploadBatch) -> bytes:
    """A batch as sent: compact JSON by alias, gzipped."""
    raw = batch.model_dump_json(by_alias=True, exclude_defaults=False).encode("utf-8")
    return gzip.compress(raw, compresslevel=6, mtime=0)


class ProtocolError(ValueError):
    """A body that does not decode or validate; the message is safe to return to the client."""


def decode_batch(body: bytes, *, gzipped: bool = True) -> UploadBatch:
    """Decompress (bounded, so a gzip bomb costs nothing) and validate an upload batch."""
    raw = body
    if gzipped:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = d.decompress(body, MAX_BATCH_BYTES + 1)
        except zlib.error as exc:
            raise ProtocolError(f"body is not gzip: {exc}") from exc
        if len(raw) > MAX_BATCH_BYTES or d.unconsumed_tail:
            raise ProtocolError(f"batch decompresses to more than {MAX_BATCH_BYTES} bytes")
    try:
        return UploadBatch.model_validate_json(raw)
    except ValueError as exc:
        raise ProtocolError(f"not a valid v1 upload batch: {exc}") from exc
