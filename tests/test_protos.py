"""Tests for the generated protobuf/gRPC modules under granary._proto.

These guard the wire contract: field numbers, enum values and rpc shapes must
match the public REAPI / ByteStream / Remote Workers / Build Event Service
specifications, and the committed generated code must match proto/.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SRC = REPO_ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from google.longrunning import operations_pb2
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor

from granary._proto.build.bazel.remote.asset.v1 import remote_asset_pb2 as ra_pb2
from granary._proto.build.bazel.remote.execution.v2 import (
    remote_execution_pb2 as re_pb2,
)
from granary._proto.build.bazel.remote.execution.v2 import (
    remote_execution_pb2_grpc as re_grpc,
)
from granary._proto.build.bazel.semver import semver_pb2
from granary._proto.google.bytestream import bytestream_pb2, bytestream_pb2_grpc
from granary._proto.google.devtools.build.v1 import (
    build_events_pb2,
    build_status_pb2,
    publish_build_event_pb2,
    publish_build_event_pb2_grpc,
)
from granary._proto.google.devtools.remoteworkers.v1test2 import (
    bots_pb2,
    bots_pb2_grpc,
    command_pb2,
    worker_pb2,
)


def _num(message_cls, field_name: str) -> int:
    return message_cls.DESCRIPTOR.fields_by_name[field_name].number


# --------------------------------------------------------------------------
# (a) staleness check


def test_generated_code_is_up_to_date():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_protos.py"), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------
# (b) every generated module imports


def _generated_module_names() -> list[str]:
    import granary._proto as root

    names = []
    for info in pkgutil.walk_packages(root.__path__, prefix="granary._proto."):
        if info.name.endswith(("_pb2", "_pb2_grpc")):
            names.append(info.name)
    return sorted(names)


def test_expected_modules_exist():
    names = set(_generated_module_names())
    expected = {
        "granary._proto.build.bazel.remote.execution.v2.remote_execution_pb2",
        "granary._proto.build.bazel.remote.execution.v2.remote_execution_pb2_grpc",
        "granary._proto.build.bazel.semver.semver_pb2",
        "granary._proto.build.bazel.remote.asset.v1.remote_asset_pb2",
        "granary._proto.build.bazel.remote.asset.v1.remote_asset_pb2_grpc",
        "granary._proto.google.bytestream.bytestream_pb2",
        "granary._proto.google.bytestream.bytestream_pb2_grpc",
        "granary._proto.google.devtools.remoteworkers.v1test2.bots_pb2",
        "granary._proto.google.devtools.remoteworkers.v1test2.bots_pb2_grpc",
        "granary._proto.google.devtools.remoteworkers.v1test2.command_pb2",
        "granary._proto.google.devtools.remoteworkers.v1test2.worker_pb2",
        "granary._proto.google.devtools.build.v1.build_events_pb2",
        "granary._proto.google.devtools.build.v1.build_status_pb2",
        "granary._proto.google.devtools.build.v1.publish_build_event_pb2",
        "granary._proto.google.devtools.build.v1.publish_build_event_pb2_grpc",
    }
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("module_name", _generated_module_names())
def test_module_imports(module_name):
    importlib.import_module(module_name)


def test_descriptor_file_names_and_packages():
    assert re_pb2.DESCRIPTOR.name == "build/bazel/remote/execution/v2/remote_execution.proto"
    assert re_pb2.DESCRIPTOR.package == "build.bazel.remote.execution.v2"
    assert semver_pb2.DESCRIPTOR.package == "build.bazel.semver"
    assert bytestream_pb2.DESCRIPTOR.name == "google/bytestream/bytestream.proto"
    assert bytestream_pb2.DESCRIPTOR.package == "google.bytestream"
    assert bots_pb2.DESCRIPTOR.package == "google.devtools.remoteworkers.v1test2"
    assert publish_build_event_pb2.DESCRIPTOR.package == "google.devtools.build.v1"
    assert ra_pb2.DESCRIPTOR.name == "build/bazel/remote/asset/v1/remote_asset.proto"
    assert ra_pb2.DESCRIPTOR.package == "build.bazel.remote.asset.v1"


def test_longrunning_operation_is_shared_with_googleapis():
    # Our Execution service must use the very same Operation class as
    # googleapis-common-protos, otherwise servicers would return foreign types.
    exec_svc = re_pb2.DESCRIPTOR.services_by_name["Execution"]
    out = exec_svc.methods_by_name["Execute"].output_type
    assert out.full_name == "google.longrunning.Operation"
    assert out is operations_pb2.Operation.DESCRIPTOR


# --------------------------------------------------------------------------
# (c) wire numbers


@pytest.mark.parametrize(
    "cls, field, number",
    [
        (re_pb2.Digest, "hash", 1),
        (ra_pb2.Qualifier, "name", 1),
        (ra_pb2.Qualifier, "value", 2),
        (ra_pb2.FetchBlobRequest, "instance_name", 1),
        (ra_pb2.FetchBlobRequest, "timeout", 2),
        (ra_pb2.FetchBlobRequest, "oldest_content_accepted", 3),
        (ra_pb2.FetchBlobRequest, "uris", 4),
        (ra_pb2.FetchBlobRequest, "qualifiers", 5),
        (ra_pb2.FetchBlobRequest, "digest_function", 6),
        (ra_pb2.FetchBlobResponse, "status", 1),
        (ra_pb2.FetchBlobResponse, "uri", 2),
        (ra_pb2.FetchBlobResponse, "qualifiers", 3),
        (ra_pb2.FetchBlobResponse, "expires_at", 4),
        (ra_pb2.FetchBlobResponse, "blob_digest", 5),
        (ra_pb2.FetchBlobResponse, "digest_function", 6),
        (ra_pb2.FetchDirectoryRequest, "uris", 4),
        (ra_pb2.FetchDirectoryResponse, "root_directory_digest", 5),
        (ra_pb2.PushBlobRequest, "instance_name", 1),
        (ra_pb2.PushBlobRequest, "uris", 2),
        (ra_pb2.PushBlobRequest, "qualifiers", 3),
        (ra_pb2.PushBlobRequest, "expire_at", 4),
        (ra_pb2.PushBlobRequest, "blob_digest", 5),
        (ra_pb2.PushBlobRequest, "references_blobs", 6),
        (ra_pb2.PushBlobRequest, "references_directories", 7),
        (ra_pb2.PushBlobRequest, "digest_function", 8),
        (ra_pb2.PushDirectoryRequest, "root_directory_digest", 5),
        (ra_pb2.PushDirectoryRequest, "digest_function", 8),
        (re_pb2.Digest, "size_bytes", 2),
        (re_pb2.Action, "command_digest", 1),
        (re_pb2.Action, "input_root_digest", 2),
        (re_pb2.Action, "timeout", 6),
        (re_pb2.Action, "do_not_cache", 7),
        (re_pb2.Action, "salt", 9),
        (re_pb2.Action, "platform", 10),
        (re_pb2.Command, "arguments", 1),
        (re_pb2.Command, "environment_variables", 2),
        (re_pb2.Command, "output_files", 3),
        (re_pb2.Command, "output_directories", 4),
        (re_pb2.Command, "platform", 5),
        (re_pb2.Command, "working_directory", 6),
        (re_pb2.Command, "output_paths", 7),
        (re_pb2.Command, "output_node_properties", 8),
        (re_pb2.Command, "output_directory_format", 9),
        (re_pb2.Directory, "files", 1),
        (re_pb2.Directory, "directories", 2),
        (re_pb2.Directory, "symlinks", 3),
        (re_pb2.Directory, "node_properties", 5),
        (re_pb2.FileNode, "is_executable", 4),
        (re_pb2.FileNode, "node_properties", 6),
        (re_pb2.SymlinkNode, "node_properties", 4),
        (re_pb2.NodeProperties, "mtime", 2),
        (re_pb2.NodeProperties, "unix_mode", 3),
        (re_pb2.ActionResult, "output_files", 2),
        (re_pb2.ActionResult, "output_directories", 3),
        (re_pb2.ActionResult, "exit_code", 4),
        (re_pb2.ActionResult, "stdout_raw", 5),
        (re_pb2.ActionResult, "stdout_digest", 6),
        (re_pb2.ActionResult, "stderr_raw", 7),
        (re_pb2.ActionResult, "stderr_digest", 8),
        (re_pb2.ActionResult, "execution_metadata", 9),
        (re_pb2.ActionResult, "output_file_symlinks", 10),
        (re_pb2.ActionResult, "output_directory_symlinks", 11),
        (re_pb2.ActionResult, "output_symlinks", 12),
        (re_pb2.OutputFile, "path", 1),
        (re_pb2.OutputFile, "digest", 2),
        (re_pb2.OutputFile, "is_executable", 4),
        (re_pb2.OutputFile, "contents", 5),
        (re_pb2.OutputFile, "node_properties", 7),
        (re_pb2.OutputDirectory, "tree_digest", 3),
        (re_pb2.OutputDirectory, "is_topologically_sorted", 4),
        (re_pb2.OutputDirectory, "root_directory_digest", 5),
        (re_pb2.OutputSymlink, "target", 2),
        (re_pb2.OutputSymlink, "node_properties", 4),
        (re_pb2.Tree, "root", 1),
        (re_pb2.Tree, "children", 2),
        (re_pb2.ExecutedActionMetadata, "worker", 1),
        (re_pb2.ExecutedActionMetadata, "output_upload_completed_timestamp", 10),
        (re_pb2.ExecutedActionMetadata, "auxiliary_metadata", 11),
        (re_pb2.ExecutedActionMetadata, "virtual_execution_duration", 12),
        (re_pb2.ExecuteRequest, "instance_name", 1),
        (re_pb2.ExecuteRequest, "skip_cache_lookup", 3),
        (re_pb2.ExecuteRequest, "action_digest", 6),
        (re_pb2.ExecuteRequest, "execution_policy", 7),
        (re_pb2.ExecuteRequest, "results_cache_policy", 8),
        (re_pb2.ExecuteRequest, "digest_function", 9),
        (re_pb2.ExecuteRequest, "inline_output_files", 12),
        (re_pb2.ExecuteResponse, "result", 1),
        (re_pb2.ExecuteResponse, "cached_result", 2),
        (re_pb2.ExecuteResponse, "status", 3),
        (re_pb2.ExecuteResponse, "server_logs", 4),
        (re_pb2.ExecuteResponse, "message", 5),
        (re_pb2.ExecuteOperationMetadata, "stage", 1),
        (re_pb2.ExecuteOperationMetadata, "action_digest", 2),
        (re_pb2.ExecuteOperationMetadata, "partial_execution_metadata", 5),
        (re_pb2.ExecuteOperationMetadata, "digest_function", 6),
        (re_pb2.GetActionResultRequest, "inline_output_files", 5),
        (re_pb2.GetActionResultRequest, "digest_function", 6),
        (re_pb2.UpdateActionResultRequest, "action_result", 3),
        (re_pb2.UpdateActionResultRequest, "digest_function", 5),
        (re_pb2.FindMissingBlobsRequest, "blob_digests", 2),
        (re_pb2.FindMissingBlobsRequest, "digest_function", 3),
        (re_pb2.FindMissingBlobsResponse, "missing_blob_digests", 2),
        (re_pb2.BatchUpdateBlobsRequest, "requests", 2),
        (re_pb2.BatchUpdateBlobsRequest, "digest_function", 5),
        (re_pb2.BatchUpdateBlobsRequest.Request, "compressor", 3),
        (re_pb2.BatchReadBlobsRequest, "acceptable_compressors", 3),
        (re_pb2.BatchReadBlobsRequest, "digest_function", 4),
        (re_pb2.BatchReadBlobsResponse.Response, "status", 3),
        (re_pb2.BatchReadBlobsResponse.Response, "compressor", 4),
        (re_pb2.GetTreeRequest, "page_token", 4),
        (re_pb2.GetTreeRequest, "digest_function", 5),
        (re_pb2.SplitBlobRequest, "blob_digest", 2),
        (re_pb2.SplitBlobRequest, "chunking_function", 4),
        (re_pb2.SplitBlobResponse, "chunk_digests", 1),
        (re_pb2.SpliceBlobRequest, "chunk_digests", 3),
        (re_pb2.SpliceBlobRequest, "digest_function", 4),
        (re_pb2.SpliceBlobResponse, "blob_digest", 1),
        (re_pb2.ServerCapabilities, "cache_capabilities", 1),
        (re_pb2.ServerCapabilities, "execution_capabilities", 2),
        (re_pb2.ServerCapabilities, "deprecated_api_version", 3),
        (re_pb2.ServerCapabilities, "low_api_version", 4),
        (re_pb2.ServerCapabilities, "high_api_version", 5),
        (re_pb2.CacheCapabilities, "digest_functions", 1),
        (re_pb2.CacheCapabilities, "max_batch_total_size_bytes", 4),
        (re_pb2.CacheCapabilities, "symlink_absolute_path_strategy", 5),
        (re_pb2.CacheCapabilities, "supported_compressors", 6),
        (re_pb2.CacheCapabilities, "supported_batch_update_compressors", 7),
        (re_pb2.CacheCapabilities, "max_cas_blob_size_bytes", 8),
        (re_pb2.CacheCapabilities, "split_blob_support", 9),
        (re_pb2.CacheCapabilities, "splice_blob_support", 10),
        (re_pb2.CacheCapabilities, "fast_cdc_2020_params", 11),
        (re_pb2.CacheCapabilities, "rep_max_cdc_params", 12),
        (re_pb2.ExecutionCapabilities, "digest_function", 1),
        (re_pb2.ExecutionCapabilities, "exec_enabled", 2),
        (re_pb2.ExecutionCapabilities, "digest_functions", 5),
        (re_pb2.RequestMetadata, "tool_details", 1),
        (re_pb2.RequestMetadata, "tool_invocation_id", 3),
        (re_pb2.RequestMetadata, "correlated_invocations_id", 4),
        (re_pb2.RequestMetadata, "configuration_id", 7),
        (semver_pb2.SemVer, "major", 1),
        (semver_pb2.SemVer, "prerelease", 4),
        (bytestream_pb2.ReadRequest, "resource_name", 1),
        (bytestream_pb2.ReadRequest, "read_offset", 2),
        (bytestream_pb2.ReadRequest, "read_limit", 3),
        (bytestream_pb2.ReadResponse, "data", 10),
        (bytestream_pb2.WriteRequest, "resource_name", 1),
        (bytestream_pb2.WriteRequest, "write_offset", 2),
        (bytestream_pb2.WriteRequest, "finish_write", 3),
        (bytestream_pb2.WriteRequest, "data", 10),
        (bytestream_pb2.WriteResponse, "committed_size", 1),
        (bytestream_pb2.QueryWriteStatusResponse, "complete", 2),
        (bots_pb2.BotSession, "name", 1),
        (bots_pb2.BotSession, "bot_id", 2),
        (bots_pb2.BotSession, "status", 3),
        (bots_pb2.BotSession, "worker", 4),
        (bots_pb2.BotSession, "leases", 5),
        (bots_pb2.BotSession, "expire_time", 6),
        (bots_pb2.BotSession, "version", 7),
        (bots_pb2.Lease, "assignment", 1),
        (bots_pb2.Lease, "state", 2),
        (bots_pb2.Lease, "status", 3),
        (bots_pb2.Lease, "requirements", 4),
        (bots_pb2.Lease, "expire_time", 5),
        (bots_pb2.Lease, "inline_assignment", 6),
        (bots_pb2.Lease, "id", 7),
        (bots_pb2.Lease, "payload", 8),
        (bots_pb2.Lease, "result", 9),
        (bots_pb2.UpdateBotSessionRequest, "update_mask", 3),
        (worker_pb2.Worker, "configs", 3),
        (worker_pb2.Device, "handle", 1),
        (command_pb2.CommandTask, "expected_outputs", 4),
        (command_pb2.CommandTask, "timeouts", 5),
        (command_pb2.CommandTask.Inputs, "inline_blobs", 4),
        (command_pb2.CommandTask.Inputs, "working_directory", 5),
        (command_pb2.CommandResult, "metadata", 6),
        (build_events_pb2.BuildEvent, "event_time", 1),
        (build_events_pb2.BuildEvent, "build_enqueued", 53),
        (build_events_pb2.BuildEvent, "build_finished", 55),
        (build_events_pb2.BuildEvent, "component_stream_finished", 59),
        (build_events_pb2.BuildEvent, "bazel_event", 60),
        (build_events_pb2.BuildEvent, "buck_event", 63),
        (build_events_pb2.StreamId, "build_id", 1),
        (build_events_pb2.StreamId, "component", 3),
        (build_events_pb2.StreamId, "invocation_id", 6),
        (build_status_pb2.BuildStatus, "details", 2),
        (build_status_pb2.BuildStatus, "build_tool_exit_code", 4),
        (publish_build_event_pb2.OrderedBuildEvent, "sequence_number", 2),
        (publish_build_event_pb2.PublishBuildToolEventStreamRequest, "ordered_build_event", 4),
        (publish_build_event_pb2.PublishBuildToolEventStreamRequest, "project_id", 6),
        (publish_build_event_pb2.PublishLifecycleEventRequest, "build_event", 2),
        (publish_build_event_pb2.PublishLifecycleEventRequest, "project_id", 6),
    ],
)
def test_field_numbers(cls, field, number):
    assert _num(cls, field) == number


def test_field_types_spot_checks():
    fields = re_pb2.Digest.DESCRIPTOR.fields_by_name
    assert fields["size_bytes"].type == FieldDescriptor.TYPE_INT64
    assert fields["hash"].type == FieldDescriptor.TYPE_STRING
    caps = re_pb2.CacheCapabilities.DESCRIPTOR.fields_by_name
    assert caps["max_batch_total_size_bytes"].type == FieldDescriptor.TYPE_INT64
    assert caps["digest_functions"].enum_type.full_name == (
        "build.bazel.remote.execution.v2.DigestFunction.Value"
    )
    assert bytestream_pb2.WriteRequest.DESCRIPTOR.fields_by_name["data"].type == (FieldDescriptor.TYPE_BYTES)
    server_logs = re_pb2.ExecuteResponse.DESCRIPTOR.fields_by_name["server_logs"]
    assert server_logs.message_type.GetOptions().map_entry


def test_enum_values():
    assert re_pb2.DigestFunction.SHA256 == 1
    assert re_pb2.DigestFunction.SHA1 == 2
    assert re_pb2.DigestFunction.MD5 == 3
    assert re_pb2.DigestFunction.VSO == 4
    assert re_pb2.DigestFunction.SHA384 == 5
    assert re_pb2.DigestFunction.SHA512 == 6
    assert re_pb2.DigestFunction.MURMUR3 == 7
    assert re_pb2.DigestFunction.SHA256TREE == 8
    assert re_pb2.DigestFunction.BLAKE3 == 9
    assert re_pb2.Compressor.IDENTITY == 0
    assert re_pb2.Compressor.ZSTD == 1
    assert re_pb2.Compressor.DEFLATE == 2
    assert re_pb2.Compressor.BROTLI == 3
    assert re_pb2.ExecutionStage.CACHE_CHECK == 1
    assert re_pb2.ExecutionStage.QUEUED == 2
    assert re_pb2.ExecutionStage.EXECUTING == 3
    assert re_pb2.ExecutionStage.COMPLETED == 4
    assert re_pb2.SymlinkAbsolutePathStrategy.DISALLOWED == 1
    assert re_pb2.SymlinkAbsolutePathStrategy.ALLOWED == 2
    assert re_pb2.ChunkingFunction.FAST_CDC_2020 == 1
    assert re_pb2.ChunkingFunction.REP_MAX_CDC == 2
    assert re_pb2.Command.DIRECTORY_ONLY == 1
    assert re_pb2.Command.TREE_AND_DIRECTORY == 2
    assert bots_pb2.PENDING == 1
    assert bots_pb2.ACTIVE == 2
    assert bots_pb2.COMPLETED == 4
    assert bots_pb2.CANCELLED == 5
    assert bots_pb2.BotStatus.Value("OK") == 1
    assert bots_pb2.BotStatus.Value("INITIALIZING") == 5
    assert bots_pb2.AdminTemp.HOST_RESTART == 4
    assert build_status_pb2.BuildStatus.CANCELLED == 7
    assert build_status_pb2.BuildStatus.REQUEST_DEADLINE_EXCEEDED == 8
    assert build_events_pb2.StreamId.TOOL == 3
    assert build_events_pb2.STDERR == 2


def test_reserved_numbers_kept():
    def numbers(cls):
        return {f.number for f in cls.DESCRIPTOR.fields}

    assert numbers(re_pb2.Action).isdisjoint({3, 4, 5, 8})
    assert 1 not in numbers(re_pb2.ActionResult)
    assert numbers(re_pb2.ExecuteRequest).isdisjoint({2, 4, 5})
    assert numbers(re_pb2.OutputFile).isdisjoint({3, 6})


def _method_shape(file_descriptor, service: str, method: str):
    m = file_descriptor.services_by_name[service].methods_by_name[method]
    return m.client_streaming, m.server_streaming, m.input_type.name, m.output_type.name


@pytest.mark.parametrize(
    "fd, service, method, shape",
    [
        (re_pb2.DESCRIPTOR, "Execution", "Execute", (False, True, "ExecuteRequest", "Operation")),
        (re_pb2.DESCRIPTOR, "Execution", "WaitExecution", (False, True, "WaitExecutionRequest", "Operation")),
        (
            re_pb2.DESCRIPTOR,
            "ActionCache",
            "GetActionResult",
            (False, False, "GetActionResultRequest", "ActionResult"),
        ),
        (
            re_pb2.DESCRIPTOR,
            "ActionCache",
            "UpdateActionResult",
            (False, False, "UpdateActionResultRequest", "ActionResult"),
        ),
        (
            re_pb2.DESCRIPTOR,
            "ContentAddressableStorage",
            "FindMissingBlobs",
            (False, False, "FindMissingBlobsRequest", "FindMissingBlobsResponse"),
        ),
        (
            re_pb2.DESCRIPTOR,
            "ContentAddressableStorage",
            "BatchUpdateBlobs",
            (False, False, "BatchUpdateBlobsRequest", "BatchUpdateBlobsResponse"),
        ),
        (
            re_pb2.DESCRIPTOR,
            "ContentAddressableStorage",
            "BatchReadBlobs",
            (False, False, "BatchReadBlobsRequest", "BatchReadBlobsResponse"),
        ),
        (
            re_pb2.DESCRIPTOR,
            "ContentAddressableStorage",
            "GetTree",
            (False, True, "GetTreeRequest", "GetTreeResponse"),
        ),
        (
            re_pb2.DESCRIPTOR,
            "ContentAddressableStorage",
            "SplitBlob",
            (False, False, "SplitBlobRequest", "SplitBlobResponse"),
        ),
        (
            re_pb2.DESCRIPTOR,
            "ContentAddressableStorage",
            "SpliceBlob",
            (False, False, "SpliceBlobRequest", "SpliceBlobResponse"),
        ),
        (
            re_pb2.DESCRIPTOR,
            "Capabilities",
            "GetCapabilities",
            (False, False, "GetCapabilitiesRequest", "ServerCapabilities"),
        ),
        (bytestream_pb2.DESCRIPTOR, "ByteStream", "Read", (False, True, "ReadRequest", "ReadResponse")),
        (ra_pb2.DESCRIPTOR, "Fetch", "FetchBlob", (False, False, "FetchBlobRequest", "FetchBlobResponse")),
        (
            ra_pb2.DESCRIPTOR,
            "Fetch",
            "FetchDirectory",
            (False, False, "FetchDirectoryRequest", "FetchDirectoryResponse"),
        ),
        (ra_pb2.DESCRIPTOR, "Push", "PushBlob", (False, False, "PushBlobRequest", "PushBlobResponse")),
        (
            ra_pb2.DESCRIPTOR,
            "Push",
            "PushDirectory",
            (False, False, "PushDirectoryRequest", "PushDirectoryResponse"),
        ),
        (bytestream_pb2.DESCRIPTOR, "ByteStream", "Write", (True, False, "WriteRequest", "WriteResponse")),
        (
            bytestream_pb2.DESCRIPTOR,
            "ByteStream",
            "QueryWriteStatus",
            (False, False, "QueryWriteStatusRequest", "QueryWriteStatusResponse"),
        ),
        (
            bots_pb2.DESCRIPTOR,
            "Bots",
            "CreateBotSession",
            (False, False, "CreateBotSessionRequest", "BotSession"),
        ),
        (
            bots_pb2.DESCRIPTOR,
            "Bots",
            "UpdateBotSession",
            (False, False, "UpdateBotSessionRequest", "BotSession"),
        ),
        (
            publish_build_event_pb2.DESCRIPTOR,
            "PublishBuildEvent",
            "PublishLifecycleEvent",
            (False, False, "PublishLifecycleEventRequest", "Empty"),
        ),
        (
            publish_build_event_pb2.DESCRIPTOR,
            "PublishBuildEvent",
            "PublishBuildToolEventStream",
            (True, True, "PublishBuildToolEventStreamRequest", "PublishBuildToolEventStreamResponse"),
        ),
    ],
)
def test_rpc_shapes(fd, service, method, shape):
    assert _method_shape(fd, service, method) == shape


def test_grpc_stubs_and_servicers_exist():
    for name in ("Execution", "ActionCache", "ContentAddressableStorage", "Capabilities"):
        assert hasattr(re_grpc, f"{name}Stub")
        assert hasattr(re_grpc, f"{name}Servicer")
        assert hasattr(re_grpc, f"add_{name}Servicer_to_server")
    assert hasattr(bytestream_pb2_grpc, "ByteStreamServicer")
    assert hasattr(bots_pb2_grpc, "BotsServicer")
    assert hasattr(publish_build_event_pb2_grpc, "PublishBuildEventServicer")


# --------------------------------------------------------------------------
# (d) round trips


def _sample_action_result() -> re_pb2.ActionResult:
    started = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5)
    return re_pb2.ActionResult(
        output_files=[
            re_pb2.OutputFile(
                path="out/a.txt",
                digest=re_pb2.Digest(hash="ab" * 32, size_bytes=3),
                is_executable=True,
                contents=b"abc",
            )
        ],
        output_symlinks=[re_pb2.OutputSymlink(path="out/link", target="a.txt")],
        output_directories=[
            re_pb2.OutputDirectory(
                path="out/dir",
                tree_digest=re_pb2.Digest(hash="cd" * 32, size_bytes=10),
                is_topologically_sorted=True,
            )
        ],
        exit_code=3,
        stdout_raw=b"hello\n",
        stderr_digest=re_pb2.Digest(hash="ef" * 32, size_bytes=42),
        execution_metadata=re_pb2.ExecutedActionMetadata(worker="worker-1", worker_start_timestamp=started),
    )


def test_action_result_round_trip():
    result = _sample_action_result()
    data = result.SerializeToString(deterministic=True)
    parsed = re_pb2.ActionResult.FromString(data)
    assert parsed == result
    assert parsed.output_files[0].contents == b"abc"
    assert parsed.execution_metadata.worker_start_timestamp.nanos == 5
    # Field 2 (output_files), length-delimited -> first tag byte 0x12.
    assert data[0] == 0x12


def test_execute_operation_metadata_round_trip_through_operation():
    metadata = re_pb2.ExecuteOperationMetadata(
        stage=re_pb2.ExecutionStage.EXECUTING,
        action_digest=re_pb2.Digest(hash="01" * 32, size_bytes=140),
        stdout_stream_name="instance/blobs/abc/1",
        partial_execution_metadata=re_pb2.ExecutedActionMetadata(worker="w"),
        digest_function=re_pb2.DigestFunction.BLAKE3,
    )
    response = re_pb2.ExecuteResponse(
        result=_sample_action_result(),
        cached_result=True,
        server_logs={"worker": re_pb2.LogFile(human_readable=True)},
        message="ok",
    )
    op = operations_pb2.Operation(name="operations/123", done=True)
    op.metadata.Pack(metadata)
    op.response.Pack(response)

    wire = op.SerializeToString()
    parsed_op = operations_pb2.Operation.FromString(wire)
    assert parsed_op.metadata.type_url == (
        "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata"
    )
    got_md = re_pb2.ExecuteOperationMetadata()
    assert parsed_op.metadata.Unpack(got_md)
    assert got_md == metadata
    assert got_md.digest_function == 9
    got_resp = re_pb2.ExecuteResponse()
    assert parsed_op.response.Unpack(got_resp)
    assert got_resp == response
    assert got_resp.server_logs["worker"].human_readable


def test_capabilities_round_trip():
    caps = re_pb2.ServerCapabilities(
        cache_capabilities=re_pb2.CacheCapabilities(
            digest_functions=[re_pb2.DigestFunction.SHA256, re_pb2.DigestFunction.BLAKE3],
            action_cache_update_capabilities=re_pb2.ActionCacheUpdateCapabilities(update_enabled=True),
            max_batch_total_size_bytes=4 << 20,
            supported_compressors=[re_pb2.Compressor.ZSTD],
            split_blob_support=True,
        ),
        low_api_version=semver_pb2.SemVer(major=2),
        high_api_version=semver_pb2.SemVer(major=2, minor=3),
    )
    assert re_pb2.ServerCapabilities.FromString(caps.SerializeToString()) == caps


def test_bot_session_round_trip():
    lease = bots_pb2.Lease(id="lease-1", state=bots_pb2.ACTIVE)
    lease.payload.Pack(re_pb2.Digest(hash="aa", size_bytes=1))
    session = bots_pb2.BotSession(
        name="farm/botSessions/1",
        bot_id="bot",
        status=bots_pb2.OK,
        worker=worker_pb2.Worker(devices=[worker_pb2.Device(handle="host")]),
        leases=[lease],
    )
    parsed = bots_pb2.BotSession.FromString(session.SerializeToString())
    assert parsed == session
    digest = re_pb2.Digest()
    assert parsed.leases[0].payload.Unpack(digest)
    assert digest.size_bytes == 1


def test_build_event_round_trip():
    event = build_events_pb2.BuildEvent(
        console_output=build_events_pb2.BuildEvent.ConsoleOutput(
            type=build_events_pb2.STDOUT, text_output="hi"
        )
    )
    event.event_time.seconds = 10
    ordered = publish_build_event_pb2.OrderedBuildEvent(
        stream_id=build_events_pb2.StreamId(build_id="b", invocation_id="i"),
        sequence_number=1,
        event=event,
    )
    parsed = publish_build_event_pb2.OrderedBuildEvent.FromString(ordered.SerializeToString())
    assert parsed == ordered
    assert parsed.event.WhichOneof("event") == "console_output"
    assert parsed.event.console_output.WhichOneof("output") == "text_output"
    wrapped = any_pb2.Any()
    wrapped.Pack(parsed.event)
    assert wrapped.type_url.endswith("google.devtools.build.v1.BuildEvent")
