"""Per-action resource limits (`granary worker --action-memory`, `--action-pids`, `--action-cpus`,
`--action-disk`, `--action-output-size`, `--action-limits-backend`): an action past its limit fails
with a message naming the limit, and the neighbour action on the same worker completes.

The executors are those of tests/test_sandbox_attacks.py (a root worker runs actions as nobody, as
`granary worker` does), against a real `granary serve` for the CAS; one test runs a real worker
process against a real server with execution. The cgroup tests run on whatever this host has (here
cgroup v1 hierarchies writable by root); the cgroup v2 code path is also run on a fake cgroupfs
tree, in addition. No test leaves a cgroup behind (`no_leftover_cgroups`).
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
from pathlib import Path

import pytest
from reapi import Client, digest
from serverutil import start_granary
from test_sandbox_attacks import _executor, client, server  # noqa: F401  (fixtures)
from test_worker import E2E_CONFIG, execute, final_response, put_action

from granary.worker import cgroups
from granary.worker.execute import ActionRun
from granary.worker.limits import ActionLimits, format_bytes

MEMORY = 256 << 20
PIDS = 32
RESOURCE_EXHAUSTED = 8
ROOT = os.geteuid() == 0
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cgroup_reason() -> str:
    """'' when this host gives the worker cgroups for all three controllers, else why not."""
    try:
        cgroups.find(cgroups.Limits(MEMORY, PIDS, 1.0)).close()
    except cgroups.Unusable as e:
        return str(e)
    return ""


CGROUP_REASON = _cgroup_reason()
needs_cgroups = pytest.mark.skipif(bool(CGROUP_REASON), reason=f"no usable cgroup here: {CGROUP_REASON}")


def _worker_dirs(pid: int) -> list[Path]:
    """The cgroup directories the worker process `pid` made (granary-worker-PID-...), wherever they are."""
    own = cgroups.own_cgroups(Path("/proc/self/cgroup").read_text())
    found: list[Path] = []
    for m in cgroups.mounts(Path("/proc/self/mountinfo").read_text()):
        if m.fstype not in ("cgroup", "cgroup2"):
            continue
        for path in {p for c, p in own.items() if (c == "") == (m.fstype == "cgroup2")}:
            d = cgroups._under(m, path)
            for base in filter(None, [d, d.parent if d is not None and d.name == cgroups.LEAF else None]):
                found += base.glob(f"{cgroups.PREFIX}{pid}-*")
    return found


@pytest.fixture(autouse=True)
def no_leftover_cgroups():
    yield
    assert _worker_dirs(os.getpid()) == []


@pytest.fixture
def limited(server, tmp_path):  # noqa: F811
    """make(mode, **limits): an executor whose actions run under those limits (ActionLimits fields)."""
    made = []

    def make(mode: str, **limits):
        ex = _executor(server, tmp_path, mode)
        ex.limits = ActionLimits(**limits).start(ex.sandbox.name)
        made.append(ex.limits)
        return ex

    yield make
    for limiter in made:
        limiter.close()


def _run(executor, action):
    return ActionRun(executor, action).run()


def _stderr(client, result) -> str:  # noqa: F811
    return client.bs_read(result.stderr_digest).decode(errors="replace")


def _host_processes(argv: list[str]) -> list[int]:
    """Processes on the host whose command line is exactly argv."""
    want = ("\0".join(argv) + "\0").encode()
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read() == want:
                        found.append(int(pid))
            except OSError:
                continue
    return found


def _wait_for(argv: list[str], alive: threading.Thread, seconds: float = 60) -> int:
    deadline = time.monotonic() + seconds
    while not (pids := _host_processes(argv)):
        assert time.monotonic() < deadline and alive.is_alive(), f"{argv} never started"
        time.sleep(0.05)
    return pids[0]


def _in_background(executor, action) -> tuple[ActionRun, threading.Thread, dict]:
    run = ActionRun(executor, action)
    out: dict[str, tuple] = {}
    t = threading.Thread(target=lambda: out.__setitem__("r", run.run()), daemon=True)
    t.start()
    return run, t, out


def _cgroup_of(pid: int, controller: str) -> Path:
    """The directory of the cgroup that holds `pid` for `controller` (v1 hierarchy, else v2)."""
    own = cgroups.own_cgroups(Path(f"/proc/{pid}/cgroup").read_text())
    for m in cgroups.mounts(Path("/proc/self/mountinfo").read_text()):
        if m.fstype == "cgroup" and controller in m.options and controller in own:
            return cgroups._under(m, own[controller])
    for m in cgroups.mounts(Path("/proc/self/mountinfo").read_text()):
        if m.fstype == "cgroup2" and (d := cgroups._under(m, own[""])) is not None and (d / "cgroup.procs").exists():
            return d
    raise AssertionError(f"process {pid} is in no {controller} cgroup")


def _neighbour(client):  # noqa: F811
    """An action needing 50 MiB (memory and page cache) and a dozen processes."""
    return put_action(client, ["sh", "-c", ("head -c 50M /dev/zero | tail -n 1 > big && wc -c < big > out &&"
                               " for i in $(seq 12); do sleep 0.2 & done; wait")], output_files=["out"], timeout=60)


def _assert_neighbour_completed(client, result, status):  # noqa: F811
    assert status.code == 0 and result.exit_code == 0, (status, _stderr(client, result))
    assert client.bs_read(result.output_files[0].digest).decode().strip() == str(50 << 20)


def _both(executor, first, second) -> tuple[tuple, tuple]:
    results: dict[str, tuple] = {}
    threads = [threading.Thread(target=lambda k=k, a=a: results.__setitem__(k, _run(executor, a)))
               for k, a in (("first", first), ("second", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results["first"], results["second"]


# ---- memory ------------------------------------------------------------------------------------

# tail keeps the last line, and 500 MiB of zeros are one line: it must hold them all
HOG = ["sh", "-c", "head -c 500M /dev/zero | tail -n 1 > /dev/null"]


@needs_cgroups
@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_memory_hog_is_killed_by_its_cgroup_limit_while_a_neighbour_completes(client, limited, mode):  # noqa: F811
    executor = limited(mode, memory=MEMORY, pids=64, backend="cgroup")
    (result, status), (n_result, n_status) = _both(executor, put_action(client, HOG, timeout=60), _neighbour(client))
    message = f"the action was killed by the memory limit {format_bytes(MEMORY)} (granary worker --action-memory)"
    assert status.code == RESOURCE_EXHAUSTED and status.message == message, status
    assert result.exit_code != 0
    assert _stderr(client, result).endswith(f"granary worker: {message}\n")
    _assert_neighbour_completed(client, n_result, n_status)


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_memory_hog_fails_at_its_rlimit_while_a_neighbour_completes(client, limited, mode):  # noqa: F811
    executor = limited(mode, memory=MEMORY, backend="rlimit")
    (result, status), (n_result, n_status) = _both(executor, put_action(client, HOG, timeout=60), _neighbour(client))
    assert status.code == 0, status  # setrlimit refuses, it does not say why: the action's own failure
    err = _stderr(client, result)
    assert result.exit_code != 0, err
    assert "memory exhausted" in err or "Cannot allocate memory" in err, err
    assert (f"under memory limit {format_bytes(MEMORY)} of address space per process"
            " (granary worker --action-memory)") in err
    _assert_neighbour_completed(client, n_result, n_status)


@needs_cgroups
def test_cgroup_memory_counts_all_processes_of_the_action_together(client, limited):  # noqa: F811
    # four processes of 100 MiB each: within an address-space limit of 256 MiB each, not together.
    # The OOM killer kills one of them; then the whole action goes (v2: the kernel, memory.oom.group;
    # v1: the worker), else it would end with `exit 0` once the sleeps are done.
    executor = limited("bwrap", memory=MEMORY, backend="cgroup")
    four = put_action(client, ["sh", "-c", ("for i in 1 2 3 4; do (head -c 100M /dev/zero | tail -n 1 >/dev/null;"
                               " sleep 60) & done; wait; exit 0")], timeout=120)
    result, status = _run(executor, four)
    assert status.code == RESOURCE_EXHAUSTED and "memory limit 256 MiB" in status.message, status
    assert result.exit_code == 128 + signal.SIGKILL


# ---- processes ---------------------------------------------------------------------------------

BOMB = ["sh", "-c", "i=0; while [ $i -lt 1000 ]; do sleep 30 & i=$((i+1)); done; echo all"]


@needs_cgroups
@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_fork_bomb_fails_at_its_cgroup_process_limit(client, limited, mode):  # noqa: F811
    executor = limited(mode, pids=PIDS, backend="cgroup")
    result, status = _run(executor, put_action(client, BOMB, timeout=60))
    err = _stderr(client, result)
    assert result.exit_code != 0 and "all" not in client.bs_read(result.stdout_digest).decode(), err
    assert "fork" in err.lower(), err
    assert status.code == RESOURCE_EXHAUSTED, status
    assert status.message.startswith(f"the action failed (exit status {result.exit_code}) after its process limit"
                                     f" {PIDS} refused "), status
    assert status.message.endswith(" fork(s) (granary worker --action-pids)")
    assert err.endswith(f"granary worker: {status.message}\n")


def test_fork_bomb_fails_at_its_rlimit_process_limit(client, limited):  # noqa: F811
    executor = limited("bwrap", pids=PIDS, backend="rlimit")
    result, status = _run(executor, put_action(client, BOMB, timeout=60))
    err = _stderr(client, result)
    assert status.code == 0, status
    assert result.exit_code != 0 and "all" not in client.bs_read(result.stdout_digest).decode(), err
    assert "fork" in err.lower(), err
    assert f"process limit {PIDS} (granary worker --action-pids)" in err


@pytest.mark.parametrize("backend", ["cgroup", "rlimit"])
def test_fork_bomb_at_its_limit_leaves_the_neighbour_free_to_fork(client, limited, backend):  # noqa: F811
    if backend == "cgroup" and CGROUP_REASON:
        pytest.skip(f"no usable cgroup here: {CGROUP_REASON}")
    executor = limited("bwrap", pids=PIDS, backend=backend)
    # The subshell forks until it cannot (and dies); its sleeps hold the limit; then the action
    # becomes `sleep 62` (exec: no fork needed), which tells the test the bomb is at its limit.
    argv = ["sh", "-c", "(while :; do sleep 61 & done) 2>/dev/null; exec sleep 62"]
    bomb_run, t, _ = _in_background(executor, put_action(client, argv, timeout=120))

    def bomb() -> int:  # its sleeps, and the children forked that have not yet become one
        return len(_host_processes(["sleep", "61"])) + len(_host_processes(argv))

    try:
        _wait_for(["sleep", "62"], t)
        held = bomb()
        assert 0 < held <= PIDS
        result, status = _run(executor, _neighbour(client))
        _assert_neighbour_completed(client, result, status)
        assert bomb() == held  # the bomb could not grow meanwhile
    finally:
        bomb_run.cancel()
        t.join(60)
    assert not t.is_alive()
    deadline = time.monotonic() + 30
    while _host_processes(["sleep", "61"]):  # killed with its PID namespace (and its cgroup)
        assert time.monotonic() < deadline
        time.sleep(0.1)


@needs_cgroups
def test_the_next_action_in_a_cgroup_is_not_blamed_for_the_last_ones_kill(client, limited):  # noqa: F811
    executor = limited("bwrap", memory=MEMORY, pids=8, backend="cgroup")
    result, status = _run(executor, put_action(client, HOG, timeout=60))
    assert status.code == RESOURCE_EXHAUSTED, status
    result, status = _run(executor, put_action(client, BOMB, timeout=60))
    assert status.code == RESOURCE_EXHAUSTED and "process limit" in status.message, status
    [cgroup] = executor.limits.tree._idle  # the one cgroup all three use (the start-up probe's first)
    assert cgroup.counters().oom_kills == 1 and cgroup.counters().pids_max > 0
    # the probe ran with at least 64 MiB and 16 processes; every action gets the worker's limits
    assert (cgroup.dirs["pids"] / "pids.max").read_text().strip() == "8"
    result, status = _run(executor, put_action(client, ["sh", "-c", "exit 3"]))
    assert (status.code, result.exit_code) == (0, 3), status
    assert _stderr(client, result) == ""



# ---- CPU ---------------------------------------------------------------------------------------


@needs_cgroups
def test_cpu_quota_is_set_on_the_actions_cgroup_and_throttles_it(client, limited):  # noqa: F811
    executor = limited("bwrap", cpus=0.5, memory=MEMORY, pids=PIDS, backend="cgroup")
    busy = put_action(client, ["sh", "-c", "(while :; do :; done) & (while :; do :; done) & exec sleep 63"],
                      timeout=120)
    run, t, _ = _in_background(executor, busy)
    try:
        pid = _wait_for(["sleep", "63"], t)
        cpu, memory, pids = (_cgroup_of(pid, c) for c in ("cpu", "memory", "pids"))
        assert cpu.name.startswith("action-") and cpu.parent.name.startswith(f"{cgroups.PREFIX}{os.getpid()}-")
        if (cpu / "cpu.max").exists():
            assert (cpu / "cpu.max").read_text().split() == ["50000", "100000"]
            assert (memory / "memory.max").read_text().strip() == str(MEMORY)
        else:
            assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
            assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
            assert (memory / "memory.limit_in_bytes").read_text().strip() == str(MEMORY)
        assert (pids / "pids.max").read_text().strip() == str(PIDS)
        # two busy loops under half a CPU: the scheduler throttles the cgroup (a counter, not a timing)
        deadline = time.monotonic() + 60
        while cgroups._keyed((cpu / "cpu.stat").read_text()).get("nr_throttled", 0) == 0:
            assert time.monotonic() < deadline, (cpu / "cpu.stat").read_text()
            time.sleep(0.1)
    finally:
        run.cancel()
        t.join(60)
    assert all(not (d / "cgroup.procs").read_text().split() for d in (cpu, memory, pids))  # emptied
    executor.limits.close()
    assert not cpu.exists() and not memory.exists() and not pids.exists()  # removed with the worker's


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin an action to one")
def test_cpu_limit_without_cgroups_pins_each_action_to_its_own_cpus(client, limited):  # noqa: F811
    executor = limited("bwrap", cpus=1, backend="rlimit")
    seen = []
    for _ in range(2):
        result, status = _run(executor, put_action(client, ["sh", "-c", "grep Cpus_allowed_list /proc/self/status"]))
        assert status.code == 0 and result.exit_code == 0, _stderr(client, result)
        seen.append(client.bs_read(result.stdout_digest).decode().split()[-1])
    allowed = sorted(os.sched_getaffinity(0))
    assert all(s.isdigit() and int(s) in allowed for s in seen), seen
    assert seen[0] != seen[1]  # one action after the other: the next CPU


# ---- disk and outputs --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cgroup", "rlimit"])
def test_action_writing_past_its_disk_limit_is_killed(client, limited, backend):  # noqa: F811
    if backend == "cgroup" and CGROUP_REASON:
        pytest.skip(f"no usable cgroup here: {CGROUP_REASON}")
    executor = limited("bwrap", disk=16 << 20, memory=MEMORY, backend=backend)
    # writes without end (small files, so no file reaches the limit alone): only the scan stops it
    writer = put_action(client, ["sh", "-c", ("i=0; while :; do head -c 1M /dev/zero > f$i; i=$((i+1));"
                                 " sleep 0.02; done")], inputs={"input": os.urandom(1 << 20)}, timeout=120)
    result, status = _run(executor, writer)
    assert status.code == RESOURCE_EXHAUSTED, status
    assert status.message.startswith("the action was killed at the disk limit 16 MiB (granary worker --action-disk):"
                                     " it had written "), status
    assert int(status.message.split("written ")[1].split()[0]) > 16 << 20
    assert result.exit_code != 0 and not result.output_files
    assert _stderr(client, result).endswith(f"granary worker: {status.message}\n")


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_one_file_past_the_disk_limit_is_stopped_at_once(client, limited, mode):  # noqa: F811
    executor = limited(mode, disk=16 << 20, backend="rlimit")
    big = put_action(client, ["sh", "-c", "head -c 40M /dev/zero > big; echo status $?"], output_files=["big"],
                     timeout=60)
    result, status = _run(executor, big)
    assert client.bs_read(result.stdout_digest) == b"status 153\n"  # SIGXFSZ (128 + 25) at the limit
    assert status.code == RESOURCE_EXHAUSTED, status
    own_stderr = _stderr(client, result).removesuffix(f"granary worker: {status.message}\n")
    written = (16 << 20) + 1 + len(b"status 153\n") + len(own_stderr)  # big stopped one byte past, stdout, stderr
    assert status.message == ("the action went over the disk limit 16 MiB (granary worker --action-disk): it had"
                              f" written {written} bytes in its working directory"), status
    assert not result.output_files


def test_stdout_counts_towards_the_disk_limit_and_a_small_action_passes(client, limited):  # noqa: F811
    executor = limited("bwrap", disk=4 << 20, backend="rlimit")
    result, status = _run(executor, put_action(client, ["sh", "-c", "head -c 3M /dev/zero > small; echo ok"],
                                               output_files=["small"]))
    assert status.code == 0 and result.exit_code == 0 and len(result.output_files) == 1, status
    result, status = _run(executor, put_action(client, ["sh", "-c", "head -c 6M /dev/zero"]))
    assert status.code == RESOURCE_EXHAUSTED and "disk limit 4 MiB" in status.message, status


def test_outputs_over_the_output_limit_fail_and_nothing_is_uploaded(client, limited):  # noqa: F811
    executor = limited("bwrap", output_size=1 << 20)
    line = f"{uuid.uuid4()}\n".encode()
    content = (line * ((2 << 20) // len(line) + 1))[:2 << 20]
    small = f"small {uuid.uuid4()}\n".encode()
    action = put_action(client, ["sh", "-c", (f"mkdir d; yes {line.decode().strip()} | head -c 2M > d/big;"
                                 f" printf '{small.decode().strip()}\\n' > small; echo done")],
                        output_files=["small"], output_directories=["d"], timeout=60)
    result, status = _run(executor, action)
    size = len(content) + len(small)
    assert status.code == RESOURCE_EXHAUSTED, status
    assert status.message == (f"the action's outputs total {size} bytes, over the output limit 1 MiB (granary worker"
                              " --action-output-size); none was uploaded")
    assert result.exit_code == 0 and not result.output_files and not result.output_directories
    assert client.bs_read(result.stdout_digest) == b"done\n"
    assert _stderr(client, result) == f"granary worker: {status.message}\n"
    assert client.missing([digest(content), digest(small)]) == [digest(content), digest(small)]

    # within the limit: uploaded as always
    result, status = _run(executor, put_action(client, ["sh", "-c", "head -c 1M /dev/zero > small"],
                                               output_files=["small"]))
    assert status.code == 0 and result.output_files[0].digest.size_bytes == 1 << 20, status


# ---- a real worker, its start-up line, and the fallback ----------------------------------------


@needs_cgroups
def test_real_worker_kills_the_hog_and_runs_its_neighbour(tmp_path):
    srv = start_granary(tmp_path / "server", E2E_CONFIG)
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "granary", "worker", "--server", srv.address, "--concurrency", "2",
             "--cache-dir", str(tmp_path / "worker" / "cas"), "--log-level", "info", "--action-memory", "256MiB",
             "--action-pids", "64", "--action-cpus", "1.5", "--action-limits-backend", "cgroup"],
            stdout=log, stderr=log)
    c = Client(srv.address)
    try:
        from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

        execution = re_grpc.ExecutionStub(c.channel)
        hog, neighbour = put_action(c, HOG, timeout=60), _neighbour(c)
        out: dict[str, object] = {}
        threads = [threading.Thread(target=lambda k=k, a=a: out.__setitem__(k, final_response(execute(c, execution, a))))
                   for k, a in (("hog", hog), ("neighbour", neighbour))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        r = out["hog"]
        assert r.status.code == RESOURCE_EXHAUSTED, r.status
        assert r.status.message == "the action was killed by the memory limit 256 MiB (granary worker --action-memory)"
        assert r.result.exit_code != 0 and r.status.message in c.bs_read(r.result.stderr_digest).decode()
        r = out["neighbour"]
        assert r.status.code == 0 and r.result.exit_code == 0, r
        assert c.bs_read(r.result.output_files[0].digest).decode().strip() == str(50 << 20)
        assert _worker_dirs(worker.pid)  # its cgroup directory, while it runs
    finally:
        c.close()
        worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(60) == 0, log_path.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
            srv.stop()
    text = log_path.read_text()
    assert "limits memory 256 MiB, pids 64, cpus 1.5 per action, backend cgroup v" in text, text
    assert _worker_dirs(worker.pid) == []  # removed when it stopped


def _read_only_cgroups(*worker_args: str, cache: Path) -> subprocess.Popen:
    """`granary worker` in a mount namespace of its own where every cgroup mount is read-only."""
    remount = ("for m in $(awk '$9 ~ /^cgroup2?$/ {print $5}' /proc/self/mountinfo); do"
               " mount -o remount,bind,ro \"$m\" || exit 99; done; exec \"$@\"")
    return subprocess.Popen(
        ["unshare", "--mount", "sh", "-c", remount, "sh", sys.executable, "-m", "granary", "worker", "--server",
         "127.0.0.1:1", "--cache-dir", str(cache), "--log-level", "info", *worker_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(not ROOT, reason="a private mount namespace with read-only cgroup mounts needs root")
def test_read_only_cgroups_fall_back_to_rlimits_with_a_logged_reason(tmp_path):
    proc = _read_only_cgroups("--action-memory", "256MiB", "--action-cpus", "1", cache=tmp_path / "cas")
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "slot(s), sandbox" in line:
                break
    finally:
        proc.terminate()
        proc.wait(30)
    text = "".join(lines)
    assert "action limits: no cgroup usable here (" in text and "Read-only file system" in text, text
    assert ("falling back to setrlimit: --action-memory 256 MiB bounds each process's address space;"
            " --action-cpus 1 pins each action to 1 CPU(s)") in text, text
    assert "limits memory 256 MiB per process, cpus 1 (affinity) per action, backend setrlimit" in text, text

    proc = _read_only_cgroups("--action-memory", "256MiB", "--action-limits-backend", "cgroup",
                              cache=tmp_path / "cas")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "granary: configuration error: --action-limits-backend cgroup: no cgroup usable here: " in err
    assert "Read-only file system" in err


@pytest.mark.skipif(not ROOT or not os.path.exists("/usr/bin/python3"), reason="runs the search as nobody")
def test_a_worker_that_is_not_root_finds_no_cgroup_and_says_why(tmp_path):
    # cgroups.py is standard library only: the system's Python runs it as nobody
    code = ("from granary.worker import cgroups\ntry:\n cgroups.find(cgroups.Limits(1 << 28, 32, None))\n"
            "except cgroups.Unusable as e:\n print('unusable:', e)\nelse:\n print('usable')\n")
    r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "env",
                        f"PYTHONPATH={SRC}", "/usr/bin/python3", "-c", code], capture_output=True, text=True,
                       check=False, cwd="/", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("unusable: "), r.stdout
    assert "Permission denied" in r.stdout, r.stdout


def test_limits_need_sane_flags(tmp_path):
    def worker(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "granary", "worker", "--server", "127.0.0.1:1",
                               "--cache-dir", str(tmp_path / "cas"), *args],
                              check=False, capture_output=True, text=True, timeout=60)

    for args, error in [
        (("--action-pids", "0"), "--action-pids: expected 1 or more, got 0"),
        (("--action-memory", "lots"), "--action-memory: expected a size like 10GiB or 500MB, got 'lots'"),
        (("--action-memory", "1KiB"), "--action-memory: expected at least 1MiB, got 1KiB"),
        (("--action-cpus", "many"), ("--action-cpus: expected a number of CPUs of 0.01 or more, like 1 or 1.5,"
                                     " got 'many'")),
        (("--action-cpus", "0"), "--action-cpus: expected a number of CPUs of 0.01 or more"),
        (("--action-disk", "0"), "--action-disk: expected at least 1 byte, got 0"),
        (("--action-output-size", "-1"), "--action-output-size: expected a size like 10GiB or 500MB, got '-1'"),
        (("--action-limits-backend", "magic"), "argument --action-limits-backend: invalid choice: 'magic'"),
    ]:
        r = worker(*args)
        assert r.returncode == 2 and error in r.stderr, (args, r.stderr)

    # without util-linux's prlimit on PATH: refused, and the cgroup found for the memory limit is let go
    proc = subprocess.Popen([sys.executable, "-m", "granary", "worker", "--server", "127.0.0.1:1", "--cache-dir",
                             str(tmp_path / "cas"), "--sandbox", "none", "--action-memory", "256MiB", "--action-disk",
                             "1GiB"], env={**os.environ, "PATH": "/nonexistent"}, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.strip() == "granary: configuration error: --action-disk needs prlimit (util-linux), which is not installed"
    assert _worker_dirs(proc.pid) == []


# ---- cgroup v2, on a fake cgroupfs tree (in addition to the real tests above) -----------------


@pytest.fixture
def fake_v2(tmp_path, monkeypatch):
    """A directory tree shaped as a cgroup2 mount, with the two kernel rules the code relies on: a
    cgroup with processes cannot enable controllers for its children, and a pid written into a
    cgroup.procs leaves the cgroup it was in."""
    own = tmp_path / "worker.service"
    own.mkdir()
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own / "cgroup.procs").write_text("101\n102\n")
    (own / "cgroup.subtree_control").write_text("")
    real_write = cgroups._write

    def kernel(path: Path, value: str) -> None:
        if path.name == "cgroup.subtree_control" and (path.parent / "cgroup.procs").exists() \
                and (path.parent / "cgroup.procs").read_text().split():
            raise OSError(errno.EBUSY, "Device or resource busy")
        if path.name == "cgroup.subtree_control":  # written +NAME, read back NAME
            names = set(path.read_text().split() if path.exists() else []) | {c.lstrip("+") for c in value.split()}
            path.write_text(" ".join(sorted(names)) + "\n")
            return
        if path.name == "cgroup.procs":
            for other in tmp_path.rglob("cgroup.procs"):
                other.write_text("".join(f"{p}\n" for p in other.read_text().split() if p != value))
            with open(path, "a") as f:
                f.write(f"{value}\n")
            return
        real_write(path, value)

    monkeypatch.setattr(cgroups, "_write", kernel)
    return own


def test_v2_setup_moves_the_workers_processes_into_a_leaf_and_enables_controllers(fake_v2):
    tree = cgroups.setup_v2(fake_v2, ("memory", "pids", "cpu"))
    assert (fake_v2 / "cgroup.procs").read_text() == ""
    assert (fake_v2 / cgroups.LEAF / "cgroup.procs").read_text().split() == ["101", "102"]
    assert (fake_v2 / "cgroup.subtree_control").read_text() == "cpu memory pids\n"
    base = tree.bases["memory"]
    assert base.parent == fake_v2 and base.name.startswith(f"{cgroups.PREFIX}{os.getpid()}-")
    assert (base / "cgroup.subtree_control").read_text() == "cpu memory pids\n"
    assert tree.group_oom

    # a second start from inside the leaf uses the same cgroup, not a leaf of the leaf
    again = cgroups.setup_v2(fake_v2 / cgroups.LEAF, ("memory", "pids"))
    assert again.bases["memory"].parent == fake_v2


def test_v2_action_cgroup_limits_events_and_kill(fake_v2):
    tree = cgroups.setup_v2(fake_v2, ("memory", "pids", "cpu"))
    action = tree.bases["memory"] / "action-x"
    action.mkdir()
    for name in ("memory.swap.max", "memory.oom.group", "cgroup.kill", "cgroup.procs"):
        (action / name).write_text("")
    dirs = dict.fromkeys(("memory", "pids", "cpu"), action)
    cgroups._set_limits(2, dirs, cgroups.Limits(64 << 20, 100, 1.5))
    assert {f: (action / f).read_text() for f in ("memory.max", "memory.swap.max", "memory.oom.group", "pids.max",
                                                  "cpu.max")} == {
        "memory.max": str(64 << 20), "memory.swap.max": "0", "memory.oom.group": "1", "pids.max": "100",
        "cpu.max": "150000 100000"}
    cg = cgroups.ActionCgroup(2, dirs)
    assert cg.events() == cgroups.Events(0, 0)
    (action / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n")
    (action / "pids.events").write_text("max 3\n")
    assert cg.events() == cgroups.Events(oom_kills=1, pids_max=3)
    cg.since = cg.counters()  # the next action in this cgroup starts from there
    (action / "pids.events").write_text("max 5\n")
    assert cg.events() == cgroups.Events(oom_kills=0, pids_max=2)
    assert cg.join(["true"])[-3:] == ["1", str(action / "cgroup.procs"), "true"]
    cg.kill()
    assert (action / "cgroup.kill").read_text() == "1"


def test_v2_without_the_controllers_is_unusable_and_says_which(fake_v2):
    (fake_v2 / "cgroup.controllers").write_text("cpu io\n")
    with pytest.raises(cgroups.Unusable, match=r"does not offer the memory and pids controllers"
                                               r" \(cgroup.controllers: cpu io\)"):
        cgroups.setup_v2(fake_v2, ("memory", "pids", "cpu"))


def test_mountinfo_and_proc_cgroup_parsing():
    mounts = cgroups.mounts(
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        "51 50 0:29 /docker/abc /sys/fs/cgroup/my\\040cpu ro - cgroup cgroup rw,cpu,cpuacct\n")
    assert mounts[0] == cgroups.Mount("/", "/sys/fs/cgroup", "cgroup2", frozenset({"rw", "nsdelegate"}))
    assert mounts[1].point == "/sys/fs/cgroup/my cpu" and {"cpu", "cpuacct"} <= mounts[1].options
    own = cgroups.own_cgroups("12:cpu,cpuacct:/docker/abc/x\n0::/user.slice/a.scope\n1:name=systemd:/\n")
    assert own == {"cpu": "/docker/abc/x", "cpuacct": "/docker/abc/x", "": "/user.slice/a.scope", "name=systemd": "/"}
    assert cgroups._under(mounts[1], own["cpu"]) == Path("/sys/fs/cgroup/my cpu/x")
    assert cgroups._under(mounts[1], "/elsewhere") is None
    assert cgroups._under(mounts[0], own[""]) == Path("/sys/fs/cgroup/user.slice/a.scope")
