"""Start a real `granary serve` process for tests and stop it afterwards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

LISTEN_RE = re.compile(r"grpcs?://([0-9.]+):(\d+)")


class GranaryProcess:
    def __init__(self, proc: subprocess.Popen, address: str, data_dir: Path, log: Path):
        self.proc = proc
        self.address = address  # "127.0.0.1:PORT"
        self.data_dir = data_dir
        self.log = log

    @property
    def url(self) -> str:
        return f"grpc://{self.address}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> GranaryProcess:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_granary(
    tmp_path: Path,
    config: str | None = None,
    *args: str,
    processes: int | None = 1,
    timeout: float = 60,
) -> GranaryProcess:
    """Run `granary serve` on a free loopback port with its data under tmp_path.

    `config` is YAML text; it is written to a file and passed with --config.
    Extra command-line arguments go in `args`.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    data_dir = tmp_path / "granary-data"
    cmd = [sys.executable, "-m", "granary", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    if processes is not None:
        cmd += ["--processes", str(processes)]
    if config is not None:
        cfg = tmp_path / "granary.yaml"
        cfg.write_text(config)
        cmd += ["--config", str(cfg)]
    cmd += list(args)
    log = tmp_path / "granary.log"
    logf = open(log, "wb")  # noqa: SIM115 - closed with the process's output pump
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, start_new_session=True)
    found: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            logf.flush()
            if not found:
                m = LISTEN_RE.search(line.decode(errors="replace"))
                if m:
                    found.append(f"{m.group(1)}:{m.group(2)}")

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found:
        if proc.poll() is not None:
            raise RuntimeError(f"granary serve exited with {proc.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"granary serve did not start: {log.read_text()}")
        time.sleep(0.05)
    return GranaryProcess(proc, found[0], data_dir, log)
