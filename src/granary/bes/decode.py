"""Reading Bazel's Build Event Protocol payloads: the per-invocation summary kept up to date
as events arrive (`apply`), and the decoded detail of one invocation (`detail`).

Bazel packs each build_event_stream.BuildEvent in a google.protobuf.Any inside the BES
event's bazel_event; anything else (lifecycle events, other tools) is stored but not decoded.
A payload that does not parse is stored all the same and only skipped here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError

from granary._proto.build_event_stream import build_event_stream_pb2 as bep
from granary._proto.google.devtools.build.v1 import build_events_pb2
from granary._proto.granary.builds.v1 import builds_pb2

BAZEL_EVENT_TYPE = "build_event_stream.BuildEvent"
# Bazel 4.2's final console summary, e.g. "INFO: 12 processes: 5 remote cache hit, 7 internal."
PROCESSES_RE = re.compile(r"INFO: (\d+) process(?:es)?(?::([^\n]*))?")
PART_RE = re.compile(r"(\d+) ([^,]+)")
# Abort reasons that are failures; the others (SKIPPED, NO_BUILD, NO_ANALYZE, INCOMPLETE)
# follow from a failure already reported or from what was asked.
FAILING_ABORTS = {
    bep.Aborted.USER_INTERRUPTED, bep.Aborted.TIME_OUT, bep.Aborted.REMOTE_ENVIRONMENT_FAILURE,
    bep.Aborted.INTERNAL, bep.Aborted.LOADING_FAILURE, bep.Aborted.ANALYSIS_FAILURE, bep.Aborted.OUT_OF_MEMORY,
}
FIRST_FAILURE_CHARS = 1000


def bazel_event(event: build_events_pb2.BuildEvent) -> bep.BuildEvent | None:
    """The Bazel event inside a BES event, or None (not one, or unreadable)."""
    if event.WhichOneof("event") != "bazel_event":
        return None
    packed = event.bazel_event
    if packed.type_url.rpartition("/")[2] != BAZEL_EVENT_TYPE:
        return None
    out = bep.BuildEvent()
    try:
        out.ParseFromString(packed.value)
    except DecodeError:
        return None
    return out


def kind_of(event: build_events_pb2.BuildEvent, bazel: bep.BuildEvent | None) -> str:
    kind = event.WhichOneof("event") or "none"
    if bazel is not None:
        kind += ":" + (bazel.WhichOneof("payload") or "none")
    return kind


def empty_summary(invocation_id: str, build_id: str, now: float) -> dict[str, Any]:
    return {
        "invocation_id": invocation_id, "build_id": build_id, "project_id": "", "command": "", "patterns": "[]",
        "user": "", "host": "", "tool_version": "", "created_time": now, "last_time": now, "start_time": None,
        "end_time": None, "exit_code": None, "exit_code_name": "", "lifecycle_result": "", "actions_created": 0,
        "actions_executed": 0, "cache_hits": None, "processes": None, "cache_hits_from_metrics": False,
        "targets_configured": 0, "targets_completed": 0, "targets_failed": 0, "tests_passed": 0,
        "tests_failed": 0, "events": 0, "stream_finished": False, "first_failure": "",
    }


def _label(event_id: bep.BuildEventId) -> str:
    which = event_id.WhichOneof("id")
    if which is None:
        return ""
    return getattr(getattr(event_id, which), "label", "")


def _fail(summary: dict[str, Any], text: str) -> None:
    if not summary["first_failure"]:
        summary["first_failure"] = text[:FIRST_FAILURE_CHARS]


def action_failure(ev: bep.BuildEvent) -> builds_pb2.Failure:
    a = ev.action
    label = ev.id.action_completed.label or a.label
    message = a.failure_detail.message or (f"stderr: {a.stderr.uri}" if a.stderr.uri else "")
    return builds_pb2.Failure(kind="action", label=label, what=a.type, exit_code=a.exit_code, message=message)


def abort_failure(ev: bep.BuildEvent) -> builds_pb2.Failure:
    reason = bep.Aborted.AbortReason.Name(ev.aborted.reason)
    return builds_pb2.Failure(kind="aborted", label=_label(ev.id), what=reason, message=ev.aborted.description)


def describe(f: builds_pb2.Failure) -> str:
    head = f"{f.label or '(build)'}: {f.what}" if f.what else f.label or "(build)"
    if f.kind == "action":
        head += f" exited {f.exit_code}"
    return f"{head}: {f.message}" if f.message else head


def _cache_line(summary: dict[str, Any], text: str) -> None:
    """Bazel 4.2 reports cache hits only on the console: take its last processes line."""
    for m in PROCESSES_RE.finditer(text):
        hits = sum(int(n) for n, kind in PART_RE.findall(m.group(2) or "") if kind.strip().endswith("cache hit"))
        summary["processes"] = int(m.group(1))
        summary["cache_hits"] = hits


def apply(summary: dict[str, Any], ev: bep.BuildEvent) -> None:
    """Fold one Bazel event into the invocation's summary row (a dict of its columns)."""
    which = ev.WhichOneof("payload")
    if which == "started":
        s = ev.started
        summary["command"] = s.command[:64]
        summary["tool_version"] = s.build_tool_version[:255]
        if s.start_time_millis:
            summary["start_time"] = s.start_time_millis / 1000
        if s.user:
            summary["user"] = s.user[:255]
        if s.host:
            summary["host"] = s.host[:255]
    elif ev.id.WhichOneof("id") == "pattern" and summary["patterns"] == "[]":
        summary["patterns"] = json.dumps(list(ev.id.pattern.pattern))
    if which == "workspace_status":
        items = {i.key: i.value for i in ev.workspace_status.item}
        if not summary["user"] and items.get("BUILD_USER"):
            summary["user"] = items["BUILD_USER"][:255]
        if not summary["host"] and items.get("BUILD_HOST"):
            summary["host"] = items["BUILD_HOST"][:255]
    elif which == "configured":
        if not ev.id.target_configured.aspect:
            summary["targets_configured"] += 1
    elif which == "completed":
        if not ev.id.target_completed.aspect:
            summary["targets_completed"] += 1
            if not ev.completed.success:
                summary["targets_failed"] += 1
                message = ev.completed.failure_detail.message or "failed to build"
                _fail(summary, f"{ev.id.target_completed.label}: {message}")
    elif which == "action":
        if not ev.action.success:
            _fail(summary, describe(action_failure(ev)))
    elif which == "aborted":
        if ev.aborted.reason in FAILING_ABORTS:
            _fail(summary, describe(abort_failure(ev)))
    elif which == "test_summary":
        if ev.test_summary.overall_status in (bep.PASSED, bep.FLAKY):
            summary["tests_passed"] += 1
        else:
            summary["tests_failed"] += 1
    elif which == "finished":
        f = ev.finished
        summary["exit_code"] = f.exit_code.code
        summary["exit_code_name"] = f.exit_code.name[:64]
        if f.finish_time_millis:
            summary["end_time"] = f.finish_time_millis / 1000
    elif which == "build_metrics":
        a = ev.build_metrics.action_summary
        summary["actions_created"] = a.actions_created
        summary["actions_executed"] = a.actions_executed
        runners = {r.name: r.count for r in a.runner_count}
        if runners or a.remote_cache_hits:
            hits = sum(n for name, n in runners.items() if name.endswith("cache hit"))
            summary["cache_hits"] = max(hits, a.remote_cache_hits)
            summary["processes"] = runners.get("total", sum(n for k, n in runners.items() if k != "total"))
            summary["cache_hits_from_metrics"] = True
    elif which == "progress" and not summary["cache_hits_from_metrics"] and "process" in ev.progress.stderr:
        _cache_line(summary, ev.progress.stderr)


def result_of(row: Any) -> str:
    if row["exit_code"] is not None:
        return "success" if row["exit_code"] == 0 else "failed"
    if row["lifecycle_result"]:
        return row["lifecycle_result"].lower()
    return "running"


def summary_message(row: Any) -> builds_pb2.InvocationSummary:
    """The API form of an invocations row."""
    out = builds_pb2.InvocationSummary(
        invocation_id=row["invocation_id"], build_id=row["build_id"], correlated_invocations_id=row["build_id"],
        project_id=row["project_id"], command=row["command"], patterns=json.loads(row["patterns"] or "[]"),
        user=row["user"], host=row["host"], tool_version=row["tool_version"],
        exit_code_name=row["exit_code_name"], result=result_of(row), actions_created=row["actions_created"],
        actions_executed=row["actions_executed"], targets_configured=row["targets_configured"],
        targets_completed=row["targets_completed"], targets_failed=row["targets_failed"],
        tests_passed=row["tests_passed"], tests_failed=row["tests_failed"], events=row["events"],
        stream_finished=bool(row["stream_finished"]), first_failure=row["first_failure"],
    )
    if row["start_time"] is not None:
        out.start_time.FromMilliseconds(round(row["start_time"] * 1000))
    if row["end_time"] is not None:
        out.end_time.FromMilliseconds(round(row["end_time"] * 1000))
        if row["start_time"] is not None:
            out.duration_ms = round((row["end_time"] - row["start_time"]) * 1000)
    if row["exit_code"] is not None:
        out.has_exit_code = True
        out.exit_code = row["exit_code"]
    if row["cache_hits"] is not None:
        out.has_cache_hits = True
        out.cache_hits = row["cache_hits"]
        out.processes = row["processes"] or 0
    return out


def detail(events: Iterable[bep.BuildEvent]) -> tuple[list[builds_pb2.TargetResult], list[builds_pb2.TestResult],
                                                       list[builds_pb2.Failure]]:
    """Targets, tests and failures of one invocation, from its Bazel events in order."""
    kinds: dict[str, tuple[str, list[str]]] = {}
    targets: dict[str, builds_pb2.TargetResult] = {}
    tests: dict[str, builds_pb2.TestResult] = {}
    failures: list[builds_pb2.Failure] = []
    for ev in events:
        which = ev.WhichOneof("payload")
        if which == "configured" and not ev.id.target_configured.aspect:
            kinds[ev.id.target_configured.label] = (ev.configured.target_kind, list(ev.configured.tag))
        elif which == "completed" and not ev.id.target_completed.aspect:
            label = ev.id.target_completed.label
            kind, tags = kinds.get(label, ("", []))
            failure = "" if ev.completed.success else (ev.completed.failure_detail.message or "failed to build")
            targets[label] = builds_pb2.TargetResult(
                label=label, kind=kind, success=ev.completed.success, failure=failure, tags=tags or list(ev.completed.tag))
        elif which == "test_summary":
            t = ev.test_summary
            duration = t.total_run_duration_millis or max(0, t.last_stop_time_millis - t.first_start_time_millis)
            tests[ev.id.test_summary.label] = builds_pb2.TestResult(
                label=ev.id.test_summary.label, status=bep.TestStatus.Name(t.overall_status), runs=t.total_run_count,
                duration_ms=duration, cached=t.total_num_cached > 0)
        elif which == "action" and not ev.action.success:
            failures.append(action_failure(ev))
        elif which == "aborted" and ev.aborted.reason in FAILING_ABORTS:
            failures.append(abort_failure(ev))
    return list(targets.values()), list(tests.values()), failures
