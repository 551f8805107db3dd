"""Real Bazel (4.2.3) picks a worker pool by CPU with --remote_default_exec_properties (issue 13).

A `granary serve` with two `granary worker` processes (plain processes, --sandbox none): `amd`
advertises ISA=x86-64 (Arch=amd64 filled in), `arm` only Arch=arm64. The genrules of
tests/workspaces/bazel_pools write the directory they ran in; each worker's --work-dir is named
after it, so every output says which worker ran it:

- Arch=arm64: every action on `arm`;
- OSFamily=Linux, ISA=x86_64 (the spellings of RBE-style platforms): every action on `amd`;
- ISA=s390x, which no worker offers: the build fails with FAILED_PRECONDITION naming it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bazelutil import copy_workspace, have_bazel
from execsetup import config
from serverutil import start_granary

pytestmark = [
    pytest.mark.bazel,
    pytest.mark.skipif(not have_bazel(), reason="bazel is not on PATH"),
    pytest.mark.timeout(900),
]

# no local workers and no known_platforms: only the workers a test starts say what runs
CONFIG = config(known_platforms="[]")
SRC = str(Path(__file__).resolve().parents[1] / "src")
N = 6


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bazel-pools")
    server = start_granary(tmp / "server", CONFIG)
    workers = []
    try:
        for name, prop in (("amd", "ISA=x86-64"), ("arm", "Arch=arm64")):
            w = subprocess.Popen(
                [sys.executable, "-m", "granary", "worker", "--server", server.address, "--name", name,
                 "--cache-dir", str(tmp / name / "cache"), "--work-dir", str(tmp / f"{name}-work"),
                 "--concurrency", "2", "--sandbox", "none", "--container-images", "off", "--property", prop],
                stdout=subprocess.PIPE, stderr=open(tmp / f"{name}.log", "w"), text=True,  # noqa: SIM115
                env={**os.environ, "PYTHONPATH": SRC})
            workers.append(w)
            assert w.stdout is not None and "serving" in w.stdout.readline()
        yield server, tmp
    finally:
        for w in workers:
            w.terminate()
            w.wait(60)
        server.stop()


def build(farm, name: str, *props: str):
    server, tmp = farm
    ws = copy_workspace("bazel_pools", tmp / name)
    result = ws.build(
        "//:all", f"--remote_executor=grpc://{server.address}", "--remote_timeout=60", "--spawn_strategy=remote",
        "--genrule_strategy=remote", "--remote_local_fallback=false",
        *(f"--remote_default_exec_properties={p}" for p in props),
        check=False,
    )
    outs = [ws.root / "bazel-bin" / f"where_{i}.txt" for i in range(N)]
    return result, [o.read_text() for o in outs] if result.ok else []


def test_arm64_actions_run_on_the_arm64_worker(farm):
    _, tmp = farm
    result, outs = build(farm, "arm", "Arch=arm64")
    assert result.ok, result.describe()
    assert result.count("remote") == N, result.describe()
    for i, text in enumerate(outs):
        assert text.startswith(f"{i} {tmp / 'arm-work'}/"), text


def test_amd64_actions_in_rbe_spelling_run_on_the_amd64_worker(farm):
    _, tmp = farm
    result, outs = build(farm, "amd", "OSFamily=Linux", "ISA=x86_64")
    assert result.ok, result.describe()
    assert result.count("remote") == N, result.describe()
    for i, text in enumerate(outs):
        assert text.startswith(f"{i} {tmp / 'amd-work'}/"), text


def test_a_cpu_no_worker_offers_fails_the_build(farm):
    result, _ = build(farm, "s390x", "ISA=s390x")
    assert not result.ok
    assert "FAILED_PRECONDITION" in result.output or "Failed Precondition" in result.output, result.describe()
    assert "no worker can satisfy platform property ISA=s390x" in result.output, result.describe()
