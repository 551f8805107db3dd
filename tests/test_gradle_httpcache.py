"""End-to-end: real Gradle (Debian's `gradle`, 4.4.1 here) uses Granary's HTTP build cache.

A small project (a Java class and a custom @CacheableTask) is built with the remote
HttpBuildCache at http://HOST:PORT/cache/ and the local build cache off; a fresh checkout is then
built: its cacheable tasks must come FROM-CACHE with identical outputs. Gradle 4.4.1 turns the
remote cache off under --offline, so the build runs without it: it needs no downloads (no
dependencies), and GRADLE_USER_HOME is the test's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from obsutil import http_url
from serverutil import start_granary

GRADLE = shutil.which("gradle")
pytestmark = [
    pytest.mark.skipif(GRADLE is None, reason="gradle is not installed (apt-get install -y gradle)"),
    pytest.mark.timeout(600),
]

CONFIG = """\
storage:
  main: {type: disk, path: cas}
action_caches:
  ac: {type: disk, path: ac}
instances:
  "*": {cas: main, action_cache: ac}
http:
  cache: {enabled: true}
"""

BUILD = """\
apply plugin: 'java'
@CacheableTask
class Upper extends DefaultTask {
  @InputFile @PathSensitive(PathSensitivity.RELATIVE) File src
  @OutputFile File out
  @TaskAction void run() { out.text = src.text.toUpperCase() }
}
task upper(type: Upper) { src = file('in.txt'); out = file("$buildDir/upper.txt") }
build.dependsOn upper
"""

JAVA = 'package demo;\npublic class Hello { public static void main(String[] a) { System.out.println("hi"); } }\n'


def _checkout(root: Path, url: str) -> Path:
    (root / "src/main/java/demo").mkdir(parents=True)
    (root / "settings.gradle").write_text(
        "rootProject.name = 'demo'\n"
        "buildCache {\n  local { enabled = false }\n"
        f"  remote(HttpBuildCache) {{ url = '{url}'; push = true }}\n}}\n")
    (root / "build.gradle").write_text(BUILD)
    (root / "in.txt").write_text("hello gradle\n")
    (root / "src/main/java/demo/Hello.java").write_text(JAVA)
    return root


def _gradle(root: Path, home: Path) -> str:
    env = {**os.environ, "GRADLE_USER_HOME": str(home)}
    env.pop("JAVA_HOME", None)
    r = subprocess.run([GRADLE, "--build-cache", "--console=plain", "--no-daemon", "--stacktrace", "build"],
                       check=False, cwd=root, env=env, capture_output=True, text=True, timeout=500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    return out


def test_gradle_tasks_from_http_build_cache(tmp_path):
    server = start_granary(tmp_path / "server", CONFIG)
    try:
        url = f"{http_url(server)}/cache/"
        home = tmp_path / "gradle-home"
        first = _checkout(tmp_path / "one", url)
        cold = _gradle(first, home)
        assert "FROM-CACHE" not in cold, cold
        assert "Could not store entry" not in cold and "Could not load entry" not in cold, cold

        second = _checkout(tmp_path / "two", url)  # a fresh checkout: nothing built locally
        warm = _gradle(second, home)
        assert ":upper FROM-CACHE" in warm, warm
        assert ":compileJava FROM-CACHE" in warm, warm
        assert "Could not load entry" not in warm, warm
        for rel in ("build/upper.txt", "build/classes/java/main/demo/Hello.class"):
            assert (second / rel).read_bytes() == (first / rel).read_bytes(), rel
        assert (second / "build/upper.txt").read_text() == "HELLO GRADLE\n"
    finally:
        server.stop()
