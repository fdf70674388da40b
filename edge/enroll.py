"""Device enrollment (`alpr-edge enroll`): a key pair made here, a certificate from the department.

Steps: make an EC P-256 key on the device (it never leaves it), send a CSR with the one-time
token to `POST /v1/enroll`, check the answer (the certificate is for OUR key and issued by the CA
in the answer), write the identity files, then write the device id and server URL into the
device config file.

Guarantees:
- TLS verification is always on: against `--ca-cert` when given (a department CA not in the
  system store), else the system's trust store. There is no way to turn it off.
- Files are written whole or not at all (temp file, fsync, rename, fsync the folder); the
  private key is created with mode 0600 and never exists with wider permissions.
- The config file is edited in place keeping every comment and every other key; the edited text
  must load as a valid config before it replaces the old file.
- Nothing is written unless the server accepted the request and its answer checked out, so a
  failed enrollment leaves the device as it was (the token is spent only on success, server side).

This module must not import `sync` (dependencies point from sync to edge): the request JSON is
built here, and a test checks it against `sync.protocol.EnrollRequest`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.config import ConfigError, load_config

ENROLL_PATH = "/v1/enroll"  # sync.protocol.ENROLL_PATH (edge does not import sync)


class EnrollError(Exception):
    """Enrollment did not complete; the device is unchanged."""


class EnrollUnavailable(EnrollError):
    """Transient: the server could not be reached or was busy; try again."""


class EnrollRefused(EnrollError):
    """The server refused the request (bad, used or expired token; bad CSR)."""


class EnrollAnswerError(EnrollError):
    """The server's answer is not a usable enrollment (wrong key, wrong issuer, not JSON)."""


class EnrollWriteError(EnrollError):
    """The identity files or the config file could not be written."""


@dataclass(frozen=True, kw_only=True)
class Enrollment:
    device_id: str
    server_url: str
    cert_path: Path
    key_path: Path
    ca_path: Path
    feed_keys_path: Path


def make_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, hostname: str) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (hostname or "alpr-device")[:64])])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def enroll_request(token: str, csr_pem: str, hostname: str) -> dict[str, str]:
    """The JSON body of POST /v1/enroll (`sync.protocol.EnrollRequest`)."""
    return {"token": token, "csr_pem": csr_pem, "hostname": hostname[:255]}


def _tls_context(ca_cert: Path | None) -> ssl.SSLContext:
    try:
        if ca_cert is not None:
            return ssl.create_default_context(cafile=str(ca_cert))
        return ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise EnrollError(f"{ca_cert}: cannot load the CA certificate: {exc}") from exc


def _post(server_url: str, body: dict[str, str], ctx: ssl.SSLContext, timeout_s: float) -> dict[str, Any]:
    url = server_url.rstrip("/") + ENROLL_PATH
    try:
        with httpx.Client(verify=ctx, timeout=timeout_s, follow_redirects=False) as client:
            response = client.post(url, json=body)
    except httpx.ConnectError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise EnrollRefused(
                f"{url}: the server's certificate did not verify ({exc}); "
                "pass the department CA with --ca-cert"
            ) from exc
        raise EnrollUnavailable(f"{url}: cannot connect: {exc}") from exc
    except httpx.HTTPError as exc:
        raise EnrollUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise EnrollUnavailable(f"{url}: server answered {response.status_code}; try again")
    if response.status_code != 200:
        detail = response.text[:300]
        raise EnrollRefused(f"{url}: enrollment refused ({response.status_code}): {detail}")
    try:
        answer = response.json()
    except ValueError as exc:
        raise EnrollAnswerError(f"{url}: the answer is not JSON: {response.text[:120]!r}") from exc
    if not isinstance(answer, dict):
        raise EnrollAnswerError(f"{url}: the answer is not a JSON object")
    return answer


def _check_answer(
    answer: dict[str, Any], key: ec.EllipticCurvePrivateKey
) -> tuple[str, x509.Certificate, x509.Certificate, list[dict[str, Any]]]:
    device_id = answer.get("device_id")
    if not isinstance(device_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", device_id):
        raise EnrollAnswerError(f"the answer names no usable device id: {str(device_id)[:80]!r}")
    try:
        cert = x509.load_pem_x509_certificate(str(answer.get("certificate_pem", "")).encode())
        ca = x509.load_pem_x509_certificate(str(answer.get("ca_certificate_pem", "")).encode())
    except ValueError as exc:
        raise EnrollAnswerError(f"the answer's certificates do not parse: {exc}") from exc
    ours = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if ours != theirs:
        raise EnrollAnswerError("the issued certificate is not for the key made on this device")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrollAnswerError(
            f"the issued certificate is not signed by the CA in the answer: {exc}"
        ) from exc
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [device_id]:
        raise EnrollAnswerError(f"the certificate names {cns}, not device {device_id}")
    keys = answer.get("feed_keys")
    if not isinstance(keys, list) or not keys:
        raise EnrollAnswerError("the answer carries no feed-signing keys")
    for k in keys:
        if not isinstance(k, dict) or not isinstance(k.get("key_id"), str):
            raise EnrollAnswerError("a feed key in the answer has no key_id")
        try:
            raw = base64.b64decode(str(k.get("public_key", "")), validate=True)
        except ValueError as exc:
            raise EnrollAnswerError(f"feed key {k['key_id']} is not base64") from exc
        if len(raw) != 32:
            raise EnrollAnswerError(f"feed key {k['key_id']} is not a raw Ed25519 key")
    return device_id, cert, ca, keys


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` whole or not at all; the file never has wider permissions than `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def set_config_values(text: str, values: dict[str, dict[str, str]]) -> str:
    """`text` with `[section] key = "value"` set for each value, keeping comments and other lines.

    A key already present in its section has its line replaced; a missing key is added right
    after the section header; a missing section is added at the end.
    """
    lines = text.splitlines(keepends=True)
    for section, pairs in values.items():
        for key, value in pairs.items():
            rendered = f"{key} = {json.dumps(value)}\n"
            start = next((i for i, ln in enumerate(lines) if ln.strip() == f"[{section}]"), None)
            if start is None:
                if lines and not lines[-1].endswith("\n"):
                    lines[-1] += "\n"
                lines += ["\n", f"[{section}]\n", rendered]
                continue
            end = next(
                (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines)
            )
            pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
            hit = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
            if hit is not None:
                lines[hit] = rendered
            else:
                lines.insert(start + 1, rendered)
    return "".join(lines)


def write_config(config_path: Path, *, device_id: str, server_url: str) -> None:
    """Record the device id and server URL in the device config file (validated before replacing)."""
    try:
        text = config_path.read_text("utf-8")
    except OSError as exc:
        raise EnrollWriteError(f"{config_path}: cannot read the config file: {exc.strerror}") from exc
    new = set_config_values(text, {"device": {"id": device_id}, "sync": {"server_url": server_url}})
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "config.toml"
        probe.write_text(new, "utf-8")
        try:
            load_config(probe)
        except ConfigError as exc:
            raise EnrollWriteError(f"{config_path}: the updated config would not load: {exc}") from exc
    try:
        atomic_write(config_path, new.encode("utf-8"), config_path.stat().st_mode & 0o777)
    except OSError as exc:
        raise EnrollWriteError(f"{config_path}: cannot write the config file: {exc}") from exc


def enroll(
    server_url: str,
    token: str,
    *,
    identity_dir: Path,
    config_path: Path,
    ca_cert: Path | None = None,
    hostname: str | None = None,
    timeout_s: float = 30.0,
    post: Callable[[str, dict[str, str], ssl.SSLContext, float], dict[str, Any]] = _post,
) -> Enrollment:
    """Enroll this device; see the module docstring for what is written and when."""
    if not server_url.startswith("https://"):
        raise EnrollError(f"server URL must be https:// (got {server_url!r}); TLS verification is always on")
    if not 16 <= len(token) <= 256:
        raise EnrollError("the enrollment token must be 16 to 256 characters")
    hostname = socket.gethostname() if hostname is None else hostname
    key = make_key()
    body = enroll_request(token, make_csr(key, hostname), hostname)
    answer = post(server_url, body, _tls_context(ca_cert), timeout_s)
    device_id, cert, ca, feed_keys = _check_answer(answer, key)

    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    if ca_cert is not None:
        # The server's TLS certificate was checked against --ca-cert; keep trusting it for the
        # agent's connections even if it is not the CA that signs devices.
        given = ca_cert.read_bytes()
        if given.strip() not in ca_pem.strip():
            ca_pem = ca_pem.rstrip(b"\n") + b"\n" + given.strip() + b"\n"
    paths = Enrollment(
        device_id=device_id,
        server_url=server_url.rstrip("/"),
        cert_path=identity_dir / "device.crt",
        key_path=identity_dir / "device.key",
        ca_path=identity_dir / "ca.crt",
        feed_keys_path=identity_dir / "feed_keys.json",
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        identity_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(identity_dir, 0o700)
        atomic_write(paths.key_path, key_pem, 0o600)
        atomic_write(paths.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        atomic_write(paths.ca_path, ca_pem, 0o644)
        atomic_write(paths.feed_keys_path, json.dumps(feed_keys, indent=1).encode(), 0o644)
    except OSError as exc:
        raise EnrollWriteError(f"{identity_dir}: cannot write the identity files: {exc}") from exc
    write_config(config_path, device_id=device_id, server_url=paths.server_url)
    return paths
