"""The server's home folder and the department objects opened from it.

Layout of a home folder (`alpr-server --home DIR`, default `$ALPR_SERVER_HOME` or `./var/server`):
    server.db        SQLite (WAL): devices, tokens, ingest, hotlist versions, feed key rows
    ca/ca.key, ca/ca.crt          the department CA (`alpr-server ca init`)
    keys/feed-<id>.key            Ed25519 feed-signing keys (`alpr-server keys generate|rotate`)
    tls/server.crt, tls/server.key  the HTTPS certificate (`alpr-server tls issue`)

`Department` opens the database once and migrates every server component in a fixed order, so
the CLI, the HTTP app and test harnesses all see one schema.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.ca import CertificateAuthority
from server.db import Database
from server.devices import DeviceRegistry
from server.feed import FeedKeys
from server.hotlist import DepartmentHotlist
from server.ingest import Ingest


@dataclass(frozen=True, slots=True)
class ServerHome:
    root: Path

    @classmethod
    def from_arg(cls, arg: str | os.PathLike[str] | None) -> ServerHome:
        return cls(Path(arg or os.environ.get("ALPR_SERVER_HOME") or "var/server").resolve())

    @property
    def db_path(self) -> Path:
        return self.root / "server.db"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"


class Department:
    """Everything the server keeps, opened from one home folder. Close it when done."""

    def __init__(self, home: ServerHome, *, clock: Callable[[], float] = time.time) -> None:
        self.home = home
        self._clock = clock
        self.db = Database(home.db_path)
        try:
            self.devices = DeviceRegistry(self.db, clock=clock)
            self.ingest = Ingest(self.db, clock=clock)
            self.hotlist = DepartmentHotlist(self.db, clock=clock)
            self.feed_keys = FeedKeys(self.db, home.keys_dir, clock=clock)
        except BaseException:
            self.db.close()
            raise
        self._ca: CertificateAuthority | None = None

    @property
    def ca(self) -> CertificateAuthority:
        """The department CA (CANotFound until `alpr-server ca init`)."""
        if self._ca is None:
            self._ca = CertificateAuthority.load(self.home.ca_dir, clock=self._clock)
        return self._ca

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Department:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
