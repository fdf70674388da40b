"""The department server's HTTP API (wire protocol v1, see `sync.protocol`).

Routes:
- `POST /v1/enroll` (no client certificate): one-time token + CSR -> client certificate.
- `/v1/device/...` (verified client certificate, CN = device id, serial enrolled and not revoked,
  checked on every request): batches, images, hotlist feed, feed keys, heartbeat.

Guarantees:
- Every error is a `ProblemDetail` (`application/problem+json`) with the status, a title and a
  detail that says what to fix; refusals are logged (rate-limited per reason) and counted.
- A batch is acknowledged only after its records are durably stored (`server.ingest`). A
  request body is bounded before it is read in full: 413 beyond the route's limit, and a gzip
  body is inflated at most to MAX_BATCH_BYTES (a gzip bomb costs nothing).
- A body naming a device other than the certificate's is refused (403) and nothing is stored.
- Records that fail validation one by one are rejected by id (the rest of the batch is stored),
  so one bad record cannot block a device's upload lane; a batch whose envelope is invalid is
  refused whole (400).
- Database contention answers 503 with `Retry-After`; the device retries, and retries are
  harmless because records are stored once by id.
- The test-only fault hook (`POST /test/faults`) exists only when the app is built with
  `test_faults=True` (`alpr-server serve --test-faults`), answers loopback and private
  addresses only, and
  is not part of the published API.
"""

import collections
import ipaddress
import json
import logging
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge.ratelog import RateLimitedLog
from server.ca import CSRRefused
from server.db import DatabaseBusy, ServerDBError
from server.devices import NotAuthenticated, TokenRefused
from server.feed import FeedKeyError
from server.home import Department
from sync.protocol import (
    BATCH_PATH,
    ENROLL_PATH,
    HEARTBEAT_PATH,
    HOTLIST_PATH,
    IMAGE_PATH,
    KEYS_PATH,
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    MAX_IMAGE_BYTES,
    PROTOCOL_VERSION,
    BatchAck,
    EnrollRequest,
    EnrollResponse,
    Heartbeat,
    HeartbeatAck,
    HotlistFeed,
    ImageAck,
    KeyEndorsement,
    ProblemDetail,
    ProtocolError,
    Record,
    Rejected,
    UploadBatch,
    Uuid,
    decode_batch,
)

log = logging.getLogger("alpr.server")

DEVICE_PREFIX = "/v1/device"
SMALL_BODY_BYTES = 64 * 1024  # enroll, heartbeat
DEFAULT_FEED_VALIDITY_S = 24 * 3600
BUSY_RETRY_AFTER_S = 2
PROBLEM_JSON = "application/problem+json"
JPEG_MAGIC = b"\xff\xd8\xff"

_RECORD = TypeAdapter(Record)
_UUID = TypeAdapter(Uuid)
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class Problem(Exception):
    """An error answer: becomes a ProblemDetail response."""

    def __init__(self, status: int, title: str, detail: str = "", *, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}


@dataclass
class FaultPlan:
    """Test hook: answer `status` with Retry-After on the next `times` requests to `endpoint`."""

    status: int = 503
    retry_after: int | None = 2
    times: int = 0
    endpoint: str = "batches"


class FaultRequest(BaseModel):
    status: int = Field(503, ge=400, le=599)
    retry_after: int | None = Field(2, ge=0)
    times: int = Field(1, ge=0)
    endpoint: str = Field("batches", pattern="^(batches|images|hotlist|heartbeat|keys)$")


def _problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed request (the detail says what).",
        401: "No client certificate: mutual TLS is required.",
        403: "Certificate unknown or revoked, a body naming another device, or a refused token.",
        413: "Body too large (see MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_IMAGE_BYTES).",
        415: "Unsupported Content-Encoding or content type.",
        503: "Busy or not ready: retry after the Retry-After header's seconds.",
    }
    ref = {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}
    return {code: {"description": text[code], "content": {PROBLEM_JSON: ref}} for code in codes}


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def _body_limit(path: str) -> int:
    if path.startswith(DEVICE_PREFIX + "/images/"):
        return MAX_IMAGE_BYTES
    if path == BATCH_PATH:
        return MAX_BATCH_BYTES
    return SMALL_BODY_BYTES


class _BodyLimit:
    """Refuses bodies above the route's limit: by Content-Length up front, else while streaming."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = _body_limit(scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _send_problem(
                    send,
                    413,
                    "Body too large",
                    f"body is {int(value)} bytes; this endpoint takes at most {limit}",
                )
                return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


async def _send_problem(send: Any, status: int, title: str, detail: str) -> None:
    body = ProblemDetail(status=status, title=title, detail=detail).model_dump_json().encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _problem_response(status: int, title: str, detail: str = "", headers: dict[str, str] | None = None):
    return JSONResponse(
        ProblemDetail(status=status, title=title, detail=detail).model_dump(),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _peer_cert_pem(request: Request) -> str | None:
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    return chain[0] if chain else None


def _gunzip(body: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        raw = d.decompress(body, MAX_BATCH_BYTES + 1)
    except zlib.error as exc:
        raise Problem(400, "Malformed batch", f"body is not gzip: {exc}") from exc
    if len(raw) > MAX_BATCH_BYTES or d.unconsumed_tail:
        raise Problem(413, "Batch too large", f"batch decompresses to more than {MAX_BATCH_BYTES} bytes")
    if not d.eof:
        raise Problem(400, "Malformed batch", "gzip stream is truncated")
    return raw


def decode_upload(body: bytes, *, gzipped: bool) -> tuple[UploadBatch, list[Rejected]]:
    """The batch and the records refused one by one; Problem (400/413) when the batch as a whole is bad."""
    raw = _gunzip(body) if gzipped else body
    try:
        return decode_batch(raw, gzipped=False), []
    except ProtocolError as exc:
        first_error = str(exc)
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "Malformed batch", first_error[:500]) from None
    records = obj.get("records") if isinstance(obj, dict) else None
    if not isinstance(records, list):
        raise Problem(400, "Malformed batch", first_error[:500])
    if len(records) > MAX_BATCH_RECORDS:
        raise Problem(
            413, "Batch too large", f"{len(records)} records; at most {MAX_BATCH_RECORDS} per batch"
        )
    good = []
    rejected: list[Rejected] = []
    for i, item in enumerate(records):
        try:
            good.append(_RECORD.validate_python(item))
        except ValidationError as exc:
            rid = item.get("id") if isinstance(item, dict) else None
            try:
                _UUID.validate_python(rid)
            except ValidationError:
                raise Problem(400, "Malformed batch", f"record {i} has no valid id: {exc}"[:500]) from None
            reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            rejected.append(Rejected(id=rid, reason=reason[:300]))
    try:
        batch = UploadBatch.model_validate({**obj, "records": good})
    except ValidationError as exc:
        raise Problem(400, "Malformed batch", f"not a valid v1 upload batch: {exc}"[:500]) from None
    return batch, rejected


def create_app(
    dept: Department,
    *,
    feed_validity_s: float = DEFAULT_FEED_VALIDITY_S,
    test_faults: bool = False,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    app = FastAPI(
        title="ALPR department server",
        version=f"{PROTOCOL_VERSION}",
        summary="Wire protocol v1 between the in-vehicle sync agent and the department server.",
        description=(
            "Every `/v1/device/...` endpoint requires mutual TLS: the client certificate issued at "
            "enrollment names the device (subject CN = device id). `POST /v1/enroll` is the only "
            "endpoint without one. Uploads are gzip JSON (`Content-Encoding: gzip`). Every record "
            "carries a UUID made on the device and is stored once; errors are RFC 9457 problem details."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    rlog = RateLimitedLog(log, 10.0)
    counters: collections.Counter[str] = collections.Counter()
    faults = FaultPlan()
    faults_lock = threading.Lock()
    app.state.counters = counters

    def refuse(key: str, status: int, title: str, detail: str, **headers: str) -> Problem:
        counters[f"refused_{key}"] += 1
        rlog.warning(key, "refused (%d %s): %s", status, title, detail)
        return Problem(status, title, detail, headers=headers or None)

    @app.exception_handler(Problem)
    async def _on_problem(_request: Request, exc: Problem) -> JSONResponse:
        return _problem_response(exc.status, exc.title, exc.detail, exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def _on_too_large(_request: Request, exc: BodyTooLarge) -> JSONResponse:
        counters["refused_too_large"] += 1
        return _problem_response(413, "Body too large", f"this endpoint takes at most {exc.limit} bytes")

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        rlog.warning("invalid", "refused %s %s: %s", request.method, request.url.path, errors)
        counters["refused_invalid"] += 1
        return _problem_response(400, "Malformed request", errors[:1000])

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem_response(exc.status_code, str(exc.detail), "", exc.headers)

    @app.exception_handler(DatabaseBusy)
    async def _on_busy(_request: Request, exc: DatabaseBusy) -> JSONResponse:
        rlog.warning("busy", "database busy: %s", exc)
        counters["busy"] += 1
        return _problem_response(
            503, "Busy", "the database is busy; retry", {"Retry-After": str(BUSY_RETRY_AFTER_S)}
        )

    @app.exception_handler(ServerDBError)
    async def _on_db(_request: Request, exc: ServerDBError) -> JSONResponse:
        rlog.warning("db", "database error: %s", exc)
        counters["db_error"] += 1
        return _problem_response(500, "Database error", "the server could not store or read data")

    @app.exception_handler(FeedKeyError)
    async def _on_key(_request: Request, exc: FeedKeyError) -> JSONResponse:
        rlog.warning("feed_key", "feed key error: %s", exc)
        return _problem_response(503, "No feed key", str(exc), {"Retry-After": "60"})

    def device(request: Request) -> str:
        """The authenticated device id: verified certificate, enrolled serial, not revoked."""
        pem = _peer_cert_pem(request)
        if pem is None:
            raise refuse("no_cert", 401, "Client certificate required", "this endpoint requires mutual TLS")
        try:
            return dept.devices.authenticate(ssl.PEM_cert_to_DER_cert(pem))
        except NotAuthenticated as exc:
            raise refuse("not_enrolled", 403, "Certificate refused", str(exc)) from exc

    Device = Annotated[str, Depends(device)]

    def check_fault(endpoint: str) -> None:
        if not test_faults:
            return
        with faults_lock:
            if faults.times <= 0 or faults.endpoint != endpoint:
                return
            faults.times -= 1
            status, retry_after = faults.status, faults.retry_after
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        counters["fault_injected"] += 1
        raise Problem(status, "Injected fault", "test fault hook", headers=headers)

    def same_device(device_id: str, claimed: str, what: str) -> None:
        if claimed != device_id:
            raise refuse(
                "wrong_device",
                403,
                "Device id mismatch",
                f"{what} names device '{claimed[:128]}' but the client certificate is device '{device_id}'",
            )

    # ---------------------------------------------------------------- enrollment

    @app.post(
        ENROLL_PATH,
        response_model=EnrollResponse,
        tags=["enrollment"],
        responses=_problem_responses(400, 403, 413, 503),
        summary="Exchange a one-time token and a CSR for the device's client certificate.",
    )
    def enroll(body: EnrollRequest) -> EnrollResponse:
        current = dept.feed_keys.current()  # NoFeedKey -> 503 before the token is spent
        try:
            done = dept.devices.enroll(body.token, body.csr_pem, ca=dept.ca, hostname=body.hostname)
        except TokenRefused as exc:
            raise refuse("token", 403, "Enrollment refused", str(exc)) from exc
        except CSRRefused as exc:
            raise refuse("csr", 400, "Certificate request refused", str(exc)) from exc
        log.info("enrolled device %s (serial %s, host %r)", done.device_id, done.serial, body.hostname)
        return EnrollResponse(
            device_id=done.device_id,
            certificate_pem=done.certificate_pem,
            ca_certificate_pem=dept.ca.cert_pem,
            feed_keys=[current],
        )

    # ---------------------------------------------------------------- device routes

    router = APIRouter(prefix=DEVICE_PREFIX, tags=["device (mutual TLS)"])
    suffix = len(DEVICE_PREFIX)

    @router.post(
        BATCH_PATH[suffix:],
        response_model=BatchAck,
        responses=_problem_responses(400, 401, 403, 413, 415, 503),
        summary="Upload a batch of records (gzip JSON); each record is stored once by id.",
        openapi_extra={
            "parameters": [
                {
                    "name": "Content-Encoding",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "enum": ["gzip", "identity"]},
                    "description": "gzip (what the agent sends) or identity.",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UploadBatch"}}},
            },
        },
    )
    async def upload_batch(request: Request, device_id: Device) -> BatchAck:
        body = await request.body()
        check_fault("batches")
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("gzip", "identity"):
            raise refuse("encoding", 415, "Unsupported encoding", f"Content-Encoding '{encoding[:40]}'")
        try:
            batch, rejected = await run_in_threadpool(decode_upload, body, gzipped=encoding == "gzip")
        except Problem as exc:
            raise refuse("batch", exc.status, exc.title, f"device {device_id}: {exc.detail}") from exc
        same_device(device_id, batch.device_id, "the batch")
        ack = await run_in_threadpool(dept.ingest.store_batch, device_id, batch, rejected=rejected)
        counters["batches"] += 1
        counters["stored"] += len(ack.stored)
        counters["duplicate"] += len(ack.duplicate)
        counters["rejected"] += len(ack.rejected)
        if ack.rejected:
            rlog.warning(
                "rejected",
                "device %s batch %s: %d record(s) rejected, e.g. %s: %s",
                device_id,
                batch.batch_id,
                len(ack.rejected),
                ack.rejected[0].id,
                ack.rejected[0].reason,
            )
        return ack

    @router.put(
        IMAGE_PATH[suffix:],
        response_model=ImageAck,
        responses=_problem_responses(400, 401, 403, 413, 415, 503),
        summary="Upload the JPEG of a record (idempotent: a second upload is a duplicate).",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def put_image(
        request: Request,
        record_id: Annotated[str, PathParam(pattern=UUID_PATTERN)],
        device_id: Device,
    ) -> ImageAck:
        data = await request.body()
        check_fault("images")
        if not data.startswith(JPEG_MAGIC):
            raise refuse("not_jpeg", 415, "Not a JPEG", f"image {record_id} from {device_id} is not a JPEG")
        result = await run_in_threadpool(dept.ingest.store_image, device_id, record_id, data)
        counters[f"image_{result.status}"] += 1
        return ImageAck(record_id=record_id, status=result.status)

    @router.get(
        HOTLIST_PATH[suffix:],
        response_model=HotlistFeed,
        responses=_problem_responses(400, 401, 403, 503),
        summary="The signed hotlist delta from version `since` to the current one.",
    )
    def hotlist_feed(device_id: Device, since: Annotated[int, Query(ge=0, le=2**62)] = 0) -> HotlistFeed:
        check_fault("hotlist")
        delta = dept.hotlist.delta(since)
        issued = clock()
        feed = HotlistFeed(
            from_version=delta.from_version,
            to_version=delta.to_version,
            not_modified=delta.not_modified,
            issued_at=issued,
            expires_at=issued + feed_validity_s,
            key_id="",
            delta=delta.lines,
        )
        counters["feeds"] += 1
        return dept.feed_keys.sign(feed)

    @router.get(
        KEYS_PATH[suffix:],
        response_model=list[KeyEndorsement],
        responses=_problem_responses(401, 403, 503),
        summary="Every feed-key rotation, oldest first: each new key signed by the one before it.",
    )
    def feed_keys(device_id: Device) -> list[KeyEndorsement]:
        check_fault("keys")
        return dept.feed_keys.endorsements()

    @router.post(
        HEARTBEAT_PATH[suffix:],
        response_model=HeartbeatAck,
        responses=_problem_responses(400, 401, 403, 413, 503),
        summary="Device health: cameras, fps, GPS, hotlist versions, backlog, disk.",
    )
    def heartbeat(body: Heartbeat, device_id: Device) -> HeartbeatAck:
        check_fault("heartbeat")
        same_device(device_id, body.device_id, "the heartbeat")
        dept.devices.record_heartbeat(device_id, body)
        return HeartbeatAck(server_time=clock())

    app.include_router(router)

    if test_faults:

        @app.post("/test/faults", include_in_schema=False)
        def set_faults(request: Request, body: FaultRequest) -> dict[str, Any]:
            host = request.client.host if request.client else ""
            try:
                # private covers loopback and the addresses tests give their network namespaces
                local = ipaddress.ip_address(host).is_private
            except ValueError:
                local = False
            if not local:
                raise Problem(403, "Forbidden", "the fault hook answers loopback and private addresses only")
            with faults_lock:
                faults.status, faults.retry_after = body.status, body.retry_after
                faults.times, faults.endpoint = body.times, body.endpoint
            log.warning(
                "TEST FAULT HOOK: next %d %s request(s) answer %d", body.times, body.endpoint, body.status
            )
            return {"ok": True}

        @app.get("/test/counters", include_in_schema=False)
        def get_counters() -> dict[str, int]:
            return dict(counters)

    app.add_middleware(_BodyLimit)
    _publish_schema(app)
    return app


def _publish_schema(app: FastAPI) -> None:
    """Complete FastAPI's OpenAPI document: the batch body is read raw (it is gzip), so its schema
    is added by hand, and FastAPI's default 422 answers are dropped (this server answers 400)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        _, defs = models_json_schema(
            [(UploadBatch, "validation"), (ProblemDetail, "serialization")],
            ref_template="#/components/schemas/{model}",
        )
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(defs.get("$defs", {}))
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        schema["components"]["schemas"] = dict(sorted(schemas.items()))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def openapi_document() -> dict[str, Any]:
    """The published API (`sync/openapi-v1.json`). The schema never touches the department, so
    the app is built without one."""
    return create_app(cast(Department, None)).openapi()
