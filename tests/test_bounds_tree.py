"""GetTree streams its pages while walking and caps a page's bytes, whatever page_size asks for."""

from __future__ import annotations

import os

import pytest
from bounds_util import MiB
from reapi import Client, digest, re_pb2
from serverutil import start_granary

CONFIG = """
storage:
  mem: {type: memory, max_size: 256MiB}
action_caches:
  mem: {type: memory}
instances:
  "*": {cas: mem, action_cache: mem}
"""


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    srv = start_granary(tmp_path_factory.mktemp("tree"), CONFIG, processes=1)
    c = Client(srv.address)
    yield c
    c.close()
    srv.stop()


def test_huge_page_size_is_capped_by_bytes_and_pages_resume(client):
    empty = digest(b"")
    children = []
    for i in range(300):  # 300 directories of ~10 KB: 3 MB of tree
        d = re_pb2.Directory(files=[re_pb2.FileNode(name=f"{i:04d}-{j:04d}-{os.urandom(8).hex()}", digest=empty)
                                    for j in range(100)])
        children.append(d)
    blobs = [c.SerializeToString() for c in children]
    root = re_pb2.Directory(directories=[
        re_pb2.DirectoryNode(name=f"d{i:04d}", digest=digest(b)) for i, b in enumerate(blobs)])
    root_blob = root.SerializeToString()
    for k in range(0, len(blobs), 100):
        client.upload(*blobs[k:k + 100])
    client.upload(root_blob)
    pages = list(client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=digest(root_blob), page_size=1_000_000)))
    assert len(pages) >= 2
    for p in pages:
        assert sum(d.ByteSize() for d in p.directories) <= 2 * MiB + 20_000
    got = [d for p in pages for d in p.directories]
    assert got == [root, *children]
    assert [bool(p.next_page_token) for p in pages] == [True] * (len(pages) - 1) + [False]
    again = list(client.cas.GetTree(re_pb2.GetTreeRequest(
        root_digest=digest(root_blob), page_size=1_000_000, page_token=pages[0].next_page_token)))
    assert [d for p in again for d in p.directories] == got[len(pages[0].directories):]
