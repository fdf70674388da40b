"""Hotlist benchmark: import, delta and look-up at national scale; prints one JSON object.

    .venv/bin/python bench/hotlist.py [--entries 2000000] [--reads 20000] [--dir DIR]

Targets (issue 3), 2,000,000 entries: exact+approximate look-up p99 <= 1 ms; full import
<= 60 s; 10,000-change delta <= 1 s; reader memory growth <= 150 MB. Also reported: database
size, look-up latency while deltas are applied (from a second process), how long the reader
takes to see a change, and a same-run baseline (one exact SQLite index probe per read) with the
ratio of our look-up to it, since these machines are noisy.

The synthetic list: US-style plates by state (each state's common serial formats, weighted
roughly by registrations), spread over the NCIC lists with stolen vehicles and plates most
common and AMBER alerts rare, a few percent duplicate keys and plates repeated across states.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.hotlist import Hotlist
from edge.hotlist_formats import (
    NCIC_CODES,
    DeltaChange,
    HotlistRecord,
    ListKind,
    delta_line,
    ncic_line,
)

# state: (weight, formats); L = letter (no I, O, Q as most states issue), D = digit
STATE_FORMATS: dict[str, tuple[float, tuple[str, ...]]] = {
    "CA": (12.0, ("DLLLDDD",)),
    "TX": (9.0, ("LLLDDDD",)),
    "FL": (7.0, ("LLLDLL", "DLLLDD")),
    "NY": (6.0, ("LLLDDDD",)),
    "PA": (4.0, ("LLLDDDD",)),
    "IL": (4.0, ("LLDDDDD", "DDDDDDD")),
    "OH": (4.0, ("LLLDDDD",)),
    "GA": (3.5, ("LLLDDDD",)),
    "NC": (3.5, ("LLLDDDD",)),
    "MI": (3.5, ("LLLDDDD", "DLLDDD")),
    "NJ": (3.0, ("LDDLLL",)),
    "VA": (3.0, ("LLLDDDD",)),
    "WA": (3.0, ("LLLDDDD",)),
    "AZ": (2.5, ("LLLDDDD",)),
    "MA": (2.5, ("DLLLDD", "DLLDDD")),
    "TN": (2.5, ("LLLDDD", "DLLDDD")),
    "IN": (2.5, ("DDDLLL",)),
    "MO": (2.0, ("LLDLDL",)),
    "MD": (2.0, ("DLLDDDD",)),
    "WI": (2.0, ("LLLDDDD",)),
    "CO": (2.0, ("LLLDDD", "LLLLDD")),
    "MN": (2.0, ("LLLDDD",)),
    "SC": (1.5, ("LLLDDD",)),
    "AL": (1.5, ("DDLLDDD",)),
    "LA": (1.5, ("DDDLLL",)),
    "KY": (1.5, ("DDDLLL",)),
    "OR": (1.5, ("DDDLLL",)),
    "OK": (1.0, ("LLLDDD",)),
    "CT": (1.0, ("LLDDDDD",)),
    "UT": (1.0, ("LDDDLL",)),
    "NV": (1.0, ("DLLDDD",)),
    "IA": (1.0, ("LLLDDD",)),
}
LIST_WEIGHTS: dict[str, float] = {
    "V": 40,
    "P": 22,
    "W": 10,
    "F": 8,
    "M": 4,
    "C": 4,
    "X": 3,
    "H": 3,
    "K": 2,
    "L": 2,
    "R": 1,
    "T": 0.9,
    "A": 0.1,
}
LETTERS = np.frombuffer(b"ABCDEFGHJKLMNPRSTUVWXYZ", dtype=np.uint8)
DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)
MAKES = ("TOYT", "HOND", "FORD", "CHEV", "NISS", "DODG", "BMW", "HYUN", "JEEP", "KIA")
MODELS = ("CAM", "ACC", "F15", "SIL", "ALT", "RAM", "3SE", "ELA", "WRA", "SOR")
COLORS = ("BLK", "WHI", "SIL", "GRY", "BLU", "RED", "GRN", "BRZ/TAN")


def synthetic_plates(n: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """n US-style plates and their states (vectorised: a few seconds for millions)."""
    states = list(STATE_FORMATS)
    weights = np.array([STATE_FORMATS[s][0] for s in states])
    pick = rng.choice(len(states), size=n, p=weights / weights.sum())
    plates = np.empty(n, dtype=object)
    out_states = np.array(states, dtype=object)[pick]
    for si, state in enumerate(states):
        rows = np.flatnonzero(pick == si)
        formats = STATE_FORMATS[state][1]
        fmt_pick = rng.integers(0, len(formats), size=len(rows))
        for fi, fmt in enumerate(formats):
            sub = rows[fmt_pick == fi]
            chars = np.empty((len(sub), len(fmt)), dtype=np.uint8)
            for col, kind in enumerate(fmt):
                pool = LETTERS if kind == "L" else DIGITS
                chars[:, col] = pool[rng.integers(0, len(pool), size=len(sub))]
            text = chars.view(f"S{len(fmt)}").ravel()
            plates[sub] = [t.decode() for t in text]
    return plates.tolist(), out_states.tolist()


def synthetic_records(n: int, seed: int = 1) -> list[HotlistRecord]:
    """n realistic entries: ~2% duplicate keys (merged on import), ~1% plates in two states."""
    rng = np.random.default_rng(seed)
    plates, states = synthetic_plates(n, rng)
    codes = list(LIST_WEIGHTS)
    w = np.array([LIST_WEIGHTS[c] for c in codes])
    lists = np.array(codes, dtype=object)[rng.choice(len(codes), size=n, p=w / w.sum())]
    dup = rng.random(n) < 0.02
    for i in np.flatnonzero(dup)[1:]:
        plates[i], states[i], lists[i] = plates[i - 1], states[i - 1], lists[i - 1]
    other_state = np.flatnonzero(rng.random(n) < 0.01)
    for i in other_state[1:]:
        plates[i] = plates[i - 1]
    years = rng.integers(1995, 2026, size=n)
    days = rng.integers(0, 3 * 365, size=n)
    base = np.datetime64("2023-01-01")
    out = []
    for i in range(n):
        out.append(
            HotlistRecord(
                plate=plates[i],
                state=states[i],
                list_kind=NCIC_CODES[lists[i]],
                source_record_id=f"{lists[i]}{i:08d}",
                agency=f"{states[i]}0{i % 10000:04d}00",
                entered_on=str(base + int(days[i])),
                vehicle_year=int(years[i]),
                make=MAKES[i % len(MAKES)],
                model=MODELS[(i // 7) % len(MODELS)],
                color=COLORS[(i // 3) % len(COLORS)],
            )
        )
    return out


def write_ncic(path: Path, records: list[HotlistRecord]) -> None:
    with path.open("w", encoding="ascii") as f:
        f.write("NCIC LPR EXTRACT  BENCH\n")
        f.writelines(ncic_line(r) + "\n" for r in records)


_CONFUSE = str.maketrans("0O1I2Z5S8B6G", "O0I1Z2S5B8G6")


def sample_reads(records: list[HotlistRecord], n: int, seed: int = 2) -> list[tuple[str, str]]:
    """Reads: 10% listed, 10% listed with one confusion, 5% one char missing, 5% one extra,
    70% plates not on the list (most reads on a patrol)."""
    rng = np.random.default_rng(seed)
    unlisted, unlisted_states = synthetic_plates(n, rng)
    reads: list[tuple[str, str]] = []
    for i in range(n):
        r = rng.random()
        rec = records[int(rng.integers(0, len(records)))]
        p = rec.plate
        if r < 0.10:
            reads.append((p, rec.state))
        elif r < 0.20:
            j = int(rng.integers(0, len(p)))
            reads.append((p[:j] + p[j].translate(_CONFUSE) + p[j + 1 :], rec.state))
        elif r < 0.25:
            j = int(rng.integers(0, len(p)))
            reads.append((p[:j] + p[j + 1 :], rec.state))
        elif r < 0.30:
            j = int(rng.integers(0, len(p) + 1))
            reads.append((p[:j] + "X" + p[j:], rec.state))
        else:
            reads.append((unlisted[i], unlisted_states[i]))
    return reads


def make_delta(records: list[HotlistRecord], n: int, version: int, seed: int) -> list[str]:
    """n changes: half new entries, half removals of listed ones, as delta lines."""
    rng = np.random.default_rng(seed)
    plates, states = synthetic_plates(n // 2, rng)
    lines = [
        json.dumps(
            {"version": version, "lists": [k.value for k in ListKind if k is not ListKind.OFFICER_BOLO]}
        )
    ]
    for p, s in zip(plates, states, strict=True):
        rec = HotlistRecord(plate=p, state=s, list_kind=ListKind.STOLEN_VEHICLE, description="bench delta")
        lines.append(delta_line(DeltaChange("add", rec.key, rec)))
    for i in rng.choice(len(records), size=n - n // 2, replace=False):
        rec = records[int(i)]
        lines.append(delta_line(DeltaChange("remove", rec.key, None)))
    return lines


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


# ---------------------------------------------------------------- reader process


def reader_main(db: str, reads_file: str, sentinel: str) -> None:
    """Runs in a separate process, like the daemon: memory, look-up latency, change latency."""
    import sqlite3

    reads = [tuple(x) for x in json.loads(Path(reads_file).read_text())]
    rss0 = _rss_kb()
    t0 = time.perf_counter()
    hotlist = Hotlist(db)
    hotlist.load()
    load_s = time.perf_counter() - t0
    for plate, state in reads[:2000]:  # warm-up
        hotlist.match(plate, state)
    lat = []
    hits = 0
    for plate, state in reads:
        t = time.perf_counter()
        hits += bool(hotlist.match(plate, state))
        lat.append((time.perf_counter() - t) * 1e3)
    rss1 = _rss_kb()
    # baseline: one exact probe of SQLite's own unique index per read, same reads
    base = sqlite3.connect(db)
    blat = []
    for plate, _ in reads:
        t = time.perf_counter()
        base.execute("SELECT id FROM hotlist_entries WHERE plate = ?", (plate,)).fetchall()
        blat.append((time.perf_counter() - t) * 1e3)
    base.close()
    print(json.dumps({"phase": "ready"}), flush=True)
    # concurrent phase: keep looking up until the sentinel plate (added by the last delta) hits
    during: list[tuple[float, float]] = []
    seen_at = None
    i = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        plate, state = reads[i % len(reads)]
        i += 1
        t = time.perf_counter()
        hotlist.match(plate, state)
        during.append((time.time(), (time.perf_counter() - t) * 1e3))
        if i % 50 == 0 and any(h.entry.plate == sentinel for h in hotlist.match(sentinel, None)):
            seen_at = time.time()
            break
    hotlist.close()
    print(
        json.dumps(
            {
                "phase": "done",
                "load_s": load_s,
                "rss_growth_mb": (rss1 - rss0) / 1024,
                "index_mb": hotlist.index_bytes / 2**20,
                "lat": lat,
                "hits": hits,
                "baseline_lat": blat,
                "during": during,
                "sentinel_seen_at": seen_at,
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------- driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=2_000_000)
    ap.add_argument("--reads", type=int, default=20_000)
    ap.add_argument("--dir", default=None, help="Work folder (default: a temporary one).")
    ap.add_argument("--reader", nargs=3, metavar=("DB", "READS", "SENTINEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reader:
        reader_main(*args.reader)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(json.dumps(run(Path(tmp), args.entries, args.reads)))


def run(work: Path, entries: int, n_reads: int) -> dict:
    out: dict = {"entries": entries, "reads": n_reads, "cpus": os.cpu_count()}
    t = time.perf_counter()
    records = synthetic_records(entries)
    ncic = work / "extract.ncic"
    write_ncic(ncic, records)
    out["generate_s"] = round(time.perf_counter() - t, 2)
    out["file_mb"] = round(ncic.stat().st_size / 2**20, 1)
    db = work / "alpr.db"

    with Hotlist(db) as hotlist:
        t = time.perf_counter()
        result = hotlist.import_file(ncic, "ncic")
        out["import_s"] = round(time.perf_counter() - t, 2)
        out["import_write_lock_s"] = round(result.write_lock_s, 2)
        out["import_added"] = result.added
        out["import_duplicates_merged"] = result.duplicates_merged
        t = time.perf_counter()
        hotlist.import_file(ncic, "ncic")
        out["reimport_same_file_s"] = round(time.perf_counter() - t, 2)
    out["db_mb"] = round(sum(p.stat().st_size for p in work.glob("alpr.db*")) / 2**20, 1)

    reads = sample_reads(records, n_reads)
    reads_file = work / "reads.json"
    reads_file.write_text(json.dumps(reads))
    delta_files = []
    for k in range(3):
        lines = make_delta(records, 10_000, version=100 + k, seed=10 + k)
        if k == 2:
            sentinel = "Q0Q0Q0Q"  # unlikely in the generated formats (no Q issued)
            lines.append(json.dumps({"op": "add", "plate": sentinel, "state": "CA", "list": "amber_alert"}))
        path = work / f"delta{k}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        delta_files.append(path)

    proc = subprocess.Popen(
        [sys.executable, __file__, "--reader", str(db), str(reads_file), sentinel],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())  # ready
    windows: list[tuple[float, float]] = []
    commits: list[float] = []
    with Hotlist(db) as writer:
        for path in delta_files:
            time.sleep(0.3)
            t0 = time.time()
            res = writer.import_file(path, "delta")
            t1 = time.time()
            windows.append((t0, t1))
            commits.append(t0 + res.seconds)
            # commit: parse + apply + commit, i.e. until readers can see it; total adds the
            # PASSIVE WAL checkpoint that follows (readers are never blocked by it)
            out.setdefault("delta_10k_commit_s", []).append(round(res.seconds, 3))
            out.setdefault("delta_10k_total_s", []).append(round(t1 - t0, 3))
    reader = json.loads(proc.stdout.readline())
    proc.wait()
    lat = reader["lat"]
    out["reader_load_s"] = round(reader["load_s"], 2)
    out["reader_rss_growth_mb"] = round(reader["rss_growth_mb"], 1)
    out["reader_index_mb"] = round(reader["index_mb"], 1)
    out["lookup_ms"] = {
        "p50": round(_pct(lat, 50), 4),
        "p99": round(_pct(lat, 99), 4),
        "max": round(max(lat), 3),
    }
    out["reads_with_hits"] = reader["hits"]
    blat = reader["baseline_lat"]
    out["baseline_exact_sqlite_probe_ms"] = {"p50": round(_pct(blat, 50), 4), "p99": round(_pct(blat, 99), 4)}
    out["lookup_p99_vs_baseline_p99"] = round(_pct(lat, 99) / _pct(blat, 99), 2)
    inside = [ms for at, ms in reader["during"] if any(a <= at <= b for a, b in windows)]
    outside = [ms for at, ms in reader["during"] if not any(a <= at <= b for a, b in windows)]
    out["lookup_during_delta_ms"] = {
        "n": len(inside),
        "p50": round(_pct(inside, 50), 4),
        "p99": round(_pct(inside, 99), 4),
        "max": round(max(inside), 3) if inside else None,
    }
    out["lookup_between_deltas_ms"] = {"n": len(outside), "p99": round(_pct(outside, 99), 4)}
    seen = reader["sentinel_seen_at"]
    out["change_visible_after_commit_s"] = round(max(0.0, seen - commits[-1]), 3) if seen else None
    out["targets_met"] = {
        "lookup_p99_le_1ms": out["lookup_ms"]["p99"] <= 1.0,
        "import_le_60s": out["import_s"] <= 60,
        "delta_10k_le_1s": max(out["delta_10k_commit_s"]) <= 1.0,
        "memory_growth_le_150mb": out["reader_rss_growth_mb"] <= 150,
        "change_seen_within_1s": seen is not None and out["change_visible_after_commit_s"] <= 1.0,
    }
    return out


if __name__ == "__main__":
    main()
