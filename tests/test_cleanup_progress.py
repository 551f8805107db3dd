"""The progress of `granary cleanup --reindex` on a store of a few thousand blobs written by a real
`granary serve`: a rich progress bar on a terminal (a pseudo-terminal here), plain lines on stderr
without one, nothing with --quiet; the result lines on stdout are the same whichever display."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ptyutil import finish, run_in_pty
from reapi import Client
from serverutil import start_granary

BLOBS = 3000  # of 1 KiB each: three progress reports while indexing, more than one batch of deletes

PLAIN = """
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: sqlite, path: ac.sqlite}}
instances: {"*": {cas: main, action_cache: main}}
"""
INDEXED = """
storage:
  main:
    type: indexed
    url: sqlite:///cas-index.sqlite
    max_size: 1MiB
    store: {type: disk, path: cas}
action_caches: {main: {type: sqlite, path: ac.sqlite}}
instances: {"*": {cas: main, action_cache: main}}
"""
STDOUT = re.compile(
    r"storage\.main: indexed 3000 blobs\r?\n"
    r"granary cleanup: storage\.main: 3072000 -> (\d+) bytes \(target 1048576\); deleted (\d+) blobs \((\d+) bytes\),"
    r" kept 0 referenced by recent action results; removed 0 of 0 action results\r?\n")


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Path:
    """A data directory whose disk CAS holds BLOBS blobs that no index knows of yet."""
    tmp = tmp_path_factory.mktemp("filled")
    with start_granary(tmp, PLAIN) as server:
        client = Client(server.address)
        for start in range(0, BLOBS, 500):
            client.upload(*[f"{i:08d}".encode() * 128 for i in range(start, start + 500)])
        client.close()
    return server.data_dir


def copy_of(filled: Path, tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    shutil.copytree(filled, data, ignore=shutil.ignore_patterns("run"))
    config = tmp_path / "indexed.yaml"
    config.write_text(INDEXED)
    return data, config


def check_result(stdout: str) -> None:
    m = STDOUT.fullmatch(stdout)
    assert m, stdout
    after, deleted, deleted_bytes = map(int, m.groups())
    assert after <= 1 << 20 and deleted == 3000 - after // 1024 and deleted_bytes == deleted * 1024


def test_progress_bar_on_a_terminal(filled, tmp_path):
    data, config = copy_of(filled, tmp_path)
    argv = ["-m", "granary", "cleanup", "--config", str(config), "--data-dir", str(data), "--reindex"]
    pid, out, fd = run_in_pty(argv, lambda out: b"removed 0 of 0 action results" in out)
    code, out = finish(pid, fd, out)
    text = out.decode(errors="replace")
    assert code == 0, text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    # the bars (rich, on stderr: the terminal) with their final counts, then the results (stdout)
    assert "━━━━" in plain and "\x1b[?25l" in text  # a drawn bar; the cursor hidden while it runs
    assert re.search(r"storage\.main: indexing blobs the store holds .*━+ 3000 blobs", plain), plain
    assert re.search(r"storage\.main: reading action cache entries .*━+ 0 entries", plain), plain
    assert re.search(r"storage\.main: deleting least recently used blobs .*━+ 1\.9 MiB of 1\.9 MiB \(100%\)",
                     plain), plain
    results = [line for line in plain.splitlines() if line.startswith(("storage.main: indexed", "granary cleanup: "))]
    check_result("\n".join(results) + "\n")
    assert "granary cleanup: storage.main: indexing" not in plain  # no plain lines on a terminal


def test_plain_lines_without_a_terminal(filled, tmp_path):
    data, config = copy_of(filled, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "granary", "cleanup", "--config", str(config), "--data-dir", str(data), "--reindex"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    check_result(done.stdout)
    # each stage ends with one line (a stage longer than 5 s would also have lines while it runs)
    lines = done.stderr.splitlines()
    assert lines[-3:] == [
        "granary cleanup: storage.main: indexing blobs the store holds: 3000 blobs, done",
        "granary cleanup: storage.main: reading action cache entries: 0 entries, done",
        "granary cleanup: storage.main: deleting least recently used blobs: 1.9 MiB of 1.9 MiB (100%), done",
    ], done.stderr
    assert all(line.startswith("granary cleanup: storage.main: ") for line in lines), done.stderr
    assert "\x1b[" not in done.stderr


def test_quiet_shows_no_progress(filled, tmp_path):
    data, config = copy_of(filled, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "granary", "cleanup", "--config", str(config), "--data-dir", str(data), "--reindex",
         "--quiet"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    check_result(done.stdout)
    assert done.stderr == ""


def test_nothing_to_delete_is_one_line(filled, tmp_path):
    """Under budget: the index is filled, no blob goes, and only the indexing shows progress."""
    data, config = copy_of(filled, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "granary", "cleanup", "--config", str(config), "--data-dir", str(data), "--reindex",
         "--target", "10MiB"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("storage.main: indexed 3000 blobs\n"), done.stdout
    assert "deleted 0 blobs" in done.stdout
    assert done.stderr == "granary cleanup: storage.main: indexing blobs the store holds: 3000 blobs, done\n"
