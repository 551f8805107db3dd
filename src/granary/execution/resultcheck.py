"""Checking an ActionResult a bot reports before anyone sees it.

A worker is a trusted party only as far as the CAS can vouch for it: every
blob its result refers to (output files, output directory Trees and every
file inside them, stdout and stderr, a root directory digest) must be in the
instance's CAS with the size claimed, and inline contents must be what their
digest says. A result that fails is refused: the operation fails with
INTERNAL (the fault is the execution engine's, not the client's: REAPI keeps
FAILED_PRECONDITION for what the client can fix, such as missing inputs, and
Bazel answers that by uploading inputs again) and nothing is cached.

The check costs one FindMissingBlobs-style round trip for the blobs the result
names, and when there are output directories one read of their Trees and one
more round trip for the files inside them. The Trees read are bounded in
bytes, so a result cannot make the server load an arbitrary amount.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import DecodeError

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.cas.cas import ContentAddressableStorage
from granary.digest import BlobDigest
from granary.errors import InvalidArgument

MAX_TREE_BYTES = 64 << 20  # all output directory Trees of one result, read to check the files inside


class RefusedResult(Exception):
    """The result refers to something the CAS does not hold (the message names it)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _named(result: re_pb2.ActionResult) -> Iterator[tuple[re_pb2.Digest, str, bytes | None]]:
    """(digest, what it is, inline contents or None) for every blob the result refers to."""
    for f in result.output_files:
        yield f.digest, f"output file {f.path!r}", f.contents if f.contents else None
    for d in result.output_directories:
        yield d.tree_digest, f"output directory {d.path!r} (Tree)", None
        if d.HasField("root_directory_digest"):
            yield d.root_directory_digest, f"output directory {d.path!r} (root Directory)", None
    if result.HasField("stdout_digest"):
        yield result.stdout_digest, "stdout", result.stdout_raw if result.stdout_raw else None
    if result.HasField("stderr_digest"):
        yield result.stderr_digest, "stderr", result.stderr_raw if result.stderr_raw else None


def _digest(function: int, d: re_pb2.Digest, what: str) -> BlobDigest:
    try:
        return dg.make_digest(function, d.hash, d.size_bytes)
    except InvalidArgument as e:
        raise RefusedResult(f"{what}: {e.message}") from None


def _refuse_missing(missing: list[BlobDigest], names: dict[BlobDigest, str]) -> None:
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RefusedResult(
            f"{names.get(first, 'output')} blob {first} is not in the CAS with that size{more}"
        )


async def check_result(cas: ContentAddressableStorage, result: re_pb2.ActionResult, function: int) -> None:
    """Raise RefusedResult naming the first blob of `result` the CAS lacks (or a bad digest)."""
    names: dict[BlobDigest, str] = {}
    trees: list[tuple[BlobDigest, str]] = []
    for proto, what, inline in _named(result):
        d = _digest(function, proto, what)
        if inline is not None and not dg.matches(d, inline):
            raise RefusedResult(f"{what}: its inline contents do not match its digest {d}")
        names.setdefault(d, what)
        if what.endswith("(Tree)"):
            trees.append((d, what))
    _refuse_missing(await cas.find_missing(list(names)), names)
    if not trees:
        return
    total = sum(d.size for d, _ in trees)
    if total > MAX_TREE_BYTES:
        raise RefusedResult(
            f"output directory Trees total {total} bytes, above the {MAX_TREE_BYTES} bytes this server checks"
        )
    blobs = await cas.store.get_many([d for d, _ in trees if d.size])
    inside: dict[BlobDigest, str] = {}
    for d, what in trees:
        data = blobs.get(d, b"" if dg.is_empty(d) else None)
        if data is None:  # gone between the two calls
            _refuse_missing([d], names)
        tree = re_pb2.Tree()
        try:
            tree.ParseFromString(data)
        except DecodeError:
            raise RefusedResult(f"{what} blob {d} is not a valid build.bazel.remote.execution.v2.Tree") from None
        for directory in [tree.root, *tree.children]:
            for f in directory.files:
                fd = _digest(function, f.digest, f"file {f.name!r} in {what}")
                inside.setdefault(fd, f"file {f.name!r} in {what}")
    _refuse_missing(await cas.find_missing(list(inside)), inside)
