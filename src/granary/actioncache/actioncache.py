"""The Action Cache of one instance.

It never hands out a result whose blobs are gone from the CAS: every output
file, every file inside output directory trees, stdout and stderr are
checked first, and an incomplete entry reads as NOT_FOUND. Action digests are
only keys here (moon sends the digest of its own JSON, not an Action).
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import DecodeError

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.actioncache.store import ActionCacheStore
from granary.cas.cas import ContentAddressableStorage
from granary.digest import BlobDigest
from granary.errors import InvalidArgument, NotFound, PermissionDenied

INLINE_LIMIT = 1 << 20  # total bytes inlined into one GetActionResult response


class ActionCache:
    def __init__(
        self,
        store: ActionCacheStore,
        cas: ContentAddressableStorage,
        *,
        namespace: str = "",
        allow_updates: bool = True,
        write_once: bool = False,
        check_completeness: bool = True,
    ):
        self.store = store
        self.cas = cas
        self.namespace = namespace
        self.allow_updates = allow_updates
        self.write_once = write_once
        self.check_completeness = check_completeness

    def _key(self, action: BlobDigest) -> str:
        return f"{self.namespace}\x00{action.key}/{action.size}"

    async def get(
        self,
        action: BlobDigest,
        *,
        inline_stdout: bool = False,
        inline_stderr: bool = False,
        inline_output_files: Iterable[str] = (),
    ) -> re_pb2.ActionResult:
        raw = await self.store.get(self._key(action))
        if raw is None:
            raise NotFound(f"no action result for {action}")
        result = re_pb2.ActionResult()
        try:
            result.ParseFromString(raw)
        except DecodeError:
            await self.store.delete(self._key(action))
            raise NotFound(f"no action result for {action} (stored entry was unreadable)") from None
        if self.check_completeness:
            missing = await self._missing_blobs(result, action.function)
            if missing:
                raise NotFound(
                    f"action result for {action} refers to {len(missing)} blob(s) no longer in the CAS,"
                    f" e.g. {missing[0]}"
                )
        await self._inline(result, action.function, inline_stdout, inline_stderr, set(inline_output_files))
        return result

    async def update(self, action: BlobDigest, result: re_pb2.ActionResult) -> re_pb2.ActionResult:
        if not self.allow_updates:
            raise PermissionDenied("this instance's action cache is read-only: UpdateActionResult refused")
        self._validate(result, action.function)
        raw = result.SerializeToString(deterministic=True)
        if self.write_once:
            existing = await self.store.put_if_absent(self._key(action), raw)
            if existing is not None:
                stored = re_pb2.ActionResult()
                stored.ParseFromString(existing)
                return stored
        else:
            await self.store.put(self._key(action), raw)
        return result

    async def put_unchecked(self, action: BlobDigest, result: re_pb2.ActionResult) -> None:
        """Store a result produced by this server's own execution."""
        await self.store.put(self._key(action), result.SerializeToString(deterministic=True))

    def _validate(self, result: re_pb2.ActionResult, function: int) -> None:
        for d, what in _referenced(result):
            try:
                dg.make_digest(function, d.hash, d.size_bytes)
            except InvalidArgument as e:
                raise InvalidArgument(f"ActionResult {what}: {e.message}") from None

    async def _missing_blobs(self, result: re_pb2.ActionResult, function: int) -> list[BlobDigest]:
        wanted: list[BlobDigest] = []
        trees: list[BlobDigest] = []
        for d, what in _referenced(result):
            try:
                bd = dg.make_digest(function, d.hash, d.size_bytes)
            except InvalidArgument:
                continue
            wanted.append(bd)
            if what.startswith("output_directories"):
                trees.append(bd)
        missing = await self.cas.find_missing(wanted)
        if missing:
            return missing
        for tree_digest in trees:
            if not tree_digest.size:
                continue
            tree = re_pb2.Tree()
            try:
                tree.ParseFromString(await self.cas.get(tree_digest))
            except (DecodeError, NotFound):
                return [tree_digest]
            files = []
            for directory in [tree.root, *tree.children]:
                for f in directory.files:
                    try:
                        files.append(dg.make_digest(function, f.digest.hash, f.digest.size_bytes))
                    except InvalidArgument:
                        return [tree_digest]
            missing = await self.cas.find_missing(files)
            if missing:
                return missing
        return []

    async def _inline(
        self,
        result: re_pb2.ActionResult,
        function: int,
        inline_stdout: bool,
        inline_stderr: bool,
        inline_files: set[str],
    ) -> None:
        budget = INLINE_LIMIT
        if inline_stdout and result.HasField("stdout_digest") and not result.stdout_raw:
            size = result.stdout_digest.size_bytes
            if size <= budget:
                result.stdout_raw = await self.cas.get(dg.from_proto(function, result.stdout_digest))
                budget -= size
        if inline_stderr and result.HasField("stderr_digest") and not result.stderr_raw:
            size = result.stderr_digest.size_bytes
            if size <= budget:
                result.stderr_raw = await self.cas.get(dg.from_proto(function, result.stderr_digest))
                budget -= size
        if inline_files:
            for f in result.output_files:
                if f.path in inline_files and not f.contents and f.digest.size_bytes <= budget:
                    f.contents = await self.cas.get(dg.from_proto(function, f.digest))
                    budget -= f.digest.size_bytes


def _referenced(result: re_pb2.ActionResult):
    for f in result.output_files:
        yield f.digest, f"output_files[{f.path!r}]"
    for d in result.output_directories:
        yield d.tree_digest, f"output_directories[{d.path!r}]"
    if result.HasField("stdout_digest"):
        yield result.stdout_digest, "stdout_digest"
    if result.HasField("stderr_digest"):
        yield result.stderr_digest, "stderr_digest"
