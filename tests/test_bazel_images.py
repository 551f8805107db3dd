"""Real Bazel (4.2.3) runs a genrule inside container images (issue 13).

A real registry (Debian's docker-registry) holds two images built by tests/imageutil.py from
busybox-static; a `granary serve` with one `granary worker` (bwrap sandbox) executes. The genrule
of tests/workspaces/bazel_images reads /etc/granary-image, a file only the images have, and the
FOO variable only the images' config sets:

- by tag (docker://127.0.0.1:PORT/test/one:v1): "one", FOO from the image;
- by digest (docker://.../test/one@sha256:...): the same content;
- a second image (test/two): "two";
- an image whose layer was corrupted in the registry's storage: the build fails, naming it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bazelutil import copy_workspace, have_bazel
from imageutil import have_registry, start_registry, tar_layer
from serverutil import start_granary

pytestmark = [
    pytest.mark.bazel,
    pytest.mark.skipif(not have_bazel(), reason="bazel is not on PATH"),
    pytest.mark.skipif(not have_registry(), reason="docker-registry or busybox-static is not installed"),
    pytest.mark.timeout(900),
]

CONFIG = """
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: disk, path: ac}}
instances:
  "": {cas: main, action_cache: main}
execution: {local_workers: 0, platform_grace: 0, bot_long_poll: 1, poll_interval: 0.2}
"""
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bazel-images")
    with start_registry(tmp / "registry") as reg:
        reg.one = reg.push_image("test/one", "v1", [
            tar_layer({"etc": None, "etc/granary-image": b"one\n"}, busybox=True)], env=["FOO=from-image-one"])
        reg.two = reg.push_image("test/two", "v1", [
            tar_layer({"etc": None, "etc/granary-image": b"two\n"}, busybox=True)])
        bad_layer = tar_layer({"etc": None, "etc/granary-image": b"bad\n"}, busybox=True)
        reg.push_image("test/bad", "v1", [bad_layer])
        reg.corrupt("sha256:" + hashlib.sha256(bad_layer).hexdigest())
        server = start_granary(tmp / "server", CONFIG)
        worker = subprocess.Popen(
            [sys.executable, "-m", "granary", "worker", "--server", server.address, "--name", "imgw",
             "--cache-dir", str(tmp / "worker" / "cache"), "--concurrency", "2", "--sandbox", "bwrap",
             "--log-level", "info"],
            stdout=subprocess.PIPE, stderr=open(tmp / "worker.log", "w"), text=True,  # noqa: SIM115
            env={**os.environ, "PYTHONPATH": SRC})
        try:
            assert worker.stdout is not None and "serving" in worker.stdout.readline()
            yield reg, server, tmp
        finally:
            worker.terminate()
            worker.wait(60)
            server.stop()


def build(farm, image: str, name: str):
    _reg, server, tmp = farm
    ws = copy_workspace("bazel_images", tmp / name)
    result = ws.build(
        "//:which_image",
        f"--remote_executor=grpc://{server.address}", "--remote_timeout=60", "--spawn_strategy=remote",
        "--genrule_strategy=remote", "--remote_local_fallback=false",
        f"--remote_default_exec_properties=container-image={image}",
        check=False,
    )
    out = ws.root / "bazel-bin" / "which_image.txt"
    return result, (out.read_text() if result.ok and out.exists() else "")


def test_genrule_runs_inside_the_image_by_tag(farm):
    reg = farm[0]
    result, text = build(farm, f"docker://{reg.host}/test/one:v1", "tag")
    assert result.ok, result.describe()
    assert result.count("remote") == 1, result.describe()
    assert text == "one\nfrom the workspace\nFOO=from-image-one\n"


def test_genrule_runs_inside_the_image_by_digest(farm):
    reg = farm[0]
    result, text = build(farm, f"docker://{reg.host}/test/one@{reg.one}", "digest")
    assert result.ok, result.describe()
    assert result.count("remote") == 1, result.describe()  # another platform: another action, run again
    assert text == "one\nfrom the workspace\nFOO=from-image-one\n"


def test_a_second_image_gives_a_different_result(farm):
    reg = farm[0]
    result, text = build(farm, f"docker://{reg.host}/test/two:v1", "second")
    assert result.ok, result.describe()
    assert text == "two\nfrom the workspace\nFOO=unset\n"


def test_a_corrupt_layer_fails_the_build_naming_the_image(farm):
    reg = farm[0]
    image = f"docker://{reg.host}/test/bad:v1"
    result, _ = build(farm, image, "corrupt")
    assert not result.ok
    output = result.stdout + result.stderr
    assert image in output and "does not match its digest" in output, result.describe()
