"""Publishing build events to a real Granary over gRPC, for the Build Event Service tests and
bench/bench_bes.py."""

from __future__ import annotations

import grpc

from granary._proto.build_event_stream import build_event_stream_pb2 as bep
from granary._proto.google.devtools.build.v1 import build_events_pb2 as be
from granary._proto.google.devtools.build.v1 import build_status_pb2
from granary._proto.google.devtools.build.v1 import publish_build_event_pb2 as pbe
from granary._proto.google.devtools.build.v1 import publish_build_event_pb2_grpc as pbe_grpc
from granary._proto.granary.builds.v1 import builds_pb2, builds_pb2_grpc

TOOL = be.StreamId.TOOL
CONTROLLER = be.StreamId.CONTROLLER


def stream_id(build_id: str, invocation_id: str, component: int = TOOL) -> be.StreamId:
    return be.StreamId(build_id=build_id, invocation_id=invocation_id, component=component)


def progress(text: str) -> bep.BuildEvent:
    return bep.BuildEvent(id=bep.BuildEventId(progress=bep.BuildEventId.ProgressId(opaque_count=1)),
                          progress=bep.Progress(stderr=text))


def tool_request(build_id: str, invocation_id: str, seq: int, bazel: bep.BuildEvent | None = None,
                 project_id: str = "", keywords: tuple[str, ...] = (), finish: bool = False,
                 check_preceding: bool = False) -> pbe.PublishBuildToolEventStreamRequest:
    """One request of a PublishBuildToolEventStream call, the way Bazel builds it: a Bazel
    event packed in bazel_event, or (finish) the component_stream_finished that ends a stream."""
    r = pbe.PublishBuildToolEventStreamRequest(project_id=project_id, notification_keywords=list(keywords),
                                               check_preceding_lifecycle_events_present=check_preceding)
    o = r.ordered_build_event
    o.stream_id.CopyFrom(stream_id(build_id, invocation_id))
    o.sequence_number = seq
    o.event.event_time.FromMilliseconds(1_700_000_000_000 + seq)
    if finish:
        o.event.component_stream_finished.type = be.BuildEvent.BuildComponentStreamFinished.FINISHED
    else:
        o.event.bazel_event.Pack(bazel if bazel is not None else progress(f"line {seq}\n"))
    return r


def lifecycle_request(build_id: str, invocation_id: str, seq: int, kind: str,
                      result: int = build_status_pb2.BuildStatus.COMMAND_SUCCEEDED,
                      check_preceding: bool = False) -> pbe.PublishLifecycleEventRequest:
    r = pbe.PublishLifecycleEventRequest(project_id="proj", check_preceding_lifecycle_events_present=check_preceding)
    o = r.build_event
    o.stream_id.CopyFrom(stream_id(build_id, invocation_id, CONTROLLER))
    o.sequence_number = seq
    ev = o.event
    if kind == "enqueued":
        ev.build_enqueued.SetInParent()
    elif kind == "started":
        ev.invocation_attempt_started.attempt_number = 1
    elif kind == "finished":
        ev.invocation_attempt_finished.invocation_status.result = result
    else:
        ev.build_finished.status.result = result
    return r


def bazel_build(invocation_id: str, labels: list[str], failing: str | None = None,
                tests: dict[str, int] | None = None) -> list[bep.BuildEvent]:
    """The Bazel events of a small `bazel build`: started, pattern, one configured and completed
    event per label, a failed action for `failing`, a test summary per label of `tests` (label ->
    bep.TestStatus), finished and metrics."""
    out = [bep.BuildEvent(id=bep.BuildEventId(started=bep.BuildEventId.BuildStartedId()),
                          started=bep.BuildStarted(uuid=invocation_id, command="build", start_time_millis=1_700_000_000_000,
                                                   build_tool_version="4.2.3")),
           bep.BuildEvent(id=bep.BuildEventId(pattern=bep.BuildEventId.PatternExpandedId(pattern=labels)),
                          expanded=bep.PatternExpanded()),
           bep.BuildEvent(id=bep.BuildEventId(workspace_status=bep.BuildEventId.WorkspaceStatusId()),
                          workspace_status=bep.WorkspaceStatus(item=[
                              bep.WorkspaceStatus.Item(key="BUILD_USER", value="alice"),
                              bep.WorkspaceStatus.Item(key="BUILD_HOST", value="ci-1")]))]
    for label in labels:
        out.append(bep.BuildEvent(id=bep.BuildEventId(target_configured=bep.BuildEventId.TargetConfiguredId(label=label)),
                                  configured=bep.TargetConfigured(target_kind="genrule rule")))
    for label in labels:
        if label == failing:
            out.append(bep.BuildEvent(
                id=bep.BuildEventId(action_completed=bep.BuildEventId.ActionCompletedId(primary_output="x", label=label)),
                action=bep.ActionExecuted(success=False, type="Genrule", exit_code=1)))
            out[-1].action.failure_detail.message = "Executing genrule failed: exit 1"
        done = bep.BuildEvent(id=bep.BuildEventId(target_completed=bep.BuildEventId.TargetCompletedId(label=label)),
                              completed=bep.TargetComplete(success=label != failing))
        out.append(done)
    for label, status in (tests or {}).items():
        out.append(bep.BuildEvent(id=bep.BuildEventId(test_summary=bep.BuildEventId.TestSummaryId(label=label)),
                                  test_summary=bep.TestSummary(overall_status=status, total_run_count=1,
                                                               total_run_duration_millis=1200)))
    out.append(progress("INFO: 4 processes: 1 remote cache hit, 3 internal.\n"))
    code = bep.BuildFinished.ExitCode(name="BUILD_FAILURE", code=1) if failing else \
        bep.BuildFinished.ExitCode(name="SUCCESS", code=0)
    out.append(bep.BuildEvent(id=bep.BuildEventId(build_finished=bep.BuildEventId.BuildFinishedId()),
                              finished=bep.BuildFinished(exit_code=code, finish_time_millis=1_700_000_002_500)))
    out.append(bep.BuildEvent(id=bep.BuildEventId(build_metrics=bep.BuildEventId.BuildMetricsId()),
                              build_metrics=bep.BuildMetrics(action_summary=bep.BuildMetrics.ActionSummary(
                                  actions_created=7, actions_executed=3))))
    return out


def publish_stub(channel: grpc.Channel) -> pbe_grpc.PublishBuildEventStub:
    return pbe_grpc.PublishBuildEventStub(channel)


def query_stub(channel: grpc.Channel) -> builds_pb2_grpc.BuildEventsStub:
    return builds_pb2_grpc.BuildEventsStub(channel)


def all_events(stub: builds_pb2_grpc.BuildEventsStub, regex: str, page_size: int = 0) -> list[builds_pb2.StoredEvent]:
    out: list[builds_pb2.StoredEvent] = []
    token = ""
    while True:
        page = stub.QueryEvents(builds_pb2.QueryEventsRequest(stream_id_regex=regex, page_size=page_size,
                                                              page_token=token))
        out += page.events
        token = page.next_page_token
        if not token:
            return out


def publish_build(address: str, invocation_id: str, labels: list[str], failing: str | None = None,
                  build_id: str = "", metadata: tuple[tuple[str, str], ...] = (),
                  tests: dict[str, int] | None = None) -> int:
    """Publish the tool stream of a small `bazel build` (bazel_build) as Bazel does, finished;
    -> the number of events acknowledged."""
    events = bazel_build(invocation_id, labels, failing, tests)
    build = build_id or f"build-{invocation_id}"
    reqs = [tool_request(build, invocation_id, i + 1, ev) for i, ev in enumerate(events)]
    reqs.append(tool_request(build, invocation_id, len(reqs) + 1, finish=True))
    with grpc.insecure_channel(address) as channel:
        acks = list(publish_stub(channel).PublishBuildToolEventStream(iter(reqs), metadata=metadata, timeout=60))
    assert [a.sequence_number for a in acks] == list(range(1, len(reqs) + 1))
    return len(acks)
