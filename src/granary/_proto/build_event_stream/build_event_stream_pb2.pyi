from granary._proto.build_event_stream import command_line_pb2 as _command_line_pb2
from granary._proto.build_event_stream import failure_details_pb2 as _failure_details_pb2
from granary._proto.build_event_stream import invocation_policy_pb2 as _invocation_policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TestSize(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN: _ClassVar[TestSize]
    SMALL: _ClassVar[TestSize]
    MEDIUM: _ClassVar[TestSize]
    LARGE: _ClassVar[TestSize]
    ENORMOUS: _ClassVar[TestSize]

class TestStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NO_STATUS: _ClassVar[TestStatus]
    PASSED: _ClassVar[TestStatus]
    FLAKY: _ClassVar[TestStatus]
    TIMEOUT: _ClassVar[TestStatus]
    FAILED: _ClassVar[TestStatus]
    INCOMPLETE: _ClassVar[TestStatus]
    REMOTE_FAILURE: _ClassVar[TestStatus]
    FAILED_TO_BUILD: _ClassVar[TestStatus]
    TOOL_HALTED_BEFORE_TESTING: _ClassVar[TestStatus]
UNKNOWN: TestSize
SMALL: TestSize
MEDIUM: TestSize
LARGE: TestSize
ENORMOUS: TestSize
NO_STATUS: TestStatus
PASSED: TestStatus
FLAKY: TestStatus
TIMEOUT: TestStatus
FAILED: TestStatus
INCOMPLETE: TestStatus
REMOTE_FAILURE: TestStatus
FAILED_TO_BUILD: TestStatus
TOOL_HALTED_BEFORE_TESTING: TestStatus

class BuildEventId(_message.Message):
    __slots__ = ("unknown", "progress", "started", "unstructured_command_line", "structured_command_line", "workspace_status", "options_parsed", "fetch", "configuration", "target_configured", "pattern", "pattern_skipped", "named_set", "target_completed", "action_completed", "unconfigured_label", "configured_label", "test_result", "test_summary", "build_finished", "build_tool_logs", "build_metrics", "workspace", "build_metadata", "convenience_symlinks_identified")
    class UnknownBuildEventId(_message.Message):
        __slots__ = ("details",)
        DETAILS_FIELD_NUMBER: _ClassVar[int]
        details: str
        def __init__(self, details: _Optional[str] = ...) -> None: ...
    class ProgressId(_message.Message):
        __slots__ = ("opaque_count",)
        OPAQUE_COUNT_FIELD_NUMBER: _ClassVar[int]
        opaque_count: int
        def __init__(self, opaque_count: _Optional[int] = ...) -> None: ...
    class BuildStartedId(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class UnstructuredCommandLineId(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class StructuredCommandLineId(_message.Message):
        __slots__ = ("command_line_label",)
        COMMAND_LINE_LABEL_FIELD_NUMBER: _ClassVar[int]
        command_line_label: str
        def __init__(self, command_line_label: _Optional[str] = ...) -> None: ...
    class WorkspaceStatusId(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class OptionsParsedId(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class FetchId(_message.Message):
        __slots__ = ("url",)
        URL_FIELD_NUMBER: _ClassVar[int]
        url: str
        def __init__(self, url: _Optional[str] = ...) -> None: ...
    class PatternExpandedId(_message.Message):
        __slots__ = ("pattern",)
        PATTERN_FIELD_NUMBER: _ClassVar[int]
        pattern: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, pattern: _Optional[_Iterable[str]] = ...) -> None: ...
    class WorkspaceConfigId(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class BuildMetadataId(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class TargetConfiguredId(_message.Message):
        __slots__ = ("label", "aspect")
        LABEL_FIELD_NUMBER: _ClassVar[int]
        ASPECT_FIELD_NUMBER: _ClassVar[int]
        label: str
        aspect: str
        def __init__(self, label: _Optional[str] = ..., aspect: _Optional[str] = ...) -> None: ...
    class NamedSetOfFilesId(_message.Message):
        __slots__ = ("id",)
        ID_FIELD_NUMBER: _ClassVar[int]
        id: str
        def __init__(self, id: _Optional[str] = ...) -> None: ...
    class ConfigurationId(_message.Message):
        __slots__ = ("id",)
        ID_FIELD_NUMBER: _ClassVar[int]
        id: str
        def __init__(self, id: _Optional[str] = ...) -> None: ...
    class TargetCompletedId(_message.Message):
        __slots__ = ("label", "configuration", "aspect")
        LABEL_FIELD_NUMBER: _ClassVar[int]
        CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
        ASPECT_FIELD_NUMBER: _ClassVar[int]
        label: str
        configuration: BuildEventId.ConfigurationId
        aspect: str
        def __init__(self, label: _Optional[str] = ..., configuration: _Optional[_Union[BuildEventId.ConfigurationId, _Mapping]] = ..., aspect: _Optional[str] = ...) -> None: ...
    class ActionCompletedId(_message.Message):
        __slots__ = ("primary_output", "label", "configuration")
        PRIMARY_OUTPUT_FIELD_NUMBER: _ClassVar[int]
        LABEL_FIELD_NUMBER: _ClassVar[int]
        CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
        primary_output: str
        label: str
        configuration: BuildEventId.ConfigurationId
        def __init__(self, primary_output: _Optional[str] = ..., label: _Optional[str] = ..., configuration: _Optional[_Union[BuildEventId.ConfigurationId, _Mapping]] = ...) -> None: ...
    class UnconfiguredLabelId(_message.Message):
        __slots__ = ("label",)
        LABEL_FIELD_NUMBER: _ClassVar[int]
        label: str
        def __init__(self, label: _Optional[str] = ...) -> None: ...
    class ConfiguredLabelId(_message.Message):
        __slots__ = ("label", "configuration")
        LABEL_FIELD_NUMBER: _ClassVar[int]
        CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
        label: str
        configuration: BuildEventId.ConfigurationId
        def __init__(self, label: _Optional[str] = ..., configuration: _Optional[_Union[BuildEventId.ConfigurationId, _Mapping]] = ...) -> None: ...
    class TestResultId(_message.Message):
        __slots__ = ("label", "configuration", "run", "shard", "attempt")
        LABEL_FIELD_NUMBER: _ClassVar[int]
        CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
        RUN_FIELD_NUMBER: _ClassVar[int]
        SHARD_FIELD_NUMBER: _ClassVar[int]
        ATTEMPT_FIELD_NUMBER: _ClassVar[int]
        label: str
        configuration: BuildEventId.ConfigurationId
        run: int
        shard: int
        attempt: int
        def __init__(self, label: _Optional[str] = ..., configuration: _Optional[_Union[BuildEventId.ConfigurationId, _Mapping]] = ..., run: _Optional[int] = ..., shard: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...
    class TestSummaryId(_message.Message):
        __slots__ = ("label", "configuration")
        LABEL_FIELD_NUMBER: _ClassVar[int]
        CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
        label: str
        configuration: BuildEventId.ConfigurationId
        def __init__(self, label: _Optional[str] = ..., configuration: _Optional[_Union[BuildEventId.ConfigurationId, _Mapping]] = ...) -> None: ...
    class BuildFinishedId(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class BuildToolLogsId(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class BuildMetricsId(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class ConvenienceSymlinksIdentifiedId(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    UNSTRUCTURED_COMMAND_LINE_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_COMMAND_LINE_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_STATUS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_PARSED_FIELD_NUMBER: _ClassVar[int]
    FETCH_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    PATTERN_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    NAMED_SET_FIELD_NUMBER: _ClassVar[int]
    TARGET_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ACTION_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    UNCONFIGURED_LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_LABEL_FIELD_NUMBER: _ClassVar[int]
    TEST_RESULT_FIELD_NUMBER: _ClassVar[int]
    TEST_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    BUILD_FINISHED_FIELD_NUMBER: _ClassVar[int]
    BUILD_TOOL_LOGS_FIELD_NUMBER: _ClassVar[int]
    BUILD_METRICS_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    BUILD_METADATA_FIELD_NUMBER: _ClassVar[int]
    CONVENIENCE_SYMLINKS_IDENTIFIED_FIELD_NUMBER: _ClassVar[int]
    unknown: BuildEventId.UnknownBuildEventId
    progress: BuildEventId.ProgressId
    started: BuildEventId.BuildStartedId
    unstructured_command_line: BuildEventId.UnstructuredCommandLineId
    structured_command_line: BuildEventId.StructuredCommandLineId
    workspace_status: BuildEventId.WorkspaceStatusId
    options_parsed: BuildEventId.OptionsParsedId
    fetch: BuildEventId.FetchId
    configuration: BuildEventId.ConfigurationId
    target_configured: BuildEventId.TargetConfiguredId
    pattern: BuildEventId.PatternExpandedId
    pattern_skipped: BuildEventId.PatternExpandedId
    named_set: BuildEventId.NamedSetOfFilesId
    target_completed: BuildEventId.TargetCompletedId
    action_completed: BuildEventId.ActionCompletedId
    unconfigured_label: BuildEventId.UnconfiguredLabelId
    configured_label: BuildEventId.ConfiguredLabelId
    test_result: BuildEventId.TestResultId
    test_summary: BuildEventId.TestSummaryId
    build_finished: BuildEventId.BuildFinishedId
    build_tool_logs: BuildEventId.BuildToolLogsId
    build_metrics: BuildEventId.BuildMetricsId
    workspace: BuildEventId.WorkspaceConfigId
    build_metadata: BuildEventId.BuildMetadataId
    convenience_symlinks_identified: BuildEventId.ConvenienceSymlinksIdentifiedId
    def __init__(self, unknown: _Optional[_Union[BuildEventId.UnknownBuildEventId, _Mapping]] = ..., progress: _Optional[_Union[BuildEventId.ProgressId, _Mapping]] = ..., started: _Optional[_Union[BuildEventId.BuildStartedId, _Mapping]] = ..., unstructured_command_line: _Optional[_Union[BuildEventId.UnstructuredCommandLineId, _Mapping]] = ..., structured_command_line: _Optional[_Union[BuildEventId.StructuredCommandLineId, _Mapping]] = ..., workspace_status: _Optional[_Union[BuildEventId.WorkspaceStatusId, _Mapping]] = ..., options_parsed: _Optional[_Union[BuildEventId.OptionsParsedId, _Mapping]] = ..., fetch: _Optional[_Union[BuildEventId.FetchId, _Mapping]] = ..., configuration: _Optional[_Union[BuildEventId.ConfigurationId, _Mapping]] = ..., target_configured: _Optional[_Union[BuildEventId.TargetConfiguredId, _Mapping]] = ..., pattern: _Optional[_Union[BuildEventId.PatternExpandedId, _Mapping]] = ..., pattern_skipped: _Optional[_Union[BuildEventId.PatternExpandedId, _Mapping]] = ..., named_set: _Optional[_Union[BuildEventId.NamedSetOfFilesId, _Mapping]] = ..., target_completed: _Optional[_Union[BuildEventId.TargetCompletedId, _Mapping]] = ..., action_completed: _Optional[_Union[BuildEventId.ActionCompletedId, _Mapping]] = ..., unconfigured_label: _Optional[_Union[BuildEventId.UnconfiguredLabelId, _Mapping]] = ..., configured_label: _Optional[_Union[BuildEventId.ConfiguredLabelId, _Mapping]] = ..., test_result: _Optional[_Union[BuildEventId.TestResultId, _Mapping]] = ..., test_summary: _Optional[_Union[BuildEventId.TestSummaryId, _Mapping]] = ..., build_finished: _Optional[_Union[BuildEventId.BuildFinishedId, _Mapping]] = ..., build_tool_logs: _Optional[_Union[BuildEventId.BuildToolLogsId, _Mapping]] = ..., build_metrics: _Optional[_Union[BuildEventId.BuildMetricsId, _Mapping]] = ..., workspace: _Optional[_Union[BuildEventId.WorkspaceConfigId, _Mapping]] = ..., build_metadata: _Optional[_Union[BuildEventId.BuildMetadataId, _Mapping]] = ..., convenience_symlinks_identified: _Optional[_Union[BuildEventId.ConvenienceSymlinksIdentifiedId, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stdout", "stderr")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    stdout: str
    stderr: str
    def __init__(self, stdout: _Optional[str] = ..., stderr: _Optional[str] = ...) -> None: ...

class Aborted(_message.Message):
    __slots__ = ("reason", "description")
    class AbortReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[Aborted.AbortReason]
        USER_INTERRUPTED: _ClassVar[Aborted.AbortReason]
        NO_ANALYZE: _ClassVar[Aborted.AbortReason]
        NO_BUILD: _ClassVar[Aborted.AbortReason]
        TIME_OUT: _ClassVar[Aborted.AbortReason]
        REMOTE_ENVIRONMENT_FAILURE: _ClassVar[Aborted.AbortReason]
        INTERNAL: _ClassVar[Aborted.AbortReason]
        LOADING_FAILURE: _ClassVar[Aborted.AbortReason]
        ANALYSIS_FAILURE: _ClassVar[Aborted.AbortReason]
        SKIPPED: _ClassVar[Aborted.AbortReason]
        INCOMPLETE: _ClassVar[Aborted.AbortReason]
        OUT_OF_MEMORY: _ClassVar[Aborted.AbortReason]
    UNKNOWN: Aborted.AbortReason
    USER_INTERRUPTED: Aborted.AbortReason
    NO_ANALYZE: Aborted.AbortReason
    NO_BUILD: Aborted.AbortReason
    TIME_OUT: Aborted.AbortReason
    REMOTE_ENVIRONMENT_FAILURE: Aborted.AbortReason
    INTERNAL: Aborted.AbortReason
    LOADING_FAILURE: Aborted.AbortReason
    ANALYSIS_FAILURE: Aborted.AbortReason
    SKIPPED: Aborted.AbortReason
    INCOMPLETE: Aborted.AbortReason
    OUT_OF_MEMORY: Aborted.AbortReason
    REASON_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    reason: Aborted.AbortReason
    description: str
    def __init__(self, reason: _Optional[_Union[Aborted.AbortReason, str]] = ..., description: _Optional[str] = ...) -> None: ...

class BuildStarted(_message.Message):
    __slots__ = ("uuid", "start_time_millis", "build_tool_version", "options_description", "command", "working_directory", "workspace_directory", "server_pid", "host", "user")
    UUID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_MILLIS_FIELD_NUMBER: _ClassVar[int]
    BUILD_TOOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    SERVER_PID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    start_time_millis: int
    build_tool_version: str
    options_description: str
    command: str
    working_directory: str
    workspace_directory: str
    server_pid: int
    host: str
    user: str
    def __init__(self, uuid: _Optional[str] = ..., start_time_millis: _Optional[int] = ..., build_tool_version: _Optional[str] = ..., options_description: _Optional[str] = ..., command: _Optional[str] = ..., working_directory: _Optional[str] = ..., workspace_directory: _Optional[str] = ..., server_pid: _Optional[int] = ..., host: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class WorkspaceConfig(_message.Message):
    __slots__ = ("local_exec_root",)
    LOCAL_EXEC_ROOT_FIELD_NUMBER: _ClassVar[int]
    local_exec_root: str
    def __init__(self, local_exec_root: _Optional[str] = ...) -> None: ...

class UnstructuredCommandLine(_message.Message):
    __slots__ = ("args",)
    ARGS_FIELD_NUMBER: _ClassVar[int]
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, args: _Optional[_Iterable[str]] = ...) -> None: ...

class OptionsParsed(_message.Message):
    __slots__ = ("startup_options", "explicit_startup_options", "cmd_line", "explicit_cmd_line", "invocation_policy", "tool_tag")
    STARTUP_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_STARTUP_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CMD_LINE_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_CMD_LINE_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_POLICY_FIELD_NUMBER: _ClassVar[int]
    TOOL_TAG_FIELD_NUMBER: _ClassVar[int]
    startup_options: _containers.RepeatedScalarFieldContainer[str]
    explicit_startup_options: _containers.RepeatedScalarFieldContainer[str]
    cmd_line: _containers.RepeatedScalarFieldContainer[str]
    explicit_cmd_line: _containers.RepeatedScalarFieldContainer[str]
    invocation_policy: _invocation_policy_pb2.InvocationPolicy
    tool_tag: str
    def __init__(self, startup_options: _Optional[_Iterable[str]] = ..., explicit_startup_options: _Optional[_Iterable[str]] = ..., cmd_line: _Optional[_Iterable[str]] = ..., explicit_cmd_line: _Optional[_Iterable[str]] = ..., invocation_policy: _Optional[_Union[_invocation_policy_pb2.InvocationPolicy, _Mapping]] = ..., tool_tag: _Optional[str] = ...) -> None: ...

class Fetch(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class WorkspaceStatus(_message.Message):
    __slots__ = ("item",)
    class Item(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: _containers.RepeatedCompositeFieldContainer[WorkspaceStatus.Item]
    def __init__(self, item: _Optional[_Iterable[_Union[WorkspaceStatus.Item, _Mapping]]] = ...) -> None: ...

class BuildMetadata(_message.Message):
    __slots__ = ("metadata",)
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METADATA_FIELD_NUMBER: _ClassVar[int]
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Configuration(_message.Message):
    __slots__ = ("mnemonic", "platform_name", "cpu", "make_variable")
    class MakeVariableEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MNEMONIC_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_NAME_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MAKE_VARIABLE_FIELD_NUMBER: _ClassVar[int]
    mnemonic: str
    platform_name: str
    cpu: str
    make_variable: _containers.ScalarMap[str, str]
    def __init__(self, mnemonic: _Optional[str] = ..., platform_name: _Optional[str] = ..., cpu: _Optional[str] = ..., make_variable: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PatternExpanded(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TargetConfigured(_message.Message):
    __slots__ = ("target_kind", "test_size", "tag")
    TARGET_KIND_FIELD_NUMBER: _ClassVar[int]
    TEST_SIZE_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    target_kind: str
    test_size: TestSize
    tag: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, target_kind: _Optional[str] = ..., test_size: _Optional[_Union[TestSize, str]] = ..., tag: _Optional[_Iterable[str]] = ...) -> None: ...

class File(_message.Message):
    __slots__ = ("path_prefix", "name", "uri", "contents")
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    CONTENTS_FIELD_NUMBER: _ClassVar[int]
    path_prefix: _containers.RepeatedScalarFieldContainer[str]
    name: str
    uri: str
    contents: bytes
    def __init__(self, path_prefix: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ..., uri: _Optional[str] = ..., contents: _Optional[bytes] = ...) -> None: ...

class NamedSetOfFiles(_message.Message):
    __slots__ = ("files", "file_sets")
    FILES_FIELD_NUMBER: _ClassVar[int]
    FILE_SETS_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[File]
    file_sets: _containers.RepeatedCompositeFieldContainer[BuildEventId.NamedSetOfFilesId]
    def __init__(self, files: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., file_sets: _Optional[_Iterable[_Union[BuildEventId.NamedSetOfFilesId, _Mapping]]] = ...) -> None: ...

class ActionExecuted(_message.Message):
    __slots__ = ("success", "type", "exit_code", "stdout", "stderr", "label", "configuration", "primary_output", "command_line", "action_metadata_logs", "failure_detail")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_LINE_FIELD_NUMBER: _ClassVar[int]
    ACTION_METADATA_LOGS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    success: bool
    type: str
    exit_code: int
    stdout: File
    stderr: File
    label: str
    configuration: BuildEventId.ConfigurationId
    primary_output: File
    command_line: _containers.RepeatedScalarFieldContainer[str]
    action_metadata_logs: _containers.RepeatedCompositeFieldContainer[File]
    failure_detail: _failure_details_pb2.FailureDetail
    def __init__(self, success: _Optional[bool] = ..., type: _Optional[str] = ..., exit_code: _Optional[int] = ..., stdout: _Optional[_Union[File, _Mapping]] = ..., stderr: _Optional[_Union[File, _Mapping]] = ..., label: _Optional[str] = ..., configuration: _Optional[_Union[BuildEventId.ConfigurationId, _Mapping]] = ..., primary_output: _Optional[_Union[File, _Mapping]] = ..., command_line: _Optional[_Iterable[str]] = ..., action_metadata_logs: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., failure_detail: _Optional[_Union[_failure_details_pb2.FailureDetail, _Mapping]] = ...) -> None: ...

class OutputGroup(_message.Message):
    __slots__ = ("name", "file_sets")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_SETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    file_sets: _containers.RepeatedCompositeFieldContainer[BuildEventId.NamedSetOfFilesId]
    def __init__(self, name: _Optional[str] = ..., file_sets: _Optional[_Iterable[_Union[BuildEventId.NamedSetOfFilesId, _Mapping]]] = ...) -> None: ...

class TargetComplete(_message.Message):
    __slots__ = ("success", "target_kind", "test_size", "output_group", "important_output", "directory_output", "tag", "test_timeout_seconds", "failure_detail")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    TARGET_KIND_FIELD_NUMBER: _ClassVar[int]
    TEST_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_GROUP_FIELD_NUMBER: _ClassVar[int]
    IMPORTANT_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    TEST_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    success: bool
    target_kind: str
    test_size: TestSize
    output_group: _containers.RepeatedCompositeFieldContainer[OutputGroup]
    important_output: _containers.RepeatedCompositeFieldContainer[File]
    directory_output: _containers.RepeatedCompositeFieldContainer[File]
    tag: _containers.RepeatedScalarFieldContainer[str]
    test_timeout_seconds: int
    failure_detail: _failure_details_pb2.FailureDetail
    def __init__(self, success: _Optional[bool] = ..., target_kind: _Optional[str] = ..., test_size: _Optional[_Union[TestSize, str]] = ..., output_group: _Optional[_Iterable[_Union[OutputGroup, _Mapping]]] = ..., important_output: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., directory_output: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., tag: _Optional[_Iterable[str]] = ..., test_timeout_seconds: _Optional[int] = ..., failure_detail: _Optional[_Union[_failure_details_pb2.FailureDetail, _Mapping]] = ...) -> None: ...

class TestResult(_message.Message):
    __slots__ = ("status", "status_details", "cached_locally", "test_attempt_start_millis_epoch", "test_attempt_duration_millis", "test_action_output", "warning", "execution_info")
    class ExecutionInfo(_message.Message):
        __slots__ = ("timeout_seconds", "strategy", "cached_remotely", "exit_code", "hostname", "timing_breakdown", "resource_usage")
        class TimingBreakdown(_message.Message):
            __slots__ = ("child", "name", "time_millis")
            CHILD_FIELD_NUMBER: _ClassVar[int]
            NAME_FIELD_NUMBER: _ClassVar[int]
            TIME_MILLIS_FIELD_NUMBER: _ClassVar[int]
            child: _containers.RepeatedCompositeFieldContainer[TestResult.ExecutionInfo.TimingBreakdown]
            name: str
            time_millis: int
            def __init__(self, child: _Optional[_Iterable[_Union[TestResult.ExecutionInfo.TimingBreakdown, _Mapping]]] = ..., name: _Optional[str] = ..., time_millis: _Optional[int] = ...) -> None: ...
        class ResourceUsage(_message.Message):
            __slots__ = ("name", "value")
            NAME_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            name: str
            value: int
            def __init__(self, name: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
        TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
        STRATEGY_FIELD_NUMBER: _ClassVar[int]
        CACHED_REMOTELY_FIELD_NUMBER: _ClassVar[int]
        EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
        HOSTNAME_FIELD_NUMBER: _ClassVar[int]
        TIMING_BREAKDOWN_FIELD_NUMBER: _ClassVar[int]
        RESOURCE_USAGE_FIELD_NUMBER: _ClassVar[int]
        timeout_seconds: int
        strategy: str
        cached_remotely: bool
        exit_code: int
        hostname: str
        timing_breakdown: TestResult.ExecutionInfo.TimingBreakdown
        resource_usage: _containers.RepeatedCompositeFieldContainer[TestResult.ExecutionInfo.ResourceUsage]
        def __init__(self, timeout_seconds: _Optional[int] = ..., strategy: _Optional[str] = ..., cached_remotely: _Optional[bool] = ..., exit_code: _Optional[int] = ..., hostname: _Optional[str] = ..., timing_breakdown: _Optional[_Union[TestResult.ExecutionInfo.TimingBreakdown, _Mapping]] = ..., resource_usage: _Optional[_Iterable[_Union[TestResult.ExecutionInfo.ResourceUsage, _Mapping]]] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_DETAILS_FIELD_NUMBER: _ClassVar[int]
    CACHED_LOCALLY_FIELD_NUMBER: _ClassVar[int]
    TEST_ATTEMPT_START_MILLIS_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TEST_ATTEMPT_DURATION_MILLIS_FIELD_NUMBER: _ClassVar[int]
    TEST_ACTION_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_INFO_FIELD_NUMBER: _ClassVar[int]
    status: TestStatus
    status_details: str
    cached_locally: bool
    test_attempt_start_millis_epoch: int
    test_attempt_duration_millis: int
    test_action_output: _containers.RepeatedCompositeFieldContainer[File]
    warning: _containers.RepeatedScalarFieldContainer[str]
    execution_info: TestResult.ExecutionInfo
    def __init__(self, status: _Optional[_Union[TestStatus, str]] = ..., status_details: _Optional[str] = ..., cached_locally: _Optional[bool] = ..., test_attempt_start_millis_epoch: _Optional[int] = ..., test_attempt_duration_millis: _Optional[int] = ..., test_action_output: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., warning: _Optional[_Iterable[str]] = ..., execution_info: _Optional[_Union[TestResult.ExecutionInfo, _Mapping]] = ...) -> None: ...

class TestSummary(_message.Message):
    __slots__ = ("overall_status", "total_run_count", "run_count", "shard_count", "passed", "failed", "total_num_cached", "first_start_time_millis", "last_stop_time_millis", "total_run_duration_millis")
    OVERALL_STATUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NUM_CACHED_FIELD_NUMBER: _ClassVar[int]
    FIRST_START_TIME_MILLIS_FIELD_NUMBER: _ClassVar[int]
    LAST_STOP_TIME_MILLIS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RUN_DURATION_MILLIS_FIELD_NUMBER: _ClassVar[int]
    overall_status: TestStatus
    total_run_count: int
    run_count: int
    shard_count: int
    passed: _containers.RepeatedCompositeFieldContainer[File]
    failed: _containers.RepeatedCompositeFieldContainer[File]
    total_num_cached: int
    first_start_time_millis: int
    last_stop_time_millis: int
    total_run_duration_millis: int
    def __init__(self, overall_status: _Optional[_Union[TestStatus, str]] = ..., total_run_count: _Optional[int] = ..., run_count: _Optional[int] = ..., shard_count: _Optional[int] = ..., passed: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., failed: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., total_num_cached: _Optional[int] = ..., first_start_time_millis: _Optional[int] = ..., last_stop_time_millis: _Optional[int] = ..., total_run_duration_millis: _Optional[int] = ...) -> None: ...

class BuildFinished(_message.Message):
    __slots__ = ("overall_success", "exit_code", "finish_time_millis", "anomaly_report")
    class ExitCode(_message.Message):
        __slots__ = ("name", "code")
        NAME_FIELD_NUMBER: _ClassVar[int]
        CODE_FIELD_NUMBER: _ClassVar[int]
        name: str
        code: int
        def __init__(self, name: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...
    class AnomalyReport(_message.Message):
        __slots__ = ("was_suspended",)
        WAS_SUSPENDED_FIELD_NUMBER: _ClassVar[int]
        was_suspended: bool
        def __init__(self, was_suspended: _Optional[bool] = ...) -> None: ...
    OVERALL_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_MILLIS_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_REPORT_FIELD_NUMBER: _ClassVar[int]
    overall_success: bool
    exit_code: BuildFinished.ExitCode
    finish_time_millis: int
    anomaly_report: BuildFinished.AnomalyReport
    def __init__(self, overall_success: _Optional[bool] = ..., exit_code: _Optional[_Union[BuildFinished.ExitCode, _Mapping]] = ..., finish_time_millis: _Optional[int] = ..., anomaly_report: _Optional[_Union[BuildFinished.AnomalyReport, _Mapping]] = ...) -> None: ...

class BuildMetrics(_message.Message):
    __slots__ = ("action_summary", "memory_metrics", "target_metrics", "package_metrics", "timing_metrics")
    class ActionSummary(_message.Message):
        __slots__ = ("actions_created", "actions_executed", "remote_cache_hits", "runner_count")
        class RunnerCount(_message.Message):
            __slots__ = ("name", "count", "exec_kind")
            NAME_FIELD_NUMBER: _ClassVar[int]
            COUNT_FIELD_NUMBER: _ClassVar[int]
            EXEC_KIND_FIELD_NUMBER: _ClassVar[int]
            name: str
            count: int
            exec_kind: str
            def __init__(self, name: _Optional[str] = ..., count: _Optional[int] = ..., exec_kind: _Optional[str] = ...) -> None: ...
        ACTIONS_CREATED_FIELD_NUMBER: _ClassVar[int]
        ACTIONS_EXECUTED_FIELD_NUMBER: _ClassVar[int]
        REMOTE_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
        RUNNER_COUNT_FIELD_NUMBER: _ClassVar[int]
        actions_created: int
        actions_executed: int
        remote_cache_hits: int
        runner_count: _containers.RepeatedCompositeFieldContainer[BuildMetrics.ActionSummary.RunnerCount]
        def __init__(self, actions_created: _Optional[int] = ..., actions_executed: _Optional[int] = ..., remote_cache_hits: _Optional[int] = ..., runner_count: _Optional[_Iterable[_Union[BuildMetrics.ActionSummary.RunnerCount, _Mapping]]] = ...) -> None: ...
    class MemoryMetrics(_message.Message):
        __slots__ = ("used_heap_size_post_build", "peak_post_gc_heap_size")
        USED_HEAP_SIZE_POST_BUILD_FIELD_NUMBER: _ClassVar[int]
        PEAK_POST_GC_HEAP_SIZE_FIELD_NUMBER: _ClassVar[int]
        used_heap_size_post_build: int
        peak_post_gc_heap_size: int
        def __init__(self, used_heap_size_post_build: _Optional[int] = ..., peak_post_gc_heap_size: _Optional[int] = ...) -> None: ...
    class TargetMetrics(_message.Message):
        __slots__ = ("targets_loaded", "targets_configured")
        TARGETS_LOADED_FIELD_NUMBER: _ClassVar[int]
        TARGETS_CONFIGURED_FIELD_NUMBER: _ClassVar[int]
        targets_loaded: int
        targets_configured: int
        def __init__(self, targets_loaded: _Optional[int] = ..., targets_configured: _Optional[int] = ...) -> None: ...
    class PackageMetrics(_message.Message):
        __slots__ = ("packages_loaded",)
        PACKAGES_LOADED_FIELD_NUMBER: _ClassVar[int]
        packages_loaded: int
        def __init__(self, packages_loaded: _Optional[int] = ...) -> None: ...
    class TimingMetrics(_message.Message):
        __slots__ = ("cpu_time_in_ms", "wall_time_in_ms")
        CPU_TIME_IN_MS_FIELD_NUMBER: _ClassVar[int]
        WALL_TIME_IN_MS_FIELD_NUMBER: _ClassVar[int]
        cpu_time_in_ms: int
        wall_time_in_ms: int
        def __init__(self, cpu_time_in_ms: _Optional[int] = ..., wall_time_in_ms: _Optional[int] = ...) -> None: ...
    ACTION_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_METRICS_FIELD_NUMBER: _ClassVar[int]
    TARGET_METRICS_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_METRICS_FIELD_NUMBER: _ClassVar[int]
    TIMING_METRICS_FIELD_NUMBER: _ClassVar[int]
    action_summary: BuildMetrics.ActionSummary
    memory_metrics: BuildMetrics.MemoryMetrics
    target_metrics: BuildMetrics.TargetMetrics
    package_metrics: BuildMetrics.PackageMetrics
    timing_metrics: BuildMetrics.TimingMetrics
    def __init__(self, action_summary: _Optional[_Union[BuildMetrics.ActionSummary, _Mapping]] = ..., memory_metrics: _Optional[_Union[BuildMetrics.MemoryMetrics, _Mapping]] = ..., target_metrics: _Optional[_Union[BuildMetrics.TargetMetrics, _Mapping]] = ..., package_metrics: _Optional[_Union[BuildMetrics.PackageMetrics, _Mapping]] = ..., timing_metrics: _Optional[_Union[BuildMetrics.TimingMetrics, _Mapping]] = ...) -> None: ...

class BuildToolLogs(_message.Message):
    __slots__ = ("log",)
    LOG_FIELD_NUMBER: _ClassVar[int]
    log: _containers.RepeatedCompositeFieldContainer[File]
    def __init__(self, log: _Optional[_Iterable[_Union[File, _Mapping]]] = ...) -> None: ...

class ConvenienceSymlinksIdentified(_message.Message):
    __slots__ = ("convenience_symlinks",)
    CONVENIENCE_SYMLINKS_FIELD_NUMBER: _ClassVar[int]
    convenience_symlinks: _containers.RepeatedCompositeFieldContainer[ConvenienceSymlink]
    def __init__(self, convenience_symlinks: _Optional[_Iterable[_Union[ConvenienceSymlink, _Mapping]]] = ...) -> None: ...

class ConvenienceSymlink(_message.Message):
    __slots__ = ("path", "action", "target")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[ConvenienceSymlink.Action]
        CREATE: _ClassVar[ConvenienceSymlink.Action]
        DELETE: _ClassVar[ConvenienceSymlink.Action]
    UNKNOWN: ConvenienceSymlink.Action
    CREATE: ConvenienceSymlink.Action
    DELETE: ConvenienceSymlink.Action
    PATH_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    path: str
    action: ConvenienceSymlink.Action
    target: str
    def __init__(self, path: _Optional[str] = ..., action: _Optional[_Union[ConvenienceSymlink.Action, str]] = ..., target: _Optional[str] = ...) -> None: ...

class BuildEvent(_message.Message):
    __slots__ = ("id", "children", "last_message", "progress", "aborted", "started", "unstructured_command_line", "structured_command_line", "options_parsed", "workspace_status", "fetch", "configuration", "expanded", "configured", "action", "named_set_of_files", "completed", "test_result", "test_summary", "finished", "build_tool_logs", "build_metrics", "workspace_info", "build_metadata", "convenience_symlinks_identified")
    ID_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    LAST_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ABORTED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    UNSTRUCTURED_COMMAND_LINE_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_COMMAND_LINE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_PARSED_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_STATUS_FIELD_NUMBER: _ClassVar[int]
    FETCH_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    EXPANDED_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NAMED_SET_OF_FILES_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TEST_RESULT_FIELD_NUMBER: _ClassVar[int]
    TEST_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    BUILD_TOOL_LOGS_FIELD_NUMBER: _ClassVar[int]
    BUILD_METRICS_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_INFO_FIELD_NUMBER: _ClassVar[int]
    BUILD_METADATA_FIELD_NUMBER: _ClassVar[int]
    CONVENIENCE_SYMLINKS_IDENTIFIED_FIELD_NUMBER: _ClassVar[int]
    id: BuildEventId
    children: _containers.RepeatedCompositeFieldContainer[BuildEventId]
    last_message: bool
    progress: Progress
    aborted: Aborted
    started: BuildStarted
    unstructured_command_line: UnstructuredCommandLine
    structured_command_line: _command_line_pb2.CommandLine
    options_parsed: OptionsParsed
    workspace_status: WorkspaceStatus
    fetch: Fetch
    configuration: Configuration
    expanded: PatternExpanded
    configured: TargetConfigured
    action: ActionExecuted
    named_set_of_files: NamedSetOfFiles
    completed: TargetComplete
    test_result: TestResult
    test_summary: TestSummary
    finished: BuildFinished
    build_tool_logs: BuildToolLogs
    build_metrics: BuildMetrics
    workspace_info: WorkspaceConfig
    build_metadata: BuildMetadata
    convenience_symlinks_identified: ConvenienceSymlinksIdentified
    def __init__(self, id: _Optional[_Union[BuildEventId, _Mapping]] = ..., children: _Optional[_Iterable[_Union[BuildEventId, _Mapping]]] = ..., last_message: _Optional[bool] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., aborted: _Optional[_Union[Aborted, _Mapping]] = ..., started: _Optional[_Union[BuildStarted, _Mapping]] = ..., unstructured_command_line: _Optional[_Union[UnstructuredCommandLine, _Mapping]] = ..., structured_command_line: _Optional[_Union[_command_line_pb2.CommandLine, _Mapping]] = ..., options_parsed: _Optional[_Union[OptionsParsed, _Mapping]] = ..., workspace_status: _Optional[_Union[WorkspaceStatus, _Mapping]] = ..., fetch: _Optional[_Union[Fetch, _Mapping]] = ..., configuration: _Optional[_Union[Configuration, _Mapping]] = ..., expanded: _Optional[_Union[PatternExpanded, _Mapping]] = ..., configured: _Optional[_Union[TargetConfigured, _Mapping]] = ..., action: _Optional[_Union[ActionExecuted, _Mapping]] = ..., named_set_of_files: _Optional[_Union[NamedSetOfFiles, _Mapping]] = ..., completed: _Optional[_Union[TargetComplete, _Mapping]] = ..., test_result: _Optional[_Union[TestResult, _Mapping]] = ..., test_summary: _Optional[_Union[TestSummary, _Mapping]] = ..., finished: _Optional[_Union[BuildFinished, _Mapping]] = ..., build_tool_logs: _Optional[_Union[BuildToolLogs, _Mapping]] = ..., build_metrics: _Optional[_Union[BuildMetrics, _Mapping]] = ..., workspace_info: _Optional[_Union[WorkspaceConfig, _Mapping]] = ..., build_metadata: _Optional[_Union[BuildMetadata, _Mapping]] = ..., convenience_symlinks_identified: _Optional[_Union[ConvenienceSymlinksIdentified, _Mapping]] = ...) -> None: ...
