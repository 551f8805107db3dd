"""GetActionResult requests/s with and without authentication.

Each mode starts its own server process (Granary's ActionCache servicer on a memory
store, uvloop, like `granary serve`), and one client on one channel calls GetActionResult
for a cached result in a loop for a few seconds:

  no-auth     no interceptor at all
  anonymous   interceptor, no credentials, an anonymous cache-read grant
  basic       interceptor, Authorization: Basic (htpasswd, bcrypt cost 10; verified once, then remembered)
  token       interceptor, Authorization: Bearer gnr_... (SQLite lookup, cached for 5 s)
  jwt         interceptor, Authorization: Bearer <RS256 JWT> (verified once, then remembered until expiry)

and then the time one call spends in authentication and the policy check alone (no gRPC).

    PYTHONPATH=src python3 bench/bench_auth.py [--seconds 3] [--only basic,token]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # authutil: the JWT signer of the tests

MODES = ("no-auth", "anonymous", "basic", "token", "jwt")
ACTION = b"bench-auth-action"


def prepare(workdir: Path) -> dict[str, str]:
    """Files every server reads and the credentials clients send, per mode."""
    import bcrypt
    from authutil import JwtIssuer

    from granary.auth.settings import TokenSettings, token_store

    (workdir / "htpasswd").write_text(f"bench:{bcrypt.hashpw(b'bench-pw', bcrypt.gensalt(rounds=10)).decode()}\n")
    store = token_store(TokenSettings(), workdir)
    _, secret = store.create("bench", ["cache-read", "ac-write"], 3600)
    store.close()
    signer = JwtIssuer("https://issuer.bench")
    (workdir / "jwks.json").write_text(json.dumps(signer.jwks()))
    return {
        "basic": "Basic " + base64.b64encode(b"bench:bench-pw").decode(),
        "token": f"Bearer {secret}",
        "jwt": "Bearer " + signer.token("bench", expires_in=3600),
    }


def bench_settings():
    from granary.auth.settings import AuthSettings

    return AuthSettings.model_validate({
        "htpasswd": "htpasswd",
        "tokens": {},
        "jwt": {"issuer": "https://issuer.bench", "audience": "granary", "jwks_file": "jwks.json"},
        "anonymous": [{"instance": "", "permissions": ["cache-read", "ac-write"]}],
        "rules": [{"instance": "", "identities": ["bench"], "permissions": ["cache-read", "ac-write"]}],
    })


def per_call(workdir: Path, headers: dict[str, str], calls: int = 20_000) -> dict[str, float]:
    """Microseconds per identify() + policy.check(), in process."""
    from granary.auth.permissions import Permission
    from granary.auth.settings import build_auth

    runtime = build_auth(bench_settings(), workdir)

    async def run() -> dict[str, float]:
        out = {}
        for mode in ("anonymous", "basic", "token", "jwt"):
            md = (("authorization", headers[mode]),) if mode in headers else ()
            await runtime.authenticator.identify(md)  # first use: bcrypt, SQL, signature
            start = time.perf_counter()
            for _ in range(calls):
                who = await runtime.authenticator.identify(md)
                runtime.policy.check(who, "team/linux", Permission.CACHE_READ)
            out[mode] = (time.perf_counter() - start) / calls * 1e6
        return out

    try:
        return asyncio.run(run())
    finally:
        runtime.close()


def serve(mode: str, workdir: Path) -> None:
    import grpc
    import uvloop
    from authutil import memory_instances

    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from granary.auth.settings import build_auth
    from granary.services.ac_service import ActionCacheService
    from granary.services.registry import add_servicer

    async def main() -> None:
        interceptors = []
        if mode != "no-auth":
            interceptors.append(build_auth(bench_settings(), workdir).interceptor())
        server = grpc.aio.server(interceptors=interceptors)
        add_servicer(server, ActionCacheService(memory_instances()), re_pb2.DESCRIPTOR.services_by_name["ActionCache"])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        await server.stop(0)

    uvloop.run(main())


def drive(port: int, header: str | None, seconds: float) -> float:
    import hashlib

    import grpc

    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

    md = (("authorization", header),) if header else ()
    action = re_pb2.Digest(hash=hashlib.sha256(ACTION).hexdigest(), size_bytes=len(ACTION))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = re_grpc.ActionCacheStub(channel)
        stub.UpdateActionResult(
            re_pb2.UpdateActionResultRequest(action_digest=action, action_result=re_pb2.ActionResult(exit_code=0)),
            metadata=md, timeout=30,
        )
        call = stub.GetActionResult
        req = re_pb2.GetActionResultRequest(action_digest=action)
        for _ in range(50):  # warm up (the first Basic call runs bcrypt)
            call(req, metadata=md, timeout=30)
        n, start = 0, time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            call(req, metadata=md, timeout=30)
            n += 1
        return n / (time.perf_counter() - start)


def measure(mode: str, workdir: Path, header: str | None, seconds: float) -> float:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--workdir", str(workdir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ,
    )
    try:
        assert proc.stdout is not None
        return drive(int(proc.stdout.readline()), header, seconds)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3, help="measure each mode this often; the best counts")
    parser.add_argument("--only", help="comma-separated modes: " + ",".join(MODES))
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.workdir)
        return 0
    modes = args.only.split(",") if args.only else list(MODES)
    with tempfile.TemporaryDirectory(prefix="granary-bench-auth-") as tmp:
        workdir = Path(tmp)
        headers = prepare(workdir)
        print(f"GetActionResult, one client, {args.seconds:g} s per mode, best of {args.rounds} rounds"
              " (server: one process, uvloop)")
        best: dict[str, float] = {}
        for _ in range(args.rounds):  # rounds interleave the modes, so a busy moment hurts them alike
            for mode in modes:
                best[mode] = max(best.get(mode, 0.0), measure(mode, workdir, headers.get(mode), args.seconds))
        baseline = best.get("no-auth") or max(best.values())
        for mode in modes:
            print(f"  {mode:10s} {best[mode]:8.0f} req/s   {best[mode] / baseline * 100:5.1f}% of no-auth", flush=True)
        print("authentication + policy check alone, per call (in process, after the first call):")
        for mode, us in per_call(workdir, headers).items():
            print(f"  {mode:10s} {us:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
