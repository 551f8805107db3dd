"""Container-image benchmark (issue 13): first-use pull and unpack time, and the per-action cost of an image.

Builds test images with tests/imageutil.py and pushes them to a real registry (Debian's
`docker-registry serve` on loopback):

  bench/base:1   a busybox-static layer, a layer of --files small files (1 KiB each, in 20
                 directories) and a layer of --data-mib MiB of random bytes (incompressible)
  bench/other:1  the same busybox and files layers and a small layer of its own (a second image on
                 the same base)

then measures two things.

1. First use, in this process, through the worker's own ImageStore (registry client, digest checks,
   layer unpacking, root filesystem assembly), each in a fresh store, median of --repeats:

     cold                 the first acquire of bench/base:1: download + verify + unpack every layer,
                          assemble the root filesystem
     second image         then bench/other:1: its two shared layers come from the layer cache, only
                          its own small layer is downloaded; the root filesystem is assembled
     cached               a third acquire of bench/base:1 (cache hit: no registry, no disk work)

2. Per action, end to end: a `granary serve` (disk CAS/AC, local_workers 0) and one `granary worker`
   (--sandbox bwrap, --concurrency --slots, started fresh: empty image cache). Every action is a
   distinct /bin/true (unique Action.salt, skip_cache_lookup), uploaded before the clock starts:

     first image action   the first action asking for bench/base:1 on the fresh worker: it pays
                          the pull (end to end, ms)
     host / image         --actions actions without an image and as many in the image (warm), in
                          --rounds rounds alternating which goes first: one at a time (latency: mean,
                          p50, p95 in ms; actions/s) and from --slots x 2 client threads at once
                          (actions/s)

    python3 bench/bench_images.py
    python3 bench/bench_images.py --actions 400 --data-mib 64 --files 5000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from bench_cache import stop
from imageutil import have_registry, start_registry, tar_layer

MiB = 1 << 20
EXEC = "/build.bazel.remote.execution.v2.Execution/Execute"
CAS = "/build.bazel.remote.execution.v2.ContentAddressableStorage/"
CONFIG = """\
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: disk, path: ac}}
instances: {"": {cas: main, action_cache: main}}
execution: {local_workers: 0, platform_grace: 0}
"""


# ---- images --------------------------------------------------------------------------------------


def build_images(reg, files: int, data_mib: int) -> dict:
    import random

    busybox = tar_layer({"etc": None, "etc/bench": b"base\n"}, busybox=True)
    many: dict[str, bytes | None] = {"usr": None, "usr/share": None}
    for d in range(20):
        many[f"usr/share/d{d}"] = None
    for i in range(files):
        many[f"usr/share/d{i % 20}/f{i}.txt"] = (f"file {i}\n" * 128)[:1024].encode()
    files_layer = tar_layer(many)
    rnd = random.Random(13)
    data = tar_layer({"opt": None, "opt/data.bin": rnd.randbytes(data_mib * MiB)})
    own = tar_layer({"etc/other": b"other\n"})
    base = [busybox, files_layer, data]
    reg.push_image("bench/base", "1", base)
    reg.push_image("bench/other", "1", [busybox, files_layer, own])
    return {"base": base, "own": own}


def first_use(reg, tmp: Path, repeats: int) -> dict[str, list[float]]:
    from granary.worker.images import ImageStore

    out: dict[str, list[float]] = {"cold": [], "second": [], "cached": []}
    for k in range(repeats):
        store = ImageStore(tmp / f"store-{k}", 100 << 30)
        for name, ref in (("cold", "bench/base:1"), ("second", "bench/other:1"), ("cached", "bench/base:1")):
            t = time.perf_counter()
            image = store.acquire(f"docker://{reg.host}/{ref}")
            out[name].append((time.perf_counter() - t) * 1000)
            store.release(image)
        assert store.layer_pulls == 4 and store.pulls == 2, (store.layer_pulls, store.pulls)
        shutil.rmtree(tmp / f"store-{k}")
    return out


# ---- server, worker, actions -------------------------------------------------------------------------


def start_server(data: Path) -> tuple[subprocess.Popen, str]:
    data.mkdir(parents=True)
    (data / "granary.yaml").write_text(CONFIG)
    log = open(data / "serve.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "granary", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data),
         "--config", str(data / "granary.yaml"), "--processes", "1"],
        stdout=subprocess.PIPE, stderr=log, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    m = re.search(r"grpc://([0-9.]+:\d+)", line)
    if not m:
        raise RuntimeError(f"granary did not start: {line!r} {(data / 'serve.log').read_text()}")
    return proc, m.group(1)


def start_worker(data: Path, address: str, slots: int) -> subprocess.Popen:
    log = open(data / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "granary", "worker", "--server", address, "--concurrency", str(slots),
         "--cache-dir", str(data / "worker" / "cas"), "--sandbox", "bwrap", "--name", "bench",
         "--log-level", "info"],
        stdout=log, stderr=log, start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    return proc


def _digest(re_pb2, data: bytes):
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def make_actions(ch, n: int, image: str) -> list[bytes]:
    """Upload a /bin/true Command, an empty input root and n salted Actions (in `image`, or on the host
    tools when ''); their serialised ExecuteRequests."""
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

    command = re_pb2.Command(arguments=["/bin/true"]).SerializeToString()
    root = re_pb2.Directory().SerializeToString()
    cd, rd = _digest(re_pb2, command), _digest(re_pb2, root)
    blobs, requests = [command, root], []
    for _ in range(n):
        action = re_pb2.Action(command_digest=cd, input_root_digest=rd, salt=uuid.uuid4().bytes)
        if image:
            action.platform.properties.add(name="container-image", value=image)
        raw = action.SerializeToString()
        blobs.append(raw)
        requests.append(re_pb2.ExecuteRequest(action_digest=_digest(re_pb2, raw),
                                              skip_cache_lookup=True).SerializeToString())
    upload = ch.unary_unary(CAS + "BatchUpdateBlobs")
    for i in range(0, len(blobs), 500):
        req = re_pb2.BatchUpdateBlobsRequest(requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(digest=_digest(re_pb2, b), data=b) for b in blobs[i: i + 500]])
        resp = re_pb2.BatchUpdateBlobsResponse.FromString(upload(req.SerializeToString()))
        assert all(r.status.code == 0 for r in resp.responses), resp
    return requests


def execute(call, raw: bytes) -> float:
    """One Execute stream to COMPLETED; its latency in ms (raises if the action did not succeed)."""
    from google.longrunning import operations_pb2

    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

    t = time.perf_counter()
    last = None
    for msg in call(raw, timeout=600):
        last = msg
    ms = (time.perf_counter() - t) * 1000
    op = operations_pb2.Operation.FromString(last)
    resp = re_pb2.ExecuteResponse()
    op.response.Unpack(resp)
    if not op.done or resp.status.code or resp.result.exit_code or resp.cached_result:
        raise RuntimeError(f"action failed: {op.error or resp.status} exit {resp.result.exit_code}")
    return ms


def run_serial(call, requests: list[bytes]) -> tuple[list[float], float]:
    t = time.perf_counter()
    lat = [execute(call, r) for r in requests]
    return lat, time.perf_counter() - t


def run_parallel(call, requests: list[bytes], threads: int) -> float:
    shares = [requests[i::threads] for i in range(threads)]
    errors: list[BaseException] = []

    def go(share: list[bytes]) -> None:
        try:
            for r in share:
                execute(call, r)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=go, args=(s,)) for s in shares]
    t = time.perf_counter()
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def per_action(reg, tmp: Path, n: int, slots: int, rounds: int) -> dict:
    import grpc

    image = f"docker://{reg.host}/bench/base:1"
    server, address = start_server(tmp / "server")
    worker = start_worker(tmp / "server", address, slots)
    ch = grpc.insecure_channel(address)
    call = ch.unary_stream(EXEC)
    out: dict = {}
    try:
        warm = make_actions(ch, 2 * slots, "")
        deadline = time.monotonic() + 60
        while True:  # until the worker's bot sessions take work
            try:
                run_parallel(call, warm, slots)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        first = make_actions(ch, 1, image)
        out["first"] = execute(call, first[0])
        run_parallel(call, make_actions(ch, 2 * slots, image), slots)  # every slot has run in the image
        # in rounds, alternating which goes first, so that a change of load on the machine falls on both
        lat: dict[str, list[float]] = {"host": [], "image": []}
        took = {"host": 0.0, "image": 0.0}
        par = {"host": 0.0, "image": 0.0}
        per = max(1, n // rounds)
        for r in range(rounds):
            for name in (("host", "image") if r % 2 == 0 else ("image", "host")):
                img = image if name == "image" else ""
                got, t = run_serial(call, make_actions(ch, per, img))
                lat[name] += got
                took[name] += t
                par[name] += run_parallel(call, make_actions(ch, per, img), 2 * slots)
        for name, values in lat.items():
            out[name] = {"mean": statistics.fmean(values), "p50": pct(values, 50), "p95": pct(values, 95),
                         "serial_rate": len(values) / took[name], "parallel_rate": len(values) / par[name]}
    finally:
        ch.close()
        stop(worker)
        stop(server)
    pulls = (tmp / "server" / "worker.log").read_text().count("pulled container image")
    assert pulls == 1, f"the worker pulled the image {pulls} times"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000, help="small files in the files layer (default 2000)")
    ap.add_argument("--data-mib", type=int, default=32, help="MiB of random data in the data layer (default 32)")
    ap.add_argument("--repeats", type=int, default=3, help="first-use measurements, median (default 3)")
    ap.add_argument("--actions", type=int, default=200, help="actions per row (default 200)")
    ap.add_argument("--slots", type=int, default=2, help="worker --concurrency (default 2)")
    ap.add_argument("--rounds", type=int, default=4, help="per-action rows run in rounds, alternating (default 4)")
    args = ap.parse_args()
    if not have_registry():
        sys.exit("bench_images: needs docker-registry and busybox-static (apt-get install docker-registry "
                 "busybox-static)")
    tmp = Path(tempfile.mkdtemp(prefix="granary-bench-images-"))
    try:
        with start_registry(tmp / "registry") as reg:
            layers = build_images(reg, args.files, args.data_mib)
            sizes = [len(x) for x in layers["base"]]
            cold = first_use(reg, tmp, args.repeats)
            actions = per_action(reg, tmp, args.actions, args.slots, args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in cold.items()}
    print(f"bench_images: bench/base:1 = 3 layers, {sum(sizes) / MiB:.1f} MiB compressed (busybox"
          f" {sizes[0] / MiB:.1f} MiB, {args.files} files {sizes[1] / MiB:.2f} MiB, {args.data_mib} MiB random"
          f" {sizes[2] / MiB:.1f} MiB); {os.cpu_count()} cores; registry on loopback")
    print()
    print(f"first use (ImageStore.acquire, fresh store, median of {args.repeats})        ms")
    print(f"  cold: download + verify + unpack 3 layers + assemble    {med['cold']:8.1f}")
    print(f"  second image on the same 2 base layers (1 new layer)     {med['second']:8.1f}")
    print(f"  cached (same image again)                                {med['cached']:8.3f}")
    print(f"  first action in the image on a fresh worker (end to end) {actions['first']:8.1f}")
    print()
    print(f"per action: {args.actions} distinct /bin/true, worker --sandbox bwrap --concurrency {args.slots}")
    print("                 mean ms   p50 ms   p95 ms   serial actions/s"
          f"   {2 * args.slots} clients actions/s")
    for name in ("host", "image"):
        r = actions[name]
        print(f"  {'no image' if name == 'host' else 'in the image':14} {r['mean']:8.1f} {r['p50']:8.1f}"
              f" {r['p95']:8.1f} {r['serial_rate']:18.1f} {r['parallel_rate']:21.1f}")
    h, i = actions["host"], actions["image"]
    print(f"  image overhead {i['mean'] - h['mean']:+8.1f} {i['p50'] - h['p50']:+8.1f} {i['p95'] - h['p95']:+8.1f}"
          f" {(i['serial_rate'] / h['serial_rate'] - 1) * 100:+17.0f}% {(i['parallel_rate'] / h['parallel_rate'] - 1) * 100:+20.0f}%")


if __name__ == "__main__":
    main()
