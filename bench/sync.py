"""Sync benchmark over an emulated LTE link; prints one JSON object.

    sudo .venv/bin/python bench/sync.py [--backlog 50000] [--crash-cycles 200]

Needs root, ip, tc and nft (scripts/install-system-deps.sh). The real department server runs in
a "tower" network namespace, the real agent (`alpr-sync run`) in a "car" namespace; between them
a veth pair shaped with tc tbf (5 Mbit each way) and nftables random drop (2 %), and a TCP proxy
holding every chunk 100 ms in each direction (this kernel has no netem).

Reported (targets from issue 5):
- bytes on the wire per read, without images (<= 200) and with a plate crop: TCP payload through
  the proxy (TLS, HTTP and gzip JSON included) per read, and the gzip body alone;
- a `--backlog`-read backlog drained over the link (<= 120 s), with the same run's baseline: the
  time the bytes that crossed would need at 5 Mbit (the ratio is what the protocol costs);
- a hit's delay from `save_hits` to the server's database, p50/p95 (p95 <= 2 s), for hits made
  while that backlog drains;
- server ingest rate on SQLite over loopback mTLS (reads/s);
- the crash loop (>= 200 cycles): SIGKILL the agent and a writer at random moments; lost,
  duplicated, integrity.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from netns import DelayProxy, LteLink  # noqa: E402
from server_harness import measure_ingest_rate, start_server  # noqa: E402
from test_sync_agent import make_hit, make_read  # noqa: E402
from test_sync_crash import crash_loop  # noqa: E402
from test_sync_server import enrolled_config  # noqa: E402

from edge.config import load_config  # noqa: E402
from edge.store import Lane, Store  # noqa: E402

RATE_MBIT = 5
LOSS_PCT = 2
DELAY_S = 0.1


def _crop() -> bytes:
    """A plate crop as the daemon stores it: a real photograph's plate region, JPEG q90."""
    import cv2

    photos = sorted((ROOT.parent / "shared" / "data" / "plates" / "br").glob("*.jpg"))
    if photos:
        image = cv2.imread(str(photos[0]))
        h, w = image.shape[:2]
        crop = image[h // 2 - 40 : h // 2 + 40, w // 2 - 130 : w // 2 + 130]
    else:
        import numpy as np

        crop = np.random.default_rng(1).integers(0, 255, (80, 260, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def _wait(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _agent(link: LteLink, config_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*link.prefix(link.car), sys.executable, "-m", "sync.cli", "--config", str(config_path), "run"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def bench_link(backlog: int, work: Path) -> dict:
    out: dict = {}
    with LteLink.create() as link:
        link.shape(rate_mbit=RATE_MBIT, loss_pct=LOSS_PCT)
        with start_server(
            work / "tower", host=link.tower_ip, command_prefix=link.prefix(link.tower)
        ) as server:
            upstream = (link.tower_ip, int(server.url.rsplit(":", 1)[1]))
            with DelayProxy.start(link.car, ("127.0.0.1", 0), upstream, delay_s=DELAY_S) as proxy:

                def device(name: str, **sync) -> tuple[Path, Path]:
                    path = link.run_in(link.car, lambda: enrolled_config(server, work / name, **sync))
                    path.write_text(path.read_text().replace(server.url, proxy.url))
                    return path, load_config(path).database_path

                # 1. bytes per read, without a crop (1,000 reads) and with one (200 reads: crops go
                # one per request, so they are latency-bound on this link), each drained alone
                crop = _crop()
                for label, with_crop, n in (("without_images", False, 1000), ("with_images", True, 200)):
                    path, db = device(f"bytes-{label}", image_budget_mb_per_day=-1.0)
                    started = time.monotonic()
                    with Store(db) as store:
                        for i in range(n):
                            store.save_read(make_read(i, crop=crop if with_crop else b""))
                    up, down = proxy.bytes_up, proxy.bytes_down
                    agent = _agent(link, path)
                    with Store(db) as store:
                        done = _wait(lambda s=store: sum(s.outbox_counts().values()) == 0, 300)
                    agent.terminate()
                    agent.communicate(timeout=15)
                    out[f"bytes_per_read_{label}"] = round(
                        (proxy.bytes_up + proxy.bytes_down - up - down) / n, 1
                    )
                    out[f"bytes_per_read_{label}_upstream"] = round((proxy.bytes_up - up) / n, 1)
                    out[f"seconds_{label}"] = round(time.monotonic() - started, 1)
                    assert done, f"{label}: not drained"
                out["crop_bytes"] = len(crop)

                # 2+3. the backlog drain, with hits made while it drains
                path, db = device("backlog", batch_max_records=2000, batch_max_bytes=1_048_576)
                with Store(db) as store:
                    for i in range(backlog):
                        store.save_read(make_read(i))
                seen: dict[str, float] = {}
                made: dict[str, float] = {}
                stop = threading.Event()

                def hits() -> None:
                    with Store(db) as store:
                        n = 0
                        while not stop.wait(0.5):
                            r = make_read(900_000 + n, text="7HIT000")
                            store.save_read(r)
                            (h,) = store.save_hits(r.read_id, [make_hit("7HIT000")])
                            made[h.hit_id] = time.monotonic()
                            n += 1

                def watch() -> None:
                    while not stop.is_set():
                        now = time.monotonic()
                        for hid in server.stored_ids("hit"):
                            seen.setdefault(hid, now)
                        time.sleep(0.05)

                up, down = proxy.bytes_up, proxy.bytes_down
                started = time.monotonic()
                agent = _agent(link, path)
                threads = [threading.Thread(target=hits), threading.Thread(target=watch)]
                for t in threads:
                    t.start()
                mine = set()
                with Store(db) as store:
                    drained = _wait(lambda: store.outbox_counts()[Lane.READS] == 0, 600)
                drain_s = time.monotonic() - started
                stop.set()
                for t in threads:
                    t.join()
                agent.terminate()
                _, err = agent.communicate(timeout=15)
                wire = proxy.bytes_up + proxy.bytes_down - down - up
                stored = server.stored_ids("read")
                mine = set(stored)
                lat = sorted(seen[h] - made[h] for h in made if h in seen)
                out["backlog"] = {
                    "reads": backlog,
                    "drained": drained,
                    "seconds": round(drain_s, 1),
                    "target_s": 120,
                    "reads_per_s": round(backlog / drain_s, 1),
                    "wire_bytes": wire,
                    "baseline_link_s": round(wire * 8 / (RATE_MBIT * 1e6), 1),
                    "ratio_to_link_time": round(drain_s / (wire * 8 / (RATE_MBIT * 1e6)), 2),
                    "duplicates_on_server": len(stored) - len(mine),
                    "agent_errors": err.decode(errors="replace").count("WARNING"),
                }
                out["hit_latency_while_draining"] = {
                    "hits": len(made),
                    "arrived": len(lat),
                    "p50_s": round(statistics.median(lat), 3) if lat else None,
                    "p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3) if lat else None,
                    "max_s": round(lat[-1], 3) if lat else None,
                    "target_p95_s": 2.0,
                    "resolution_s": 0.05,
                }
    return out


def bench_ingest(work: Path) -> dict:
    with start_server(work / "ingest") as server:
        device = server.enroll_device(work / "ingest-dev")
        return measure_ingest_rate(server, device, reads=20_000, batch_size=1000)


def bench_crash(cycles: int, work: Path) -> dict:
    with start_server(work / "crash") as server:
        path = enrolled_config(server, work / "crash-car", batch_max_records=50)
        out = crash_loop(server, path, load_config(path).database_path, cycles=cycles)
        out.pop("drain_stderr")
        out["integrity_failures"] = len(out["integrity_failures"])
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backlog", type=int, default=50_000)
    p.add_argument("--crash-cycles", type=int, default=200)
    args = p.parse_args()
    shm = Path("/dev/shm")
    # The device database on tmpfs: filling a 50,000-read backlog read by read with fsync would
    # take minutes of disk time that measure nothing about the link.
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        work = Path(tmp)
        result = {"link": {"rate_mbit": RATE_MBIT, "loss_pct": LOSS_PCT, "delay_ms_each_way": DELAY_S * 1000}}
        result.update(bench_link(args.backlog, work))
        result["server_ingest"] = bench_ingest(work)
        result["crash_loop"] = bench_crash(args.crash_cycles, work)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
