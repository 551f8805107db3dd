"""End-to-end: real ccache (Debian's 4.x) uses Granary's ccache HTTP storage (`http.cache.ccache`).

A small C project is compiled with `remote_storage = http://HOST:PORT/ccache`, the local cache is
wiped, and it is compiled again: every compile must be a remote storage hit and the program must
be byte-identical. Each ccache layout (subdirs, flat, bazel) is tried with a server configured for
it; the entries are opaque CAS blobs indexed in the Action Cache (docs/http-cache.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from obsutil import http_url
from serverutil import start_granary

CCACHE = shutil.which("ccache")
CC = shutil.which("gcc") or shutil.which("cc")
pytestmark = [
    pytest.mark.skipif(CCACHE is None or CC is None, reason="ccache or a C compiler is not installed"),
    pytest.mark.timeout(300),
]

SOURCES = {
    "add.c": "int add(int a, int b) { return a + b; }\n",
    "mul.c": "int mul(int a, int b) { return a * b; }\n",
    "util.h": "int add(int, int);\nint mul(int, int);\n",
    "main.c": '#include <stdio.h>\n#include "util.h"\nint main(void) { printf("%d\\n", add(2, mul(3, 4))); return 0; }\n',
}
UNITS = ("add", "mul", "main")


def _config(layout: str) -> str:
    return f"""\
storage:
  main: {{type: disk, path: cas}}
action_caches:
  ac: {{type: disk, path: ac}}
instances:
  "*": {{cas: main, action_cache: ac}}
http:
  cache:
    enabled: true
    ccache: {{layout: {layout}, instance: cc}}
"""


def _stats(env: dict[str, str]) -> dict[str, int]:
    out = subprocess.run([CCACHE, "--print-stats"], env=env, check=True, capture_output=True, text=True).stdout
    stats = {}
    for line in out.splitlines():
        name, _, value = line.partition("\t")
        if value.strip().isdigit():
            stats[name] = int(value)
    return stats


def _compile(src: Path, env: dict[str, str]) -> bytes:
    for unit in UNITS:
        subprocess.run([CCACHE, CC, "-O1", "-c", f"{unit}.c", "-o", f"{unit}.o"], cwd=src, env=env, check=True)
    subprocess.run([CC, *(f"{u}.o" for u in UNITS), "-o", "app"], cwd=src, env=env, check=True)
    assert subprocess.run([src / "app"], capture_output=True, text=True, check=True).stdout == "14\n"
    return b"".join((src / f"{u}.o").read_bytes() for u in UNITS)


@pytest.mark.parametrize("layout", ["subdirs", "flat", "bazel"])
def test_ccache_remote_hits_after_wiping_local_cache(tmp_path, layout):
    server = start_granary(tmp_path / "server", _config(layout))
    try:
        url = f"{http_url(server)}/ccache|layout={layout}"
        src = tmp_path / "src"
        src.mkdir()
        for name, text in SOURCES.items():
            (src / name).write_text(text)
        conf = tmp_path / "ccache.conf"
        conf.write_text(f"remote_storage = {url}\n")
        env = {**os.environ, "CCACHE_DIR": str(tmp_path / "ccache-dir"), "CCACHE_CONFIGPATH": str(conf)}
        env.pop("CCACHE_REMOTE_STORAGE", None)

        first = _compile(src, env)
        cold = _stats(env)
        assert cold.get("remote_storage_hit", 0) == 0, cold
        assert cold.get("remote_storage_write", 0) >= len(UNITS), cold
        assert cold.get("remote_storage_error", 0) == 0, f"{cold}\n{server.log.read_text()[-3000:]}"

        shutil.rmtree(tmp_path / "ccache-dir")  # the local cache is gone: hits can only be remote
        for unit in UNITS:
            (src / f"{unit}.o").unlink()
        second = _compile(src, env)
        warm = _stats(env)
        assert warm.get("remote_storage_hit", 0) == len(UNITS), warm
        assert warm.get("cache_miss", 0) == 0, warm
        assert warm.get("remote_storage_error", 0) == 0, warm
        assert second == first
    finally:
        server.stop()


def test_ccache_entries_do_not_answer_other_layouts_or_gradle(tmp_path):
    """An entry ccache stored is reachable only through ccache's own prefix and layout: a path in
    another layout is refused (400), and Gradle's namespace does not see it."""
    server = start_granary(tmp_path / "server", _config("subdirs"))
    try:
        import urllib.error
        import urllib.request

        base = http_url(server)
        body = b"ccache entry bytes"
        put = urllib.request.Request(f"{base}/ccache/ab/cdef0123", data=body, method="PUT")
        assert urllib.request.urlopen(put, timeout=30).status == 200
        assert urllib.request.urlopen(f"{base}/ccache/ab/cdef0123", timeout=30).read() == body
        for path, status in (("/ccache/abcdef0123", 400), ("/cache/abcdef0123", 404)):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"{base}{path}", timeout=30)
            assert e.value.code == status, path
        # the bytes are an ordinary CAS blob of instance "cc": bazel-remote's /cc/cas/ reads it
        h = hashlib.sha256(body).hexdigest()
        assert urllib.request.urlopen(f"{base}/cc/cas/{h}", timeout=30).read() == body
    finally:
        server.stop()
