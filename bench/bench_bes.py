"""Build events ingested per second by the Build Event Service, over real gRPC.

A `granary serve` (one server process, build events in SQLite under a temporary data dir,
or --database URL) receives PublishBuildToolEventStream calls from a grpcio client: first
one stream, then --streams concurrent streams (each its own invocation, as concurrent Bazel
builds would be). Events are Bazel Progress events of --event-size bytes of console text,
packed as Bazel packs them. Each stream sends --events events and waits for every
acknowledgement (each follows its event's commit); printed is events/s over the whole run.

    PYTHONPATH=src python3 bench/bench_bes.py                  # short default run (~15 s)
    PYTHONPATH=src python3 bench/bench_bes.py --events 20000 --streams 8
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))
LISTEN_RE = re.compile(r"grpc://([0-9.]+):(\d+)")


def start(data: Path, database: str | None) -> tuple[subprocess.Popen, str]:
    cfg = data / "granary.yaml"
    cfg.write_text('storage: {main: {type: memory}}\ninstances: {"*": {cas: main}}\n'
                   + (f"build_events: {{database: '{database}', max_streams_per_client: 64}}\n" if database
                      else "build_events: {max_streams_per_client: 64}\n"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "granary", "serve", "--listen", "127.0.0.1:0", "--processes", "1",
         "--data-dir", str(data / "data"), "--config", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.stdout is not None
    for line in proc.stdout:
        m = LISTEN_RE.search(line)
        if m:
            return proc, f"{m.group(1)}:{m.group(2)}"
    raise SystemExit("granary serve did not start")


def one_stream(address: str, events: int, size: int, out: list[int]) -> None:
    import grpc
    from besutil import progress, publish_stub, tool_request

    inv = str(uuid.uuid4())
    text = "x" * size
    payload = progress(text)
    with grpc.insecure_channel(address) as ch:
        reqs = (tool_request("bench", inv, i, payload) for i in range(1, events + 1))
        acks = sum(1 for _ in publish_stub(ch).PublishBuildToolEventStream(reqs, timeout=600))
    out.append(acks)


def run(address: str, streams: int, events: int, size: int) -> float:
    done: list[int] = []
    threads = [threading.Thread(target=one_stream, args=(address, events, size, done)) for _ in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    assert sum(done) == streams * events, (done, streams * events)
    return streams * events / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=5000, help="events per stream (default 5000)")
    p.add_argument("--streams", type=int, default=4, help="concurrent streams in the second run (default 4)")
    p.add_argument("--event-size", type=int, default=200, help="bytes of console text per event (default 200)")
    p.add_argument("--database", help="build_events.database URL (default: SQLite in a temporary data dir)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="granary-bench-bes-") as tmp:
        proc, address = start(Path(tmp), args.database)
        try:
            run(address, 1, 200, args.event_size)  # warm-up: connection, schema, first commits
            single = run(address, 1, args.events, args.event_size)
            print(f"1 stream:   {single:9.0f} events/s  ({args.events} events of ~{args.event_size} B)", flush=True)
            many = run(address, args.streams, args.events, args.event_size)
            print(f"{args.streams} streams: {many:9.0f} events/s  ({args.streams} x {args.events} events)", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
