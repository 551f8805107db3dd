"""Every start-up mistake stops `granary` with exit 2 and one line naming the problem, never a traceback."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from serverutil import start_granary
from services import free_port

GRANARY = [sys.executable, "-m", "granary"]
MEMORY_CONFIG = 'storage: {m: {type: memory}}\ninstances: {"*": {cas: m}}\n'


def run_granary(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, *GRANARY, *args], capture_output=True, text=True, timeout=120, check=False)


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _without_root_powers() -> tuple[str, ...] | None:
    """A command prefix under which file permissions apply to this test's processes (None: no way here)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    # root without CAP_DAC_OVERRIDE obeys mode bits, and can still run the interpreter under /root
    prefix = (setpriv, "--bounding-set=-dac_override,-dac_read_search")
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    return prefix if probe.returncode == 0 else None


# the three ways a directory the operator names can be unusable: (how to make it, what the line says)
def _a_file(tmp: Path) -> Path:
    (tmp / "plain").write_text("not a directory")
    return tmp / "plain"


def _under_a_file(tmp: Path) -> Path:
    (tmp / "plain").write_text("not a directory")
    return tmp / "plain" / "sub"


def _read_only(tmp: Path) -> Path:
    d = tmp / "read-only"
    d.mkdir()
    d.chmod(0o555)
    return d


BAD_DIRS = [
    pytest.param(_a_file, "is a file", id="is-a-file"),
    pytest.param(_under_a_file, "is a file, not a directory", id="under-a-file"),
    pytest.param(_read_only, "not writable", id="not-writable"),
]


def _prefix_for(make) -> tuple[str, ...]:
    if make is not _read_only:
        return ()
    prefix = _without_root_powers()
    if prefix is None:
        pytest.skip("running as root without setpriv: a read-only directory is writable here")
    return prefix


@pytest.mark.parametrize(("make", "says"), BAD_DIRS)
def test_unusable_data_directory(tmp_path, make, says):
    bad = make(tmp_path)
    r = run_granary("serve", "--listen", "127.0.0.1:0", "--processes", "1", "--data-dir", str(bad),
                    prefix=_prefix_for(make))
    one_line_error(r, "data directory", str(bad), says)


@pytest.mark.parametrize(("make", "says"), BAD_DIRS)
def test_unusable_worker_cache_directory(tmp_path, make, says):
    bad = make(tmp_path)
    r = run_granary("worker", "--server", f"127.0.0.1:{free_port()}", "--concurrency", "1",
                    "--sandbox", "none", "--cache-dir", str(bad), prefix=_prefix_for(make))
    one_line_error(r, "--cache-dir", str(bad), says)


@pytest.mark.parametrize("command", [
    ["serve", "--listen", "127.0.0.1:0", "--processes", "1"],
    ["worker", "--server", "127.0.0.1:1", "--concurrency", "1"],
])
def test_bogus_log_level(tmp_path, command):
    r = run_granary(*command, "--data-dir" if command[0] == "serve" else "--cache-dir", str(tmp_path / "d"),
                    "--log-level", "bogus")
    one_line_error(r, "--log-level", "'bogus'", "debug, info, warning")


def test_unknown_flag_is_one_line():
    one_line_error(run_granary("serve", "--listne", "127.0.0.1:0"), "--listne")


def test_zero_processes_in_the_config_file(tmp_path):
    cfg = tmp_path / "granary.yaml"
    cfg.write_text("server: {processes: 0}\n" + MEMORY_CONFIG)
    r = run_granary("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    one_line_error(r, "server.processes", "got 0")


@pytest.mark.parametrize(("text", "position", "problem"), [
    ("storage:\n  main: {type: disk, path: cas\ninstances: x\n", ":3:10:", "expected ',' or '}'"),
    ("server:\n\tlisten: 127.0.0.1:0\n", ":2:1:", "'\\t'"),
    ("instances:\n  '*': {cas: m}\n   oops: [\n", ":3:", "invalid YAML"),
])
def test_invalid_yaml_names_file_line_and_column(tmp_path, text, position, problem):
    cfg = tmp_path / "granary.yaml"
    cfg.write_text(text)
    line = one_line_error(run_granary("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d")),
                          "invalid YAML", problem)
    assert f"{cfg}{position}" in line


class LineReader:
    """Lines of a process's pipe, readable with a timeout."""

    def __init__(self, pipe) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe) -> None:
        for line in pipe:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 120) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            self.seen.append(line)
            if text in line:
                return line


def test_worker_says_why_it_cannot_connect_and_serves_once_the_server_answers(tmp_path):
    port = free_port()
    worker = subprocess.Popen(
        [*GRANARY, "worker", "--server", f"127.0.0.1:{port}", "--name", "w1", "--concurrency", "1",
         "--sandbox", "none", "--cache-dir", str(tmp_path / "cache")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    out, err = LineReader(worker.stdout), LineReader(worker.stderr)
    server = None
    try:
        line = err.wait_for("connecting")
        assert line == f"granary: worker w1 connecting to grpc://127.0.0.1:{port}: connection refused; retrying"
        assert out.lines.empty(), "the worker claimed to serve before its server answered"
        assert worker.poll() is None  # it keeps trying
        server = start_granary(tmp_path / "server", MEMORY_CONFIG, "--listen", f"127.0.0.1:{port}")
        assert "serving" in out.wait_for("granary: worker w1")
        assert not any("Traceback" in line for line in err.seen)
    finally:
        stop(worker)
        if server is not None:
            server.stop()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_worker_stopped_while_connecting_leaves_cleanly(tmp_path):
    worker = subprocess.Popen(
        [*GRANARY, "worker", "--server", f"127.0.0.1:{free_port()}", "--name", "w2", "--concurrency", "1",
         "--sandbox", "none", "--cache-dir", str(tmp_path / "cache")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        LineReader(worker.stderr).wait_for("connecting")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        assert worker.stdout is not None and "serving" not in worker.stdout.read()
    finally:
        stop(worker)
