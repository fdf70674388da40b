"""Serving the app over HTTPS with client certificates, and telling the app who the client is.

One listener, `CERT_OPTIONAL` against the department CA:
- a client that presents a certificate not issued by the CA fails the TLS handshake;
- a client without a certificate completes the handshake but reaches only the routes that do
  not need one (`POST /v1/enroll`); the app refuses every `/v1/device/...` route without a
  verified certificate (401) and checks the certificate's serial against the device table on
  every request (403 when unknown or revoked). One URL serves both enrollment and devices.

uvicorn does not put the peer certificate in the ASGI scope. `TLSH11Protocol` (a subclass of
uvicorn's h11 protocol, selected with `http=`) reads it from the SSL object when the connection
is made - after the handshake - and adds `scope["extensions"]["tls"]` to every request on that
connection, in the shape of the ASGI TLS extension (`client_cert_chain`: PEM strings, leaf
first; on Python < 3.13 only the leaf is available).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


class TLSConfigError(Exception):
    """The certificate, key or CA files cannot be used (permanent)."""


def server_ssl_context(cert_path: str | Path, key_path: str | Path, ca_path: str | Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
        ctx.load_verify_locations(cafile=str(ca_path))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"cannot load the TLS files ({cert_path}, {key_path}, {ca_path}): {exc}"
        ) from exc
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def tls_extension(ssl_object: ssl.SSLObject | None) -> dict[str, Any] | None:
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
        "tls_version_name": ssl_object.version(),
    }


class _WithTLS:
    def __init__(self, app: Any, tls: dict[str, Any]) -> None:
        self._app = app
        self._tls = tls

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": self._tls}}
        await self._app(scope, receive, send)


class TLSH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus the ASGI TLS extension (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport.get_extra_info("ssl_object"))
        if tls is not None:
            self.app = _WithTLS(self.config.loaded_app, tls)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready_file: Path | None, url: str) -> None:
        super().__init__(config)
        self._ready_file = ready_file
        self._url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._ready_file is not None:
            tmp = self._ready_file.with_name(self._ready_file.name + ".tmp")
            tmp.write_text(json.dumps({"url": self._url, "pid": os.getpid()}))
            os.replace(tmp, self._ready_file)


def serve(
    app: Any,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    ready_file: Path | None = None,
    log_level: str = "info",
) -> None:
    """Serve until SIGINT/SIGTERM. Port 0 picks a free port; `ready_file` gets the URL when listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    config = uvicorn.Config(
        app,
        http=TLSH11Protocol,
        ws="none",
        lifespan="off",
        log_level=log_level,
        access_log=False,
        ssl_context_factory=lambda _config, _default: ssl_context,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config, ready_file, f"https://{shown}:{bound}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
