"""The Action Cache of one instance.

It never hands out a result whose blobs are gone from the CAS: every output
file, every file inside output directory trees, stdout and stderr are
checked first, and an incomplete entry reads as NOT_FOUND. Action digests are
only keys here (moon sends the digest of its own JSON, not an Action).

A result found complete is remembered (per process, bounded) with the CAS
store's removal token read before the check: while the stored bytes are the
same and the token has not changed, no blob can have gone, so the next
lookup skips the check and only records the blobs as used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from google.protobuf.message import DecodeError

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.actioncache.store import ActionCacheStore
from granary.cas.cas import ContentAddressableStorage
from granary.digest import BlobDigest
from granary.errors import InvalidArgument, NotFound, PermissionDenied

INLINE_LIMIT = 1 << 20  # total bytes inlined into one GetActionResult response
#: largest stdout_raw, stderr_raw or output file `contents` a stored result may carry
MAX_INLINE_FIELD_BYTES = 1 << 20
#: largest serialized ActionResult stored: with INLINE_LIMIT more inlined on the way
#: out, a GetActionResult reply stays under the 4 MiB clients accept by default
MAX_RESULT_BYTES = 3 << 20

#: results remembered as complete, per ActionCache: bytes in all (results and blob keys, about),
#: largest serialized result, most blobs of one result
MEMO_BYTES = 8 << 20
MEMO_MAX_RESULT = 16 << 10
MEMO_MAX_BLOBS = 1000

log = logging.getLogger("granary.actioncache")


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
        max_inline_field_bytes: int = MAX_INLINE_FIELD_BYTES,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ):
        self.max_inline_field_bytes = max_inline_field_bytes
        self.max_result_bytes = max_result_bytes
        self.store = store
        self.cas = cas
        self.namespace = namespace
        self.allow_updates = allow_updates
        self.write_once = write_once
        self.check_completeness = check_completeness
        #: key -> (serialized result, keys of the blobs it needs, CAS removal token before the check)
        self._complete: dict[str, tuple[bytes, tuple[str, ...], object]] = {}
        self._complete_bytes = 0

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
        key = self._key(action)
        raw = await self.store.get(key)
        if raw is None:
            raise NotFound(f"no action result for {action}")
        result = re_pb2.ActionResult()
        try:
            result.ParseFromString(raw)
        except DecodeError:
            self._complete.pop(key, None)
            await self.store.delete(key)
            raise NotFound(f"no action result for {action} (stored entry was unreadable)") from None
        if self.check_completeness:
            await self._check_complete(key, raw, result, action)
        if inline_stdout or inline_stderr or inline_output_files:
            await self._inline(result, action.function, inline_stdout, inline_stderr, set(inline_output_files))
        return result

    async def _check_complete(self, key: str, raw: bytes, result: re_pb2.ActionResult, action: BlobDigest) -> None:
        cas = self.cas
        known = self._complete.get(key)
        if known is not None and known[0] == raw:
            token = cas.removal_token()
            if token is not None and token == known[2]:
                cas.record_access(known[1])
                return
        token = cas.removal_token()  # before the check: a removal after it changes the token
        missing, needed = await self._missing_blobs(result, action.function)
        if missing:
            self._complete.pop(key, None)
            raise NotFound(
                f"action result for {action} refers to {len(missing)} blob(s) no longer in the CAS,"
                f" e.g. {missing[0]}"
            )
        if token is not None and len(raw) <= MEMO_MAX_RESULT and len(needed) <= MEMO_MAX_BLOBS:
            cost = len(raw) + len(key) + 120 * (len(needed) + 1)
            if self._complete_bytes + cost > MEMO_BYTES:
                self._complete.clear()
                self._complete_bytes = 0
            self._complete[key] = (raw, needed, token)
            self._complete_bytes += cost

    async def update(self, action: BlobDigest, result: re_pb2.ActionResult) -> re_pb2.ActionResult:
        if not self.allow_updates:
            raise PermissionDenied("this instance's action cache is read-only: UpdateActionResult refused")
        self._validate(result, action.function)
        raw = self._bounded(result)
        existing = await self._store(action, raw)
        if existing is not None:
            stored = re_pb2.ActionResult()
            stored.ParseFromString(existing)
            return stored
        return result

    async def put_unchecked(self, action: BlobDigest, result: re_pb2.ActionResult) -> bool:
        """Store a result produced by this server's own execution; False if it was not stored.

        write_once holds here too: a result already stored stays. A result over
        the size caps is not cached (the execution itself still succeeds).
        """
        try:
            raw = self._bounded(result)
        except InvalidArgument as e:
            log.warning("not caching the result of action %s: %s", action, e.message)
            return False
        return await self._store(action, raw) is None

    async def _store(self, action: BlobDigest, raw: bytes) -> bytes | None:
        """Store `raw`; under write_once atomically only if absent, returning what is stored."""
        if self.write_once:
            return await self.store.put_if_absent(self._key(action), raw)
        await self.store.put(self._key(action), raw)
        return None

    def _bounded(self, result: re_pb2.ActionResult) -> bytes:
        """Serialize `result`, refusing inline data or a whole past the caps."""
        cap = self.max_inline_field_bytes
        for what, size in _inline_fields(result):
            if size > cap:
                raise InvalidArgument(
                    f"ActionResult {what} is {size} bytes, more than the cap of {cap} bytes inline"
                    " (server.ac_max_inline_size); upload it to the CAS and give its digest"
                )
        raw = result.SerializeToString(deterministic=True)
        if len(raw) > self.max_result_bytes:
            raise InvalidArgument(
                f"ActionResult is {len(raw)} bytes serialized, more than the cap of"
                f" {self.max_result_bytes} bytes (server.ac_max_result_size)"
            )
        return raw

    def _validate(self, result: re_pb2.ActionResult, function: int) -> None:
        for d, what in _referenced(result):
            try:
                dg.make_digest(function, d.hash, d.size_bytes)
            except InvalidArgument as e:
                raise InvalidArgument(f"ActionResult {what}: {e.message}") from None

    async def _missing_blobs(
        self, result: re_pb2.ActionResult, function: int
    ) -> tuple[list[BlobDigest], tuple[str, ...]]:
        """(the blobs missing, the keys of all blobs checked: the result's and its trees' files)."""
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
            return missing, ()
        needed = [d.key for d in wanted if d.size]
        for tree_digest in trees:
            if not tree_digest.size:
                continue
            tree = re_pb2.Tree()
            try:
                tree.ParseFromString(await self.cas.get(tree_digest))
            except (DecodeError, NotFound):
                return [tree_digest], ()
            files = []
            for directory in [tree.root, *tree.children]:
                for f in directory.files:
                    try:
                        files.append(dg.make_digest(function, f.digest.hash, f.digest.size_bytes))
                    except InvalidArgument:
                        return [tree_digest], ()
            missing = await self.cas.find_missing(files)
            if missing:
                return missing, ()
            needed.extend(d.key for d in files if d.size)
        return [], tuple(needed)

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


def _inline_fields(result: re_pb2.ActionResult) -> Iterator[tuple[str, int]]:
    yield "stdout_raw", len(result.stdout_raw)
    yield "stderr_raw", len(result.stderr_raw)
    for f in result.output_files:
        yield f"output_files[{f.path!r}].contents", len(f.contents)


def _referenced(result: re_pb2.ActionResult):
    for f in result.output_files:
        yield f.digest, f"output_files[{f.path!r}]"
    for d in result.output_directories:
        yield d.tree_digest, f"output_directories[{d.path!r}]"
    if result.HasField("stdout_digest"):
        yield result.stdout_digest, "stdout_digest"
    if result.HasField("stderr_digest"):
        yield result.stderr_digest, "stderr_digest"
