"""The worker: materialisation, running, outputs, sandbox, the lease loop.

The CAS side is a real `granary serve`; the Bots side is a small fake Bots
server on loopback (so these tests do not depend on the server's scheduler),
plus an end-to-end run against the real one when `granary serve` has it.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from busybox import BUSYBOX, applets, static_busybox
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2
from reapi import Client, digest, re_pb2
from serverutil import start_granary

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc
from granary.errors import InvalidArgument
from granary.execution.leases import lease_result, make_lease, worker_properties
from granary.worker.execute import ActionRun, Executor
from granary.worker.inputs import InputLimits, Staging, materialise
from granary.worker.local_cas import LocalCas
from granary.worker.main import Worker, WorkerConfig
from granary.worker.paths import symlink_stays_inside
from granary.worker.process import Command
from granary.worker.remote_cas import MissingBlobs, RemoteCas
from granary.worker.sandbox import NoSandbox, make_sandbox

SHA256 = dg.SHA256


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_granary(tmp_path_factory.mktemp("worker-cas"))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = Client(server.address)
    yield c
    c.close()


@pytest.fixture
def executor(server, tmp_path):
    channel = grpc.insecure_channel(server.address)
    ex = Executor(RemoteCas(channel, ""), LocalCas(tmp_path / "cache" / "cas", 1 << 30), NoSandbox(),
                  tmp_path / "cache" / "work", "test-worker")
    yield ex
    channel.close()


# ---- building inputs -----------------------------------------------------------


@dataclass
class Exe:
    data: bytes


@dataclass
class Link:
    target: str


def put_tree(client: Client, spec: dict) -> re_pb2.Digest:
    """Upload a Directory tree: name -> bytes (file) | Exe | Link | dict (directory)."""
    d = re_pb2.Directory()
    for name, v in sorted(spec.items()):
        if isinstance(v, dict):
            d.directories.add(name=name, digest=put_tree(client, v))
        elif isinstance(v, Link):
            d.symlinks.add(name=name, target=v.target)
        else:
            data = v.data if isinstance(v, Exe) else v
            if data:
                client.upload(data)
            d.files.add(name=name, digest=digest(data), is_executable=isinstance(v, Exe))
    blob = d.SerializeToString(deterministic=True)
    client.upload(blob)
    return digest(blob)


def put_action(client: Client, argv: list[str], inputs: dict | None = None, timeout: float = 0,
               env: dict[str, str] | None = None, **command_fields) -> re_pb2.Action:
    cmd = re_pb2.Command(arguments=argv, **command_fields)
    for k, v in sorted((env or {}).items()):
        cmd.environment_variables.add(name=k, value=v)
    blob = cmd.SerializeToString(deterministic=True)
    client.upload(blob)
    action = re_pb2.Action(command_digest=digest(blob), input_root_digest=put_tree(client, inputs or {}))
    if timeout:
        action.timeout.CopyFrom(duration_pb2.Duration(seconds=int(timeout), nanos=int(timeout % 1 * 1e9)))
    return action


def bd(data: bytes) -> dg.BlobDigest:
    return dg.compute(SHA256, data)


def materialise_spec(client, executor, dest: Path, spec: dict):
    root = put_tree(client, spec)
    dest.mkdir(parents=True)
    return materialise(executor.remote, executor.local, SHA256,
                       dg.make_digest(SHA256, root.hash, root.size_bytes), dest)


def unique(text: str = "") -> bytes:
    return f"{text}{uuid.uuid4()}\n".encode()


# ---- materialisation ------------------------------------------------------------


def test_materialise_hardlinks_read_only_files_from_the_cache(client, executor, tmp_path):
    plain, tool = unique("plain"), unique("#!/bin/sh\necho tool\n")
    dest = executor.work_dir / "r1"
    materialise_spec(client, executor, dest, {
        "a.txt": plain, "bin": {"tool": Exe(tool)}, "empty": b"", "sub": {"deeper": {"same.txt": plain}},
        "link": Link("sub/deeper/same.txt"), "up": {"l": Link("../a.txt")},
    })
    assert (dest / "a.txt").read_bytes() == plain
    cached = executor.local.path(bd(plain), False)
    assert os.stat(dest / "a.txt").st_ino == os.stat(cached).st_ino == os.stat(dest / "sub/deeper/same.txt").st_ino
    assert os.stat(cached).st_nlink >= 3
    assert (os.stat(dest / "a.txt").st_mode & 0o777) == 0o444
    assert (os.stat(dest / "bin/tool").st_mode & 0o777) == 0o555
    assert (dest / "empty").read_bytes() == b""
    assert os.readlink(dest / "link") == "sub/deeper/same.txt"
    assert (dest / "up/l").read_bytes() == plain
    assert executor.local.has(bd(plain)) and executor.local.has(bd(tool), True)


def test_same_content_executable_and_not_gets_two_cache_entries(client, executor):
    data = unique("twin")
    dest = executor.work_dir / "twins"
    materialise_spec(client, executor, dest, {"x": Exe(data), "n": data})
    assert (os.stat(dest / "x").st_mode & 0o777) == 0o555
    assert (os.stat(dest / "n").st_mode & 0o777) == 0o444
    assert os.stat(dest / "x").st_ino != os.stat(dest / "n").st_ino


def test_copy_fallback_when_hardlinking_fails(client, executor, monkeypatch):
    def no_link(src, dst, *a, **kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    data, tool = unique("copied"), unique("copied tool")
    dest = executor.work_dir / "copies"
    materialise_spec(client, executor, dest, {"f": data, "t": Exe(tool)})
    assert (dest / "f").read_bytes() == data
    assert os.stat(dest / "f").st_ino != os.stat(executor.local.path(bd(data), False)).st_ino
    assert os.stat(dest / "f").st_nlink == 1
    assert (os.stat(dest / "f").st_mode & 0o777) == 0o444
    assert (os.stat(dest / "t").st_mode & 0o777) == 0o555


def test_cache_is_lru_bounded_and_drops_tampered_entries(tmp_path):
    cache = LocalCas(tmp_path / "c", max_bytes=250)
    blobs = [bytes([i]) * 100 for i in range(3)]
    for b in blobs:
        cache.put_bytes(bd(b), b)
    assert not cache.has(bd(blobs[0])) and cache.has(bd(blobs[1])) and cache.has(bd(blobs[2]))
    assert cache.total <= 250
    # An entry written through a hardlink (root ignores 0444) is detected and dropped.
    p = cache.path(bd(blobs[2]), False)
    os.chmod(p, 0o644)
    p.write_bytes(b"corrupted")
    assert not cache.has(bd(blobs[2]))
    # A fresh process rebuilds its index from the directory.
    again = LocalCas(tmp_path / "c", max_bytes=250)
    assert again.has(bd(blobs[1])) and not again.has(bd(blobs[2]))


@pytest.mark.parametrize("bad", [
    {"..": b"x"},
    {"a/b": b"x"},
    {"": b"x"},
    {".": {}},
    {"abs": Link("/etc/passwd")},
    {"up": Link("../outside")},
    {"sub": {"up2": Link("../../outside")}},
    {"sub": {"fine": Link("../sub")}, "sneaky": Link("sub/fine/../..")},
])
def test_escaping_inputs_are_refused(client, executor, bad):
    dest = executor.work_dir / f"bad-{uuid.uuid4().hex}"
    with pytest.raises(InvalidArgument):
        materialise_spec(client, executor, dest, bad)


def test_symlink_chain_escape_is_caught_on_disk(client, executor):
    # Each link looks inside on its own; together they resolve outside.
    dest = executor.work_dir / "chain"
    spec = {"sub": {"y": Link("..")}, "x": Link("sub/y/..")}
    assert symlink_stays_inside("sub/y", "..") and symlink_stays_inside("x", "sub/y/..")
    with pytest.raises(InvalidArgument, match="resolves outside"):
        materialise_spec(client, executor, dest, spec)


def test_duplicate_names_are_refused(client, executor):
    d = re_pb2.Directory()
    blob = unique()
    client.upload(blob)
    d.files.add(name="f", digest=digest(blob))
    d.symlinks.add(name="f", target="elsewhere")
    raw = d.SerializeToString()
    client.upload(raw)
    dest = executor.work_dir / "dup"
    dest.mkdir(parents=True)
    with pytest.raises(InvalidArgument, match="more than once"):
        materialise(executor.remote, executor.local, SHA256, bd(raw), dest)


class _CallLog(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Names of the RPCs made through a channel, in order."""

    def __init__(self):
        self.methods: list[str] = []

    def intercept_unary_unary(self, continuation, details, request):
        self.methods.append(details.method.rsplit("/", 1)[1])
        return continuation(details, request)

    def intercept_unary_stream(self, continuation, details, request):
        self.methods.append(details.method.rsplit("/", 1)[1])
        return continuation(details, request)


def _deep_spec(depth: int, leaf: bytes) -> dict:
    spec: dict = {"leaf.txt": leaf}
    for i in reversed(range(depth)):
        spec = {f"level{i}": spec, f"file{i}": unique(f"f{i}")}
    return spec


def _logged_remote(server) -> tuple[RemoteCas, _CallLog, grpc.Channel]:
    calls = _CallLog()
    channel = grpc.insecure_channel(server.address)
    return RemoteCas(grpc.intercept_channel(channel, calls), ""), calls, channel


def test_a_deep_input_tree_is_read_in_one_gettree_call(client, server, executor, tmp_path):
    """Each level read apart cost a round trip per action (an input root of a Bazel action is a
    new chain of eight or so directories): the whole tree comes in one GetTree call instead."""
    leaf = unique("leaf")
    root = put_tree(client, _deep_spec(8, leaf))
    remote, calls, channel = _logged_remote(server)
    try:
        dest = tmp_path / "deep"
        dest.mkdir()
        lay = materialise(remote, executor.local, SHA256, dg.make_digest(SHA256, root.hash, root.size_bytes), dest)
    finally:
        channel.close()
    path = dest.joinpath(*[f"level{i}" for i in range(8)], "leaf.txt")
    assert path.read_bytes() == leaf
    assert len(lay.directories) == 8
    # one GetTree for the nine directories, then the files (one batch): no read per level
    assert calls.methods.count("GetTree") == 1, calls.methods
    assert calls.methods.count("BatchReadBlobs") <= 1, calls.methods


def test_directories_in_a_non_canonical_encoding_are_still_found(client, server, executor, tmp_path):
    """GetTree sends messages, not their digests; a Directory uploaded in another valid encoding
    (fields out of order) hashes differently when serialized again, so the worker must fetch
    it by its real digest rather than fail or take the wrong bytes."""
    leaf = unique("leaf")
    inner = re_pb2.Directory()
    inner.files.add(name="leaf.txt", digest=digest(leaf))
    client.upload(leaf)
    inner_raw = inner.SerializeToString()
    # field 3 (symlinks) before field 1 (files): valid protobuf, but not what a serializer writes
    link = re_pb2.Directory(symlinks=[re_pb2.SymlinkNode(name="alias", target="leaf.txt")]).SerializeToString()
    odd = link + inner_raw
    assert re_pb2.Directory.FromString(odd).SerializeToString() != odd
    client.upload(odd)
    top = re_pb2.Directory()
    top.directories.add(name="odd", digest=digest(odd))
    top_raw = top.SerializeToString()
    client.upload(top_raw)
    remote, calls, channel = _logged_remote(server)
    try:
        dest = tmp_path / "odd"
        dest.mkdir()
        materialise(remote, executor.local, SHA256, bd(top_raw), dest)
    finally:
        channel.close()
    assert (dest / "odd" / "leaf.txt").read_bytes() == leaf
    assert os.readlink(dest / "odd" / "alias") == "leaf.txt"
    assert "GetTree" in calls.methods and "BatchReadBlobs" in calls.methods, calls.methods


def test_an_input_tree_over_the_directory_limit_is_refused_from_gettree(client, server, executor, tmp_path):
    spec = {f"d{i}": {"f": unique(f"d{i}")} for i in range(30)}
    root = put_tree(client, spec)
    remote, calls, channel = _logged_remote(server)
    try:
        dest = tmp_path / "wide"
        dest.mkdir()
        with pytest.raises(InvalidArgument, match="distinct directories or more"):
            materialise(remote, executor.local, SHA256, dg.make_digest(SHA256, root.hash, root.size_bytes), dest,
                        Staging(limits=InputLimits(max_paths=10)))
    finally:
        channel.close()
    assert "BatchReadBlobs" not in calls.methods, calls.methods


# ---- running actions -----------------------------------------------------------


def run_action(executor, action) -> tuple[re_pb2.ActionResult, object]:
    return ActionRun(executor, action).run()


def test_action_runs_with_exact_environment_and_outputs(client, executor):
    script = b"""
set -e
mkdir -p out/tree/inner
echo hello > out/file.txt
cp tool.sh out/tree/run.sh
echo nested > out/tree/inner/n.txt
ln -s inner/n.txt out/tree/link
ln -s file.txt out/sym
env | sort > out/env.txt
echo to-stderr >&2
echo to-stdout
"""
    action = put_action(
        client, ["/bin/sh", "script.sh"], {"script.sh": script, "tool.sh": Exe(b"#!/bin/sh\n")},
        env={"FOO": "bar"},
        output_files=["out/file.txt", "out/env.txt", "out/sym", "out/missing.txt"],
        output_directories=["out/tree", "out/nodir"],
    )
    result, status = run_action(executor, action)
    assert status.code == 0, status
    assert result.exit_code == 0
    files = {f.path: f for f in result.output_files}
    assert set(files) == {"out/file.txt", "out/env.txt"}  # the missing one is left out
    assert client.bs_read(files["out/file.txt"].digest) == b"hello\n"
    env = client.bs_read(files["out/env.txt"].digest).decode().split("\n")
    names = {line.split("=", 1)[0] for line in env if line}
    assert names <= {"FOO", "PATH", "PWD", "SHLVL", "_", "OLDPWD"}, names  # nothing leaked from the worker
    assert "FOO=bar" in env
    assert [(s.path, s.target) for s in result.output_file_symlinks] == [("out/sym", "file.txt")]
    (od,) = result.output_directories
    assert od.path == "out/tree"
    tree = re_pb2.Tree.FromString(client.bs_read(od.tree_digest))
    assert client.bs_read(od.root_directory_digest) == tree.root.SerializeToString(deterministic=True)
    root = tree.root
    assert [f.name for f in root.files] == ["run.sh"] and root.files[0].is_executable  # cp keeps +x
    assert [(s.name, s.target) for s in root.symlinks] == [("link", "inner/n.txt")]
    (inner,) = tree.children
    assert [f.name for f in inner.files] == ["n.txt"]
    assert client.bs_read(inner.files[0].digest) == b"nested\n"
    assert client.bs_read(result.stdout_digest) == b"to-stdout\n"
    assert client.bs_read(result.stderr_digest) == b"to-stderr\n"
    assert not client.missing([od.tree_digest, od.root_directory_digest, inner.files[0].digest])
    m = result.execution_metadata
    assert m.worker == "test-worker"
    stamps = [m.worker_start_timestamp, m.input_fetch_start_timestamp, m.input_fetch_completed_timestamp,
              m.execution_start_timestamp, m.execution_completed_timestamp, m.output_upload_start_timestamp,
              m.output_upload_completed_timestamp, m.worker_completed_timestamp]
    times = [t.ToNanoseconds() for t in stamps]
    assert all(times) and times == sorted(times)
    assert list(executor.work_dir.iterdir()) == []  # the action's work dir is gone


def test_output_paths_working_directory_and_parents(client, executor):
    # REAPI 2.1 output_paths, relative to the working directory; parents created before running.
    action = put_action(
        client,
        ["sh", "-c", ("echo a > gen/deep/a.txt && chmod +x gen/deep/a.txt && mkdir d && echo b > d/b"
                      " && ln -s /abs/target lnk && pwd > where")],
        {"pkg": {"keep": b"k"}},
        working_directory="pkg",
        output_paths=["gen/deep/a.txt", "d", "lnk", "where", "absent"],
    )
    result, status = run_action(executor, action)
    assert status.code == 0, status
    (f,) = [f for f in result.output_files if f.path == "gen/deep/a.txt"]
    assert f.is_executable
    assert [d.path for d in result.output_directories] == ["d"]
    assert [(s.path, s.target) for s in result.output_symlinks] == [("lnk", "/abs/target")]
    assert not result.output_file_symlinks
    where = next(f for f in result.output_files if f.path == "where")
    assert client.bs_read(where.digest).decode().strip().endswith("/root/pkg")


def test_failing_command_reports_exit_code_and_outputs(client, executor):
    action = put_action(client, ["sh", "-c", "echo partial > o; exit 3"], output_files=["o"])
    result, status = run_action(executor, action)
    assert status.code == 0  # the action ran; its failure is in the exit code
    assert result.exit_code == 3
    assert [f.path for f in result.output_files] == ["o"]


def test_commands_under_the_reaper_get_default_signal_dispositions(client, executor):
    # Python (the reaper) ignores SIGPIPE and SIGXFSZ; a command must not inherit that: `yes` ends
    # by SIGPIPE, not with an EPIPE error message, as under bubblewrap or a shell
    action = put_action(client, ["sh", "-c", "yes | head -n 1; grep -E '^SigIgn' /proc/self/status"])
    result, status = run_action(executor, action)
    assert status.code == 0 and result.exit_code == 0, status
    out = client.bs_read(result.stdout_digest).decode()
    assert out.startswith("y\n") and int(out.split()[-1], 16) & (1 << (13 - 1) | 1 << (25 - 1)) == 0, out
    assert client.bs_read(result.stderr_digest) == b""


def test_missing_command_is_reported_as_not_found_127(client, executor):
    action = put_action(client, ["no-such-program-here"])
    result, status = run_action(executor, action)
    assert status.code == 0 and result.exit_code == 127
    assert b"no-such-program-here" in client.bs_read(result.stderr_digest)


def test_missing_inputs_give_failed_precondition_with_violations(client, executor):
    ghost = unique("never uploaded")
    d = re_pb2.Directory()
    d.files.add(name="ghost", digest=digest(ghost))
    raw = d.SerializeToString()
    client.upload(raw)
    cmd = re_pb2.Command(arguments=["true"]).SerializeToString()
    client.upload(cmd)
    action = re_pb2.Action(command_digest=digest(cmd), input_root_digest=digest(raw))
    _, status = run_action(executor, action)
    assert status.code == code_pb2.FAILED_PRECONDITION
    failure = error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(failure)
    assert [(v.type, v.subject) for v in failure.violations] == [
        ("MISSING", f"blobs/{digest(ghost).hash}/{len(ghost)}")]


def test_escaping_input_gives_invalid_argument_status(client, executor):
    cmd = re_pb2.Command(arguments=["true"]).SerializeToString()
    client.upload(cmd)
    action = re_pb2.Action(command_digest=digest(cmd), input_root_digest=put_tree(client, {"x": Link("/etc")}))
    _, status = run_action(executor, action)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "points outside the input root" in status.message


def test_output_path_escaping_is_refused(client, executor):
    action = put_action(client, ["true"], output_files=["../escape"])
    _, status = run_action(executor, action)
    assert status.code == code_pb2.INVALID_ARGUMENT and "'..'" in status.message


def test_large_blobs_go_through_bytestream_both_ways(client, server, tmp_path):
    # A tiny batch limit makes every blob above 1000 bytes take ByteStream Read and Write.
    channel = grpc.insecure_channel(server.address)
    ex = Executor(RemoteCas(channel, "", max_batch=1000), LocalCas(tmp_path / "c", 1 << 30), NoSandbox(),
                  tmp_path / "w", "bs-worker")
    big_in = os.urandom(300_000)
    action = put_action(client, ["sh", "-c", "cp big.in big.out && cat big.in big.in > bigger.out"],
                        {"big.in": big_in}, output_files=["big.out", "bigger.out"])
    result, status = ActionRun(ex, action).run()
    channel.close()
    assert status.code == 0, status
    outs = {f.path: f.digest for f in result.output_files}
    assert outs["big.out"] == digest(big_in)
    assert client.bs_read(outs["bigger.out"]) == big_in * 2


@pytest.mark.parametrize("size, asks", [(2_000, False), (3 << 20, True)])
def test_small_outputs_are_sent_without_asking_what_is_missing(client, server, tmp_path, size, asks):
    """Up to 1 MiB of outputs go in one BatchUpdateBlobs without a FindMissingBlobs round trip
    first; larger outputs are checked first so that only what the server lacks is sent."""
    remote, calls, channel = _logged_remote(server)
    ex = Executor(remote, LocalCas(tmp_path / "c", 1 << 30), NoSandbox(), tmp_path / "w", "upload-worker")
    seed = unique("seed").decode().strip()
    action = put_action(client, ["sh", "-c", f"yes {seed} | head -c {size} > out.bin"], output_files=["out.bin"])
    try:
        result, status = ActionRun(ex, action).run()
    finally:
        channel.close()
    assert status.code == 0, status
    out = result.output_files[0]
    assert out.digest.size_bytes == size
    assert client.bs_read(out.digest) == (f"{seed}\n".encode() * (size // len(seed) + 1))[:size]
    assert ("FindMissingBlobs" in calls.methods) == asks, calls.methods


def test_blake3_digests_are_recognised(client, executor):
    import blake3

    def b3(data: bytes) -> re_pb2.Digest:
        return re_pb2.Digest(hash=blake3.blake3(data).hexdigest(), size_bytes=len(data))

    def up(data: bytes) -> re_pb2.Digest:
        d = b3(data)
        resp = client.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(
            requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=data)],
            digest_function=re_pb2.DigestFunction.BLAKE3))
        assert resp.responses[0].status.code == 0
        return d

    data = unique("blake3 input")
    root = re_pb2.Directory()
    root.files.add(name="in", digest=up(data))
    cmd = re_pb2.Command(arguments=["cp", "in", "out"], output_files=["out"])
    action = re_pb2.Action(command_digest=up(cmd.SerializeToString()),
                           input_root_digest=up(root.SerializeToString()))
    result, status = run_action(executor, action)
    assert status.code == 0, status
    assert result.output_files[0].digest == b3(data)  # outputs hashed with the action's function


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _dead(pid):
            return True
        time.sleep(0.05)
    return False


def test_timeout_kills_the_whole_process_group(client, executor, tmp_path):
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids}.child; echo $$ > {pids}.parent; echo started; sleep 300"
    action = put_action(client, ["sh", "-c", script], timeout=1.5)
    result, status = run_action(executor, action)
    assert status.code == code_pb2.DEADLINE_EXCEEDED, status
    assert result.exit_code == 128 + signal.SIGKILL
    assert client.bs_read(result.stdout_digest) == b"started\n"  # the partial result
    for who in ("parent", "child"):
        pid = int(Path(f"{pids}.{who}").read_text())
        assert _wait_dead(pid), f"{who} {pid} survived the timeout"


def test_background_leftovers_are_killed_after_a_normal_exit(tmp_path):
    pidfile = tmp_path / "bg"
    cmd = Command()
    outcome = cmd.run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}"], {"PATH": "/usr/bin:/bin"}, tmp_path,
                      tmp_path / "o", tmp_path / "e", None)
    assert outcome.exit_code == 0 and not outcome.timed_out
    assert _wait_dead(int(pidfile.read_text()))


def test_cancel_kills_a_running_command(tmp_path):
    pidfile = tmp_path / "bg"
    cmd = Command()
    threading.Timer(0.5, cmd.cancel).start()
    outcome = cmd.run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; sleep 300"], {"PATH": "/usr/bin:/bin"},
                      tmp_path, tmp_path / "o", tmp_path / "e", 60)
    assert outcome.cancelled and not outcome.timed_out
    assert _wait_dead(int(pidfile.read_text()))


def test_bwrap_sandbox_runs_actions(client, executor):
    try:
        box = make_sandbox("bwrap")
    except ValueError as e:
        pytest.skip(str(e))
    executor.sandbox = box
    script = ("echo inside > out/x; ls -A /tmp | wc -l > out/tmp_entries; "
              "cat /proc/net/dev | tail -n +3 | wc -l > out/netdevs; "
              "touch /usr/should-fail 2>/dev/null && echo writable > out/usr || echo ro > out/usr")
    action = put_action(client, ["sh", "-c", script], {"in.txt": b"i"},
                        output_files=["out/x", "out/tmp_entries", "out/netdevs", "out/usr"])
    result, status = run_action(executor, action)
    assert status.code == 0, status
    assert result.exit_code == 0, client.bs_read(result.stderr_digest)
    out = {f.path: client.bs_read(f.digest).decode().strip() for f in result.output_files}
    assert out["out/x"] == "inside"
    assert out["out/usr"] == "ro"
    if box.unshare_net:  # only loopback in a fresh network namespace
        assert out["out/netdevs"] == "1"


def test_bwrap_sandbox_timeout_kills_everything(client, executor, tmp_path):
    try:
        executor.sandbox = make_sandbox("bwrap")
    except ValueError as e:
        pytest.skip(str(e))
    action = put_action(client, ["sh", "-c", "sleep 300 & sleep 300"], timeout=1)
    started = time.monotonic()
    _, status = run_action(executor, action)
    assert status.code == code_pb2.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 60
    # Nothing from the sandbox outlives it (PID namespace + --die-with-parent).
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "sleep 300 & sleep 300" not in ps


# ---- the lease loop against a fake Bots server -----------------------------------


class FakeBots(bots_pb2_grpc.BotsServicer):
    """Offers queued leases one at a time per bot; records what bots report."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queue: list[bots_pb2.Lease] = []
        self.sessions: dict[str, bots_pb2.BotSession] = {}
        self.active: set[str] = set()
        self.completed: dict[str, bots_pb2.Lease] = {}
        self.cancel: set[str] = set()
        self.offered: dict[str, str] = {}  # lease id -> session name
        self.statuses: list[int] = []
        self.given_back: set[str] = set()

    def offer(self, lease: bots_pb2.Lease) -> None:
        with self.cond:
            self.queue.append(lease)
            self.cond.notify_all()

    def CreateBotSession(self, request, context):
        s = bots_pb2.BotSession()
        s.CopyFrom(request.bot_session)
        s.name = f"{request.parent}/botSessions/{uuid.uuid4()}"
        with self.cond:
            self.sessions[s.name] = s
        return s

    def UpdateBotSession(self, request, context):
        with self.cond:
            if request.name not in self.sessions:
                context.abort(grpc.StatusCode.NOT_FOUND, f"unknown session {request.name}")
            self.sessions[request.name] = request.bot_session
            self.statuses.append(request.bot_session.status)
            out = bots_pb2.BotSession()
            out.CopyFrom(request.bot_session)
            del out.leases[:]
            held = 0
            for lease in request.bot_session.leases:
                if lease.state == bots_pb2.COMPLETED:
                    self.completed[lease.id] = lease
                    self.cond.notify_all()
                    continue
                if lease.state == bots_pb2.CANCELLED:
                    self.given_back.add(lease.id)
                    self.cond.notify_all()
                    continue
                if lease.state == bots_pb2.ACTIVE:
                    self.active.add(lease.id)
                held += 1
                echo = out.leases.add()
                echo.CopyFrom(lease)
                if lease.id in self.cancel:
                    echo.state = bots_pb2.CANCELLED
            deadline = time.monotonic() + min(1.0, (context.time_remaining() or 1) - 0.2)
            while not held and not self.queue and request.bot_session.status == bots_pb2.OK:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            if not held and self.queue and request.bot_session.status == bots_pb2.OK:
                lease = self.queue.pop(0)
                self.offered[lease.id] = request.name
                out.leases.append(lease)
            return out

    def wait_completed(self, lease_id: str, timeout: float = 60) -> bots_pb2.Lease:
        with self.cond:
            assert self.cond.wait_for(lambda: lease_id in self.completed, timeout), f"{lease_id} not completed"
            return self.completed[lease_id]


@pytest.fixture
def fake_bots():
    bots = FakeBots()
    srv = grpc.server(futures.ThreadPoolExecutor(16))
    bots_pb2_grpc.add_BotsServicer_to_server(bots, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield bots, f"127.0.0.1:{port}"
    srv.stop(0)


def _worker(tmp_path, cas_address, bots_address, **kw) -> tuple[Worker, threading.Thread]:
    # action_user=None: actions run as the test's own uid, because these tests watch them through
    # files under tmp_path, which nobody (the default action uid of a root worker) cannot reach.
    cfg = WorkerConfig(server=bots_address, concurrency=kw.pop("concurrency", 1),
                       cache_dir=tmp_path / "wcache" / "cas", sandbox="none", name="fake-test",
                       poll_timeout=5, action_user=None, **kw)
    worker = Worker(cfg)
    # The CAS lives on the real granary server; the fake only speaks Bots.
    worker.executor.remote = RemoteCas(grpc.insecure_channel(cas_address), "")
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    return worker, t


def test_lease_loop_runs_an_offered_action_and_reports_it(client, server, fake_bots, tmp_path):
    bots, address = fake_bots
    worker, thread = _worker(tmp_path, server.address, address, properties=[("Pool", "tests")])
    try:
        action = put_action(client, ["sh", "-c", "echo leased > out.txt"], output_files=["out.txt"])
        bots.offer(make_lease("job-1", action))
        lease = bots.wait_completed("job-1")
        assert lease.status.code == 0
        result = lease_result(lease)
        assert result is not None and result.exit_code == 0
        assert client.bs_read(result.output_files[0].digest) == b"leased\n"
        assert "job-1" in bots.active  # accepted before it completed
        assert result.execution_metadata.worker.startswith("fake-test-")
        (session,) = bots.sessions.values()
        props = worker_properties(session)
        assert ("OSFamily", "linux") in props and ("Pool", "tests") in props
        assert any(k == "ISA" for k, _ in props)
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert bots_pb2.BOT_TERMINATING in bots.statuses


def test_server_cancel_kills_the_action(client, server, fake_bots, tmp_path):
    bots, address = fake_bots
    worker, thread = _worker(tmp_path, server.address, address)
    pidfile = tmp_path / "cancel.pid"
    try:
        action = put_action(client, ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; sleep 300"])
        bots.offer(make_lease("job-c", action))
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with bots.cond:
            bots.cancel.add("job-c")
        assert _wait_dead(int(pidfile.read_text()))
        time.sleep(1)
        assert "job-c" not in bots.completed  # dropped, not reported
        # The slot is free again: a new lease runs.
        bots.offer(make_lease("job-after", put_action(client, ["true"])))
        assert bots.wait_completed("job-after").status.code == 0
    finally:
        worker.stop()
        thread.join(30)


def test_several_slots_run_leases_at_once(client, server, fake_bots, tmp_path):
    bots, address = fake_bots
    worker, thread = _worker(tmp_path, server.address, address, concurrency=3)
    marker = tmp_path / "together"
    marker.mkdir()
    try:
        # Each action waits until all three are running at the same time.
        script = f"touch {marker}/$$; while [ $(ls {marker} | wc -l) -lt 3 ]; do sleep 0.05; done"
        for i in range(3):
            bots.offer(make_lease(f"par-{i}", put_action(client, ["sh", "-c", script + f" # {i}"], timeout=30)))
        for i in range(3):
            assert bots.wait_completed(f"par-{i}").status.code == 0
        assert len({s for s in bots.offered.values()}) == 3  # one lease per bot session
    finally:
        worker.stop()
        thread.join(30)


def _wait_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text().strip()


def test_sigterm_lets_running_actions_finish(client, server, fake_bots, tmp_path):
    bots, address = fake_bots
    worker, thread = _worker(tmp_path, server.address, address)
    go = tmp_path / "go"
    started = tmp_path / "started"
    script = f"echo 1 > {started}; while [ ! -e {go} ]; do sleep 0.05; done; echo done"
    bots.offer(make_lease("drain", put_action(client, ["sh", "-c", script], timeout=60)))
    _wait_file(started)
    worker.stop()  # drain: no new work, the running action may finish
    bots.offer(make_lease("not-taken", put_action(client, ["true"])))
    time.sleep(0.5)
    go.touch()
    lease = bots.wait_completed("drain")
    assert lease.status.code == 0 and lease_result(lease).exit_code == 0
    thread.join(30)
    assert not thread.is_alive()
    assert "not-taken" not in bots.offered  # a terminating bot is offered nothing
    assert bots.statuses[-1] == bots_pb2.BOT_TERMINATING


def test_abandon_kills_and_gives_leases_back(client, server, fake_bots, tmp_path):
    bots, address = fake_bots
    worker, thread = _worker(tmp_path, server.address, address)
    pidfile = tmp_path / "abandon.pid"
    bots.offer(make_lease("abandoned", put_action(client, ["sh", "-c", f"echo $$ > {pidfile}; sleep 300"])))
    pid = int(_wait_file(pidfile))
    worker.stop()
    worker.stop()  # a second signal: abandon
    thread.join(30)
    assert not thread.is_alive()
    assert _wait_dead(pid)
    assert "abandoned" in bots.given_back and "abandoned" not in bots.completed


def test_worker_rides_out_an_unavailable_server(client, server, tmp_path):
    # Start the worker first, the Bots server later on the same port.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker, thread = _worker(tmp_path, server.address, f"127.0.0.1:{port}")
    try:
        time.sleep(1.5)  # a few failed CreateBotSession attempts with backoff
        bots = FakeBots()
        srv = grpc.server(futures.ThreadPoolExecutor(8))
        bots_pb2_grpc.add_BotsServicer_to_server(bots, srv)
        srv.add_insecure_port(f"127.0.0.1:{port}")
        srv.start()
        try:
            bots.offer(make_lease("late", put_action(client, ["true"])))
            assert bots.wait_completed("late", timeout=90).status.code == 0
        finally:
            srv.stop(0)
    finally:
        worker.stop(abandon=True)
        thread.join(30)


def test_cli_worker_stops_cleanly_on_sigterm(fake_bots, tmp_path):
    bots, address = fake_bots
    proc = subprocess.Popen(
        [sys.executable, "-m", "granary", "worker", "--server", address, "--concurrency", "2",
         "--cache-dir", str(tmp_path / "cli-cache"), "--sandbox", "none", "--property", "Pool=cli"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while len(bots.sessions) < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert all(("Pool", "cli") in worker_properties(s) for s in bots.sessions.values())
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_stale_work_dirs_of_dead_workers_are_removed(tmp_path):
    from granary.worker.main import remove_stale_work_dirs

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / str(dead.pid) / "x").mkdir(parents=True)
    (tmp_path / str(os.getpid())).mkdir()
    remove_stale_work_dirs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(os.getpid())]


def test_missing_blobs_error_names_digests():
    e = MissingBlobs([bd(b"a"), bd(b"b")])
    assert bd(b"a").hash in str(e)


# ---- end to end against the real server's Execution and Bots services ----------------

E2E_CONFIG = """
storage:
  main: {type: disk, path: cas}
action_caches:
  main: {type: disk, path: ac}
execution:
  local_workers: 0
  platform_grace: 0s
  known_platforms: [{OSFamily: linux}]
instances:
  "*": {cas: main, action_cache: main}
"""


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """A real `granary serve` with execution, and a real `granary worker` process attached."""
    tmp = tmp_path_factory.mktemp("farm")
    srv = start_granary(tmp / "server", E2E_CONFIG)
    with open(tmp / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "granary", "worker", "--server", srv.address, "--concurrency", "2",
             "--cache-dir", str(tmp / "worker" / "cas"), "--sandbox", "auto", "--log-level", "info"],
            stdout=log, stderr=log,
        )
    c = Client(srv.address)
    try:
        execution = re_grpc.ExecutionStub(c.channel)
        probe = put_action(c, ["true"])
        blob = probe.SerializeToString()
        c.upload(blob)
        try:
            list(execution.Execute(re_pb2.ExecuteRequest(action_digest=digest(blob)), timeout=60))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                pytest.skip("this granary serve has no Execution service yet")
            raise
        yield srv, c, execution, tmp
    finally:
        c.close()
        worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(60) == 0, (tmp / "worker.log").read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
            srv.stop()


def execute(client, execution, action: re_pb2.Action, **kw):
    blob = action.SerializeToString()
    client.upload(blob)
    ops = execution.Execute(re_pb2.ExecuteRequest(action_digest=digest(blob), skip_cache_lookup=True, **kw),
                            timeout=120)
    return ops


def final_response(ops) -> re_pb2.ExecuteResponse:
    for op in ops:
        if op.done:
            r = re_pb2.ExecuteResponse()
            op.response.Unpack(r)
            return r
    raise AssertionError("the operation stream ended without a result")


def test_e2e_execute_runs_on_the_worker(farm):
    _, client, execution, _ = farm
    data = unique("e2e input")
    action = put_action(client, ["sh", "-c", "mkdir -p out/d && cp in.txt out/copy && echo x > out/d/y"],
                        {"in.txt": data}, output_files=["out/copy"], output_directories=["out/d"])
    r = final_response(execute(client, execution, action))
    assert r.status.code == 0, r.status
    assert r.result.exit_code == 0
    assert client.bs_read(r.result.output_files[0].digest) == data
    tree = re_pb2.Tree.FromString(client.bs_read(r.result.output_directories[0].tree_digest))
    assert [f.name for f in tree.root.files] == ["y"]
    m = r.result.execution_metadata
    assert m.worker and m.queued_timestamp.ToNanoseconds() <= m.worker_start_timestamp.ToNanoseconds()
    assert m.output_upload_completed_timestamp.ToNanoseconds() <= m.worker_completed_timestamp.ToNanoseconds()


def test_e2e_timeout_is_deadline_exceeded(farm):
    _, client, execution, _ = farm
    action = put_action(client, ["sh", "-c", "echo begun; sleep 300"], timeout=1)
    r = final_response(execute(client, execution, action))
    assert r.status.code == code_pb2.DEADLINE_EXCEEDED, r.status
    assert client.bs_read(r.result.stdout_digest) == b"begun\n"


def _ps() -> str:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout


def test_e2e_cancel_operation_kills_the_command(farm):
    from google.longrunning import operations_pb2, operations_pb2_grpc

    _, client, execution, _ = farm
    marker = f"cancel-me-{uuid.uuid4().hex}"  # found in `ps` output while the command runs
    action = put_action(client, ["sh", "-c", f"sleep 300; echo {marker}"], timeout=600)
    ops = execute(client, execution, action)
    first = next(ops)
    deadline = time.monotonic() + 60
    # Wait until the command runs (EXECUTING), then cancel the operation.
    meta = re_pb2.ExecuteOperationMetadata()
    for op in ops:
        op.metadata.Unpack(meta)
        if meta.stage == re_pb2.ExecutionStage.EXECUTING:
            break
        assert time.monotonic() < deadline
    while marker not in _ps():
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    operations_pb2_grpc.OperationsStub(client.channel).CancelOperation(
        operations_pb2.CancelOperationRequest(name=first.name))
    ps_deadline = time.monotonic() + 30
    while time.monotonic() < ps_deadline:
        if marker not in _ps():
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the cancelled command is still running")


# ---- output path '.' and input roots that are a whole filesystem (BuildStream) ---------


def _tree_of(client, od) -> dict[str, object]:
    """path -> bytes (file), ("x", bytes) (executable file) or "dir", from an OutputDirectory's Tree."""
    tree = re_pb2.Tree.FromString(client.bs_read(od.tree_digest))
    assert client.bs_read(od.root_directory_digest) == tree.root.SerializeToString(deterministic=True)
    children = {digest(c.SerializeToString(deterministic=True)).hash: c for c in tree.children}
    out: dict[str, object] = {}

    def walk(d: re_pb2.Directory, prefix: str) -> None:
        for f in d.files:
            data = client.bs_read(f.digest) if f.digest.size_bytes else b""
            out[prefix + f.name] = ("x", data) if f.is_executable else data
        for s in d.directories:
            out[prefix + s.name] = "dir"
            walk(children[s.digest.hash], prefix + s.name + "/")

    walk(tree.root, "")
    return out


def test_output_path_dot_captures_the_working_directory(client, executor):
    # What BuildStream sends: its build directory as working directory and output '.', plus the
    # install directory reached through '..' (still inside the input root).
    action = put_action(
        client,
        ["sh", "-c", "echo built > made.txt && mkdir -p ../../install/sub && echo i > ../../install/sub/i.txt"],
        {"src": {"pkg": {"in.txt": b"source\n"}}},
        working_directory="src/pkg",
        output_paths=[".", "../../install"],
    )
    result, status = run_action(executor, action)
    assert status.code == 0, status
    assert result.exit_code == 0, client.bs_read(result.stderr_digest)
    dirs = {od.path: od for od in result.output_directories}
    assert set(dirs) == {".", "../../install"}
    assert _tree_of(client, dirs["."]) == {"in.txt": b"source\n", "made.txt": b"built\n"}
    assert _tree_of(client, dirs["../../install"]) == {"sub": "dir", "sub/i.txt": b"i\n"}
    # The legacy field means the same.
    legacy = put_action(client, ["sh", "-c", "echo x > x"], working_directory="w", output_directories=["."],
                        inputs={"w": {}})
    result, status = run_action(executor, legacy)
    assert status.code == 0, status
    (od,) = result.output_directories
    assert od.path == "." and _tree_of(client, od) == {"x": b"x\n"}


@pytest.mark.parametrize(("wd", "path", "why"), [
    ("", "..", "'..'"),
    ("a", "../../x", "'..'"),
    ("a/b", "../c/../../../x", "'..'"),
    ("a", "/etc", "relative"),
])
def test_output_paths_leaving_the_input_root_are_refused(client, executor, wd, path, why):
    action = put_action(client, ["true"], {"a": {"b": {}}}, working_directory=wd, output_paths=[path])
    _, status = run_action(executor, action)
    assert status.code == code_pb2.INVALID_ARGUMENT, status
    assert repr(path) in status.message and why in status.message


def _busybox_root(extra: dict | None = None) -> dict:
    """A whole filesystem as BuildStream stages it: a static busybox with its applet links, and the
    empty mount points dev, proc and tmp."""
    if not static_busybox():
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    with open(BUSYBOX, "rb") as f:
        bb = f.read()
    bin_dir: dict = {"busybox": Exe(bb), **{a: Link("busybox") for a in applets()}}
    return {"bin": bin_dir, "dev": {}, "proc": {}, "tmp": {}, **(extra or {})}


def test_filesystem_image_runs_with_the_input_root_as_slash(client, executor):
    try:
        executor.sandbox = make_sandbox("bwrap")
    except ValueError as e:
        pytest.skip(str(e))
    script = ("pwd > where; ls / > /install/top; echo $PATH > /install/path; "
              "[ -e /usr ] && echo host-usr > /install/usr || echo no-usr > /install/usr; "
              "mkdir /install/sub && printf '#!/bin/sh\\necho hi\\n' > /install/sub/run.sh && "
              "chmod 755 /install/sub/run.sh && /install/sub/run.sh > /install/ran && ls /proc/self > /dev/null")
    action = put_action(
        client, ["sh", "-c", "-e", script],
        _busybox_root({"build": {"elem": {"src.c": b"int x;\n"}}, "install": {}}),
        env={"PATH": "/usr/bin:/bin"},
        working_directory="build/elem",
        output_paths=[".", "../../install"],
    )
    result, status = run_action(executor, action)
    assert status.code == 0, status
    assert result.exit_code == 0, client.bs_read(result.stderr_digest)
    dirs = {od.path: _tree_of(client, od) for od in result.output_directories}
    assert dirs["."] == {"src.c": b"int x;\n", "where": b"/build/elem\n"}
    install = dirs["../../install"]
    assert install["top"].split() == [b"bin", b"build", b"dev", b"install", b"proc", b"tmp"]
    assert install["usr"] == b"no-usr\n"  # nothing of the host's system is visible
    assert install["sub/run.sh"] == ("x", b"#!/bin/sh\necho hi\n")
    assert install["ran"] == b"hi\n"


def test_filesystem_image_symlinks_resolve_inside_the_image(client, executor):
    # Absolute targets and '..' past the top are normal in a sysroot: the command reads them with the
    # image as '/', and so does the worker when it makes output parents and collects outputs.
    try:
        executor.sandbox = make_sandbox("bwrap")
    except ValueError as e:
        pytest.skip(str(e))
    probe = f"granary-probe-{uuid.uuid4().hex}"  # would appear in the host's / if the worker followed a link
    root = _busybox_root({
        "usr": {"bin": Link("/bin")},
        probe: {"build": {"in.txt": b"in\n"}},
        "wd": Link(f"/{probe}/build/../build"),
        "lnk": Link(f"/{probe}/build"),
        "up": Link("../../../.."),
        "etc": {"localtime": Link("/usr/share/zoneinfo/UTC")},
    })
    script = ("echo made > made.txt && echo gen > gen/f.txt && ls /up/ > /tmp/up.txt && pwd > where"
              " && rm -r gone /tmp/gone && echo not-a-dir > gone && echo not-a-dir > /tmp/gone")
    action = put_action(client, ["/usr/bin/sh", "-c", "-e", script], root, env={"PATH": "/bin"},
                        working_directory="wd",
                        output_paths=[".", "../lnk/gen/f.txt", "../etc/localtime", "../lnk/gone/x/y", "../up/tmp/gone/z"])
    result, status = run_action(executor, action)
    assert status.code == 0, status
    assert result.exit_code == 0, client.bs_read(result.stderr_digest)
    assert not os.path.exists("/" + probe)
    (od,) = result.output_directories
    assert od.path == "." and _tree_of(client, od) == {
        "in.txt": b"in\n", "made.txt": b"made\n", "where": b"/wd\n", "gen": "dir", "gen/f.txt": b"gen\n",
        "gone": b"not-a-dir\n"}  # outputs under it are absent, not an error
    assert [(f.path, client.bs_read(f.digest)) for f in result.output_files] == [("../lnk/gen/f.txt", b"gen\n")]
    assert [(s.path, s.target) for s in result.output_symlinks] == [("../etc/localtime", "/usr/share/zoneinfo/UTC")]


def test_filesystem_image_output_parent_through_a_file_or_dangling_link_is_refused(client, executor):
    try:
        executor.sandbox = make_sandbox("bwrap")
    except ValueError as e:
        pytest.skip(str(e))
    root = _busybox_root({"f": b"a file\n", "lf": Link("/f"), "dangling": Link("/nowhere/deeper")})
    action = put_action(client, ["sh", "-c", "true"], root, env={"PATH": "/bin"}, output_paths=["lf/x/y"])
    _, status = run_action(executor, action)
    assert status.code == code_pb2.INVALID_ARGUMENT, status
    assert "'lf/x'" in status.message and "'f'" in status.message and "not a directory" in status.message
    # mkdir -p does not create what a symlink points at: neither does the worker.
    action = put_action(client, ["sh", "-c", "true"], root, env={"PATH": "/bin"}, output_paths=["dangling/y"])
    _, status = run_action(executor, action)
    assert status.code == code_pb2.INVALID_ARGUMENT, status
    assert "'dangling'" in status.message and "'/nowhere/deeper'" in status.message


def test_filesystem_image_needs_the_bubblewrap_sandbox(client, executor):
    action = put_action(client, ["sh", "-c", "true"], _busybox_root(), env={"PATH": "/bin"})
    _, status = run_action(executor, action)  # the executor fixture runs plain processes
    assert status.code == code_pb2.FAILED_PRECONDITION, status
    assert "bubblewrap" in status.message and "'dev'" in status.message


def test_input_root_with_populated_dev_runs_with_host_tools(client, executor):
    # Only *empty* dev and proc mark a filesystem image: a Bazel package named dev stays a package.
    action = put_action(client, ["sh", "-c", "cat dev/f > out"], {"dev": {"f": b"pkg\n"}, "proc": {}},
                        output_files=["out"])
    result, status = run_action(executor, action)
    assert status.code == 0 and result.exit_code == 0, status
    assert client.bs_read(result.output_files[0].digest) == b"pkg\n"


def test_blob_memo_keeps_verified_small_blobs_within_its_bound():
    import hashlib

    from granary import digest as dg
    from granary.worker.remote_cas import MEMO_BLOB, BlobMemo

    def d(data: bytes):
        return dg.make_digest(dg.SHA256, hashlib.sha256(data).hexdigest(), len(data))

    memo = BlobMemo(max_bytes=10)
    a, b, c = b"aaaa", b"bbbb", b"cccc"
    memo.put(d(a), a)
    memo.put(d(b), b)
    assert memo.get(d(a)) == a  # a is now the most recently used
    memo.put(d(c), c)  # 12 bytes > 10: the least recently used (b) goes
    assert memo.get(d(b)) is None and memo.get(d(a)) == a and memo.get(d(c)) == c
    big = b"x" * (MEMO_BLOB + 1)
    BlobMemo().put(d(big), big)
    assert BlobMemo().get(d(big)) is None
    memo.put(d(b"0123456789abc"), b"0123456789abc")  # larger than the whole memo: not kept
    assert memo.get(d(b"0123456789abc")) is None and memo.get(d(a)) == a
