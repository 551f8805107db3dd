"""Worker pools by CPU architecture and the conventional platform properties (issue 13).

A real `granary serve` and two real `granary worker` processes: `amd` advertises ISA=x86-64 (the REAPI
lexicon spelling; Arch=amd64 is filled in), `arm` advertises only Arch=arm64 (BuildBuddy's spelling;
ISA=arm-a64 is filled in). Actions ask for their CPU in the spellings other services and Bazel
platforms use; every one must land in its own pool, whichever worker is idle.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from execsetup import config
from rwapi import ExecClient, final
from serverutil import start_granary

from granary.execution.platform import Capabilities, canonical, unsatisfied_reason
from granary.worker.platform import cpu, properties

pytestmark = pytest.mark.timeout(300)

# no local workers and no known_platforms: only the workers a test starts say what runs
CONFIG = config(known_platforms="[]")
SRC = str(Path(__file__).resolve().parents[1] / "src")
AMD64 = [[("ISA", "x86-64")], [("Arch", "amd64")], [("ISA", "x86_64")], [("ISA", "amd64")],
         [("OSFamily", "Linux"), ("Arch", "amd64")], [("OSFamily", "linux"), ("ISA", "x86-64"), ("Pool", "default")]]
ARM64 = [[("Arch", "arm64")], [("ISA", "aarch64")], [("ISA", "arm-a64")], [("OSFamily", "Linux"), ("Arch", "ARM64")]]


def start_worker(server, tmp: Path, name: str, *props: str) -> subprocess.Popen:
    flags = [a for p in props for a in ("--property", p)]
    w = subprocess.Popen(
        [sys.executable, "-m", "granary", "worker", "--server", server.address, "--name", name,
         "--cache-dir", str(tmp / name / "cache"), "--concurrency", "2", "--sandbox", "none",
         "--container-images", "off", "--log-level", "info", *flags],
        stdout=subprocess.PIPE, stderr=open(tmp / f"{name}.log", "w"), text=True,  # noqa: SIM115
        env={**os.environ, "PYTHONPATH": SRC})
    assert w.stdout is not None and "serving" in w.stdout.readline()
    return w


def run(client: ExecClient, platform, script: str):
    d, _ = client.action(["/bin/sh", "-c", script], platform=platform)
    return final(client.execute(d, timeout=120))


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pools")
    server = start_granary(tmp / "server", CONFIG)
    workers = [start_worker(server, tmp, "amd", "ISA=x86-64"), start_worker(server, tmp, "arm", "Arch=arm64")]
    client = ExecClient(server.address)
    try:
        for platform in (AMD64[0], ARM64[0]):  # until both workers' bot sessions are registered
            deadline = time.monotonic() + 30
            while True:
                try:
                    run(client, platform, "echo ready > out")
                    break
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.FAILED_PRECONDITION or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        yield client, tmp
    finally:
        for w in workers:
            w.terminate()
            w.wait(60)
        server.stop()


def test_the_workers_advertise_their_cpu_under_both_names(farm):
    _, tmp = farm
    common = "sandbox none, platform OSFamily=linux"
    assert (f"worker amd: 2 slot(s), {common}, ISA=x86-64, Arch=amd64, dockerNetwork=standard, Pool=default,"
            " limits none\n" in (tmp / "amd.log").read_text())
    assert (f"worker arm: 2 slot(s), {common}, ISA=arm-a64, Arch=arm64, dockerNetwork=standard, Pool=default,"
            " limits none\n" in (tmp / "arm.log").read_text())


def test_amd64_actions_never_land_on_the_arm64_worker(farm):
    client, _ = farm
    jobs = [(i, "amd", AMD64[i % len(AMD64)]) for i in range(24)] + [(i, "arm", ARM64[i % len(ARM64)])
                                                                      for i in range(24, 32)]
    results: dict[int, tuple[str, object]] = {}

    def one(i: int, pool: str, platform) -> None:
        results[i] = (pool, run(client, platform, f"echo {i} > out; sleep 0.2"))

    # All at once: the amd worker's two slots stay busy while the arm worker has free ones, so only the
    # matching rule keeps amd64 actions off it.
    threads = [threading.Thread(target=one, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(jobs)
    for i, (pool, r) in sorted(results.items()):
        assert r.status.code == 0 and r.result.exit_code == 0, (i, r)
        assert r.result.execution_metadata.worker.startswith(f"{pool}-"), (i, pool, r.result.execution_metadata)
        assert client.bs_read(r.result.output_files[0].digest) == f"{i}\n".encode()


def test_an_action_without_a_cpu_runs_on_either(farm):
    client, _ = farm
    r = run(client, [("OSFamily", "linux")], "echo any > out")
    assert r.result.exit_code == 0 and r.result.execution_metadata.worker.split("-")[0] in ("amd", "arm")


ALL_CPUS = "amd64, arm-a64, arm64, x86-64"


@pytest.mark.parametrize(("platform", "message"), [
    ([("ISA", "s390x")], f"no worker can satisfy platform property ISA=s390x (workers offer ISA: {ALL_CPUS})"),
    ([("Arch", "riscv64")], f"no worker can satisfy platform property Arch=riscv64 (workers offer Arch: {ALL_CPUS})"),
    ([("OSFamily", "windows")], "no worker can satisfy platform property OSFamily=windows (workers offer OSFamily: linux)"),
    ([("Pool", "gpu")], "no worker can satisfy platform property Pool=gpu (workers offer Pool: default)"),
])
def test_an_action_for_a_platform_no_worker_offers_is_refused(farm, platform, message):
    client, _ = farm
    with pytest.raises(grpc.RpcError) as e:
        run(client, platform, "echo never > out")
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == f"cannot execute this action: {message}"


# ---- the rules, without processes ----------------------------------------------------------------


def test_cpu_detection_names_both_conventions():
    assert cpu("x86_64") == ("x86-64", "amd64")
    assert cpu("aarch64") == ("arm-a64", "arm64")
    assert cpu("arm64") == ("arm-a64", "arm64")
    assert cpu("i686") == ("x86-32", "386")
    assert cpu("mips") == ("mips", "mips")  # unknown: as the machine says


def test_property_flags_override_the_detected_values():
    props = properties([("Pool", "large"), ("ISA", "arm64"), ("OSFamily", "Linux")], ("off", "standard"))
    assert props == [("OSFamily", "Linux"), ("ISA", "arm64"), ("Arch", "arm64"), ("dockerNetwork", "off"),
                     ("dockerNetwork", "standard"), ("Pool", "large")]
    ext = properties([("ISA", "x86-avx2")])  # an extension is added to the detected CPU, not put in its place
    assert ("ISA", "x86-avx2") in ext and ("ISA", cpu()[0]) in ext and ("Arch", cpu()[1]) in ext


def test_matching_accepts_the_spellings_of_one_pool():
    amd = Capabilities(properties([("ISA", "x86-64")]))
    arm = Capabilities(properties([("Arch", "arm64")]))
    for reqs in AMD64:
        assert amd.satisfies(tuple(reqs)) and not arm.satisfies(tuple(reqs)), reqs
    for reqs in ARM64:
        assert arm.satisfies(tuple(reqs)) and not amd.satisfies(tuple(reqs)), reqs
    assert canonical("OSFamily", "Darwin") == ("OSFamily", "macos")
    assert canonical("Arch", "X86_64") == ("ISA", "x86-64")
    assert canonical("Pool", "Large") == ("Pool", "Large")  # pools are names of your own: exact
    assert not amd.satisfies((("Pool", "Default"),))
    both = (("ISA", "x86-64"), ("Arch", "arm64"))  # contradictory: nobody
    assert unsatisfied_reason(both, [amd, arm]) == (
        "no single worker satisfies all of the platform properties ISA=x86-64, Arch=arm64")
