"""Real Bazel 4.2.3 downloading http_file/http_archive through Granary's Remote Asset API
(--experimental_remote_downloader), from a local HTTP origin."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile

import pytest
from assetutil import Origin
from bazelutil import BazelWorkspace, copy_workspace, have_bazel
from serverutil import start_granary

pytestmark = [
    pytest.mark.bazel,
    pytest.mark.skipif(not have_bazel(), reason="bazel is not installed"),
    pytest.mark.timeout(900),
]

CONFIG = """\
storage:
  main: {type: disk, path: cas}
action_caches:
  ac: {type: disk, path: ac}
instances:
  "": {cas: main, action_cache: ac}
remote_asset:
  allowed_hosts: ["127.0.0.1"]
"""

GREETING = b"hello from the origin\n"


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"payload inside the archive\n"
        info = tarfile.TarInfo("archive-1.0/payload.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _workspace(tmp_path, origin_url: str, file_sha256: str, archive_sha256: str) -> BazelWorkspace:
    ws = copy_workspace("bazel_asset", tmp_path / "bazel")
    path = ws.root / "WORKSPACE"
    text = path.read_text()
    for key, value in (("@ORIGIN@", origin_url), ("@FILE_SHA256@", file_sha256), ("@ARCHIVE_SHA256@", archive_sha256)):
        text = text.replace(key, value)
    path.write_text(text)
    return ws


def _flags(address: str) -> list[str]:
    return [
        f"--experimental_remote_downloader=grpc://{address}",
        f"--remote_cache=grpc://{address}",  # Bazel 4.2.3 reads the downloaded blob through the cache
        "--remote_timeout=60",
        "--repository_cache=",  # no local copy: every fetch asks Granary
    ]


def test_bazel_fetches_through_granary_and_then_from_its_records(tmp_path):
    archive = _archive()
    origin = Origin({"/files/greeting.txt": GREETING, "/files/archive-1.0.tar.gz": archive})
    url = f"http://127.0.0.1:{origin.port}"
    ws = _workspace(tmp_path, url, hashlib.sha256(GREETING).hexdigest(), hashlib.sha256(archive).hexdigest())
    with start_granary(tmp_path / "g", CONFIG) as g:
        try:
            first = ws.build("//:combined", *_flags(g.address), output_base=tmp_path / "ob1")
            assert sorted(p for p, _ in origin.requests) == ["/files/archive-1.0.tar.gz", "/files/greeting.txt"]
            # downloaded by Granary (aiohttp), not by Bazel itself
            assert all("aiohttp" in h.get("User-Agent", "") for _, h in origin.requests), origin.requests
        finally:
            origin.stop()
        out = ws.root / "bazel-bin" / "combined.txt"
        assert out.read_bytes() == GREETING + b"payload inside the archive\n", first.describe()
        # a cold output base with the origin gone: only Granary's records can answer
        second = ws.build("//:combined", *_flags(g.address), output_base=tmp_path / "ob2", check=False)
        assert second.ok, second.describe()
        assert out.read_bytes() == GREETING + b"payload inside the archive\n"


def test_bazel_checksum_mismatch_fails_the_build_naming_both(tmp_path):
    archive = _archive()
    with Origin({"/files/greeting.txt": GREETING, "/files/archive-1.0.tar.gz": archive}) as origin:
        wrong = hashlib.sha256(b"not the greeting").hexdigest()
        ws = _workspace(tmp_path, f"http://127.0.0.1:{origin.port}", wrong, hashlib.sha256(archive).hexdigest())
        with start_granary(tmp_path / "g", CONFIG) as g:
            result = ws.build("//:combined", *_flags(g.address), "--remote_retries=0",
                              output_base=tmp_path / "ob", check=False)
    assert not result.ok
    out = result.output
    assert "checksum.sri mismatch" in out, result.describe()
    assert "sha256-" + base64.b64encode(hashlib.sha256(b"not the greeting").digest()).decode() in out
    assert "sha256-" + base64.b64encode(hashlib.sha256(GREETING).digest()).decode() in out
