"""Smoke test of an installed Granary: `granary serve` with its defaults, then one CAS round trip
and one executed action, with nothing but Granary's generated protos and grpcio.

Usage: python smoke_serve.py   (runs `python -m granary` with this Python)
Exits 0 when everything worked; otherwise prints what failed, with the server's log, and exits 1.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary._proto.google.bytestream import bytestream_pb2_grpc as bs_grpc

LISTEN_RE = re.compile(r"grpc://([0-9.]+):(\d+)")
METRICS_RE = re.compile(r"(http://[0-9.]+:\d+)/metrics")
START_TIMEOUT = 120.0
EXECUTE_TIMEOUT = 180.0


class SmokeFailure(Exception):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise SmokeFailure(what)


def digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def start_server(data_dir: Path, log: Path) -> tuple[subprocess.Popen, str, str]:
    cmd = [sys.executable, "-m", "granary", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    logf = open(log, "wb")  # noqa: SIM115 - kept open by the pump thread until the server exits
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, start_new_session=True)
    found: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            logf.flush()
            m = LISTEN_RE.search(line.decode(errors="replace"))
            http = METRICS_RE.search(line.decode(errors="replace"))
            if m and not found:
                found.append(f"{m.group(1)}:{m.group(2)}")
                found.append(http.group(1) if http else "")
        logf.close()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while not found:
        if proc.poll() is not None:
            raise SmokeFailure(f"granary serve exited with {proc.returncode} before serving")
        if time.monotonic() > deadline:
            raise SmokeFailure(f"granary serve did not announce its port within {START_TIMEOUT:g}s")
        time.sleep(0.05)
    return proc, found[0], found[1]


def stop_server(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise SmokeFailure("granary serve did not stop within 30s of SIGTERM") from None
    return proc.returncode


def cas_round_trip(channel: grpc.Channel) -> None:
    cas = re_grpc.ContentAddressableStorageStub(channel)
    bs = bs_grpc.ByteStreamStub(channel)
    blob = f"granary smoke {uuid.uuid4()}\n".encode()
    d = digest(blob)
    absent = digest(f"never uploaded {uuid.uuid4()}".encode())

    missing = cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[d, absent]), timeout=30)
    check({m.hash for m in missing.missing_blob_digests} == {d.hash, absent.hash},
          f"before upload FindMissingBlobs should report both blobs, got {missing}")

    up = cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=blob)]),
        timeout=30,
    )
    check([r.status.code for r in up.responses] == [0], f"BatchUpdateBlobs failed: {up}")

    missing = cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[d, absent]), timeout=30)
    check([m.hash for m in missing.missing_blob_digests] == [absent.hash],
          f"after upload FindMissingBlobs should report only the absent blob, got {missing}")

    read = b"".join(r.data for r in bs.Read(
        bs_pb2.ReadRequest(resource_name=f"blobs/{d.hash}/{d.size_bytes}"), timeout=30))
    check(read == blob, f"ByteStream.Read returned {read!r}, expected {blob!r}")
    batch = cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[d]), timeout=30)
    check([(r.status.code, r.data) for r in batch.responses] == [(0, blob)], f"BatchReadBlobs: {batch}")


def execute_action(channel: grpc.Channel) -> None:
    cas = re_grpc.ContentAddressableStorageStub(channel)
    execution = re_grpc.ExecutionStub(channel)
    bs = bs_grpc.ByteStreamStub(channel)
    token = uuid.uuid4().hex  # a new action each run: it must execute, not come from the cache
    command = re_pb2.Command(arguments=["sh", "-c", f"echo smoke-{token} > out.txt"], output_paths=["out.txt"])
    root = re_pb2.Directory()
    blobs = [command.SerializeToString(), root.SerializeToString()]
    action = re_pb2.Action(command_digest=digest(blobs[0]), input_root_digest=digest(blobs[1]))
    blobs.append(action.SerializeToString())
    up = cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(
        requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b) for b in blobs]), timeout=30)
    check(all(r.status.code == 0 for r in up.responses), f"uploading the action failed: {up}")

    ops = list(execution.Execute(re_pb2.ExecuteRequest(action_digest=digest(blobs[2])), timeout=EXECUTE_TIMEOUT))
    check(bool(ops) and ops[-1].done, f"the Execute stream ended without a finished operation: {ops}")
    response = re_pb2.ExecuteResponse()
    check(ops[-1].response.Unpack(response), f"the operation holds no ExecuteResponse: {ops[-1]}")
    check(response.status.code == 0, f"Execute failed: {response.status}")
    result = response.result
    check(result.exit_code == 0, f"the action exited with {result.exit_code}: {result}")
    check([f.path for f in result.output_files] == ["out.txt"], f"unexpected outputs: {result}")
    out = result.output_files[0].digest
    data = b"".join(r.data for r in bs.Read(
        bs_pb2.ReadRequest(resource_name=f"blobs/{out.hash}/{out.size_bytes}"), timeout=30))
    check(data == f"smoke-{token}\n".encode(), f"the output file holds {data!r}")


def observability(channel: grpc.Channel, http: str) -> None:
    """grpc.health.v1 says SERVING; the HTTP port answers /readyz and /metrics counts our calls."""
    import urllib.request

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30).status
    check(status == health_pb2.HealthCheckResponse.SERVING, f"grpc.health.v1 says {status}")
    check(bool(http), "granary serve did not announce its metrics URL")
    with urllib.request.urlopen(f"{http}/readyz", timeout=30) as r:
        check(r.status == 200, f"/readyz answered {r.status}")
    with urllib.request.urlopen(f"{http}/metrics", timeout=30) as r:
        text = r.read().decode()
    check('method="Execute"' in text and "granary_cas_written_blobs_total" in text,
          f"/metrics lacks the calls made: {text[:2000]}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="granary-smoke-") as tmp:
        log = Path(tmp) / "serve.log"
        proc = None
        try:
            proc, address, http = start_server(Path(tmp) / "data", log)
            with grpc.insecure_channel(address) as channel:
                cas_round_trip(channel)
                print("smoke: CAS upload, FindMissingBlobs and read back: ok", flush=True)
                execute_action(channel)
                print("smoke: Execute of a tiny action with its output: ok", flush=True)
                observability(channel, http)
                print("smoke: gRPC health, /readyz and /metrics: ok", flush=True)
            code = stop_server(proc)
            check(code == 0, f"granary serve exited with {code} after SIGTERM")
        except (SmokeFailure, grpc.RpcError, OSError) as e:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            print(f"smoke: FAILED: {e}", file=sys.stderr)
            print(f"---- granary serve log ----\n{log.read_text(errors='replace')}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
