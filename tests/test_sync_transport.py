"""The agent's HTTPS transport against real TLS servers on loopback with certificates minted here.

Also home of the helpers the other sync tests import: `mint_pki` (a CA, a server certificate for
127.0.0.1, a device certificate) and `ScriptedServer` (a real mutual-TLS HTTP server whose
answers a test scripts, for the failures a real department server does not produce on demand:
HTML pages, garbage, wrong acknowledgements).
"""

from __future__ import annotations

import email.utils
import http.server
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.ca import CertificateAuthority
from sync.protocol import BatchAck, Heartbeat, decode_batch
from sync.transport import (
    BadResponse,
    Identity,
    IdentityRefused,
    LinkError,
    PermanentTransportError,
    ServerBusy,
    TlsVerifyError,
    Transport,
    parse_retry_after,
)

# ---------------------------------------------------------------- helpers (imported elsewhere)


@dataclass(frozen=True)
class Pki:
    ca_path: Path
    server_cert: Path
    server_key: Path
    device: Identity


def mint_pki(folder: Path, *, device_id: str = "car-17") -> Pki:
    """A throwaway department CA, a server certificate for 127.0.0.1 and a device certificate.

    Minted with the department server's own CA code, the way a real car gets its certificate: a
    key and CSR made on the device, signed by the CA.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.init(folder, name="test department CA")
    server_cert, server_key = ca.issue_server_certificate(folder, ["127.0.0.1", "localhost"])
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    issued = ca.sign_device_csr(csr.public_bytes(serialization.Encoding.PEM), device_id)
    (folder / "device.crt").write_text(issued.pem)
    (folder / "device.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Pki(
        ca_path=ca.cert_path, server_cert=server_cert, server_key=server_key, device=Identity.in_dir(folder)
    )


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[str, str, dict[str, str], bytes], Reply]


def ack_everything(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
    """What a correct server says: every record stored (batches), image stored, heartbeat ok."""
    if path.startswith("/v1/device/batches"):
        batch = decode_batch(body)
        ack = BatchAck(
            batch_id=batch.batch_id,
            stored=[r.id for r in batch.records],
            duplicate=[],
            server_time=time.time(),
        )
        return Reply(200, ack.model_dump_json().encode(), {"Content-Type": "application/json"})
    if path.startswith("/v1/device/images/"):
        rid = path.rsplit("/", 1)[1]
        return Reply(200, json.dumps({"record_id": rid, "status": "stored"}).encode())
    if path.startswith("/v1/device/heartbeat"):
        Heartbeat.model_validate_json(body)
        return Reply(200, json.dumps({"server_time": time.time()}).encode())
    return Reply(404, b'{"status": 404, "title": "not found"}')


class ScriptedServer:
    """A real HTTPS server on 127.0.0.1 requiring a client certificate from the test CA.

    `responder(method, path, headers, body)` decides each answer; every request is recorded
    with the client certificate's CN.
    """

    def __init__(self, pki: Pki, responder: Responder = ack_everything, *, require_client_cert: bool = True):
        self.responder = responder
        self.requests: list[tuple[str, str, str | None, bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                peer = self.connection.getpeercert()
                cn = None
                if peer:
                    cn = dict(x[0] for x in peer["subject"]).get("commonName")
                outer.requests.append((self.command, self.path, cn, body))
                reply = outer.responder(self.command, self.path, dict(self.headers), body)
                self.send_response(reply.status)
                headers = {"Content-Type": "application/json", **reply.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = _handle

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_path))
        ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- tests


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return mint_pki(tmp_path / "pki")


def _transport(url: str, identity: Identity, **kw) -> Transport:
    return Transport(url, identity, timeout_s=5, connect_timeout_s=2, **kw)


def test_device_certificate_is_presented_and_server_verified(pki):
    with ScriptedServer(pki) as server, _transport(server.url, pki.device) as t:
        t.heartbeat(Heartbeat(device_id="car-17", sent_at=1.0, software_version="t"))
    assert server.requests[0][2] == "car-17"


def test_server_with_a_certificate_from_another_ca_is_refused(pki, tmp_path):
    other = mint_pki(tmp_path / "other")
    with (
        ScriptedServer(pki) as server,
        _transport(server.url, other.device) as t,
        pytest.raises(TlsVerifyError, match="did not verify"),
    ):
        t.heartbeat(Heartbeat(device_id="car-17", sent_at=1.0, software_version="t"))
    assert server.requests == []


def test_device_certificate_the_server_does_not_trust_is_refused(pki, tmp_path):
    other = mint_pki(tmp_path / "other")
    stranger = Identity(cert_path=other.device.cert_path, key_path=other.device.key_path, ca_path=pki.ca_path)
    with ScriptedServer(pki) as server, _transport(server.url, stranger) as t, pytest.raises(IdentityRefused):
        t.heartbeat(Heartbeat(device_id="car-17", sent_at=1.0, software_version="t"))


def test_plain_http_url_is_refused_before_connecting(pki):
    with pytest.raises(PermanentTransportError, match="https"):
        Transport("http://127.0.0.1:1", pki.device)


def test_html_page_instead_of_an_ack_is_a_bad_response(pki):
    html = Reply(
        200, b"<html><body>Captive portal: please log in</body></html>", {"Content-Type": "text/html"}
    )
    with (
        ScriptedServer(pki, lambda *a: html) as server,
        _transport(server.url, pki.device) as t,
        pytest.raises(BadResponse, match=r"not a valid BatchAck.*text/html.*Captive portal"),
    ):
        t.post_batch(b"\x1f\x8b")


def test_503_with_retry_after_is_transient_and_carries_the_delay(pki):
    busy = Reply(503, b"<html>down for maintenance</html>", {"Retry-After": "7", "Content-Type": "text/html"})
    with (
        ScriptedServer(pki, lambda *a: busy) as server,
        _transport(server.url, pki.device) as t,
        pytest.raises(ServerBusy) as err,
    ):
        t.post_batch(b"x")
    assert err.value.retry_after_s == 7 and err.value.status == 503
    assert "down for maintenance" in str(err.value)


def test_403_is_identity_refused_and_400_is_permanent(pki):
    replies = iter(
        [Reply(403, b'{"status":403,"title":"revoked"}'), Reply(400, b'{"status":400,"title":"bad"}')]
    )
    with ScriptedServer(pki, lambda *a: next(replies)) as server, _transport(server.url, pki.device) as t:
        with pytest.raises(IdentityRefused, match="revoked"):
            t.post_batch(b"x")
        with pytest.raises(PermanentTransportError) as err:
            t.post_batch(b"x")
    assert err.value.status == 400 and not isinstance(err.value, IdentityRefused)


def test_nothing_listening_is_a_link_error(pki):
    with _transport("https://127.0.0.1:9", pki.device) as t, pytest.raises(LinkError):
        t.heartbeat(Heartbeat(device_id="car-17", sent_at=1.0, software_version="t"))


def test_retry_after_in_seconds_and_as_an_http_date():
    assert parse_retry_after("120", now=0) == 120
    assert parse_retry_after(email.utils.formatdate(1000.0 + 30, usegmt=True), now=1000.0) == 30
    assert parse_retry_after("soon", now=0) is None
    assert parse_retry_after(None, now=0) is None
