"""What each process remembers to answer GetActionResult cheaply stays correct across processes.

Two store objects on one directory stand for two server processes: each has
its own connection, caches and memo, and they share only the files, as
processes do.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.actioncache.actioncache import ActionCache
from granary.actioncache.store import SqliteActionCacheStore
from granary.cas.cas import ContentAddressableStorage
from granary.cas.disk import DiskBlobStore, _sql
from granary.errors import NotFound


def blob(n: int = 100) -> tuple[dg.BlobDigest, bytes]:
    data = os.urandom(n)
    return dg.compute(dg.SHA256, data), data


def proto(d: dg.BlobDigest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=d.hash, size_bytes=d.size)


class Process:
    """One server process's view of a data directory."""

    def __init__(self, root):
        self.store = DiskBlobStore(root / "cas", 1 << 30)
        self.cas = ContentAddressableStorage(self.store)
        self.ac = ActionCache(SqliteActionCacheStore(root / "ac" / "actioncache.sqlite"), self.cas)

    async def close(self):
        await self.store.close()
        await self.ac.store.close()


def action() -> dg.BlobDigest:
    return dg.compute(dg.SHA256, os.urandom(32))


@pytest.mark.parametrize("removed_by", ["this process", "another process"])
@pytest.mark.parametrize("how", ["delete", "evict", "corrupt file"])
def test_a_result_is_not_found_once_a_blob_it_needs_is_gone(tmp_path, removed_by, how):
    async def main():
        a, b = Process(tmp_path), Process(tmp_path)
        small, large = blob(100), blob(1 << 20)  # one packed, one in its own file
        await a.cas.put(*small)
        await a.cas.put(*large)
        act = action()
        result = re_pb2.ActionResult(output_files=[
            re_pb2.OutputFile(path="s", digest=proto(small[0])),
            re_pb2.OutputFile(path="l", digest=proto(large[0])),
        ])
        await a.ac.update(act, result)
        for p in (a, b):  # both remember the result as complete
            assert (await p.ac.get(act)).output_files[1].digest.hash == large[0].hash
            assert (await p.ac.get(act)).output_files[1].digest.hash == large[0].hash
        remover = a if removed_by == "this process" else b
        if how == "delete":
            await remover.store.delete([small[0]])
        elif how == "evict":
            remover.store.evict(0)
        else:
            # the large blob's bytes went bad on disk: found out when it is read
            key = large[0].key  # its file is KEY or KEY.<generation> (cas/disk.py _file_path)
            (path,) = (remover.store.root / "blobs" / key[-2:]).glob(f"{key}*")
            os.truncate(path, 10)
            with pytest.raises(NotFound):
                await remover.cas.get(large[0])
        for p in (a, b):
            with pytest.raises(NotFound, match="no longer in the CAS"):
                await p.ac.get(act)
        await a.close()
        await b.close()

    asyncio.run(main())


def test_a_result_replaced_or_deleted_by_another_process_is_seen(tmp_path):
    async def main():
        a, b = Process(tmp_path), Process(tmp_path)
        out = blob()
        await a.cas.put(*out)
        act = action()
        await a.ac.update(act, re_pb2.ActionResult(exit_code=1, output_files=[
            re_pb2.OutputFile(path="o", digest=proto(out[0]))]))
        assert (await b.ac.get(act)).exit_code == 1
        assert (await a.ac.get(act)).exit_code == 1
        await b.ac.update(act, re_pb2.ActionResult(exit_code=2, output_files=[
            re_pb2.OutputFile(path="o", digest=proto(out[0]))]))
        assert (await a.ac.get(act)).exit_code == 2
        assert (await b.ac.get(act)).exit_code == 2
        await b.ac.store.delete(b.ac._key(act))
        for p in (a, b):
            with pytest.raises(NotFound):
                await p.ac.get(act)
        await a.close()
        await b.close()

    asyncio.run(main())


def test_tree_files_are_checked_and_remembered(tmp_path):
    async def main():
        a, b = Process(tmp_path), Process(tmp_path)
        f = blob()
        await a.cas.put(*f)
        tree = re_pb2.Tree(root=re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=proto(f[0]))]))
        raw = tree.SerializeToString()
        td = dg.compute(dg.SHA256, raw)
        await a.cas.put(td, raw)
        act = action()
        await a.ac.update(act, re_pb2.ActionResult(output_directories=[
            re_pb2.OutputDirectory(path="d", tree_digest=proto(td))]))
        await a.ac.get(act)
        await a.ac.get(act)
        await b.store.delete([f[0]])  # a file inside the tree, not the tree itself
        with pytest.raises(NotFound, match="no longer in the CAS"):
            await a.ac.get(act)
        await a.close()
        await b.close()

    asyncio.run(main())


def test_a_remembered_result_still_counts_its_blobs_as_used(tmp_path):
    async def main():
        a = Process(tmp_path)
        used, other = blob(), blob()
        await a.cas.put(*used)
        await a.cas.put(*other)
        act = action()
        await a.ac.update(act, re_pb2.ActionResult(output_files=[
            re_pb2.OutputFile(path="o", digest=proto(used[0]))]))
        await a.ac.get(act)
        a.store._maybe_flush_atimes(force=True)
        # both long unused, the result's blob the longest
        a.store._db.execute("UPDATE blobs SET atime = 2")
        a.store._db.execute("UPDATE blobs SET atime = 1 WHERE key = ?", (_sql(used[0].key),))
        a.store._touched.clear()
        await a.ac.get(act)  # answered from memory
        a.store._maybe_flush_atimes(force=True)
        a.store.evict(used[0].size)  # room for one: the least recently used goes
        assert await a.cas.find_missing([used[0], other[0]]) == [other[0]]
        await a.ac.get(act)
        await a.close()

    asyncio.run(main())
