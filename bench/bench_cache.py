"""Remote-cache benchmark: Granary and BuildGrid side by side, same client, same machine.

Starts every server with disk storage on a free loopback port, then runs each
measurement against each server in turn (interleaved, so the machine's noise
hits all of them alike; --rounds N repeats that and reports medians). Clients
are separate processes on their own gRPC channels, with requests serialised
before the clock starts. One table:

  FindMissingBlobs digests/s   (1000-digest requests, half present)
  BatchUpdateBlobs 4 KiB blobs/s, BatchReadBlobs 4 KiB blobs/s
  GetActionResult requests/s: one sequential client (and its p50 latency),
      --clients clients, and 8 clients (--gar-clients)
  ByteStream Write MB/s of a 128 MiB blob (one stream), also as a share of
      this machine's single-core sha256 speed (the physical limit), measured
      right before each Write
  ByteStream Read MB/s of a 128 MiB blob just written (read after write), and
      with --cold-read of one whose files were dropped from the page cache
  server memory (sum over the server's processes)

The rows issue 9 sets targets for carry them in the last column.

    python3 bench/bench_cache.py                 # both servers
    python3 bench/bench_cache.py --only granary  # skip BuildGrid
    python3 bench/bench_cache.py --clients 2 --seconds 4 --rounds 3
    python3 bench/bench_cache.py --granary before=/tmp/old/src --granary after=src
                                                 # two Granary trees, same run

BuildGrid (PyPI, Python 3.13) is installed into a venv by bench/buildgrid_env.sh
on first use.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
MiB = 1 << 20
CAS = "/build.bazel.remote.execution.v2.ContentAddressableStorage/"
AC = "/build.bazel.remote.execution.v2.ActionCache/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- servers -------------------------------------------------------------------


def start_granary(data: Path, processes: int | None, src: str = "") -> tuple[subprocess.Popen, str]:
    """`src`: a source tree to run (its `src` directory) instead of the installed package."""
    cmd = [sys.executable, "-m", "granary", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)]
    if processes:
        cmd += ["--processes", str(processes)]
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    m = re.search(r"grpc://([0-9.]+:\d+)", line)
    if not m:
        raise RuntimeError(f"granary did not start: {line!r}")
    return proc, m.group(1)


def start_buildgrid(data: Path) -> tuple[subprocess.Popen, str]:
    from buildgrid_server import start_buildgrid as start

    port = free_port()
    return start(data, port), f"127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def process_tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for child in f.read().split():
                    out += process_tree(int(child))
    except OSError:
        pass
    return out


def memory_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) summed over the server's process tree, in MiB."""
    rss = peak = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        peak += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, peak / 1024


# ---- client side (runs in spawned client processes) ------------------------------


def _protos():
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2

    return re_pb2, bs_pb2


def _channel(address: str):
    import grpc

    return grpc.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 64 * MiB), ("grpc.max_send_message_length", 64 * MiB)]
    )


def _digest(re_pb2, data: bytes):
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def _blobs(seed: bytes, n: int, size: int = 4096) -> list[bytes]:
    return [((seed + i.to_bytes(8, "little")) * (size // 8 + 1))[:size] for i in range(n)]


def _update_requests(re_pb2, blobs: list[bytes], per_request: int) -> list[bytes]:
    out = []
    for i in range(0, len(blobs), per_request):
        req = re_pb2.BatchUpdateBlobsRequest(
            requests=[
                re_pb2.BatchUpdateBlobsRequest.Request(digest=_digest(re_pb2, b), data=b)
                for b in blobs[i : i + per_request]
            ]
        )
        out.append(req.SerializeToString())
    return out


def client_job(job: str, address: str, params: dict, start_at: float, seconds: float) -> dict:
    re_pb2, bs_pb2 = _protos()
    ch = _channel(address)
    seed = uuid.uuid4().bytes + os.urandom(8)
    result: dict = {}
    if job == "fmb":
        present = _blobs(seed, 500)
        for r in _update_requests(re_pb2, present, 250):
            ch.unary_unary(CAS + "BatchUpdateBlobs")(r)
        absent = [re_pb2.Digest(hash=hashlib.sha256(seed + b"m%d" % i).hexdigest(), size_bytes=4096) for i in range(500)]
        req = re_pb2.FindMissingBlobsRequest(blob_digests=[_digest(re_pb2, b) for b in present] + absent)
        raw = req.SerializeToString()
        call = ch.unary_unary(CAS + "FindMissingBlobs")
        check = re_pb2.FindMissingBlobsResponse.FromString(call(raw))
        assert len(check.missing_blob_digests) == 500, len(check.missing_blob_digests)
        _wait(start_at)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            call(raw)
            n += 1
        result = {"count": n * 1000, "time": time.perf_counter() - t0}
    elif job in ("bub", "bread"):
        per = params["per_request"]
        blobs = _blobs(seed, params["blobs"])
        reqs = _update_requests(re_pb2, blobs, per)
        call = ch.unary_unary(CAS + "BatchUpdateBlobs")
        if job == "bread":
            for r in reqs:
                call(r)
            reads = []
            for i in range(0, len(blobs), per):
                reads.append(
                    re_pb2.BatchReadBlobsRequest(digests=[_digest(re_pb2, b) for b in blobs[i : i + per]]).SerializeToString()
                )
            reqs = reads
            call = ch.unary_unary(CAS + "BatchReadBlobs")
            resp = re_pb2.BatchReadBlobsResponse.FromString(call(reqs[0]))
            assert all(r.status.code == 0 and len(r.data) == 4096 for r in resp.responses)
        _wait(start_at)
        t0 = time.perf_counter()
        n = 0
        for r in reqs:
            call(r)
            n += per
            if time.perf_counter() - t0 > seconds * 3:
                break
        result = {"count": n, "time": time.perf_counter() - t0}
        if job == "bub":  # every blob really stored
            fmb = re_pb2.FindMissingBlobsRequest(blob_digests=[_digest(re_pb2, b) for b in blobs[:n][:1000]])
            missing = re_pb2.FindMissingBlobsResponse.FromString(
                ch.unary_unary(CAS + "FindMissingBlobs")(fmb.SerializeToString())
            ).missing_blob_digests
            assert not missing, f"{len(missing)} uploaded blobs reported missing"
    elif job == "gar":
        out = seed * 100
        od = _digest(re_pb2, out)
        ch.unary_unary(CAS + "BatchUpdateBlobs")(
            re_pb2.BatchUpdateBlobsRequest(
                requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=od, data=out)]
            ).SerializeToString()
        )
        action = _digest(re_pb2, seed + b"action")
        ar = re_pb2.ActionResult(exit_code=0, output_files=[re_pb2.OutputFile(path="out", digest=od)])
        ch.unary_unary(AC + "UpdateActionResult")(
            re_pb2.UpdateActionResultRequest(action_digest=action, action_result=ar).SerializeToString()
        )
        raw = re_pb2.GetActionResultRequest(action_digest=action).SerializeToString()
        call = ch.unary_unary(AC + "GetActionResult")
        got = re_pb2.ActionResult.FromString(call(raw))
        assert got.output_files[0].digest == od
        _wait(start_at)
        lat = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            call(raw)
            lat.append(time.perf_counter() - t)
        result = {"count": len(lat), "time": time.perf_counter() - t0, "p50": statistics.median(lat)}
    elif job in ("bsw", "bsr"):
        size = params["mib"] * MiB
        big = seed + os.urandom(MiB) * params["mib"]
        big = big[:size]
        d = _digest(re_pb2, big)
        name = f"uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"
        chunks = [
            bs_pb2.WriteRequest(
                resource_name=name if off == 0 else "",
                write_offset=off,
                data=big[off : off + MiB],
                finish_write=off + MiB >= size,
            ).SerializeToString()
            for off in range(0, size, MiB)
        ]
        write = ch.stream_unary("/google.bytestream.ByteStream/Write")
        if job == "bsr":
            write(iter(chunks))
            if params.get("evict"):
                drop_page_cache(Path(params["evict"]))
        del big
        _wait(start_at)
        t0 = time.perf_counter()
        if job == "bsw":
            resp = bs_pb2.WriteResponse.FromString(write(iter(chunks)))
            assert resp.committed_size == size, resp
            total = size
        else:
            read = ch.unary_stream("/google.bytestream.ByteStream/Read")
            req = bs_pb2.ReadRequest(resource_name=f"blobs/{d.hash}/{d.size_bytes}").SerializeToString()
            total = 0
            for raw in read(req):
                total += len(raw)
            assert total >= size  # framing bytes included; checked below
        result = {"count": size, "time": time.perf_counter() - t0}
    ch.close()
    return result


def drop_page_cache(root: Path) -> None:
    """Write back and drop the cached pages of every file under `root` (what a cold read sees)."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


def _wait(start_at: float) -> None:
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


def run_job(pool, job: str, address: str, clients: int, seconds: float, params: dict | None = None) -> list[dict]:
    start_at = time.time() + 3.0 + (4.0 if job in ("bub", "bread") else 0)
    args = [(job, address, params or {}, start_at, seconds) for _ in range(clients)]
    return pool.starmap(client_job, args)


def throughput(results: list[dict]) -> float:
    # clients start together; the slowest one bounds the wall time
    return sum(r["count"] for r in results) / max(r["time"] for r in results)


class Server:
    def __init__(self, name: str, proc: subprocess.Popen, address: str, data: Path):
        self.name = name
        self.proc = proc
        self.address = address
        self.data = data
        self.samples: dict[str, list[float]] = {}

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def value(self, key: str) -> float:
        got = self.samples.get(key)
        return statistics.median(got) if got else float("nan")


def measure_round(servers: list[Server], args, pool) -> None:
    """Each measurement against every server in turn."""
    want = set(args.measure.split(","))
    params = {"blobs": args.batch_blobs, "per_request": 256}
    steps: list[tuple[str, object]] = []
    if "fmb" in want:
        steps.append(("fmb", lambda s: {"fmb": throughput(run_job(pool, "fmb", s.address, args.clients, args.seconds))}))
    if "batch" in want:
        steps.append(("bub", lambda s: {"bub": throughput(run_job(pool, "bub", s.address, args.clients, args.seconds, params))}))
        steps.append(("bread", lambda s: {"bread": throughput(run_job(pool, "bread", s.address, args.clients, args.seconds, params))}))
    if "ac" in want:
        def gar_one(s):
            r = run_job(pool, "gar", s.address, 1, args.seconds)[0]
            return {"gar": r["count"] / r["time"], "gar_p50_ms": r["p50"] * 1000}

        steps.append(("gar", gar_one))
        steps.append(("gar_conc", lambda s: {"gar_conc": throughput(run_job(pool, "gar", s.address, args.clients, args.seconds))}))
        if args.gar_clients:
            steps.append(("gar_many", lambda s: {"gar_many": throughput(run_job(pool, "gar", s.address, args.gar_clients, args.seconds))}))
    if "bytestream" in want:
        def bsw(s):
            # the limit measured right before, in the same conditions (this machine's load varies)
            here = sha256_mb_s()
            mb = throughput(run_job(pool, "bsw", s.address, 1, args.seconds, {"mib": args.mib})) / 1e6
            return {"sha": here, "bsw": mb, "bsw_pct": mb / here * 100}

        steps.append(("bsw", bsw))
        steps.append(("bsr", lambda s: {"bsr": throughput(run_job(pool, "bsr", s.address, 1, args.seconds, {"mib": args.mib})) / 1e6}))
        if args.cold_read:
            steps.append(("bsr_cold", lambda s: {"bsr_cold": throughput(run_job(
                pool, "bsr", s.address, 1, args.seconds, {"mib": args.mib, "evict": str(s.data)})) / 1e6}))
    for _, step in steps:
        for s in servers:
            for key, value in step(s).items():
                s.add(key, value)


def sha256_mb_s() -> float:
    """This machine's single-core SHA-256 speed now (best of a few short runs)."""
    buf = os.urandom(MiB)
    best = 0.0
    for _ in range(5):
        h = hashlib.sha256()
        t0 = time.perf_counter()
        for _ in range(64):
            h.update(buf)
        best = max(best, 64 * MiB / (time.perf_counter() - t0) / 1e6)
    return best


# key, label, format, issue 9 target: ("ratio", x) granary/buildgrid >= x; ("abs", x) value >= x
ROWS: list[tuple[str, str, str, tuple[str, float] | None]] = [
    ("fmb", "FindMissingBlobs digests/s (1000/request, half present)", "{:,.0f}", None),
    ("bub", "BatchUpdateBlobs 4 KiB blobs/s", "{:,.0f}", ("ratio", 4.0)),
    ("bread", "BatchReadBlobs 4 KiB blobs/s", "{:,.0f}", None),
    ("gar", "GetActionResult requests/s (1 sequential client)", "{:,.0f}", None),
    ("gar_p50_ms", "GetActionResult p50 latency ms", "{:.3f}", None),
    ("gar_conc", "GetActionResult requests/s ({clients} clients)", "{:,.0f}", None),
    ("gar_many", "GetActionResult requests/s ({gar_clients} clients)", "{:,.0f}", ("ratio", 4.0)),
    ("bsw", "ByteStream Write MB/s (one {mib} MiB blob)", "{:,.0f}", None),
    ("sha", "  single-core sha256 MB/s, measured right before", "{:,.0f}", None),
    ("bsw_pct", "  Write as % of that sha256 speed", "{:.0f}%", ("abs", 60.0)),
    ("bsr", "ByteStream Read MB/s ({mib} MiB, read after write)", "{:,.0f}", ("ratio", 1.5)),
    ("bsr_cold", "ByteStream Read MB/s ({mib} MiB, page cache dropped)", "{:,.0f}", None),
    ("rss", "server RSS after the run, MiB", "{:,.0f}", None),
    ("peak", "server peak RSS, MiB (sum over processes)", "{:,.0f}", None),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["granary", "buildgrid"])
    ap.add_argument("--clients", type=int, default=2, help="client processes, each with its own channel")
    ap.add_argument("--gar-clients", type=int, default=8, help="client processes of the concurrent"
                    " GetActionResult row issue 9 sets a target for (0: skip)")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=1, help="repeat every measurement; medians are shown")
    ap.add_argument("--batch-blobs", type=int, default=12_800, help="4 KiB blobs each client uploads/reads")
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--cold-read", action="store_true", help="also read a blob whose files were dropped"
                    " from the page cache (fsync + POSIX_FADV_DONTNEED on the server's data files)")
    ap.add_argument("--measure", default="fmb,batch,ac,bytestream", help="comma-separated subset")
    ap.add_argument("--processes", type=int, default=None, help="Granary server processes (default: one per core)")
    ap.add_argument("--granary", action="append", default=[], metavar="LABEL=SRC",
                    help="run the Granary of source tree SRC (its src/ directory) as column LABEL;"
                    " repeat to compare trees in one run (default: the installed/PYTHONPATH one)")
    args = ap.parse_args()

    print(f"machine: {os.cpu_count()} cores; single-core sha256 now: {sha256_mb_s():,.0f} MB/s"
          " (the ByteStream Write limit; measured again next to each Write)")
    granaries = [tuple(g.split("=", 1)) if "=" in g else (g, g) for g in args.granary] or [("granary", "")]
    wanted: list[tuple[str, str]] = []
    if args.only != "granary":
        wanted.append(("buildgrid", ""))
    if args.only != "buildgrid":
        wanted += granaries
    pool = mp.get_context("spawn").Pool(max(args.clients, args.gar_clients, 1))
    servers: list[Server] = []
    tmp = Path(tempfile.mkdtemp(prefix="granary-bench-"))
    try:
        for name, src in wanted:
            data = tmp / f"{len(servers)}-{name}"
            if name == "buildgrid" and not src:
                proc, address = start_buildgrid(data)
            else:
                proc, address = start_granary(data, args.processes, src)
            servers.append(Server(name, proc, address, data))
            print(f"{name}: {address} (pid {proc.pid}){' from ' + src if src else ''}", flush=True)
        for r in range(args.rounds):
            if args.rounds > 1:
                print(f"round {r + 1}/{args.rounds} ...", flush=True)
            measure_round(servers, args, pool)
        for s in servers:
            s.samples["rss"], s.samples["peak"] = [[v] for v in memory_mib(s.proc.pid)]
    finally:
        for s in servers:
            stop(s.proc)
        pool.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(servers, args)


def print_table(servers: list[Server], args) -> None:
    base = next((s for s in servers if s.name == "buildgrid"), None)
    others = [s for s in servers if s is not base] if base else []
    print()
    header = f"{'':58s}" + "".join(f"{s.name:>12s}" for s in servers)
    header += "".join(f"{'ratio ' + s.name[:8]:>16s}" for s in others)
    header += f"{'target':>10s}"
    print(header)
    fill = {"clients": args.clients, "gar_clients": args.gar_clients, "mib": args.mib}
    for key, label, fmt, target in ROWS:
        values = [s.value(key) for s in servers]
        if all(math.isnan(v) for v in values):  # not measured
            continue
        line = f"{label.format(**fill):58s}" + "".join(f"{fmt.format(v):>12s}" for v in values)
        for s in others:
            if key in ("bsw_pct", "sha") or not base.value(key):
                line += f"{'':>16s}"
                continue
            ratio = s.value(key) / base.value(key)
            if key == "gar_p50_ms":
                ratio = 1 / ratio if ratio else 0
            line += f"{ratio:>15.2f}x"
        if target:
            line += f"{'>= ' + (f'{target[1]:g}x' if target[0] == 'ratio' else f'{target[1]:g}%'):>10s}"
        print(line)
    print(f"(clients: {args.clients} processes; {args.seconds:g}s per measurement; medians of {args.rounds}"
          " round(s), servers measured in turn; ratio = granary / buildgrid, latency ratio inverted)")


if __name__ == "__main__":
    main()
