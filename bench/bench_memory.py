"""Memory of the default `granary serve` process tree, idle and after a load, next to BuildGrid's bgd.

Starts `granary serve --listen 127.0.0.1:0` with nothing else (embedded default
configuration: disk CAS and AC, SQLite job queue, one server process per core, the
local worker) in a fresh temporary HOME, waits until the tree's memory settles, and
prints per process and in total, from /proc/PID/smaps_rollup:

  RSS   resident pages, shared ones counted in every process that maps them
  PSS   each shared page divided among the processes that map it (the honest sum)
  USS   pages only this process maps (private clean + private dirty)

Then it runs a load against the server (bench/bench_cache.py's client jobs:
FindMissingBlobs, BatchUpdate/BatchRead, GetActionResult, ByteStream Write/Read
of one --mib blob; plus --execute no-op actions through Execute, which the local
worker runs), waits again, and prints the same after the load. With the BuildGrid
venv (bench/buildgrid_env.sh) present, bgd (cache only, disk CAS) gets the same
cache load.

    python3 bench/bench_memory.py                       # granary from PYTHONPATH, BuildGrid if its venv exists
    python3 bench/bench_memory.py --src /work/main/src --src src   # two source trees, interleaved, same run
    python3 bench/bench_memory.py --repeat 2 --mib 32 --no-buildgrid
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_cache  # bench/ is on sys.path (above)

FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty")


# ---- measuring -------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    return bench_cache.process_tree(pid)


def rollup(pid: int) -> dict[str, int] | None:
    """smaps_rollup fields in KiB, or None if the process is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in FIELDS:
                    out[key] = int(rest.split()[0])
    except OSError:
        return None
    return out


def role(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        comm = ""
    if "worker" in argv:
        return "worker"
    if any("--child-port" in a for a in argv) or comm == "granary-server":  # exec'd (before) or forked
        return "server"
    if "serve" in argv:
        return "serve (supervisor)"
    if any(a.endswith("bgd") for a in argv):
        return "bgd"
    return os.path.basename(argv[0]) if argv else "?"


def snapshot(pid: int) -> list[tuple[int, str, dict[str, int]]]:
    rows = []
    for p in process_tree(pid):
        r = rollup(p)
        if r is not None:
            rows.append((p, role(p), r))
    return rows


def totals(rows) -> dict[str, float]:
    rss = sum(r["Rss"] for _, _, r in rows) / 1024
    pss = sum(r["Pss"] for _, _, r in rows) / 1024
    uss = sum(r["Private_Clean"] + r["Private_Dirty"] for _, _, r in rows) / 1024
    return {"rss": rss, "pss": pss, "uss": uss, "n": len(rows)}


def settle(pid: int, least: float, most: float) -> list:
    """Wait at least `least` seconds, then until the tree's PSS moves less than 0.5 MiB in a second."""
    time.sleep(least)
    deadline = time.monotonic() + most
    before = totals(snapshot(pid))
    while time.monotonic() < deadline:
        time.sleep(1.0)
        rows = snapshot(pid)
        now = totals(rows)
        if abs(now["pss"] - before["pss"]) < 0.5 and now["n"] == before["n"]:
            return rows
        before = now
    return snapshot(pid)


def show(title: str, rows) -> dict[str, float]:
    print(f"  {title}")
    print(f"    {'pid':>7s}  {'process':20s} {'RSS':>8s} {'PSS':>8s} {'USS':>8s}   MiB")
    for p, name, r in rows:
        uss = r["Private_Clean"] + r["Private_Dirty"]
        print(f"    {p:>7d}  {name:20s} {r['Rss'] / 1024:8.1f} {r['Pss'] / 1024:8.1f} {uss / 1024:8.1f}")
    t = totals(rows)
    print(f"    {'':7s}  {'total':20s} {t['rss']:8.1f} {t['pss']:8.1f} {t['uss']:8.1f}")
    return t


# ---- servers ---------------------------------------------------------------------------


def start_granary(home: Path, src: str | None) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, HOME=str(home))
    env.pop("XDG_DATA_HOME", None)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())  # the server runs in `home`
    proc = subprocess.Popen(
        [sys.executable, "-m", "granary", "serve", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True, cwd=str(home),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    m = re.search(r"grpc://([0-9.]+:\d+)", line)
    if not m:
        bench_cache.stop(proc)
        raise RuntimeError(f"granary did not start: {line!r}")
    return proc, m.group(1)


def buildgrid_venv() -> Path | None:
    from buildgrid_server import DEFAULT_VENV

    return DEFAULT_VENV if (DEFAULT_VENV / "bin" / "bgd").exists() else None


# ---- load ------------------------------------------------------------------------------


def cache_load(address: str, args, pool) -> None:
    ns = argparse.Namespace(measure="fmb,batch,ac,bytestream", clients=args.clients, seconds=args.seconds,
                            batch_blobs=args.batch_blobs, mib=args.mib, gar_clients=8, cold_read=False)
    server = bench_cache.Server("load", None, address, Path("."))
    bench_cache.measure_round([server], ns, pool)


def execute_load(address: str, actions: int, pool) -> None:
    import bench_execution

    if actions <= 0:
        return
    recs = pool.apply(bench_execution.client_job, (address, actions, 4, 0))
    bad = [r["error"] for r in recs if r["error"]]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(recs)} actions failed: {bad[0]}")


def run_one(label: str, kind: str, src: str | None, args, pool) -> dict[str, dict[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="granary-mem-"))
    try:
        if kind == "granary":
            proc, address = start_granary(tmp, src)
        else:
            from buildgrid_server import start_buildgrid

            port = bench_cache.free_port()
            proc, address = start_buildgrid(tmp / "bg", port, venv=buildgrid_venv()), f"127.0.0.1:{port}"
        try:
            print(f"\n{label}: {address} (pid {proc.pid})", flush=True)
            idle = show("idle", settle(proc.pid, args.settle, 30))
            cache_load(address, args, pool)
            if kind == "granary":
                execute_load(address, args.execute, pool)
            loaded = show("after the load", settle(proc.pid, 2, 30))
            return {"idle": idle, "loaded": loaded}
        finally:
            bench_cache.stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", action="append", default=[],
                    help="PYTHONPATH for granary (repeatable: each tree is measured, interleaved; default: inherited)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (each runs every tree once)")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch-blobs", type=int, default=4000, help="4 KiB blobs each client uploads/reads")
    ap.add_argument("--mib", type=int, default=128, help="size of the ByteStream blob written and read")
    ap.add_argument("--execute", type=int, default=40, help="no-op actions run through Execute (granary only)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds to wait before measuring idle memory")
    ap.add_argument("--no-buildgrid", action="store_true")
    args = ap.parse_args()

    trees = [(f"granary[{s}]", "granary", s) for s in args.src] or [("granary", "granary", None)]
    if not args.no_buildgrid and buildgrid_venv() is not None:
        trees.append(("buildgrid", "buildgrid", None))
    elif not args.no_buildgrid:
        print("(BuildGrid venv not found: run bench/buildgrid_env.sh to compare with bgd)")
    pool = mp.get_context("spawn").Pool(max(args.clients, 1))
    results: dict[str, list[dict]] = {label: [] for label, _, _ in trees}
    try:
        for _ in range(args.repeat):
            for label, kind, src in trees:
                results[label].append(run_one(label, kind, src, args, pool))
    finally:
        pool.terminate()

    print(f"\nload: bench_cache jobs ({args.clients} clients, {args.seconds:g}s each, {args.batch_blobs} 4 KiB blobs,"
          f" one {args.mib} MiB ByteStream blob), {args.execute} no-op Execute actions (granary)")
    print(f"{'':44s} {'idle RSS':>9s} {'idle PSS':>9s} {'load RSS':>9s} {'load PSS':>9s}  MiB, sum over the tree")
    for label, runs in results.items():
        for k, r in enumerate(runs):
            print(f"{label[:40]:40s} #{k + 1} {r['idle']['rss']:9.1f} {r['idle']['pss']:9.1f}"
                  f" {r['loaded']['rss']:9.1f} {r['loaded']['pss']:9.1f}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
