"""The agent over an emulated LTE link (network namespaces, tc tbf, nftables loss, a delaying and
cutting TCP proxy): the real department server in the "tower" namespace, the agent process in the
"car" namespace, reads flowing in while the link degrades, cuts mid-batch and goes down.
Every read must arrive exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from netns import DelayProxy, LteLink, require_tools
from server_harness import start_server
from test_sync_agent import make_read
from test_sync_server import enrolled_config

from edge.config import load_config
from edge.store import Lane, Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def link():
    require_tools()
    with LteLink.create() as lte:
        yield lte


class Writer:
    """Stands in for the daemon: saves reads through edge.store.Store at a steady pace."""

    def __init__(self, db: Path, per_s: float) -> None:
        self.ids: list[str] = []
        self._db = db
        self._per_s = per_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        with Store(self._db) as store:
            i = 0
            while not self._stop.wait(1 / self._per_s):
                r = make_read(10_000 + i)
                store.save_read(r)
                self.ids.append(r.read_id)
                i += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _wait_for(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_backlog_arrives_exactly_once_through_loss_delay_cuts_and_an_outage(link, tmp_path):
    link.shape(rate_mbit=5, loss_pct=2)
    with start_server(tmp_path, host=link.tower_ip, command_prefix=link.prefix(link.tower)) as server:
        config_path = link.run_in(
            link.car,
            lambda: enrolled_config(
                server, tmp_path / "car", batch_max_records=200, backoff_max_s=1.0, connect_timeout_s=2.0
            ),
        )
        upstream = (link.tower_ip, int(server.url.rsplit(":", 1)[1]))
        with DelayProxy.start(link.car, ("127.0.0.1", 0), upstream, delay_s=0.1) as proxy:
            text = config_path.read_text().replace(server.url, proxy.url)
            config_path.write_text(text)
            db = load_config(config_path).database_path
            backlog = [make_read(i) for i in range(1000)]
            with Store(db) as store:
                for r in backlog:
                    store.save_read(r)
            writer = Writer(db, per_s=40)
            agent = subprocess.Popen(
                [
                    *link.prefix(link.car),
                    sys.executable,
                    "-m",
                    "sync.cli",
                    "--config",
                    str(config_path),
                    "run",
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                with Store(db) as store:

                    def waiting() -> int:
                        return store.outbox_counts()[Lane.READS]

                    # three connection cuts while a batch is on the wire
                    for _ in range(3):
                        sent = proxy.bytes_up
                        _wait_for(lambda s=sent: proxy.bytes_up > s + 8_000, 20, "a batch in flight")
                        assert proxy.cut() > 0
                    # a ten-minute outage, compressed a hundredfold
                    link.outage(True)
                    during = waiting()
                    time.sleep(6)
                    assert waiting() >= during  # nothing got through, nothing was dropped
                    link.outage(False)
                    writer.stop()
                    _wait_for(lambda: waiting() == 0, 90, "the outbox to drain")
            finally:
                writer.stop()
                agent.terminate()
                _, err = agent.communicate(timeout=15)
            mine = {r.read_id for r in backlog} | set(writer.ids)
            stored = [i for i in server.stored_ids("read") if i in mine]
            assert len(stored) == len(set(stored)) == len(mine), err.decode()[-2000:]
            assert proxy.connections >= 4  # it reconnected after every cut and after the outage
            log = err.decode()
            assert "LinkError" in log or "link failed" in log
