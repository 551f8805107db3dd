"""How fast the dashboard answers on a big queue database: 100,000 finished operations.

The queue database (SQLite, the default) is filled directly with rows matching the schema
(execution/schema.py, created by the JobQueue itself), a `granary serve` (no local workers, 50
fake bot sessions in the table) is started on it, and each page or endpoint is fetched --rounds
times over HTTP; printed are p50 and p95 in milliseconds:

- overview JSON (a scrape of the server's own metrics, parsed; reused for 1 s, so most fetches here
  reuse it; then a few 1 s apart, each a fresh scrape), the operations list's first page (newest first), a filtered page, the default filter
  (unfinished operations: none here), a deep page reached by following page tokens (--deep pages of
  200), one operation page, the workers page.

    PYTHONPATH=src python3 bench/bench_dashboard.py               # 100,000 operations, 20 rounds
    PYTHONPATH=src python3 bench/bench_dashboard.py --operations 300000 --rounds 50 --deep 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

CONFIG = """
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: disk, path: ac}}
instances: {"": {cas: main, action_cache: main}}
execution: {local_workers: 0, known_platforms: [], retention: 30d}
"""
TOOLS = [f"tool-{i}" for i in range(10)]


def fill(url: str, n: int, bots: int) -> str:
    """n finished operations (one job each) and `bots` bot sessions; -> one operation's name."""
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from granary.execution.jobqueue import JOB_COLUMNS, OP_COLUMNS, JobQueue

    queue = JobQueue(url)
    queue.create_schema()
    now = time.time()
    action = re_pb2.Action(do_not_cache=False)
    action.timeout.FromSeconds(600)
    action_bytes = action.SerializeToString()
    jobs, ops = [], []
    for i in range(n):
        queued = now - (n - i) * 0.5
        response = re_pb2.ExecuteResponse()
        response.result.exit_code = 1 if i % 7 == 0 else 0
        response.result.execution_metadata.worker = f"bot-{i % bots}"
        response.result.stdout_raw = f"line {i}\n".encode()
        job = dict.fromkeys(JOB_COLUMNS)
        job.update(name=str(uuid.uuid4()), queue="main", instance="", action_key=f"{i:064x}/140", digest_function=1,
                   action=action_bytes, platform_key="[]", priority=0, queued_time=queued, stage=4,
                   lease_state=3, worker=f"bot-{i % bots}", assigned_time=queued + 0.01, start_time=queued + 0.02,
                   completed_time=queued + 0.3, timeout=600.0, do_not_cache=False, retries=0,
                   response=response.SerializeToString(), active_key=None, version=3)
        op = dict.fromkeys(OP_COLUMNS)
        op.update(name=f"operations/{uuid.uuid4()}", job_name=job["name"], instance="", created_time=queued,
                  cancelled=False, tool_name=TOOLS[i % len(TOOLS)], tool_version="7.4.1",
                  invocation_id=f"inv-{i // 100}", correlated_invocations_id="", action_mnemonic="CppCompile",
                  target_id=f"//pkg:t{i}", configuration_id="", identity="")
        jobs.append(job)
        ops.append(op)
    bot_rows = [{"name": f"botSessions/{uuid.uuid4()}", "bot_id": f"bot-{i}", "instance": "", "queue": "main",
                 "properties": json.dumps([["OSFamily", "linux"], ["ISA", "x86-64"]]), "concurrency": 4, "status": 1,
                 "created_time": now, "last_seen": now + 3600} for i in range(bots)]
    with queue._cursor(write=True) as cur:
        for table, rows, cols in (("granary_jobs", jobs, JOB_COLUMNS), ("granary_operations", ops, OP_COLUMNS),
                                  ("granary_bots", bot_rows, tuple(bot_rows[0]) if bot_rows else ())):
            if rows:
                cur.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                [tuple(r[c] for c in cols) for r in rows])
    queue.close()
    return ops[n // 2]["name"]


def fetch(url: str) -> tuple[float, dict]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = json.loads(r.read())
    return (time.perf_counter() - start) * 1000, body


def measure(url: str, rounds: int) -> tuple[float, float]:
    fetch(url)  # warm
    times = sorted(fetch(url)[0] for _ in range(rounds))
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--operations", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--deep", type=int, default=25, help="pages of 200 followed to reach the deep page")
    ap.add_argument("--bots", type=int, default=50)
    args = ap.parse_args()

    from obsutil import http_url
    from serverutil import start_granary

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "granary-data"
        data.mkdir()
        started = time.perf_counter()
        some_op = fill(f"sqlite:///{data / 'execution.sqlite'}", args.operations, args.bots)
        print(f"filled {args.operations} operations and {args.bots} bot sessions in"
              f" {time.perf_counter() - started:.1f} s ({os.path.getsize(data / 'execution.sqlite') >> 20} MiB)")
        server = start_granary(tmp_path, CONFIG)
        try:
            base = http_url(server)
            api = f"{base}/api/v1"

            def ops(**q: str) -> str:
                return f"{api}/operations?" + urllib.parse.urlencode(q)

            token, started = "", time.perf_counter()
            for _ in range(args.deep):
                _, page = fetch(ops(filter="sort_order = queued_time(desc)", page_size="200", page_token=token))
                token = page["next_page_token"]
            walk = time.perf_counter() - started
            cases = [
                ("overview JSON", f"{api}/overview"),
                ("operations, first page (50, newest first)", ops(filter="sort_order = queued_time(desc)")),
                ("operations, filtered (tool_name, by completed_time)",
                 ops(filter="tool_name = tool-3 & sort_order = completed_time(desc)")),
                ("operations, default filter (unfinished)", ops()),
                (f"operations, deep page (offset {args.deep * 200}, 200)",
                 ops(filter="sort_order = queued_time(desc)", page_size="200", page_token=token)),
                ("one operation", f"{api}/operation?" + urllib.parse.urlencode({"name": some_op})),
                ("workers", f"{api}/workers"),
            ]
            print(f"followed {args.deep} pages of 200 by token in {walk:.1f} s ({walk / args.deep * 1000:.0f} ms a page)")
            print(f"{'endpoint':55} {'p50 ms':>8} {'p95 ms':>8}")
            for label, url in cases:
                p50, p95 = measure(url, args.rounds)
                print(f"{label:55} {p50:8.1f} {p95:8.1f}")
            fresh = []
            for _ in range(min(args.rounds, 5)):  # past the 1 s reuse: each one scrapes and parses the metrics
                time.sleep(1.05)
                fresh.append(fetch(f"{api}/overview")[0])
            fresh.sort()
            print(f"{'overview JSON, a fresh scrape each (1 s apart)':55} {statistics.median(fresh):8.1f} {fresh[-1]:8.1f}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
