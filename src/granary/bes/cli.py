"""`granary builds` and `granary build ID`: invocations as the server's BuildEvents service
returns them.

They ask the server rather than reading its database, so they work against any server
(SQLite or PostgreSQL behind it), and authentication and permissions apply: the token
`granary login` stored for the server is sent (cache-read is needed).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

from granary.errors import ConfigError

DEFAULT_SERVER = "grpc://127.0.0.1:8980"


def add_parsers(sub) -> None:
    builds = sub.add_parser("builds", help="list the builds (Bazel invocations) the Build Event Service stored")
    _common(builds)
    builds.add_argument("-n", "--limit", type=int, default=20, help="invocations to list (default 20, newest first)")
    builds.add_argument("--build-id", default="", help="only the invocations of this build id (--build_request_id)")
    build = sub.add_parser("build", help="show one stored build: its targets, tests and failures")
    _common(build)
    build.add_argument("invocation_id", metavar="ID", help="invocation id (the first column of `granary builds`)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path,
                   help="YAML configuration of the server (its server.listen and server.tls tell where to connect)")
    p.add_argument("--server", help=f"server URL, grpc://HOST:PORT or grpcs://HOST:PORT (default: from --config,"
                                    f" else {DEFAULT_SERVER})")
    p.add_argument("--tls-ca", type=Path, help="PEM CA that signed a grpcs:// server's certificate")
    p.add_argument("--json", action="store_true", help="print the response as JSON")


def _target(args: argparse.Namespace) -> tuple[str, bool, Path | None]:
    """-> (host:port, TLS?, CA file)."""
    ca = args.tls_ca
    url = args.server
    if url is None and args.config is not None:
        from granary.config import load

        cfg = load(args.config, None)
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
        host = f"[{host}]" if ":" in host else host
        url = f"{'grpcs' if cfg.tls is not None else 'grpc'}://{host}:{cfg.port}"
        if cfg.tls is not None and ca is None:
            ca = cfg.tls.files(cfg.data_dir).cert  # a self-signed server certificate is its own CA
    url = url or DEFAULT_SERVER
    for scheme in ("grpcs://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme):], scheme == "grpcs://" or ca is not None, ca
    if "://" in url:
        raise ConfigError(f"--server: expected grpc://HOST:PORT or grpcs://HOST:PORT, got {url!r}")
    return url, ca is not None, ca


def _stub(args: argparse.Namespace) -> tuple[Any, tuple[tuple[str, str], ...]]:
    import grpc

    from granary._proto.granary.builds.v1 import builds_pb2_grpc
    from granary.auth.cli import _read_credentials, credentials_path, token_for

    target, secure, ca = _target(args)
    if secure:
        try:
            roots = ca.read_bytes() if ca is not None else None
        except OSError as e:
            raise ConfigError(f"--tls-ca: cannot read {ca}: {e.strerror}") from None
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))
    else:
        channel = grpc.insecure_channel(target)
    scheme = "grpcs" if secure else "grpc"
    token = token_for(f"{scheme}://{target}", _read_credentials(credentials_path())["servers"])
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return builds_pb2_grpc.BuildEventsStub(channel), metadata


def _call(fn, request, metadata) -> Any:
    import grpc

    try:
        return fn(request, metadata=metadata, timeout=60)
    except grpc.RpcError as e:
        print(f"granary: {e.code().name}: {e.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        raise SystemExit(1) from None


def _when(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return datetime.datetime.fromtimestamp(ts.seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(ms: int, summary: Any) -> str:
    if not summary.HasField("end_time"):
        return "-"
    return f"{ms / 1000:.1f}s"


def _cache(s: Any) -> str:
    return f"{s.cache_hits}/{s.processes}" if s.has_cache_hits else "-"


def _result(s: Any) -> str:
    if s.has_exit_code and s.exit_code != 0:
        return f"{s.result} ({s.exit_code_name or s.exit_code})"
    return s.result


def _line(text: str) -> str:
    """The first line of a multi-line message (Bazel's often end in advice about flags)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0] + (" ..." if len(lines) > 1 else "") if lines else ""


def cmd_builds(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from granary._proto.granary.builds.v1 import builds_pb2

    if args.limit < 1:
        raise ConfigError(f"--limit: expected 1 or more, got {args.limit}")
    stub, metadata = _stub(args)
    found: list[Any] = []
    token = ""
    while len(found) < args.limit:
        page = _call(stub.ListInvocations, builds_pb2.ListInvocationsRequest(
            page_size=min(args.limit - len(found), 1000), page_token=token, build_id=args.build_id), metadata)
        found += page.invocations
        token = page.next_page_token
        if not token:
            break
    if args.json:
        out = builds_pb2.ListInvocationsResponse(invocations=found)
        print(json_format.MessageToJson(out, preserving_proto_field_name=True))
        return 0
    rows = [("INVOCATION", "COMMAND", "PATTERNS", "USER", "STARTED (UTC)", "DURATION", "RESULT", "ACTIONS",
             "CACHE HITS")]
    for s in found:
        rows.append((s.invocation_id, s.command or "-", " ".join(s.patterns) or "-", s.user or "-",
                     _when(s.start_time), _duration(s.duration_ms, s), _result(s),
                     f"{s.actions_executed}/{s.actions_created}", _cache(s)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from granary._proto.granary.builds.v1 import builds_pb2

    stub, metadata = _stub(args)
    d = _call(stub.GetInvocation, builds_pb2.GetInvocationRequest(invocation_id=args.invocation_id), metadata)
    if args.json:
        print(json_format.MessageToJson(d, preserving_proto_field_name=True))
        return 0
    s = d.summary
    lines = [
        f"invocation  {s.invocation_id}",
        f"build id    {s.build_id} (correlated invocations id)",
        f"command     {s.command or '-'} {' '.join(s.patterns)}".rstrip(),
        f"user        {s.user or '-'}{'@' + s.host if s.host else ''}",
        f"tool        {s.tool_version or '-'}",
        f"started     {_when(s.start_time)} UTC   duration {_duration(s.duration_ms, s)}",
        f"result      {_result(s)}" + ("" if s.stream_finished else "   (stream not finished)"),
        f"actions     {s.actions_executed} executed of {s.actions_created} created; cache hits {_cache(s)} processes",
        f"events      {s.events}" + ("   (more than decoded: truncated)" if d.truncated else ""),
    ]
    lines.append(f"targets ({len(d.targets)}):")
    for t in d.targets:
        outcome = "success" if t.success else f"FAILED{': ' + _line(t.failure) if t.failure else ''}"
        lines.append(f"  {t.label}  {t.kind or '-'}  {outcome}")
    if d.tests:
        lines.append(f"tests ({len(d.tests)}):")
        for t in d.tests:
            cached = ", cached" if t.cached else ""
            lines.append(f"  {t.label}  {t.status}  ({t.runs} run{'s' if t.runs != 1 else ''},"
                         f" {t.duration_ms / 1000:.1f}s{cached})")
    if d.failures:
        lines.append(f"failures ({len(d.failures)}):")
        from granary.bes.decode import describe

        for f in d.failures:
            lines.append(f"  {f.kind}  {_line(describe(f))}")
    print("\n".join(lines))
    return 0
