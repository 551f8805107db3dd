import datetime

from granary._proto.google.devtools.build.v1 import publish_build_event_pb2 as _publish_build_event_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryEventsRequest(_message.Message):
    __slots__ = ("stream_id_regex", "page_size", "page_token")
    STREAM_ID_REGEX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    stream_id_regex: str
    page_size: int
    page_token: str
    def __init__(self, stream_id_regex: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class StoredEvent(_message.Message):
    __slots__ = ("stream_name", "event", "project_id", "notification_keywords", "received_time")
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_TIME_FIELD_NUMBER: _ClassVar[int]
    stream_name: str
    event: _publish_build_event_pb2.OrderedBuildEvent
    project_id: str
    notification_keywords: _containers.RepeatedScalarFieldContainer[str]
    received_time: _timestamp_pb2.Timestamp
    def __init__(self, stream_name: _Optional[str] = ..., event: _Optional[_Union[_publish_build_event_pb2.OrderedBuildEvent, _Mapping]] = ..., project_id: _Optional[str] = ..., notification_keywords: _Optional[_Iterable[str]] = ..., received_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class QueryEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[StoredEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[StoredEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListInvocationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "build_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    build_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., build_id: _Optional[str] = ...) -> None: ...

class InvocationSummary(_message.Message):
    __slots__ = ("invocation_id", "build_id", "correlated_invocations_id", "project_id", "command", "patterns", "user", "host", "tool_version", "start_time", "end_time", "duration_ms", "has_exit_code", "exit_code", "exit_code_name", "result", "actions_created", "actions_executed", "has_cache_hits", "cache_hits", "processes", "targets_configured", "targets_completed", "targets_failed", "tests_passed", "tests_failed", "events", "stream_finished", "first_failure")
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    CORRELATED_INVOCATIONS_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TOOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_NAME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_CREATED_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_EXECUTED_FIELD_NUMBER: _ClassVar[int]
    HAS_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    TARGETS_CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    TARGETS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FAILED_FIELD_NUMBER: _ClassVar[int]
    TESTS_PASSED_FIELD_NUMBER: _ClassVar[int]
    TESTS_FAILED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FINISHED_FIELD_NUMBER: _ClassVar[int]
    FIRST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    build_id: str
    correlated_invocations_id: str
    project_id: str
    command: str
    patterns: _containers.RepeatedScalarFieldContainer[str]
    user: str
    host: str
    tool_version: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    duration_ms: int
    has_exit_code: bool
    exit_code: int
    exit_code_name: str
    result: str
    actions_created: int
    actions_executed: int
    has_cache_hits: bool
    cache_hits: int
    processes: int
    targets_configured: int
    targets_completed: int
    targets_failed: int
    tests_passed: int
    tests_failed: int
    events: int
    stream_finished: bool
    first_failure: str
    def __init__(self, invocation_id: _Optional[str] = ..., build_id: _Optional[str] = ..., correlated_invocations_id: _Optional[str] = ..., project_id: _Optional[str] = ..., command: _Optional[str] = ..., patterns: _Optional[_Iterable[str]] = ..., user: _Optional[str] = ..., host: _Optional[str] = ..., tool_version: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration_ms: _Optional[int] = ..., has_exit_code: _Optional[bool] = ..., exit_code: _Optional[int] = ..., exit_code_name: _Optional[str] = ..., result: _Optional[str] = ..., actions_created: _Optional[int] = ..., actions_executed: _Optional[int] = ..., has_cache_hits: _Optional[bool] = ..., cache_hits: _Optional[int] = ..., processes: _Optional[int] = ..., targets_configured: _Optional[int] = ..., targets_completed: _Optional[int] = ..., targets_failed: _Optional[int] = ..., tests_passed: _Optional[int] = ..., tests_failed: _Optional[int] = ..., events: _Optional[int] = ..., stream_finished: _Optional[bool] = ..., first_failure: _Optional[str] = ...) -> None: ...

class ListInvocationsResponse(_message.Message):
    __slots__ = ("invocations", "next_page_token")
    INVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    invocations: _containers.RepeatedCompositeFieldContainer[InvocationSummary]
    next_page_token: str
    def __init__(self, invocations: _Optional[_Iterable[_Union[InvocationSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetInvocationRequest(_message.Message):
    __slots__ = ("invocation_id",)
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    def __init__(self, invocation_id: _Optional[str] = ...) -> None: ...

class TargetResult(_message.Message):
    __slots__ = ("label", "kind", "success", "failure", "tags")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    label: str
    kind: str
    success: bool
    failure: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, label: _Optional[str] = ..., kind: _Optional[str] = ..., success: _Optional[bool] = ..., failure: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class TestResult(_message.Message):
    __slots__ = ("label", "status", "runs", "duration_ms", "cached")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    label: str
    status: str
    runs: int
    duration_ms: int
    cached: bool
    def __init__(self, label: _Optional[str] = ..., status: _Optional[str] = ..., runs: _Optional[int] = ..., duration_ms: _Optional[int] = ..., cached: _Optional[bool] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("kind", "label", "what", "exit_code", "message")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    label: str
    what: str
    exit_code: int
    message: str
    def __init__(self, kind: _Optional[str] = ..., label: _Optional[str] = ..., what: _Optional[str] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class InvocationDetail(_message.Message):
    __slots__ = ("summary", "targets", "tests", "failures", "truncated")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    TESTS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    summary: InvocationSummary
    targets: _containers.RepeatedCompositeFieldContainer[TargetResult]
    tests: _containers.RepeatedCompositeFieldContainer[TestResult]
    failures: _containers.RepeatedCompositeFieldContainer[Failure]
    truncated: bool
    def __init__(self, summary: _Optional[_Union[InvocationSummary, _Mapping]] = ..., targets: _Optional[_Iterable[_Union[TargetResult, _Mapping]]] = ..., tests: _Optional[_Iterable[_Union[TestResult, _Mapping]]] = ..., failures: _Optional[_Iterable[_Union[Failure, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...
