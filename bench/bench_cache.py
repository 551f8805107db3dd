"""Remote-cache benchmark: Granary and BuildGrid side by side, same client, same machine.

Starts each server with disk storage on a free loopback port, drives it with
the same load (client processes on their own gRPC channels, requests
serialised before the clock starts), and prints one table:

  FindMissingBlobs digests/s   (1000-digest requests, half present)
  BatchUpdateBlobs 4 KiB blobs/s, BatchReadBlobs 4 KiB blobs/s
  GetActionResult requests/s and p50 latency (one sequential client)
  ByteStream Write / Read MB/s of a 128 MiB blob (one stream)
  peak server memory (sum of the server's processes)
and, as the physical limit, this machine's single-core sha256 speed.

    python3 bench/bench_cache.py                 # both servers
    python3 bench/bench_cache.py --only granary  # skip BuildGrid
    python3 bench/bench_cache.py --clients 2 --seconds 4

BuildGrid (PyPI, Python 3.13) is installed into a venv by bench/buildgrid_env.sh
on first use.
"""

from __future__ import annotations

import argparse
import hashlib
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


def start_granary(data: Path, processes: int | None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "granary", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)]
    if processes:
        cmd += ["--processes", str(processes)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
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


def measure(address: str, pid: int, args, pool) -> dict[str, float]:
    out: dict[str, float] = {key: float("nan") for key, _, _ in ROWS}
    want = set(args.measure.split(","))
    if "fmb" in want:
        out["fmb"] = throughput(run_job(pool, "fmb", address, args.clients, args.seconds))
    params = {"blobs": args.batch_blobs, "per_request": 256}
    if "batch" in want:
        out["bub"] = throughput(run_job(pool, "bub", address, args.clients, args.seconds, params))
        out["bread"] = throughput(run_job(pool, "bread", address, args.clients, args.seconds, params))
    if "ac" in want:
        gar = run_job(pool, "gar", address, 1, args.seconds)[0]
        out["gar"] = gar["count"] / gar["time"]
        out["gar_p50_ms"] = gar["p50"] * 1000
        out["gar_conc"] = throughput(run_job(pool, "gar", address, args.clients, args.seconds))
    if "bytestream" in want:
        out["bsw"] = throughput(run_job(pool, "bsw", address, 1, args.seconds, {"mib": args.mib})) / 1e6
        out["bsr"] = throughput(run_job(pool, "bsr", address, 1, args.seconds, {"mib": args.mib})) / 1e6
    out["rss"], out["peak"] = memory_mib(pid)
    return out


def sha256_mb_s() -> float:
    buf = os.urandom(MiB)
    best = 0.0
    for _ in range(3):
        h = hashlib.sha256()
        t0 = time.perf_counter()
        for _ in range(256):
            h.update(buf)
        best = max(best, 256 * MiB / (time.perf_counter() - t0) / 1e6)
    return best


ROWS = [
    ("fmb", "FindMissingBlobs digests/s (1000/request, half present)", "{:,.0f}"),
    ("bub", "BatchUpdateBlobs 4 KiB blobs/s", "{:,.0f}"),
    ("bread", "BatchReadBlobs 4 KiB blobs/s", "{:,.0f}"),
    ("gar", "GetActionResult requests/s (1 sequential client)", "{:,.0f}"),
    ("gar_p50_ms", "GetActionResult p50 latency ms", "{:.3f}"),
    ("gar_conc", "GetActionResult requests/s (all clients)", "{:,.0f}"),
    ("bsw", "ByteStream Write MB/s (one 128 MiB blob)", "{:,.0f}"),
    ("bsr", "ByteStream Read MB/s (one 128 MiB blob)", "{:,.0f}"),
    ("rss", "server RSS after the run, MiB", "{:,.0f}"),
    ("peak", "server peak RSS, MiB (sum over processes)", "{:,.0f}"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["granary", "buildgrid"])
    ap.add_argument("--clients", type=int, default=2, help="client processes, each with its own channel")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--batch-blobs", type=int, default=12_800, help="4 KiB blobs each client uploads/reads")
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--measure", default="fmb,batch,ac,bytestream", help="comma-separated subset")
    ap.add_argument("--processes", type=int, default=None, help="Granary server processes (default: one per core)")
    args = ap.parse_args()

    sha = sha256_mb_s()
    print(f"machine: {os.cpu_count()} cores; single-core sha256: {sha:,.0f} MB/s (the ByteStream limit)")
    pool = mp.get_context("spawn").Pool(args.clients)
    results: dict[str, dict[str, float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="granary-bench-"))
    try:
        for name in ("buildgrid", "granary"):
            if args.only and args.only != name:
                continue
            data = tmp / name
            proc, address = start_buildgrid(data) if name == "buildgrid" else start_granary(data, args.processes)
            try:
                print(f"{name}: {address} (pid {proc.pid}) ...", flush=True)
                results[name] = measure(address, proc.pid, args, pool)
            finally:
                stop(proc)
    finally:
        pool.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    names = list(results)
    print()
    header = f"{'':55s}" + "".join(f"{n:>14s}" for n in names)
    if len(names) == 2:
        header += f"{'ratio':>10s}"
    print(header)
    for key, label, fmt in ROWS:
        line = f"{label:55s}" + "".join(f"{fmt.format(results[n][key]):>14s}" for n in names)
        if len(names) == 2 and results[names[0]][key]:
            ratio = results[names[1]][key] / results[names[0]][key]
            if key == "gar_p50_ms":
                ratio = 1 / ratio if ratio else 0
            line += f"{ratio:>9.1f}x"
        print(line)
    if "granary" in results:
        print(f"\nGranary ByteStream Write is {results['granary']['bsw'] / sha * 100:.0f}% of single-core sha256")
    print(f"(clients: {args.clients} processes; {args.seconds:.0f}s per measurement; "
          "ratio = granary / buildgrid, latency ratio inverted)")


if __name__ == "__main__":
    main()
