"""HTTPS to the department server with the device's client certificate (mutual TLS).

- TLS verification is always on: the server must present a certificate from the department CA
  given at enrollment, and its name must match the URL. There is no switch to turn this off.
- The `ssl.SSLContext` carries both the CA and the device's certificate chain and is passed as
  httpx's `verify=` (httpx ignores `cert=` when `verify=` is a path, which would silently send
  no client certificate).
- Every failure is translated once, here, into this module's tree: transient (network, timeouts,
  5xx, 429, a body that is not the expected JSON: retry later with backoff, honouring
  `retry_after_s` when the server sent `Retry-After`) or permanent (the server refused the
  request itself: 4xx). Nothing is retried inside this module; the agent owns the policy.
- `bytes_sent` / `bytes_received` count HTTP bodies (after compression) for the statistics.
"""

from __future__ import annotations

import email.utils
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from sync.protocol import (
    BATCH_PATH,
    HEARTBEAT_PATH,
    HOTLIST_PATH,
    IMAGE_PATH,
    KEYS_PATH,
    BatchAck,
    Heartbeat,
    HeartbeatAck,
    HotlistFeed,
    ImageAck,
)

M = TypeVar("M", bound=BaseModel)


class TransportError(Exception):
    """A request to the department server did not produce the expected answer."""


class TransientTransportError(TransportError):
    """Worth retrying later: the link, the server's load or its mood may change."""

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status = status


class LinkError(TransientTransportError):
    """No answer: connection refused or cut, timeout, DNS, TLS handshake interrupted."""


class ServerBusy(TransientTransportError):
    """The server answered 5xx or 429 (often with Retry-After)."""


class BadResponse(TransientTransportError):
    """The server answered 2xx with a body that is not the expected protocol JSON (a proxy's
    HTML page, garbage): nothing is acknowledged; retried later."""


class PermanentTransportError(TransportError):
    """The server refused this request itself (4xx): sending it again unchanged will not help."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class IdentityRefused(PermanentTransportError):
    """The server does not accept this device (401/403, or the TLS handshake refused our cert)."""


class TlsVerifyError(PermanentTransportError):
    """The server's certificate did not verify against the department CA."""


@dataclass(frozen=True, kw_only=True)
class Identity:
    """The files enrollment wrote: the device's certificate and key, and the department CA."""

    cert_path: Path
    key_path: Path
    ca_path: Path

    @classmethod
    def in_dir(cls, folder: Path) -> Identity:
        return cls(cert_path=folder / "device.crt", key_path=folder / "device.key", ca_path=folder / "ca.crt")


def ssl_context(identity: Identity) -> ssl.SSLContext:
    """Verify the server against the department CA only; present the device certificate."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(identity.ca_path))
        ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    except (OSError, ssl.SSLError) as exc:
        raise PermanentTransportError(f"cannot load the device identity: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class Transport:
    """One keep-alive HTTPS client for one server. Not thread-safe (the agent is one loop)."""

    def __init__(
        self,
        base_url: str,
        identity: Identity,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        user_agent: str = "alpr-sync/1",
    ) -> None:
        if not base_url.startswith("https://"):
            raise PermanentTransportError(f"server URL must be https:// (got {base_url!r})")
        self._clock = clock
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            verify=ssl_context(identity),
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            headers={"User-Agent": user_agent},
            follow_redirects=False,
        )
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- endpoints ---------------------------------------------------------------------------

    def post_batch(self, gzipped_batch: bytes) -> BatchAck:
        response = self._request(
            "POST",
            BATCH_PATH,
            content=gzipped_batch,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        return self._model(response, BatchAck)

    def put_image(self, record_id: str, jpeg: bytes) -> ImageAck:
        response = self._request(
            "PUT",
            IMAGE_PATH.format(record_id=record_id),
            content=jpeg,
            headers={"Content-Type": "image/jpeg"},
        )
        return self._model(response, ImageAck)

    def get_hotlist(self, since: int) -> HotlistFeed:
        return self._model(self._request("GET", HOTLIST_PATH, params={"since": since}), HotlistFeed)

    def get_keys(self) -> Any:
        """The feed keys and endorsements as JSON (validated by `sync.feed`)."""
        return self._json(self._request("GET", KEYS_PATH))

    def heartbeat(self, beat: Heartbeat) -> HeartbeatAck:
        body = beat.model_dump_json(by_alias=True).encode()
        response = self._request(
            "POST", HEARTBEAT_PATH, content=body, headers={"Content-Type": "application/json"}
        )
        return self._model(response, HeartbeatAck)

    # -- internals ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        content = kwargs.get("content")
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise _connect_error(path, exc) from exc
        except httpx.TimeoutException as exc:
            raise LinkError(f"{method} {path}: timed out ({type(exc).__name__})") from exc
        except (httpx.TransportError, ssl.SSLError, OSError) as exc:
            if _REFUSED_ALERTS.search(str(exc)):
                # TLS 1.3 reports a refused client certificate at the first read, not at connect.
                raise IdentityRefused(
                    f"{method} {path}: the server refused this device's certificate: {exc}"
                ) from exc
            raise LinkError(f"{method} {path}: link failed: {exc or type(exc).__name__}") from exc
        finally:
            if content is not None:
                self.bytes_sent += len(content)
        self.bytes_received += len(response.content)
        status = response.status_code
        if 200 <= status < 300:
            return response
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self._clock())
        detail = _detail(response)
        if status == 429 or status >= 500:
            raise ServerBusy(
                f"{method} {path}: server answered {status}{detail}", retry_after_s=retry_after, status=status
            )
        if status in (401, 403):
            raise IdentityRefused(
                f"{method} {path}: server refused this device ({status}){detail}", status=status
            )
        if status == 408:
            raise LinkError(f"{method} {path}: server timed out the request (408)", status=status)
        raise PermanentTransportError(
            f"{method} {path}: server refused the request ({status}){detail}", status=status
        )

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise BadResponse(
                f"{response.request.method} {response.request.url.path}: answer is not JSON "
                f"({response.headers.get('content-type', 'no content type')}): {_snippet(response)}"
            ) from exc

    def _model(self, response: httpx.Response, model: type[M]) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise BadResponse(
                f"{response.request.method} {response.request.url.path}: answer is not a valid "
                f"{model.__name__} ({response.headers.get('content-type', 'no content type')}): "
                f"{_snippet(response)}"
            ) from exc


_REFUSED_ALERTS = re.compile(r"CERTIFICATE_REQUIRED|CERTIFICATE_REVOKED|UNKNOWN_CA|BAD_CERTIFICATE", re.I)


def _connect_error(path: str, exc: httpx.ConnectError) -> TransportError:
    cause = exc.__context__ or exc.__cause__
    text = str(exc)
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return TlsVerifyError(
            f"{path}: the server's certificate did not verify against the department CA: {text}"
        )
    if _REFUSED_ALERTS.search(text):
        return IdentityRefused(
            f"{path}: the server refused this device's certificate in the TLS handshake: {text}"
        )
    return LinkError(f"{path}: cannot connect: {text or type(exc).__name__}")


def _snippet(response: httpx.Response) -> str:
    text = response.content[:120].decode("utf-8", "replace").replace("\n", " ")
    return repr(text)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f": {_snippet(response)}" if response.content else ""
    if isinstance(body, dict) and ("detail" in body or "title" in body):
        return f": {body.get('title', '')} {body.get('detail', '')}".rstrip()
    return ""
