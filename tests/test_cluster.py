"""The short version of bench/cluster.py: a real multi-host farm in network namespaces.

Two `granary serve` hosts on one PostgreSQL queue, Redis tiered over S3 (moto)
with deferred writes, three `granary worker` hosts and a Bazel client host, each
in its own network namespace. Two faults, each during a real remote-execution
build: kill -9 of a worker host mid-action (restarted 3 s later), and a rolling
SIGTERM restart of both server hosts. For each, the build must succeed with
outputs byte-identical to a local build, every acknowledged action result and
blob must be readable through both servers, and no action may have completed
twice with different results.

Needs root (namespaces, veth, bridge); skips with the reason otherwise.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "cluster.py"


def _load():
    spec = importlib.util.spec_from_file_location("granary_bench_cluster", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cluster = _load()
WHY_NOT = cluster.netns_available()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.bazel,
    pytest.mark.skipif(WHY_NOT is not None, reason=f"no network-namespace farm here: {WHY_NOT}"),
    pytest.mark.timeout(1200),
]


@pytest.fixture(scope="module")
def farm():
    # Not under pytest's tmp_path: its root is private to root, and PostgreSQL (as user
    # postgres) and the actions (as nobody) must reach their directories.
    base = Path(tempfile.mkdtemp(prefix="granary-cluster-test-"))
    base.chmod(0o755)
    try:
        f = cluster.Farm(base)
        try:
            yield f, base
        finally:
            f.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("scenario", cluster.SHORT)
def test_fault(farm, scenario):
    f, base = farm
    row = cluster.run_scenario(scenario, f, base)
    print("\n" + cluster.table([row]))
    log = (base / scenario / "bazel.log").read_text(errors="replace")[-3000:]
    assert row.build.startswith("ok"), f"{row.build}\n{row.fault}\n{log}"
    assert row.identical == "yes", row
    assert row.lost == "0", row.detail
    assert row.differing == "0", row.detail
    assert "acknowledged results" in row.detail[0] and not row.detail[0].startswith("0 "), row.detail
    # the fault really happened during the build (not "never ran an action")
    assert "never" not in row.fault and "no action" not in row.fault, row.fault
