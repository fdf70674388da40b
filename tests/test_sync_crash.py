"""Crash loop: SIGKILL the sync agent and a writer standing in for the daemon at random moments
while reads flow, then count. Zero reads lost, zero stored twice, integrity ok every time.

`crash_loop` is shared with bench/sync.py (>= 200 cycles there, 20 here). Run as a script this
file is the writer: `python tests/test_sync_crash.py writer DB` saves reads until killed.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()


def writer_main(db: str) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE.parent))
    from test_sync_agent import make_read

    from edge.store import Store

    with Store(Path(db)) as store:
        i = 0
        while True:
            store.save_read(
                make_read(i, crop=b"\xff\xd8\xff\xe0" + bytes(200) + b"\xff\xd9" if i % 4 == 0 else b"")
            )
            i += 1
            time.sleep(0.004)


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return ";".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def _device_read_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return [r[0] for r in conn.execute("SELECT read_id FROM reads")]
    finally:
        conn.close()


def crash_loop(server, config_path: Path, db: Path, *, cycles: int, seed: int = 5) -> dict:
    """Kill the agent (always) and the writer (often) at random moments, `cycles` times; then let the
    agent drain and compare the device's reads with the server's. Returns the counts."""
    rng = random.Random(seed)
    agent_cmd = [sys.executable, "-m", "sync.cli", "--config", str(config_path), "run"]
    writer_cmd = [sys.executable, str(HERE), "writer", str(db)]
    integrity_failures = []
    writer = agent = None
    writer_kills = 0
    started = time.monotonic()
    for cycle in range(cycles):
        if writer is None:
            writer = subprocess.Popen(
                writer_cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        agent = subprocess.Popen(agent_cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 1.4))  # imports take ~0.4 s: kills land before, during and after uploads
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        if rng.random() < 0.5:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            writer = None
            writer_kills += 1
        result = _integrity(db)
        if result != "ok":
            integrity_failures.append((cycle, result))
    if writer is not None:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    loop_s = time.monotonic() - started
    drain = subprocess.run(
        [*agent_cmd, "--until-drained"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    device_ids = _device_read_ids(db)
    mine = set(device_ids)
    stored = [i for i in server.stored_ids("read") if i in mine]
    return {
        "cycles": cycles,
        "writer_kills": writer_kills,
        "reads_on_device": len(device_ids),
        "reads_on_server": len(stored),
        "lost": len(mine - set(stored)),
        "duplicates": len(stored) - len(set(stored)),
        "integrity_failures": integrity_failures,
        "final_integrity": _integrity(db),
        "drain_rc": drain.returncode,
        "drain_stderr": drain.stderr[-2000:],
        "loop_s": round(loop_s, 1),
    }


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "writer":
    writer_main(sys.argv[2])
else:
    import pytest
    from server_harness import start_server
    from test_sync_server import enrolled_config

    from edge.config import load_config

    @pytest.fixture
    def server(tmp_path):
        with start_server(tmp_path / "srv") as s:
            yield s

    def test_twenty_random_kills_lose_nothing_and_store_nothing_twice(server, tmp_path):
        config_path = enrolled_config(server, tmp_path / "car", batch_max_records=50)
        db = load_config(config_path).database_path
        out = crash_loop(server, config_path, db, cycles=20)
        assert out["drain_rc"] == 0, out["drain_stderr"]
        assert out["integrity_failures"] == [] and out["final_integrity"] == "ok"
        assert out["reads_on_device"] > 100
        assert out["lost"] == 0 and out["duplicates"] == 0
        assert out["reads_on_server"] == out["reads_on_device"]
