"""A real department server for tests and benchmarks: `alpr-server serve` in a subprocess.

    from server_harness import start_server

    with start_server(tmp_path) as server:           # fresh CA, feed key, SQLite DB, server cert
        device = server.enroll_device(tmp_path)      # real enrollment: key + CSR made here, POST /v1/enroll
        with device.client(server.url) as http:      # httpx.Client with mTLS (CA pinned, client cert)
            http.post(BATCH_PATH, content=encode_batch(batch), headers={"Content-Encoding": "gzip"})
        assert server.count("read") == len(batch.records)

What `start_server(tmp_path)` gives you (a `RunningServer`):
- `url` ("https://127.0.0.1:PORT"), `ca_cert_path` (the department CA; pin it on the client),
  `home` (the server folder), `log_path` / `log_text()` (the server's stderr and stdout).
- The server listens on 127.0.0.1 (or `host=`), a free port, HTTPS with client certificates checked against
  the CA: a certificate from another CA fails the handshake; `/v1/device/...` needs an enrolled,
  unrevoked certificate (401 without one, 403 unknown/revoked); `/v1/enroll` needs none.
- `enroll_token(name=None) -> str`: a one-time token (as `alpr-server devices enroll` makes).
- `enroll_device(tmp_path, name=None) -> DeviceIdentity(device_id, cert_path, key_path,
  ca_path)`: the whole enrollment over HTTPS, files written under tmp_path/<device_id>/.
  `DeviceIdentity.ssl_context()` / `.client(url)` build the mTLS client side.
- `import_hotlist(path, fmt, list_kind=None)`: server import (ncic|clew|csv|delta) making a new
  feed version; returns `server.hotlist.ImportResult`. `hotlist_version()`: the current version.
- `feed_key()`: the current `FeedKey`; `rotate_feed_key() -> KeyEndorsement`.
- `revoke(device_id)`: acts on the device's next request.
- `stored_ids(kind) -> list[str]`, `count(kind) -> int` for kind in read|hit|answer|audit|image.
- `set_fault(status=503, retry_after=2, times=1, endpoint="batches")`: the next `times`
  requests to that endpoint (batches|images|hotlist|heartbeat|keys) answer `status` with
  `Retry-After: retry_after` (None: no header). The body of a faulted upload is read and
  discarded, nothing is stored. Test-only: the server runs with `--test-faults`.
- `counters() -> dict`: the server's refusal/ingest counters (test-only route).
- `stop()` (SIGTERM, then SIGKILL after 10 s) and `kill()` (SIGKILL: a crash); a context manager.
  `restart()` starts the server again on the same port and home (after `kill()` or `stop()`).

`measure_ingest_rate(server, device, reads=20000, batch_size=1000)` uploads pre-encoded batches
of fresh reads over one keep-alive mTLS connection and returns {"reads", "seconds",
"reads_per_s", "batch_size", "bytes_per_read"} (bench/sync.py can report it).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.ca import CertificateAuthority
from server.home import Department, ServerHome
from sync.protocol import (
    BATCH_PATH,
    ENROLL_PATH,
    EnrollRequest,
    EnrollResponse,
    FeedKey,
    KeyEndorsement,
    ReadRecord,
    UploadBatch,
    encode_batch,
)

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


def make_key_and_csr(common_name: str = "device") -> tuple[bytes, bytes]:
    """A P-256 key (PKCS#8 PEM) and a CSR for it, as a device makes them."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    device_id: str
    cert_path: Path
    key_path: Path
    ca_path: Path

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        return ctx

    def client(self, url: str, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=url, verify=self.ssl_context(), **kwargs)


class RunningServer:
    def __init__(
        self,
        home: Path,
        *,
        feed_validity_s: float,
        test_faults: bool,
        host: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.home = home
        self._host = host
        self._prefix = list(command_prefix)
        self.log_path = home / "server.log"
        self._feed_validity_s = feed_validity_s
        self._test_faults = test_faults
        self._port = 0
        self._proc: subprocess.Popen | None = None
        self.url = ""
        self.dept = Department(ServerHome(home))

    @property
    def ca_cert_path(self) -> Path:
        return self.dept.home.ca_dir / "ca.crt"

    # ------------------------------------------------------------ process

    def _start(self) -> None:
        ready = self.home / "ready.json"
        ready.unlink(missing_ok=True)
        cmd = [
            *self._prefix,
            sys.executable,
            "-m",
            "server.cli",
            "--home",
            str(self.home),
            "serve",
            "--host",
            self._host,
            "--port",
            str(self._port),
            "--ready-file",
            str(ready),
            "--feed-validity-hours",
            str(self._feed_validity_s / 3600),
            "--log-level",
            "info",
        ]
        if self._test_faults:
            cmd.append("--test-faults")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"alpr-server serve exited with {self._proc.returncode}:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"alpr-server serve did not start in {START_TIMEOUT_S} s:\n{self.log_text()}"
                )
            time.sleep(0.02)
        self.url = json.loads(ready.read_text())["url"]
        self._port = int(self.url.rsplit(":", 1)[1])

    def restart(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("the server is still running; stop() or kill() it first")
        self._start()

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self.stop()
        self.dept.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------ admin (same database, this process)

    def enroll_token(self, name: str | None = None) -> str:
        return self.dept.devices.create_token(name).token

    def enroll_device(self, tmp_path: Path, name: str | None = None) -> DeviceIdentity:
        key_pem, csr_pem = make_key_and_csr(name or "device")
        request = EnrollRequest(token=self.enroll_token(name), csr_pem=csr_pem.decode(), hostname=name or "")
        ctx = ssl.create_default_context(cafile=str(self.ca_cert_path))
        with httpx.Client(base_url=self.url, verify=ctx, timeout=10) as http:
            res = http.post(ENROLL_PATH, json=request.model_dump())
        if res.status_code != 200:
            raise RuntimeError(f"enrollment failed: {res.status_code} {res.text}")
        answer = EnrollResponse.model_validate_json(res.content)
        folder = Path(tmp_path) / answer.device_id
        folder.mkdir(parents=True, exist_ok=True)
        identity = DeviceIdentity(
            answer.device_id, folder / "device.crt", folder / "device.key", folder / "ca.crt"
        )
        identity.key_path.write_bytes(key_pem)
        os.chmod(identity.key_path, 0o600)
        identity.cert_path.write_text(answer.certificate_pem)
        identity.ca_path.write_text(answer.ca_certificate_pem)
        return identity

    def import_hotlist(self, path: str | Path, fmt: str, list_kind: Any = None):
        return self.dept.hotlist.import_file(path, fmt, list_kind=list_kind)  # type: ignore[arg-type]

    def hotlist_version(self) -> int:
        return self.dept.hotlist.current_version()

    def feed_key(self) -> FeedKey:
        return self.dept.feed_keys.current()

    def rotate_feed_key(self) -> KeyEndorsement:
        return self.dept.feed_keys.rotate()

    def revoke(self, device_id: str) -> None:
        self.dept.devices.revoke(device_id, reason="test")

    def stored_ids(self, kind: str) -> list[str]:
        return self.dept.ingest.stored_ids(kind)

    def count(self, kind: str) -> int:
        return self.dept.ingest.count(kind)

    def _loopback(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert_path))
        return httpx.Client(base_url=self.url, verify=ctx, timeout=10)

    def set_fault(
        self, status: int = 503, retry_after: int | None = 2, times: int = 1, endpoint: str = "batches"
    ) -> None:
        if not self._test_faults:
            raise RuntimeError("start_server(..., test_faults=True) to use set_fault")
        with self._loopback() as http:
            body = {"status": status, "retry_after": retry_after, "times": times, "endpoint": endpoint}
            http.post("/test/faults", json=body).raise_for_status()

    def counters(self) -> dict[str, int]:
        with self._loopback() as http:
            res = http.get("/test/counters")
            res.raise_for_status()
            return res.json()


def start_server(
    tmp_path: str | Path,
    *,
    feed_validity_s: float = 24 * 3600,
    test_faults: bool = True,
    host: str = "127.0.0.1",
    command_prefix: Sequence[str] = (),
) -> RunningServer:
    """A fresh department (CA, feed key, server certificate for `host`, empty DB) being served.

    `host` and `command_prefix` place the server elsewhere, e.g. inside a network namespace:
    `start_server(tmp, host="10.200.0.1", command_prefix=["ip", "netns", "exec", "srv"])`.
    The admin calls (`set_fault`, `counters`) then need `url` to be reachable from the test process.
    """
    home = Path(tmp_path) / f"server-{uuid.uuid4().hex[:8]}"
    ca = CertificateAuthority.init(home / "ca")
    ca.issue_server_certificate(home / "tls", list(dict.fromkeys([host, "127.0.0.1", "localhost"])))
    server = RunningServer(
        home,
        feed_validity_s=feed_validity_s,
        test_faults=test_faults,
        host=host,
        command_prefix=command_prefix,
    )
    try:
        server.dept.feed_keys.generate()
        server._start()
    except BaseException:
        server.close()
        raise
    return server


def fresh_reads(n: int, *, start: float = 1_796_400_000.0) -> list[ReadRecord]:
    return [
        ReadRecord(
            id=str(uuid.uuid4()),
            camera="front",
            plate=f"7ABC{i % 1000:03d}",
            confidence=0.97,
            first_seen=start + i * 3.1,
            last_seen=start + i * 3.1 + 1.4,
            observations=6,
            lat=37.77512 + i * 1e-5,
            lon=-122.41801 - i * 1e-5,
            speed_mps=12.4,
            heading_deg=181.0,
            fix_mode=3,
            fix_time=start + i * 3.1 + 1.0,
        )
        for i in range(n)
    ]


def measure_ingest_rate(
    server: RunningServer, device: DeviceIdentity, *, reads: int = 20_000, batch_size: int = 1000
) -> dict[str, float]:
    """Server ingest rate over loopback mTLS; the batches are encoded before the clock starts."""
    records = fresh_reads(reads)
    bodies = [
        encode_batch(
            UploadBatch(
                device_id=device.device_id,
                batch_id=str(uuid.uuid4()),
                sent_at=time.time(),
                records=records[i : i + batch_size],
            )
        )
        for i in range(0, reads, batch_size)
    ]
    with device.client(server.url, timeout=60) as http:
        started = time.perf_counter()
        for body in bodies:
            res = http.post(BATCH_PATH, content=body, headers={"Content-Encoding": "gzip"})
            res.raise_for_status()
        seconds = time.perf_counter() - started
    return {
        "reads": reads,
        "seconds": round(seconds, 3),
        "reads_per_s": round(reads / seconds, 1),
        "batch_size": batch_size,
        "bytes_per_read": round(sum(map(len, bodies)) / reads, 1),
    }
