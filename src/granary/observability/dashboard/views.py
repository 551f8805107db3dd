"""What the dashboard's JSON says: queue rows and REAPI messages turned into plain dicts, and the
checks on what a visitor typed (digests, names, sizes), each refused with a message naming the value.

Nothing here trusts its input: every string from a request is bounded before it is used, every
blob shown is capped (the whole blob is a download away, streamed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import DecodeError

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.errors import InvalidArgument
from granary.execution.operations import COMPLETED

STAGES = {v: k for k, v in re_pb2.ExecutionStage.Value.items()}
MAX_FILTER = 2000  # characters of a ListOperations filter
MAX_TOKEN = 200  # characters of a page token
MAX_NAME = 1000  # characters of an operation or instance name
MAX_PAGE = 200  # operations per page
DEFAULT_PAGE = 50
_DIGEST = re.compile(r"^([0-9a-fA-F]{1,200})[/-]([0-9]{1,20})$")
MAX_LISTED_ENTRIES = 10_000  # entries of one directory listed (a Directory may hold more; the rest is counted)
TIMESTAMPS = (
    "queued", "worker_start", "input_fetch_start", "input_fetch_completed", "execution_start",
    "execution_completed", "output_upload_start", "output_upload_completed", "worker_completed",
)


def bounded(value: str, limit: int, what: str) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{what} is {len(value)} characters long; at most {limit} are accepted")
    return value


def page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE
    if not raw.isdigit() or len(raw) > 6:
        raise InvalidArgument(f"page_size {raw[:40]!r} is not a whole number")
    n = int(raw)
    if not 1 <= n <= MAX_PAGE:
        raise InvalidArgument(f"page_size {n} is outside 1..{MAX_PAGE}")
    return n


def parse_digest(raw: str | None, function: str | None = None, max_size: int | None = None) -> dg.BlobDigest:
    """`hash/size` or `hash-size` -> a digest; InvalidArgument naming the bad value otherwise.

    The function is named (`sha256`, `blake3`, ...) or inferred from the hash length as in REAPI."""
    if not raw:
        raise InvalidArgument("digest is missing: give it as HASH/SIZE or HASH-SIZE")
    shown = raw[:200]
    m = _DIGEST.match(raw.strip())
    if not m:
        raise InvalidArgument(f"digest {shown!r} is not of the form HASH/SIZE or HASH-SIZE (hex hash, decimal size)")
    hash_, size = m.group(1).lower(), int(m.group(2))
    requested = dg.UNKNOWN
    if function:
        requested = dg.BY_NAME.get(function.lower(), -1)
        if requested < 0:
            raise InvalidArgument(f"digest function {function[:40]!r} is unknown (known: {', '.join(dg.BY_NAME)})")
    d = dg.make_digest(requested, hash_, size)
    if size >= 1 << 63:
        raise InvalidArgument(f"digest {shown!r}: size {size} is not a 64-bit size")
    if max_size is not None and size > max_size:
        raise InvalidArgument(f"digest {shown!r}: size {size} is above this server's largest blob ({max_size} bytes)")
    return d


def digest_text(d: re_pb2.Digest) -> str | None:
    return f"{d.hash}/{d.size_bytes}" if d.hash else None


def _seconds(ts: Any) -> float | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.seconds + ts.nanos / 1e9


def response_of(job: Mapping[str, Any]) -> re_pb2.ExecuteResponse | None:
    if job["stage"] != COMPLETED or not job["response"]:
        return None
    response = re_pb2.ExecuteResponse()
    try:
        response.ParseFromString(job["response"])
    except DecodeError:
        return None
    return response


def stage_name(op: Mapping[str, Any], job: Mapping[str, Any]) -> str:
    return "COMPLETED" if op["cancelled"] else STAGES.get(job["stage"], str(job["stage"]))


def operation_row(op: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the operations list."""
    response = response_of(job)
    exit_code = worker = None
    status: dict[str, Any] | None = None
    cached = False
    if op["cancelled"]:
        status = {"code": "CANCELLED", "message": "operation cancelled"}
    elif response is not None:
        status = status_of(response)
        cached = response.cached_result
        if response.HasField("result"):
            exit_code = response.result.exit_code
            worker = response.result.execution_metadata.worker or None
    return {
        "name": op["name"],
        "instance": op["instance"],
        "stage": stage_name(op, job),
        "action_digest": job["action_key"],
        "tool_name": op["tool_name"],
        "tool_version": op["tool_version"],
        "invocation_id": op["invocation_id"],
        "correlated_invocations_id": op["correlated_invocations_id"],
        "action_mnemonic": op["action_mnemonic"],
        "target_id": op["target_id"][:1000],
        "identity": op["identity"],
        "worker": worker or job["worker"],
        "exit_code": exit_code,
        "status": status,
        "cached_result": cached,
        "queued_time": job["queued_time"],
        "start_time": job["start_time"],
        "completed_time": job["completed_time"],
        "created_time": op["created_time"],
    }


def status_of(response: re_pb2.ExecuteResponse) -> dict[str, Any]:
    from google.rpc import code_pb2

    code = response.status.code
    return {"code": code_pb2.Code.Name(code) if code in code_pb2.Code.values() else str(code),
            "message": response.status.message[:4000]}


def platform_of(p: re_pb2.Platform) -> list[dict[str, str]]:
    return [{"name": x.name, "value": x.value} for x in p.properties]


def action_view(action: re_pb2.Action, digest: str) -> dict[str, Any]:
    timeout = action.timeout.ToNanoseconds() / 1e9 if action.HasField("timeout") else None
    return {
        "digest": digest,
        "command_digest": digest_text(action.command_digest),
        "input_root_digest": digest_text(action.input_root_digest),
        "timeout": timeout,
        "do_not_cache": action.do_not_cache,
        "salt": action.salt.hex() if action.salt else None,
        "platform": platform_of(action.platform),
    }


def command_view(command: re_pb2.Command) -> dict[str, Any]:
    return {
        "arguments": list(command.arguments),
        "environment_variables": [{"name": e.name, "value": e.value} for e in command.environment_variables],
        "output_paths": list(command.output_paths),
        "output_files": list(command.output_files),
        "output_directories": list(command.output_directories),
        "working_directory": command.working_directory,
        "platform": platform_of(command.platform),
    }


def metadata_view(meta: re_pb2.ExecutedActionMetadata) -> dict[str, Any]:
    stamps = {name: _seconds(getattr(meta, f"{name}_timestamp")) for name in TIMESTAMPS}
    virtual = meta.virtual_execution_duration
    return {
        "worker": meta.worker,
        "timestamps": stamps,
        "virtual_execution_duration": virtual.ToNanoseconds() / 1e9 if meta.HasField("virtual_execution_duration")
        else None,
    }


def result_view(result: re_pb2.ActionResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "output_files": [
            {"path": f.path, "digest": digest_text(f.digest), "is_executable": f.is_executable,
             "inline": len(f.contents) if f.contents else None}
            for f in result.output_files
        ],
        "output_directories": [
            {"path": d.path, "tree_digest": digest_text(d.tree_digest),
             "root_directory_digest": digest_text(d.root_directory_digest)}
            for d in result.output_directories
        ],
        "output_symlinks": [{"path": s.path, "target": s.target}
                            for s in [*result.output_symlinks, *result.output_file_symlinks,
                                      *result.output_directory_symlinks]],
        "execution_metadata": metadata_view(result.execution_metadata),
    }


def directory_view(directory: re_pb2.Directory) -> dict[str, Any]:
    """A Directory's entries (at most MAX_LISTED_ENTRIES of each kind)."""
    cap = MAX_LISTED_ENTRIES
    return {
        "files": [{"name": f.name, "digest": digest_text(f.digest), "size": f.digest.size_bytes,
                   "is_executable": f.is_executable} for f in directory.files[:cap]],
        "directories": [{"name": d.name, "digest": digest_text(d.digest)} for d in directory.directories[:cap]],
        "symlinks": [{"name": s.name, "target": s.target} for s in directory.symlinks[:cap]],
        "truncated": max(len(directory.files), len(directory.directories), len(directory.symlinks)) > cap,
    }


def looks_like_directory(directory: re_pb2.Directory) -> bool:
    """Whether a blob that parsed as a Directory plausibly is one (arbitrary bytes often parse):
    some entry, every name a plain path component, every digest a hex hash."""
    entries = [*directory.files, *directory.directories, *directory.symlinks]
    if not entries:
        return False
    for e in entries:
        if not e.name or "/" in e.name or e.name in (".", ".."):
            return False
    for n in [*directory.files, *directory.directories]:
        if not n.digest.hash or n.digest.hash.strip("0123456789abcdef") or n.digest.size_bytes < 0:
            return False
    return True


def properties_of(raw: str) -> list[dict[str, str]]:
    try:
        return [{"name": str(k), "value": str(v)} for k, v in json.loads(raw)]
    except (ValueError, TypeError):
        return []


def safe_filename(name: str, fallback: str) -> str:
    """A download's file name: the last path component, printable ASCII without quotes."""
    base = name.rsplit("/", 1)[-1]
    cleaned = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in base)[:200]
    return cleaned.strip(". ") or fallback


# ---- builds (the Build Event Service's invocations) -----------------------------------------

MAX_ROWS = 10_000  # targets, tests or failures of one invocation listed (the rest are counted)
MAX_MESSAGE = 4000  # characters of a failure message shown


def invocation_view(s: Any) -> dict[str, Any]:
    """One invocation as `granary builds` lists it (an InvocationSummary as plain JSON: times in
    seconds, durations in seconds, absent numbers as null rather than 0)."""
    return {
        "invocation_id": s.invocation_id,
        "build_id": s.build_id,
        "project_id": s.project_id,
        "command": s.command,
        "patterns": list(s.patterns)[:100],
        "user": s.user,
        "host": s.host,
        "tool_version": s.tool_version,
        "start_time": _seconds(s.start_time),
        "end_time": _seconds(s.end_time),
        "duration": s.duration_ms / 1000 if s.HasField("end_time") and s.HasField("start_time") else None,
        "exit_code": s.exit_code if s.has_exit_code else None,
        "exit_code_name": s.exit_code_name,
        "result": s.result,
        "actions_created": s.actions_created,
        "actions_executed": s.actions_executed,
        "cache_hits": s.cache_hits if s.has_cache_hits else None,
        "processes": s.processes if s.has_cache_hits else None,
        "targets_configured": s.targets_configured,
        "targets_completed": s.targets_completed,
        "targets_failed": s.targets_failed,
        "tests_passed": s.tests_passed,
        "tests_failed": s.tests_failed,
        "events": s.events,
        "stream_finished": s.stream_finished,
        "first_failure": s.first_failure[:MAX_MESSAGE],
        "operations_filter": operations_filter(s.invocation_id),
    }


def invocation_brief(s: Any) -> dict[str, Any]:
    """What an operation shows of its build: enough to name it in a link."""
    return {"invocation_id": s.invocation_id, "command": s.command, "patterns": list(s.patterns)[:10],
            "result": s.result, "start_time": _seconds(s.start_time)}


def detail_view(d: Any) -> dict[str, Any]:
    """One invocation as `granary build ID` shows it: summary, targets, tests and failures (each list
    at most MAX_ROWS long; the full counts say how many there were)."""
    from granary.bes.decode import describe

    targets = [{"label": t.label, "kind": t.kind, "success": t.success, "failure": t.failure[:MAX_MESSAGE],
                "tags": list(t.tags)[:20]} for t in d.targets[:MAX_ROWS]]
    tests = [{"label": t.label, "status": t.status, "runs": t.runs, "duration": t.duration_ms / 1000,
              "cached": t.cached} for t in d.tests[:MAX_ROWS]]
    failures = [{"kind": f.kind, "label": f.label, "what": f.what, "exit_code": f.exit_code,
                 "message": f.message[:MAX_MESSAGE], "text": describe(f)[:MAX_MESSAGE]} for f in d.failures[:MAX_ROWS]]
    return {"summary": invocation_view(d.summary), "targets": targets, "tests": tests, "failures": failures,
            "counts": {"targets": len(d.targets), "tests": len(d.tests), "failures": len(d.failures)},
            "truncated": d.truncated}


def operations_filter(invocation_id: str) -> str | None:
    """The ListOperations filter that lists an invocation's operations (Bazel sends its invocation id
    as RequestMetadata.tool_invocation_id), None if the filter language cannot say the id."""
    if not invocation_id or "&" in invocation_id or ('"' in invocation_id and "'" in invocation_id):
        return None
    value = invocation_id
    if value != value.strip() or " " in value or value[0] in "\"'":
        value = f"'{value}'" if '"' in value else f'"{value}"'
    return f"invocation_id = {value} & sort_order = queued_time"


# ---- live logs --------------------------------------------------------------------------------

MAX_WAIT = 10.0  # seconds a live-log request waits for new output at most


def offset_of(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidArgument(f"offset {raw[:40]!r} is not a whole number of bytes")
    return int(raw)


def wait_of(raw: str | None) -> float:
    """Seconds to wait for output (default and at most MAX_WAIT)."""
    if raw is None or raw == "":
        return MAX_WAIT
    try:
        value = float(raw[:20])
    except ValueError:
        raise InvalidArgument(f"wait {raw[:40]!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_WAIT:  # NaN fails too
        raise InvalidArgument(f"wait {raw[:40]!r} is outside 0..{MAX_WAIT:g} seconds")
    return value


def utf8_text(data: bytes, final: bool) -> tuple[str, int]:
    """-> (text, bytes it covers): a UTF-8 character cut at the end of `data` is left for the next
    read (unless the stream ends there); invalid bytes are shown as U+FFFD."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(data, final)
    pending = len(decoder.getstate()[0])
    return text, len(data) - pending
