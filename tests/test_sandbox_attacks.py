"""Attacks on the worker's sandbox: each one held before it was fixed.

Actions run strangers' code, so the worker is a privilege boundary: an
action must not run as root on the host, must not remount or write host
paths, must not read secrets under /etc, gets no network unless its
platform asks for it, cannot leave processes behind, and cannot change the
worker's cached input files for later actions. An input tree that expands to
millions of paths is refused before anything is built.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2
from reapi import Client, digest, re_pb2
from serverutil import start_granary
from test_worker import E2E_CONFIG, execute, final_response, put_action, run_action, unique

from granary.worker.execute import Executor
from granary.worker.local_cas import LocalCas
from granary.worker.remote_cas import RemoteCas
from granary.worker.sandbox import ActionUser, NoSandbox, make_sandbox, reachable

ROOT = os.geteuid() == 0
NOBODY = ActionUser(65534, 65534)
SYSTEM_PYTHON = "/usr/bin/python3"  # the sandbox shows /usr, not the interpreter running the tests


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_granary(tmp_path_factory.mktemp("sandbox-cas"))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = Client(server.address)
    yield c
    c.close()


def _executor(server, tmp_path: Path, mode: str) -> Executor:
    """An executor as `granary worker` builds one: the action uid is nobody when the worker is root.

    A root worker's sandbox starts in one step (setpriv, then bubblewrap as the action uid) when
    the action uid can reach the input root, else through the launcher: "bwrap" runs in the
    pytest directory (0700 parents: the launcher), "bwrap-direct" in a work directory the action
    uid can reach, as the worker's mount view provides (worker/mountview.py).
    """
    user = NOBODY if ROOT else None
    if mode == "none":
        sandbox = NoSandbox(user)
    else:
        try:
            sandbox = make_sandbox("bwrap", user=user)
        except ValueError as e:
            pytest.skip(str(e))
    work = tmp_path / "cache" / "work"
    if mode == "bwrap-direct":
        if not ROOT:
            pytest.skip("only a root worker has two ways to start the sandbox")
        work = Path(tempfile.mkdtemp(prefix="granary-direct-", dir="/tmp"))
        os.chmod(work, 0o711)
        assert reachable(str(work / "x"), NOBODY)
    elif ROOT and mode == "bwrap":
        assert not reachable(str(work / "x"), NOBODY)  # pytest's own directories are 0700
    channel = grpc.insecure_channel(server.address)
    return Executor(RemoteCas(channel, ""), LocalCas(tmp_path / "cache" / "cas", 1 << 30), sandbox,
                    work, "attack-worker", action_user=user)


@pytest.fixture(params=["bwrap", "bwrap-direct", "none"])
def executor(request, server, tmp_path):
    ex = _executor(server, tmp_path, request.param)
    yield ex
    if request.param == "bwrap-direct":
        shutil.rmtree(ex.work_dir, ignore_errors=True)


@pytest.fixture(params=["bwrap", "bwrap-direct"])
def bwrap_executor(request, server, tmp_path):
    ex = _executor(server, tmp_path, request.param)
    yield ex
    if request.param == "bwrap-direct":
        shutil.rmtree(ex.work_dir, ignore_errors=True)


def outputs(client, result) -> dict[str, str]:
    return {f.path: client.bs_read(f.digest).decode().strip() for f in result.output_files}


# ---- 1. never root on the host; host paths stay as they are ------------------------------


@pytest.mark.skipif(not ROOT, reason="the action uid differs from the worker's only when the worker is root")
def test_actions_run_unprivileged(client, executor):
    script = "id -u > uid; grep CapEff /proc/self/status | cut -f2 > caps"
    action = put_action(client, ["sh", "-c", script], output_files=["uid", "caps"])
    result, status = run_action(executor, action)
    assert status.code == 0, status
    out = outputs(client, result)
    assert out["uid"] == "65534"
    assert int(out["caps"], 16) == 0


def test_remounting_host_paths_fails_and_they_stay_unchanged(client, bwrap_executor):
    cache = bwrap_executor.local.root
    probe = f"granary-remount-{uuid.uuid4().hex}"
    before = sorted(os.listdir(cache))
    script = (
        f"mkdir -p m; mount --bind m /usr 2>/dev/null && echo bound > out || echo refused > out;"
        f" mount -o remount,rw /usr 2>/dev/null && echo rw >> out || echo ro >> out;"
        f" touch /usr/{probe} 2>/dev/null && echo wrote-usr >> out || echo usr-ro >> out;"
        f" mount --bind /usr {cache} 2>/dev/null && echo cache-bound >> out || echo cache-refused >> out;"
        f" unshare -r -m sh -c 'mount -o remount,rw /usr && touch /usr/{probe}' 2>/dev/null"
        f" && echo userns-wrote >> out || echo userns-refused >> out"
    )
    action = put_action(client, ["sh", "-c", script], output_files=["out"])
    result, status = run_action(bwrap_executor, action)
    assert status.code == 0, status
    assert outputs(client, result)["out"].split() == ["refused", "ro", "usr-ro", "cache-refused", "userns-refused"]
    assert not os.path.exists(f"/usr/{probe}")
    assert sorted(os.listdir(cache)) == before


# ---- 2. only what actions need: /etc, network, processes -----------------------------------


@pytest.mark.skipif(not ROOT, reason="writing a canary into /etc needs root")
def test_etc_secrets_are_not_visible(client, bwrap_executor):
    canary = Path(f"/etc/granary-canary-{uuid.uuid4().hex}")
    canary.write_text("secret\n")
    try:
        script = (f"cat {canary} > canary 2>&1 || echo hidden > canary; cat /etc/shadow > shadow 2>&1 || echo hidden > shadow;"
                  " test -r /etc/passwd && echo yes > passwd")
        action = put_action(client, ["sh", "-c", script], output_files=["canary", "shadow", "passwd"])
        result, status = run_action(bwrap_executor, action)
    finally:
        canary.unlink()
    assert status.code == 0, status
    out = outputs(client, result)
    assert "secret" not in out["canary"] and out["shadow"].endswith("hidden")
    assert "root:" not in out["shadow"]
    assert out["passwd"] == "yes"  # what toolchains need is still there


def _netdevs_action(client, network: str | None) -> re_pb2.Action:
    action = put_action(client, ["sh", "-c", "tail -n +3 /proc/net/dev | wc -l > n"], output_files=["n"])
    if network is not None:
        action.platform.properties.add(name="dockerNetwork", value=network)
    return action


def test_no_network_unless_the_platform_asks_for_it(client, bwrap_executor):
    if "off" not in bwrap_executor.sandbox.network_modes:
        pytest.skip("bubblewrap cannot make a network namespace here")
    host = len(Path("/proc/net/dev").read_text().splitlines()) - 2
    for network, expected in ((None, 1), ("off", 1), ("standard", host)):
        result, status = run_action(bwrap_executor, _netdevs_action(client, network))
        assert status.code == 0, status
        assert outputs(client, result)["n"] == str(expected), network


def test_unknown_network_value_is_refused(client, bwrap_executor):
    _, status = run_action(bwrap_executor, _netdevs_action(client, "host"))
    assert status.code == code_pb2.INVALID_ARGUMENT and "dockerNetwork" in status.message and "'host'" in status.message


def _alive_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("how", ["setsid", "python-daemon"])
def test_daemonized_children_do_not_outlive_the_action(client, executor, how):
    marker = f"granary-daemon-{uuid.uuid4().hex}"
    if how == "setsid":
        # The action ends once its child has left the process group.
        script = (f"setsid sh -c 'touch ready; sleep 300; : {marker}' > /dev/null 2>&1 < /dev/null &"
                  " while [ ! -e ready ]; do sleep 0.05; done")
        argv = ["sh", "-c", script]
    else:
        daemon = ("import os, time\n"
                  "if os.fork():\n"
                  "    while not os.path.exists('ready'): time.sleep(0.05)\n"
                  "    os._exit(0)\n"
                  "os.setsid()\n"
                  "if os.fork(): os._exit(0)\n"
                  "open('ready', 'w').close()\n"
                  "time.sleep(300)\n")
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            pytest.skip(f"{SYSTEM_PYTHON} is not installed")
        argv = [SYSTEM_PYTHON, "-c", daemon, marker]
    result, status = run_action(executor, put_action(client, argv))
    assert status.code == 0 and result.exit_code == 0, status
    deadline = time.monotonic() + 10
    while _alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _alive_with(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived the action: {left}"


# ---- 3. cached inputs stay as they were ------------------------------------------------------


@pytest.fixture(params=["bwrap", "bwrap-direct", "none", "none-same-uid"])
def any_executor(request, server, tmp_path):
    """Also a worker whose actions run as its own uid (any worker that is not root): inputs are copies."""
    ex = _executor(server, tmp_path, request.param.removesuffix("-same-uid"))
    if request.param.endswith("-same-uid"):
        ex.sandbox, ex.action_user = NoSandbox(None), None
    yield ex
    if request.param == "bwrap-direct":
        shutil.rmtree(ex.work_dir, ignore_errors=True)


def test_an_action_cannot_rewrite_a_cached_input(client, any_executor):
    executor = any_executor
    original = unique("pristine input")
    inputs = {"input": original}
    # Same size, mode and mtime afterwards, so a check of those alone does not notice.
    rewrite = ("t=$(stat -c %.9Y input); n=$(stat -c %s input); chmod u+w input;"
               " head -c $n /dev/zero | tr '\\0' E > input;"
               " touch -d @$t input; chmod 444 input; cat input > seen")
    evil = put_action(client, ["sh", "-c", rewrite], inputs, output_files=["seen"])
    result, status = run_action(executor, evil)
    assert status.code == 0, status
    later = put_action(client, ["sh", "-c", "cat input > seen"], inputs, output_files=["seen"])
    result, status = run_action(executor, later)
    assert status.code == 0, status
    assert client.bs_read(result.output_files[0].digest) == original
    cached = executor.local.path(dg_of(original), False)
    assert cached.exists() and hashlib.sha256(cached.read_bytes()).hexdigest() == digest(original).hash


def dg_of(data: bytes):
    from granary import digest as dg

    return dg.compute(dg.SHA256, data)


# ---- 4. falling back to no sandbox is loud ---------------------------------------------------


def test_auto_without_bubblewrap_warns_once_at_start_up(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()  # a PATH without bwrap
    env = {**os.environ, "PATH": str(bin_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "granary", "worker", "--server", "127.0.0.1:1", "--concurrency", "1",
         "--cache-dir", str(tmp_path / "c"), "--sandbox", "auto"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    try:
        time.sleep(3)  # start-up is over: the worker is retrying its connection
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line for line in err.splitlines() if "sandbox" in line.lower()]
    assert len(lines) == 1, err
    assert "WARNING" in lines[0] and "bwrap" in lines[0] and "--sandbox none" in lines[0], lines


def test_a_worker_cannot_advertise_a_network_mode_its_sandbox_cannot_enforce(tmp_path):
    """Without a network namespace (--sandbox none) the host network is all there is: claiming
    dockerNetwork=off would draw actions that asked for no network onto an unconfined worker."""
    done = subprocess.run(
        [sys.executable, "-m", "granary", "worker", "--server", "127.0.0.1:1", "--concurrency", "1",
         "--cache-dir", str(tmp_path / "c"), "--sandbox", "none", "--property", "dockerNetwork=off"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "granary: configuration error: --property dockerNetwork=off: this worker's sandbox can only honour standard"
    ]


# ---- 5. input trees that explode ------------------------------------------------------------


def _explosive_tree(client, levels: int) -> re_pb2.Digest:
    """Each directory lists the one below twice: 2**levels paths from a few KB."""
    leaf = re_pb2.Directory()
    data = b"x"
    client.upload(data)
    leaf.files.add(name="f", digest=digest(data))
    blob = leaf.SerializeToString(deterministic=True)
    client.upload(blob)
    d = digest(blob)
    for _ in range(levels):
        parent = re_pb2.Directory()
        parent.directories.add(name="a", digest=d)
        parent.directories.add(name="b", digest=d)
        blob = parent.SerializeToString(deterministic=True)
        client.upload(blob)
        d = digest(blob)
    return d


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attack-farm")
    srv = start_granary(tmp / "server", E2E_CONFIG)
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - open while the worker runs
    worker = subprocess.Popen(
        [sys.executable, "-m", "granary", "worker", "--server", srv.address, "--concurrency", "1",
         "--cache-dir", str(tmp / "worker" / "cas"), "--sandbox", "auto"],
        stdout=log, stderr=log,
    )
    c = Client(srv.address)
    try:
        yield srv, c, worker, tmp
    finally:
        c.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        finally:
            if worker.poll() is None:
                worker.kill()
            log.close()
            srv.stop()


def test_path_explosion_is_refused_before_building(farm):
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

    _, client, worker, tmp = farm
    execution = re_grpc.ExecutionStub(client.channel)
    ok = put_action(client, ["true"])
    assert final_response(execute(client, execution, ok)).status.code == 0  # the worker is up
    rss_before = _rss_kib(worker.pid)
    cmd = re_pb2.Command(arguments=["true"]).SerializeToString()
    client.upload(cmd)
    root = _explosive_tree(client, 21)
    bomb = re_pb2.Action(command_digest=digest(cmd), input_root_digest=root)
    r = final_response(execute(client, execution, bomb))
    assert r.status.code == code_pb2.INVALID_ARGUMENT, r.status
    assert "--max-input-paths" in r.status.message and str(3 * 2 ** 21 - 2) in r.status.message, r.status
    assert _rss_kib(worker.pid) - rss_before < 100 * 1024  # far from the gigabytes the paths would take
    # nothing was built (os.walk, unlike rglob, skips what the worker removes while it looks)
    assert not any(d.endswith("/b/b/b/b") for d, _, _ in os.walk(tmp / "worker" / "work"))
    again = put_action(client, ["sh", "-c", "echo still-serving > o"], output_files=["o"])
    r = final_response(execute(client, execution, again))
    assert r.status.code == 0 and client.bs_read(r.result.output_files[0].digest) == b"still-serving\n"


def test_network_is_a_platform_property_the_server_matches(farm):
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

    _, client, _, _ = farm
    execution = re_grpc.ExecutionStub(client.channel)
    assert final_response(execute(client, execution, put_action(client, ["true"]))).status.code == 0  # worker up

    def status_of(action: re_pb2.Action):
        try:
            return final_response(execute(client, execution, action))
        except grpc.RpcError as e:  # refused by Execute itself: no registered worker offers the property
            return e

    counts = {}
    for network in ("off", "standard"):
        r = status_of(_netdevs_action(client, network))
        if isinstance(r, grpc.RpcError):
            assert network == "off" and "dockerNetwork=off" in r.details()  # a worker without netns
            continue
        assert r.status.code == 0, r.status
        counts[network] = client.bs_read(r.result.output_files[0].digest).decode().strip()
    if "off" in counts:
        assert counts["off"] == "1"
    refused = status_of(_netdevs_action(client, "host"))
    assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "dockerNetwork=host" in refused.details()


def test_environment_reaches_the_action_exactly(client, executor):
    action = put_action(client, ["sh", "-c", "env > env.txt"], env={"FOO": "bar baz", "LD_PRELOAD": ""},
                        output_files=["env.txt"])
    result, status = run_action(executor, action)
    assert status.code == 0 and result.exit_code == 0, status
    lines = client.bs_read(result.output_files[0].digest).decode().splitlines()
    names = {line.split("=", 1)[0] for line in lines}
    assert names <= {"FOO", "LD_PRELOAD", "PATH", "PWD", "SHLVL", "_", "OLDPWD"}, names
    assert "FOO=bar baz" in lines


@pytest.mark.skipif(not ROOT, reason="only a root worker starts bubblewrap as another uid")
def test_a_root_worker_starts_the_sandbox_in_one_step_through_its_mount_view(farm):
    """The worker's directories lie under pytest's 0700 directories, out of nobody's reach: the
    worker shows its work directory at /run/granary-worker in its own mount namespace (the host's
    mounts are untouched) and actions still run as nobody with no capability, in bubblewrap."""
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
    from granary.worker.mountview import VIEW

    _, client, worker, _ = farm
    execution = re_grpc.ExecutionStub(client.channel)
    script = "id -u > uid; grep CapEff /proc/self/status | cut -f2 > caps; cat /proc/1/comm > pid1"
    r = final_response(execute(client, execution, put_action(client, ["sh", "-c", script],
                                                             output_files=["uid", "caps", "pid1"])))
    assert r.status.code == 0 and r.result.exit_code == 0, r.status
    out = {f.path: client.bs_read(f.digest).decode().strip() for f in r.result.output_files}
    assert out["uid"] == "65534" and int(out["caps"], 16) == 0
    if out["pid1"] != "bwrap":
        pytest.skip("bubblewrap does not work here (the worker runs actions as plain processes)")
    mine = Path("/proc/self/mountinfo").read_text()
    theirs = Path(f"/proc/{worker.pid}/mountinfo").read_text()
    assert f" {VIEW} " not in mine  # nothing reached the host's (or the tests') mount namespace
    assert f" {VIEW} " in theirs
