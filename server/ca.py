"""The department certificate authority: device client certificates and the server's TLS certificate.

Layout: a folder with `ca.key` (PKCS#8 PEM, mode 0600) and `ca.crt`. Keys are ECDSA P-256.

Guarantees:
- `CertificateAuthority.init` never overwrites an existing CA (re-running it would orphan every
  enrolled device); the key file is written 0600, fsynced, then renamed into place, so a crash
  leaves either no CA or a whole one.
- A device certificate's subject is chosen by the server, never copied from the CSR: CN = the
  device id the enrollment token was made for. The CSR only contributes its public key, and its
  self-signature must verify (proof that the device holds the private key).
- Device certificates carry `clientAuth` only and `CA:FALSE`, so a device cannot act as a server
  or mint certificates. Serials are 159-bit random numbers, written as lower-case hex.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
# Cars boot without a real-time clock and may check the server's certificate before NTP/GPS
# has set the time; backdating by a day keeps a slightly-behind clock from failing TLS.
BACKDATE = dt.timedelta(days=1)


class CAError(Exception):
    """The certificate authority failed."""


class CANotFound(CAError):
    """No CA in the folder (run `alpr-server ca init`)."""


class CAExists(CAError):
    """A CA already exists in the folder; it is never overwritten."""


class CSRRefused(CAError):
    """The certificate request is malformed, badly signed or uses a refused key (permanent)."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    pem: str
    serial: str  # lower-case hex
    subject_cn: str
    not_after: float  # epoch seconds


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CertificateAuthority:
    """A CA loaded from its folder. Use `init` to create one, `load` to open it."""

    def __init__(
        self,
        folder: Path,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self._key = key
        self.certificate = cert
        self._clock = clock

    @property
    def cert_path(self) -> Path:
        return self.folder / CA_CERT_FILE

    @property
    def cert_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @classmethod
    def init(
        cls,
        folder: str | Path,
        *,
        name: str = "ALPR department CA",
        validity_days: int = 3650,
        clock: Callable[[], float] = time.time,
    ) -> CertificateAuthority:
        folder = Path(folder)
        if (folder / CA_KEY_FILE).exists() or (folder / CA_CERT_FILE).exists():
            raise CAExists(f"{folder}: a CA already exists here; refusing to overwrite it")
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.fromtimestamp(clock(), dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(folder / CA_KEY_FILE, _key_pem(key), 0o600)
            _atomic_write(folder / CA_CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        except OSError as exc:
            raise CAError(f"{folder}: cannot write the CA: {exc}") from exc
        return cls(folder, key, cert, clock=clock)

    @classmethod
    def load(cls, folder: str | Path, *, clock: Callable[[], float] = time.time) -> CertificateAuthority:
        folder = Path(folder)
        try:
            key_pem = (folder / CA_KEY_FILE).read_bytes()
            cert_pem = (folder / CA_CERT_FILE).read_bytes()
        except FileNotFoundError as exc:
            raise CANotFound(f"{folder}: no CA here (run `alpr-server ca init`)") from exc
        except OSError as exc:
            raise CAError(f"{folder}: cannot read the CA: {exc}") from exc
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate(cert_pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CAError(f"{folder}: the CA files are not a PEM key and certificate: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"{folder}: the CA key is not an EC key")
        return cls(folder, key, cert, clock=clock)

    def _builder(self, subject_cn: str, public_key, validity_days: int) -> x509.CertificateBuilder:
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    def sign_device_csr(
        self, csr_pem: str | bytes, device_id: str, *, validity_days: int = 3 * 365
    ) -> IssuedCertificate:
        """A client certificate for `device_id` over the CSR's public key."""
        data = csr_pem.encode("ascii", "replace") if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(data)
            valid = csr.is_signature_valid
            public_key = csr.public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature) as exc:
            raise CSRRefused(f"not a PEM certificate request: {exc}") from exc
        if not valid:
            raise CSRRefused("the certificate request's signature does not verify")
        _check_device_key(public_key)
        cert = (
            self._builder(device_id, public_key, validity_days)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(_leaf_usage(), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(
            pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            serial=serial_hex(cert),
            subject_cn=device_id,
            not_after=cert.not_valid_after_utc.timestamp(),
        )

    def issue_server_certificate(
        self, folder: str | Path, hosts: Sequence[str], *, validity_days: int = 825
    ) -> tuple[Path, Path]:
        """Write `server.crt` and `server.key` (0600) for `hosts` (DNS names or IP addresses)."""
        if not hosts:
            raise CAError("a server certificate needs at least one host name or address")
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (
            self._builder(hosts[0], key.public_key(), validity_days)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(_leaf_usage(), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        folder = Path(folder)
        cert_path, key_path = folder / "server.crt", folder / "server.key"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(key_path, _key_pem(key), 0o600)
            _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        except OSError as exc:
            raise CAError(f"{folder}: cannot write the server certificate: {exc}") from exc
        return cert_path, key_path


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _check_device_key(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < 256:
            raise CSRRefused(f"EC key on {key.curve.name} is too weak; use P-256 or stronger")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CSRRefused(f"RSA key of {key.key_size} bits is too weak; use 2048 or more")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CSRRefused(f"key type {type(key).__name__} is not accepted (use EC P-256, RSA or Ed25519)")
