"""The MDT page: live hits for the officer, their answers, BOLOs, suppressions and searches.

Served by the daemon on the car LAN (`[mdt] host:port`) by uvicorn in its own thread, with its own
asyncio loop; the page and its script and style are files in `edge/mdt_assets/` (no CDN, nothing
from the internet). `MdtServer.publish_hit` is called from the daemon's thread and pushes the hit
to every open page over Server-Sent Events.

Guarantees:
- Every API endpoint needs a session except `POST /api/login`. A session is a random token in an
  HttpOnly, SameSite=Strict cookie; it expires after `session_idle_minutes` without an officer
  request and `session_max_hours` after login. Every state-changing request must be JSON and
  carry the session's CSRF token in `X-CSRF-Token`; anything else is refused (403/415) before it
  touches the store.
- Failed logins are audited; after `max_failed_logins` failures within the lockout window an
  officer id and a client address are each locked out for `lockout_minutes` (refusals audited).
- An officer's answer is stored with its audit row and outbox entries in one transaction before
  the page is told it is saved and before the tone is acknowledged. The page makes the answer's
  id, so its retries after a timeout or a busy database cannot store it twice. An answer to an
  unknown hit is refused (404) and audited; nothing is ever half-stored.
- Searches of recent reads refuse to run without a reason (and a case number when
  `search_requires_case_number`); every search, run or refused, is audited.
- A missing crop gives a placeholder image; a failing status callable gives an error in the
  strip; neither takes the page or the daemon down.
- Hits published while no page is connected are not lost: a page that (re)connects is first
  sent the hits of the last `hit_history_hours` from the database, with their answers.
  A page too slow to take its events loses the oldest (counted, logged) and is sent them
  again on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hmac
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from edge.hotlist import Hotlist, HotlistUnavailable, ListKind, OfficerEntryError
from edge.officers import LoginOutcome, OfficerRegistry
from edge.store import (
    ANSWERS,
    MAX_NOTE_CHARS,
    HitNotFoundError,
    Store,
    StoredAnswer,
    StoredHit,
    StoredRead,
    StoreError,
    StoreWriteError,
    TransientStoreError,
)
from edge.types import PlateRead

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "mdt_assets"
COOKIE = "mdt_session"
CSRF_HEADER = "x-csrf-token"
STATUS_EVERY_S = 2.0
SUBSCRIBER_QUEUE = 256
_CLOSE = object()


class MdtError(Exception):
    """The MDT page could not be served."""


class MdtStartError(MdtError):
    """The server could not start (address in use, bad host): the daemon goes on without it."""


class AlertControl(Protocol):
    """What the page needs of the alert sink: stop a hit's tone, and its health."""

    def acknowledge(self, hit_id: str) -> None: ...

    def status(self) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class MdtSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    session_idle_s: float = 30 * 60.0
    session_max_s: float = 12 * 3600.0
    max_failed_logins: int = 5
    lockout_s: float = 15 * 60.0
    search_requires_case_number: bool = False
    search_max_hours: float = 72.0
    hit_history_hours: float = 12.0

    @classmethod
    def from_config(cls, config: Any) -> MdtSettings:
        m = config.mdt
        return cls(
            host=m.host,
            port=m.port,
            session_idle_s=m.session_idle_minutes * 60,
            session_max_s=m.session_max_hours * 3600,
            max_failed_logins=m.max_failed_logins,
            lockout_s=m.lockout_minutes * 60,
            search_requires_case_number=m.search_requires_case_number,
            search_max_hours=m.search_max_hours,
            hit_history_hours=m.hit_history_hours,
        )


# ---------------------------------------------------------------- sessions and lockouts


@dataclass(kw_only=True)
class _Session:
    token: str
    officer_id: str
    officer_name: str
    csrf: str
    created: float
    last_used: float


class _Sessions:
    def __init__(self, settings: MdtSettings, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._by_token: dict[str, _Session] = {}

    def create(self, officer_id: str, officer_name: str) -> _Session:
        now = self._clock()
        s = _Session(
            token=secrets.token_urlsafe(32),
            officer_id=officer_id,
            officer_name=officer_name,
            csrf=secrets.token_urlsafe(32),
            created=now,
            last_used=now,
        )
        with self._lock:
            self._by_token[s.token] = s
        return s

    def get(self, token: str | None, *, touch: bool) -> _Session | None:
        """The live session for `token`; an expired one is dropped and None returned."""
        if not token:
            return None
        now = self._clock()
        with self._lock:
            s = self._by_token.get(token)
            if s is None:
                return None
            if (
                now - s.last_used > self._settings.session_idle_s
                or now - s.created > self._settings.session_max_s
            ):
                del self._by_token[token]
                return None
            if touch:
                s.last_used = now
            return s

    def drop(self, token: str) -> None:
        with self._lock:
            self._by_token.pop(token, None)


@dataclass
class _Failures:
    times: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class _LoginLimiter:
    """Failed logins per key ("officer:ID", "client:ADDR") within the lockout window."""

    def __init__(self, settings: MdtSettings, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, _Failures] = {}

    def locked(self, *keys: str) -> float:
        """Seconds until every given key may try again (0 = none locked)."""
        now = self._clock()
        with self._lock:
            return max(
                (max(0.0, f.locked_until - now) for k in keys if (f := self._keys.get(k))), default=0.0
            )

    def failed(self, *keys: str) -> None:
        now = self._clock()
        window = self._settings.lockout_s
        with self._lock:
            for k in keys:
                f = self._keys.setdefault(k, _Failures())
                f.times.append(now)
                while f.times and now - f.times[0] > window:
                    f.times.popleft()
                if len(f.times) >= self._settings.max_failed_logins:
                    f.locked_until = now + window
                    f.times.clear()

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._keys.pop(k, None)


# ---------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class LoginBody(_Body):
    officer_id: str = Field(max_length=64)
    pin: str = Field(max_length=64)


class AnswerBody(_Body):
    answer: str
    note: str | None = Field(None, max_length=MAX_NOTE_CHARS)
    answer_id: str | None = Field(None, max_length=64)


class BoloBody(_Body):
    plate: str = Field(max_length=16)
    state: str | None = Field(None, max_length=8)
    reason: str = Field("", max_length=500)
    description: str | None = Field(None, max_length=500)
    hours: float = Field(8.0, gt=0, le=24 * 30)


class BoloRemoveBody(_Body):
    plate: str = Field(max_length=16)
    state: str | None = Field(None, max_length=8)
    reason: str = Field("", max_length=500)


class SuppressionBody(_Body):
    plate: str = Field(max_length=16)
    state: str | None = Field(None, max_length=8)
    list_kind: str | None = Field(None, max_length=40)
    entry_plate: str | None = Field(None, max_length=16)
    reason: str = Field("", max_length=500)
    hours: float = Field(8.0, gt=0, le=24 * 30)


class ReasonBody(_Body):
    reason: str = Field("", max_length=500)


class SearchBody(_Body):
    plate: str = Field("", max_length=16)
    hours: float = Field(24.0, gt=0)
    reason: str = Field("", max_length=500)
    case_number: str = Field("", max_length=64)


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


_ACTOR_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _typed_id(raw: str) -> str:
    """An officer id as typed, made safe to store in the audit log."""
    return _ACTOR_SAFE.sub("?", raw.strip().upper())[:32] or "?"


# ---------------------------------------------------------------- request guards


def _require_session(request: Request) -> _Session:
    server: MdtServer = request.app.state.mdt
    found = server._sessions.get(request.cookies.get(COOKIE), touch=True)
    if found is None:
        raise _error(401, "not logged in or session expired: log in again")
    return found


def _require_json(request: Request) -> None:
    # A cross-site form can post urlencoded or multipart bodies, never JSON without CORS.
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise _error(415, "requests must be JSON")


SessionDep = Annotated[_Session, Depends(_require_session)]


def _require_csrf(request: Request, sess: SessionDep) -> _Session:
    _require_json(request)
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent or not hmac.compare_digest(sent.encode(), sess.csrf.encode()):
        log.warning("MDT: request to %s with a missing or wrong CSRF token refused", request.url.path)
        raise _error(403, "missing or wrong CSRF token: reload the page")
    return sess


CsrfDep = Annotated[_Session, Depends(_require_csrf)]


# ---------------------------------------------------------------- the server


class MdtServer:
    """The MDT web app and the uvicorn server running it in a thread."""

    def __init__(
        self,
        settings: MdtSettings,
        *,
        store: Store,
        officers: OfficerRegistry,
        hotlist: Hotlist | None = None,
        status: Callable[[], dict] | None = None,
        alert: AlertControl | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        assets: Path = ASSETS,
    ) -> None:
        self.settings = settings
        self.store = store
        self.officers = officers
        self.hotlist = hotlist
        self.status_source = status
        self.alert = alert
        self._clock = clock
        self._mono = monotonic
        self._assets = assets
        self._sessions = _Sessions(settings, clock)
        self._limiter = _LoginLimiter(settings, clock)
        self._subscribers: set[asyncio.Queue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._closing = False
        self.port: int | None = None
        self.events_dropped = 0  # events a slow page could not take (it gets them on reconnect)
        self._last_drop_log = 0.0
        self.app = self._build_app()

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self.port is None:
            raise MdtError("the MDT server is not running")
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float = 10.0) -> None:
        """Bind and serve in a thread; returns once the server accepts connections."""
        if self.running:
            return
        try:
            family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
            sock = socket.create_server((self.settings.host, self.settings.port), family=family)
        except OSError as exc:
            raise MdtStartError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror or exc}"
            ) from exc
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            http="h11",
            loop="asyncio",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="mdt-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise MdtStartError(f"the MDT server did not start on {self.settings.host}:{self.port}")
            time.sleep(0.01)
        log.info("MDT page on %s", self.url)

    def _serve(self) -> None:
        assert self._server is not None and self._socket is not None
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("the MDT server stopped with an error")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        assert self._server is not None and self._socket is not None
        await self._server.serve(sockets=[self._socket])

    def stop(self) -> None:
        """Close every event stream, stop the server and release the port."""
        self._closing = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop finished between the check and the call
                loop.call_soon_threadsafe(self._fanout, _CLOSE)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10.0)
            if self._thread.is_alive():
                log.error("the MDT server did not stop within 10 s")
        if self._socket is not None:
            self._socket.close()
        self._thread = None
        self._loop = None
        self.port = None

    def close(self) -> None:
        """Stop serving and close the store and hotlist handed to the constructor (owned from then)."""
        self.stop()
        if self.hotlist is not None:
            self.hotlist.close()
        self.store.close()

    # ------------------------------------------------------------ pushing to the page

    def publish_hit(self, read: PlateRead | StoredRead | None, hit: StoredHit) -> None:
        """Push a hit to every open page. Thread-safe; never raises into the daemon."""
        try:
            if read is None:
                read = self.store.get_read(hit.read_id)
            self._publish("hit", hit.hit_id, self.hit_view(hit, read, []))
        except Exception:
            # The hit is stored: a page that reconnects gets it from the database.
            log.exception("hit %s could not be pushed to the MDT page", hit.hit_id)

    def _publish(self, event: str, event_id: str, data: dict) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # no page can be connected; a page that connects reads the database
        payload = _sse(event, data, event_id)
        with contextlib.suppress(RuntimeError):  # the server is stopping
            loop.call_soon_threadsafe(self._fanout, payload)

    def _fanout(self, item: object) -> None:
        for q in list(self._subscribers):
            if q.full():
                q.get_nowait()
                self.events_dropped += 1
                now = self._mono()
                if now - self._last_drop_log > 10.0:
                    self._last_drop_log = now
                    log.warning("MDT page too slow: %d event(s) dropped so far", self.events_dropped)
            q.put_nowait(item)

    # ------------------------------------------------------------ views

    def hit_view(
        self, hit: StoredHit, read: PlateRead | StoredRead | None, answers: list[StoredAnswer]
    ) -> dict:
        entry = dict(hit.entry)
        if isinstance(read, PlateRead):
            read_plate, conf, chars = read.text, read.confidence, read.char_confidences
            camera, seen_at, gps = read.camera_id, read.last_seen, read.gps
        elif isinstance(read, StoredRead):
            read_plate, conf, chars = read.plate, read.confidence, read.char_confidences
            camera, seen_at, gps = read.camera_id, read.last_seen, read.gps
        else:
            read_plate, conf, chars, camera, seen_at, gps = "", None, (), None, None, None
        list_kind = str(hit.list_kind)
        return {
            "hit_id": hit.hit_id,
            "read_id": hit.read_id,
            "matched_at": hit.matched_at,
            "seen_at": seen_at,
            "camera": camera,
            "read_plate": read_plate,
            "confidence": conf,
            "char_confidences": list(chars),
            "read_state": None,  # the OCR reads a country at best, never the state
            "gps": (
                {"lat": gps.lat, "lon": gps.lon, "speed_mps": gps.speed_mps, "heading_deg": gps.heading_deg}
                if gps is not None and gps.has_fix
                else None
            ),
            "priority": hit.priority,
            "list_kind": list_kind,
            "list_label": list_kind.replace("_", " ").upper(),
            "match_kind": hit.match_kind,
            "differing_positions": list(hit.differing_positions),
            "state_mismatch": hit.state_mismatch,
            "list_age_s": hit.list_age_s,
            "list_version": hit.list_version,
            "freshness": hit.freshness,
            "stale": hit.stale,
            "retroactive": hit.retroactive,
            "entry": {
                "plate": hit.entry_plate,
                "state": hit.entry_state or None,
                "reason": entry.get("reason"),
                "description": entry.get("description"),
                "vehicle_year": entry.get("vehicle_year"),
                "make": entry.get("make"),
                "model": entry.get("model"),
                "color": entry.get("color"),
                "agency": entry.get("agency"),
                "record_id": entry.get("source_record_id"),
                "source": entry.get("source"),
                "officer": entry.get("officer"),
                "entered_on": entry.get("entered_on"),
                "expires_at": entry.get("expires_at"),
            },
            "crop_url": f"/api/hits/{hit.hit_id}/crop.jpg",
            # No wider frame is stored yet: the context view shows the best crop at full size.
            "context_url": f"/api/hits/{hit.hit_id}/context.jpg",
            "context_is_crop": True,
            "answers": [_answer_view(a) for a in answers],
        }

    def _recent_views(self) -> list[dict]:
        since = self._clock() - self.settings.hit_history_hours * 3600
        hits = self.store.hits_since(since, limit=100)
        answers = self.store.answers_for([h.hit_id for h in hits])
        reads: dict[str, StoredRead | None] = {}
        out = []
        for h in hits:
            if h.read_id not in reads:
                reads[h.read_id] = self.store.get_read(h.read_id)
            out.append(self.hit_view(h, reads[h.read_id], answers[h.hit_id]))
        return out

    def status_view(self) -> dict:
        view: dict[str, Any] = {"at": self._clock()}
        try:
            raw = self.status_source() if self.status_source else {}
        except Exception as exc:  # a failing status source must not take the page down
            log.warning("daemon status unavailable for the MDT: %s", exc)
            raw = {}
            view["error"] = f"status unavailable: {exc}"
        view["cameras"] = [
            {"id": cam, "state": st.get("state"), "cause": st.get("cause"), "fps": st.get("fps")}
            for cam, st in (raw.get("cameras") or {}).items()
        ]
        view["gps"] = raw.get("gps_fix") or {"has_fix": False, "mode": None}
        gps = raw.get("gps")
        if isinstance(gps, dict):
            view["gps"] = {**view["gps"], "state": str(gps.get("state")), "source": gps.get("source")}
        view["hotlist"] = [
            {"list": h["list"], "entries": h["entries"], "age_s": h["age_s"], "freshness": h["freshness"]}
            for h in raw.get("hotlist") or []
        ]
        view["stale"] = any(h["freshness"] == "stale" for h in view["hotlist"])
        view["feed_refused"] = raw.get("hotlist_feed_refused")
        view["backlog"] = raw.get("outbox") or {}
        if self.alert is not None:
            try:
                st = self.alert.status()
                view["alert"] = _plain(st)
            except Exception as exc:
                view["alert"] = {"state": "degraded", "cause": str(exc)}
        return view

    # ------------------------------------------------------------ the app

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.state.mdt = self
        s = self.settings

        @app.exception_handler(HTTPException)
        async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

        @app.exception_handler(RequestValidationError)
        async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                for e in exc.errors()
            )
            return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

        @app.exception_handler(TransientStoreError)
        @app.exception_handler(HotlistUnavailable)
        async def busy(request: Request, exc: Exception) -> JSONResponse:
            log.warning("MDT request %s deferred: %s", request.url.path, exc)
            return JSONResponse(
                {"error": "the database is busy; try again", "retry": True},
                status_code=503,
                headers={"Retry-After": "1"},
            )

        @app.exception_handler(StoreError)
        async def store_failed(request: Request, exc: Exception) -> JSONResponse:
            log.error("MDT request %s failed: %s", request.url.path, exc)
            return JSONResponse({"error": f"not done: {exc}"}, status_code=500)

        @app.middleware("http")
        async def headers(request: Request, call_next):
            response = await call_next(request)
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["Referrer-Policy"] = "no-referrer"
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; img-src 'self' data:; connect-src 'self'; style-src 'self'; "
                "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
            )
            if request.url.path.startswith("/api/"):
                response.headers.setdefault("Cache-Control", "no-store")
            return response

        def client(request: Request) -> str:
            return request.client.host if request.client else "unknown"

        # -- the page

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(self._assets / "index.html", headers={"Cache-Control": "no-store"})

        @app.get("/assets/{name}", include_in_schema=False)
        def asset(name: str) -> FileResponse:
            path = self._assets / name
            if "/" in name or name.startswith(".") or not path.is_file():
                raise _error(404, "no such file")
            return FileResponse(path)

        # -- login

        @app.post("/api/login")
        def login(body: LoginBody, request: Request) -> JSONResponse:
            _require_json(request)
            typed = _typed_id(body.officer_id)
            addr = client(request)
            keys = (f"officer:{typed}", f"client:{addr}")
            wait = self._limiter.locked(*keys)
            if wait > 0:
                self.store.audit(
                    actor=typed,
                    action="login.locked",
                    outcome="refused",
                    subject=addr,
                    details={"retry_in_s": round(wait)},
                )
                minutes = max(1, round(wait / 60))
                raise _error(429, f"too many failed logins: try again in {minutes} min")
            outcome, officer = self.officers.authenticate(body.officer_id, body.pin, now=self._clock())
            if outcome is not LoginOutcome.OK or officer is None:
                self._limiter.failed(*keys)
                self.store.audit(
                    actor=typed, action="login.failed", outcome=str(outcome), subject=addr, details={}
                )
                if outcome is LoginOutcome.TRAINING_LAPSED:
                    raise _error(403, "training has lapsed: see the ALPR administrator")
                if outcome is LoginOutcome.NO_OFFICERS:
                    raise _error(503, f"no officers are provisioned on this device ({self.officers.problem})")
                raise _error(401, "wrong officer id or PIN")
            self._limiter.succeeded(*keys)
            sess = self._sessions.create(officer.id, officer.name)
            self.store.audit(actor=officer.id, action="login", outcome="ok", subject=addr, details={})
            response = JSONResponse(self._session_view(sess))
            response.set_cookie(
                COOKIE,
                sess.token,
                max_age=int(s.session_max_s),
                httponly=True,
                samesite="strict",
                path="/",
            )
            return response

        @app.get("/api/session")
        def get_session(sess: SessionDep) -> dict:
            return self._session_view(sess)

        @app.post("/api/logout")
        def logout(request: Request, sess: CsrfDep) -> JSONResponse:
            self._sessions.drop(sess.token)
            self.store.audit(actor=sess.officer_id, action="logout", outcome="ok", subject=client(request))
            response = JSONResponse({"ok": True})
            response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
            return response

        # -- hits

        @app.get("/api/events")
        async def events(request: Request, sess: SessionDep) -> StreamingResponse:
            return StreamingResponse(
                self._stream(sess.token),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )

        @app.get("/api/hits")
        def hits(sess: SessionDep) -> dict:
            return {"hits": self._recent_views()}

        @app.get("/api/hits/{hit_id}")
        def one_hit(hit_id: str, sess: SessionDep) -> dict:
            hit = self.store.get_hit(hit_id)
            if hit is None:
                raise _error(404, f"no hit {hit_id}")
            answers = self.store.answers_for([hit_id])[hit_id]
            return self.hit_view(hit, self.store.get_read(hit.read_id), answers)

        @app.get("/api/hits/{hit_id}/crop.jpg")
        @app.get("/api/hits/{hit_id}/context.jpg")
        def hit_image(hit_id: str, sess: SessionDep) -> Response:
            hit = self.store.get_hit(hit_id)
            return self._image(hit.read_id if hit else None)

        @app.get("/api/reads/{read_id}/crop.jpg")
        def read_image(read_id: str, sess: SessionDep) -> Response:
            return self._image(read_id)

        @app.post("/api/hits/{hit_id}/answer")
        def answer(hit_id: str, body: AnswerBody, sess: CsrfDep) -> dict:
            if body.answer not in ANSWERS:
                raise _error(400, f"'{body.answer}' is not an answer; choose one of {', '.join(ANSWERS)}")
            try:
                stored = self.store.save_answer(
                    hit_id,
                    officer=sess.officer_id,
                    answer=body.answer,
                    note=body.note,
                    answer_id=body.answer_id,
                )
            except HitNotFoundError as exc:
                self.store.audit(
                    actor=sess.officer_id,
                    action="hit.answer",
                    outcome="refused_unknown_hit",
                    subject=hit_id[:64],
                    reason=body.note,
                    details={"answer": body.answer},
                )
                raise _error(404, f"no hit {hit_id[:64]}: the answer was not stored") from exc
            except StoreWriteError as exc:
                raise _error(400, str(exc)) from exc
            tone_stopped = self._acknowledge(hit_id)
            view = _answer_view(stored)
            self._publish("answer", stored.answer_id, view)
            return {"answer": view, "tone_stopped": tone_stopped}

        # -- officer hotlist entries

        @app.get("/api/bolos")
        def bolos(sess: SessionDep) -> dict:
            return {"bolos": [_entry_view(e) for e in self._hotlist().list_bolos()]}

        @app.post("/api/bolos")
        def add_bolo(body: BoloBody, sess: CsrfDep) -> dict:
            try:
                e = self._hotlist().add_bolo(
                    body.plate,
                    body.state or None,
                    reason=body.reason,
                    officer=sess.officer_id,
                    expires_at=self._clock() + body.hours * 3600,
                    description=body.description or None,
                )
            except OfficerEntryError as exc:
                raise _error(400, str(exc)) from exc
            return {"bolo": _entry_view(e)}

        @app.post("/api/bolos/remove")
        def remove_bolo(body: BoloRemoveBody, sess: CsrfDep) -> dict:
            try:
                removed = self._hotlist().remove_bolo(
                    body.plate, body.state or None, officer=sess.officer_id, reason=body.reason
                )
            except OfficerEntryError as exc:
                raise _error(400, str(exc)) from exc
            if not removed:
                raise _error(404, f"no BOLO on {body.plate}")
            return {"removed": True}

        @app.get("/api/suppressions")
        def suppressions(sess: SessionDep) -> dict:
            return {"suppressions": [_plain(x) for x in self._hotlist().list_suppressions()]}

        @app.post("/api/suppressions")
        def add_suppression(body: SuppressionBody, sess: CsrfDep) -> dict:
            try:
                kind = ListKind(body.list_kind) if body.list_kind else None
            except ValueError as exc:
                raise _error(400, f"'{body.list_kind}' is not a hotlist") from exc
            try:
                sup = self._hotlist().add_suppression(
                    body.plate,
                    reason=body.reason,
                    officer=sess.officer_id,
                    expires_at=self._clock() + body.hours * 3600,
                    state=body.state or None,
                    list_kind=kind,
                    entry_plate=body.entry_plate or None,
                )
            except OfficerEntryError as exc:
                raise _error(400, str(exc)) from exc
            return {"suppression": _plain(sup)}

        @app.post("/api/suppressions/{suppression_id}/remove")
        def remove_suppression(suppression_id: int, body: ReasonBody, sess: CsrfDep) -> dict:
            try:
                removed = self._hotlist().remove_suppression(
                    suppression_id, officer=sess.officer_id, reason=body.reason
                )
            except OfficerEntryError as exc:
                raise _error(400, str(exc)) from exc
            if not removed:
                raise _error(404, f"no suppression #{suppression_id} in force")
            return {"removed": True}

        # -- searches of recent reads

        @app.post("/api/search")
        def search(body: SearchBody, request: Request, sess: CsrfDep) -> dict:
            refusal = None
            needle = "".join(ch for ch in body.plate.upper() if ch.isalnum())
            if not body.reason:
                refusal = "a reason is required for every search"
            elif s.search_requires_case_number and not body.case_number:
                refusal = "a case or incident number is required for every search"
            elif len(needle) < 2:
                refusal = "give at least 2 characters of the plate"
            hours = min(body.hours, s.search_max_hours)
            details = {"plate": needle, "hours": hours, "case_number": body.case_number or None}
            if refusal:
                self.store.audit(
                    actor=sess.officer_id,
                    action="reads.search",
                    outcome="refused",
                    subject=needle or None,
                    reason=body.reason or None,
                    details={**details, "refusal": refusal},
                )
                raise _error(400, refusal)
            reads = self.store.search_reads(needle, since=self._clock() - hours * 3600)
            self.store.audit(
                actor=sess.officer_id,
                action="reads.search",
                outcome="ok",
                subject=needle,
                reason=body.reason,
                details={**details, "results": len(reads)},
            )
            return {"reads": [_read_view(r) for r in reads], "hours": hours}

        # -- status

        @app.get("/api/status")
        def status(sess: SessionDep) -> dict:
            return self.status_view()

        @app.get("/api/config")
        def page_config(sess: SessionDep) -> dict:
            return {
                "answers": list(ANSWERS),
                "search_requires_case_number": s.search_requires_case_number,
                "search_max_hours": s.search_max_hours,
                "list_kinds": [str(k) for k in ListKind],
            }

        return app

    # ------------------------------------------------------------ helpers

    def _session_view(self, sess: _Session) -> dict:
        return {
            "officer": {"id": sess.officer_id, "name": sess.officer_name},
            "csrf_token": sess.csrf,
            "expires_at": min(
                sess.created + self.settings.session_max_s, sess.last_used + self.settings.session_idle_s
            ),
        }

    def _hotlist(self) -> Hotlist:
        if self.hotlist is None:
            raise _error(503, "the hotlist is not available on this device")
        return self.hotlist

    def _acknowledge(self, hit_id: str) -> bool:
        if self.alert is None:
            return False
        try:
            self.alert.acknowledge(hit_id)
        except Exception:
            # The answer is stored; a tone that will not stop is a sink problem, logged there too.
            log.exception("alert for hit %s could not be acknowledged", hit_id)
            return False
        return True

    def _image(self, read_id: str | None) -> Response:
        jpeg = self.store.read_crop(read_id) if read_id else None
        if not jpeg:
            return Response(
                _PLACEHOLDER_SVG, media_type="image/svg+xml", headers={"X-Placeholder": "no image stored"}
            )
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def _stream(self, token: str) -> AsyncIterator[str]:
        q: asyncio.Queue = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._subscribers.add(q)  # before the snapshot, so nothing published meanwhile is missed
        try:
            yield "retry: 2000\n\n"
            for view in reversed(await run_in_threadpool(self._recent_views)):
                yield _sse("hit", view, view["hit_id"])
            yield _sse("status", await run_in_threadpool(self.status_view))
            next_status = self._mono() + STATUS_EVERY_S
            while not self._closing:
                if self._sessions.get(token, touch=False) is None:
                    yield _sse("session", {"expired": True})
                    return
                try:
                    item = await asyncio.wait_for(q.get(), timeout=min(1.0, STATUS_EVERY_S))
                except TimeoutError:
                    item = None
                if item is _CLOSE:
                    return
                if item is not None:
                    yield item
                if self._mono() >= next_status:
                    next_status = self._mono() + STATUS_EVERY_S
                    yield _sse("status", await run_in_threadpool(self.status_view))
        finally:
            self._subscribers.discard(q)


def _sse(event: str, data: dict, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def _answer_view(a: StoredAnswer) -> dict:
    return {
        "answer_id": a.answer_id,
        "hit_id": a.hit_id,
        "officer": a.officer,
        "answer": a.answer,
        "note": a.note,
        "answered_at": a.answered_at,
    }


def _read_view(r: StoredRead) -> dict:
    return {
        "read_id": r.read_id,
        "plate": r.plate,
        "seen_at": r.last_seen,
        "camera": r.camera_id,
        "confidence": r.confidence,
        "lat": r.gps.lat,
        "lon": r.gps.lon,
        "crop_url": f"/api/reads/{r.read_id}/crop.jpg",
    }


def _entry_view(e: Any) -> dict:
    return {
        "id": e.id,
        "plate": e.plate,
        "state": e.state or None,
        "reason": e.reason,
        "description": e.description,
        "officer": e.officer,
        "expires_at": e.expires_at,
    }


def _plain(value: Any) -> Any:
    """Dataclasses and enums as JSON-friendly values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


_PLACEHOLDER_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="440" height="110" viewBox="0 0 440 110">'
    b'<rect width="440" height="110" fill="#222" stroke="#888" stroke-width="4"/>'
    b'<text x="220" y="66" font-family="sans-serif" font-size="28" fill="#ddd" text-anchor="middle">'
    b"no image stored</text></svg>"
)
