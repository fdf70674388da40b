"""An emulated LTE link for tests and benchmarks: network namespaces the test creates (root).

    with LteLink.create() as link:             # namespaces car-side and tower-side, veth between
        link.shape(rate_mbit=5, loss_pct=2)    # tc tbf on both ends, nftables random drop
        link.outage(True)                      # nftables drops everything on the car side
        link.run_in(link.car, fn)              # fn runs in a thread inside the car namespace
        proxy = DelayProxy.start(link.car, ("127.0.0.1", 0), (link.tower_ip, port), delay_s=0.1)
        proxy.cut()                            # reset every connection in flight

Only addresses inside the namespaces made here are used (10.x.y.1/.2 on the veth pair, and the
namespaces' own loopback). This kernel has no netem: latency comes from `DelayProxy`, a small
TCP proxy that holds every chunk for `delay_s` in each direction, and can cut connections.

`require_tools()` makes a test fail (not skip) when CI=true and root, ip, tc or nft are missing,
naming scripts/install-system-deps.sh.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def require_tools() -> None:
    missing = [
        t
        for t in ("ip", "tc", "nft")
        if shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
    ]
    problems = []
    if os.geteuid() != 0:
        problems.append("root")
    if missing:
        problems.append(", ".join(missing))
    if not problems:
        return
    message = (
        f"the LTE emulation needs {' and '.join(problems)} (network namespaces, tc tbf, nftables): "
        "run scripts/install-system-deps.sh as root"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _run(*cmd: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")


def enter(ns: str) -> None:
    """Move the calling THREAD into network namespace `ns` (threads it starts inherit it)."""
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in(ns: str, fn: Callable[[], T]) -> T:
    """Call fn in a new thread inside namespace `ns`; return its result (or raise its error)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            enter(ns)
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@dataclass
class LteLink:
    car: str
    tower: str
    car_ip: str
    tower_ip: str

    @classmethod
    def create(cls) -> LteLink:
        require_tools()
        tag = f"{os.getpid() % 100000}{random.randrange(1000):03d}"
        a, b = f"lc{tag}", f"lt{tag}"
        net = f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}"
        link = cls(car=a, tower=b, car_ip=f"{net}.2", tower_ip=f"{net}.1")
        try:
            _run("ip", "netns", "add", a)
            _run("ip", "netns", "add", b)
            _run("ip", "link", "add", f"vc{tag}", "type", "veth", "peer", "name", f"vt{tag}")
            _run("ip", "link", "set", f"vc{tag}", "netns", a)
            _run("ip", "link", "set", f"vt{tag}", "netns", b)
            _run("ip", "-n", a, "addr", "add", f"{link.car_ip}/24", "dev", f"vc{tag}")
            _run("ip", "-n", b, "addr", "add", f"{link.tower_ip}/24", "dev", f"vt{tag}")
            for ns, dev in ((a, f"vc{tag}"), (b, f"vt{tag}")):
                _run("ip", "-n", ns, "link", "set", dev, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                _run("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "lte")
                _run(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "nft",
                    "add",
                    "chain",
                    "inet",
                    "lte",
                    "out",
                    "{ type filter hook output priority 0; policy accept; }",
                )
        except BaseException:
            link.close()
            raise
        link._tag = tag  # type: ignore[attr-defined]
        return link

    def _dev(self, ns: str) -> str:
        return f"{'vc' if ns == self.car else 'vt'}{self._tag}"  # type: ignore[attr-defined]

    def shape(self, *, rate_mbit: float | None = None, loss_pct: int = 0) -> None:
        """Rate limit (tbf) and random loss (nftables numgen) on both ends' veth egress."""
        for ns in (self.car, self.tower):
            dev = self._dev(ns)
            subprocess.run(
                ["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
                capture_output=True,
                check=False,
            )
            if rate_mbit:
                _run(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    f"{rate_mbit}mbit",
                    "burst",
                    "32kbit",
                    "latency",
                    "400ms",
                )
            _run("ip", "netns", "exec", ns, "nft", "flush", "chain", "inet", "lte", "out")
            if loss_pct:
                _run(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "nft",
                    "add",
                    "rule",
                    "inet",
                    "lte",
                    "out",
                    "oifname",
                    dev,
                    "numgen",
                    "random",
                    "mod",
                    "100",
                    "<",
                    str(loss_pct),
                    "drop",
                )

    def outage(self, on: bool) -> None:
        """Every packet leaving the car over the veth is dropped (the tower side too)."""
        for ns in (self.car, self.tower):
            dev = self._dev(ns)
            if on:
                _run(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "nft",
                    "insert",
                    "rule",
                    "inet",
                    "lte",
                    "out",
                    "oifname",
                    dev,
                    "drop",
                    "comment",
                    '"outage"',
                )
            else:
                listing = subprocess.run(
                    ["ip", "netns", "exec", ns, "nft", "-a", "list", "chain", "inet", "lte", "out"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                for line in listing.splitlines():
                    if '"outage"' in line and "# handle" in line:
                        handle = line.rsplit("# handle", 1)[1].strip()
                        _run(
                            "ip",
                            "netns",
                            "exec",
                            ns,
                            "nft",
                            "delete",
                            "rule",
                            "inet",
                            "lte",
                            "out",
                            "handle",
                            handle,
                        )

    def prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def run_in(self, ns: str, fn: Callable[[], T]) -> T:
        return run_in(ns, fn)

    def close(self) -> None:
        for ns in (self.car, self.tower):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def __enter__(self) -> LteLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DelayProxy:
    """A TCP proxy inside a namespace: each chunk is held `delay_s` in each direction.

    `cut()` resets every open connection (RST both ways), as a dropped LTE bearer does.
    `bytes_up` / `bytes_down` count the TCP payload carried (TLS records included).
    """

    def __init__(self, listener: socket.socket, upstream: tuple[str, int], delay_s: float) -> None:
        self._listener = listener
        self.address = listener.getsockname()[:2]
        self._upstream = upstream
        self.delay_s = delay_s
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self.on_chunk: Callable[[str, int], None] | None = None
        self._accepter = threading.Thread(target=self._accept, daemon=True)

    @classmethod
    def start(
        cls, ns: str, listen: tuple[str, int], upstream: tuple[str, int], *, delay_s: float
    ) -> DelayProxy:
        def make() -> DelayProxy:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(listen)
            sock.listen(64)
            proxy = cls(sock, upstream, delay_s)
            proxy._accepter.start()  # started inside the namespace: its threads stay there
            return proxy

        return run_in(ns, make)

    @property
    def url(self) -> str:
        return f"https://{self.address[0]}:{self.address[1]}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns.update((client, server))
                self.connections += 1
            for src, dst, way in ((client, server, "up"), (server, client, "down")):
                q: queue.Queue = queue.Queue()
                threading.Thread(target=self._read, args=(src, q, way), daemon=True).start()
                threading.Thread(target=self._write, args=(dst, q), daemon=True).start()

    def _read(self, src: socket.socket, q: queue.Queue, way: str) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                q.put((time.monotonic() + self.delay_s, None))
                return
            if way == "up":
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)
            if self.on_chunk is not None:
                self.on_chunk(way, len(data))
            q.put((time.monotonic() + self.delay_s, data))

    def _write(self, dst: socket.socket, q: queue.Queue) -> None:
        while True:
            due, data = q.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if data is None:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    def cut(self) -> int:
        """Reset every open connection; returns how many sockets were cut."""
        with self._lock:
            conns, self._conns = self._conns, set()
        for s in conns:
            _reset(s)
        return len(conns)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.cut()
        self._accepter.join(timeout=2)

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
