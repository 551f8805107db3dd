"""Fetching an input tree and materialising it from the local CAS.

Every Directory is checked before anything touches the disk: names are single
components, unique within their directory, and symlinks stay inside the
input root: relative targets that never climb above it, except in a
filesystem image, where every target is read with the image as '/'. Before
that, the tree is measured: a few KB of Directory messages that list the same
child many times expand to millions of paths, so a tree whose expanded paths
or depth exceed the worker's InputLimits is refused before anything is
built (counted over the distinct directories, each once).

Files are hardlinked from the cache (read-only) when the action runs as
another uid than the worker, who owns the cache: the action can neither
write nor chmod them. When it runs as the worker's own uid it could chmod a
hardlink and rewrite the cached bytes for later actions, so files are then
copied (a reflink where the filesystem can). Directories are created (owned
by the action uid), symlinks come last; a final check resolves every symlink
on disk (host-tools roots).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.digest import BlobDigest
from granary.errors import InvalidArgument
from granary.worker.input_limits import DEFAULT_MAX_DEPTH, DEFAULT_MAX_PATHS
from granary.worker.local_cas import EXECUTABLE, READ_ONLY, LocalCas
from granary.worker.paths import check_name, inside, symlink_stays_inside
from granary.worker.remote_cas import MissingBlobs, RemoteCas, from_proto

FETCH_THREADS = 4


@dataclass(frozen=True)
class InputLimits:
    """Bounds of an input tree, checked before anything is built."""

    max_paths: int = DEFAULT_MAX_PATHS  # files, symlinks and directories, counted as the tree expands
    max_depth: int = DEFAULT_MAX_DEPTH  # directories from the root to the deepest one


@dataclass
class Layout:
    """What an input root holds, as paths relative to it."""

    directories: list[str] = field(default_factory=list)
    files: list[tuple[str, BlobDigest, bool]] = field(default_factory=list)  # path, digest, executable
    symlinks: list[tuple[str, str]] = field(default_factory=list)  # path, target
    filesystem_image: bool = False  # run with the input root as '/' (see is_filesystem_image)


def _too_deep(root: BlobDigest, depth: int, limits: InputLimits) -> InvalidArgument:
    return InvalidArgument(f"input tree {root} is more than {limits.max_depth} directories deep, above this"
                           f" worker's bound (--max-input-depth={limits.max_depth})")


def _too_many(root: BlobDigest, count: int, limits: InputLimits, what: str = "paths") -> InvalidArgument:
    return InvalidArgument(f"input tree {root} has {count} {what}, above this worker's bound of"
                           f" {limits.max_paths} (--max-input-paths={limits.max_paths})")


def fetch_tree(remote: RemoteCas, function: int, root: BlobDigest,
               limits: InputLimits = InputLimits()) -> dict[BlobDigest, re_pb2.Directory]:
    """All distinct Directory messages of a tree, within limits.

    One GetTree call brings the whole tree (one round trip instead of one per level: an input root
    of a Bazel action is a chain of eight or so directories, new for each action); whatever it did
    not bring (a server without GetTree, or directories uploaded in a non-canonical encoding, which
    GetTree cannot name) is fetched level by level in batches.
    """
    known: dict[BlobDigest, bytes] = {}
    if not dg.is_empty(root) and remote.memo.get(root) is None:
        known, more = remote.get_tree(root, limits.max_paths)
        if more:
            raise _too_many(root, len(known), limits, "distinct directories or more")
    tree: dict[BlobDigest, re_pb2.Directory] = {}
    level = [root]
    depth = 0
    while level:
        if depth > limits.max_depth:
            raise _too_deep(root, depth, limits)
        if len(tree) + len(level) > limits.max_paths:
            raise _too_many(root, len(tree) + len(level), limits, "distinct directories or more")
        depth += 1
        unknown = [d for d in level if d not in known]
        blobs = remote.read_small(unknown) if unknown else {}
        nxt: list[BlobDigest] = []
        for d in level:
            msg = re_pb2.Directory()
            try:
                msg.ParseFromString(known[d] if d in known else blobs[d])
            except DecodeError:
                raise InvalidArgument(f"input directory {d} is not a valid Directory message") from None
            tree[d] = msg
            for child in msg.directories:
                cd = from_proto(function, child.digest)
                if cd not in tree and cd not in nxt:
                    nxt.append(cd)
        level = [d for d in dict.fromkeys(nxt) if d not in tree]
    return tree


def check_size(tree: dict[BlobDigest, re_pb2.Directory], function: int, root: BlobDigest,
               limits: InputLimits) -> int:
    """The number of paths the tree expands to (each distinct directory counted once, memoised)."""
    counts: dict[BlobDigest, int] = {}
    stack: list[tuple[BlobDigest, bool]] = [(root, False)]
    open_: set[BlobDigest] = set()
    while stack:
        d, children_done = stack.pop()
        if d in counts:
            continue
        msg = tree[d]
        kids = [from_proto(function, c.digest) for c in msg.directories]
        if not children_done:
            if d in open_:
                raise InvalidArgument(f"input tree {root} contains itself through directory {d}")
            open_.add(d)
            stack.append((d, True))
            stack.extend((k, False) for k in kids if k not in counts)
            continue
        open_.discard(d)
        counts[d] = len(msg.files) + len(msg.symlinks) + len(kids) + sum(counts[k] for k in kids)
    total = counts[root]
    if total > limits.max_paths:
        raise _too_many(root, total, limits)
    return total


MOUNT_POINTS = ("dev", "proc")


def is_filesystem_image(tree: dict[BlobDigest, re_pb2.Directory], function: int, root: BlobDigest) -> bool:
    """Whether an input root is a whole filesystem, to be run as '/' (see sandbox.py).

    BuildStream (like every client of buildbox-run-bubblewrap) stages a
    complete sysroot and adds the empty directories dev, proc and tmp at its
    top for the runner to mount /dev and /proc on. Empty dev *and* proc mount
    points are that declaration; a Bazel input root only holds directories
    that lead to inputs, so it never has them.
    """
    children = {c.name: from_proto(function, c.digest) for c in tree[root].directories}
    for name in MOUNT_POINTS:
        if name not in children:
            return False
        d = tree[children[name]]
        if d.files or d.directories or d.symlinks:
            return False
    return True


class _Names:
    """Names of one directory: single components, each used once."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.where = f"input directory {prefix or '.'!r}"
        self.seen: set[str] = set()

    def add(self, name: str) -> str:
        check_name(name, self.where)
        if name in self.seen:
            raise InvalidArgument(f"{self.where}: name {name!r} appears more than once")
        self.seen.add(name)
        return f"{self.prefix}/{name}" if self.prefix else name


def layout(tree: dict[BlobDigest, re_pb2.Directory], function: int, root: BlobDigest,
           limits: InputLimits = InputLimits()) -> Layout:
    """Walk the tree into a Layout, refusing anything that could escape the root.

    In a filesystem image a symlink is read by the sandboxed command with the
    image as '/': an absolute target or a '..' past the top stays inside (as
    in a chroot), and the worker resolves such links the same way when it
    prepares directories and collects outputs (paths.resolve_in_root). So only
    the target's form is checked there.
    """
    out = Layout(filesystem_image=is_filesystem_image(tree, function, root))
    stack: list[tuple[str, BlobDigest, int]] = [("", root, 0)]
    while stack:
        prefix, d, depth = stack.pop()
        if depth > limits.max_depth:
            raise _too_deep(root, depth, limits)
        msg = tree[d]
        names = _Names(prefix)
        for f in msg.files:
            out.files.append((names.add(f.name), from_proto(function, f.digest), f.is_executable))
        for s in msg.symlinks:
            path = names.add(s.name)
            if out.filesystem_image:
                if not s.target or "\0" in s.target:
                    raise InvalidArgument(f"input symlink {path!r} has an invalid target {s.target!r}")
            elif not symlink_stays_inside(path, s.target):
                raise InvalidArgument(f"input symlink {path!r} -> {s.target!r} points outside the input root")
            out.symlinks.append((path, s.target))
        for c in msg.directories:
            path = names.add(c.name)
            out.directories.append(path)
            stack.append((path, from_proto(function, c.digest), depth + 1))
    return out


def _fetch(remote: RemoteCas, local: LocalCas, wanted: dict[BlobDigest, bool]) -> None:
    """Download blobs into the cache, each in the mode wanted (executable or not)."""
    groups, large = remote.batches(wanted)
    missing: list[BlobDigest] = []

    def batch(group: list[BlobDigest]) -> None:
        try:
            for d, data in remote.batch_read(group):
                local.put_bytes(d, data, wanted[d])
        except MissingBlobs as e:
            missing.extend(e.digests)

    def stream(d: BlobDigest) -> None:
        try:
            local.put_stream(d, lambda f: remote.stream_read(d, f), wanted[d])
        except MissingBlobs as e:
            missing.extend(e.digests)

    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for result in [pool.submit(batch, g) for g in groups] + [pool.submit(stream, d) for d in large]:
            result.result()
    if missing:
        raise MissingBlobs(missing, "input file")


def ensure_cached(remote: RemoteCas, local: LocalCas, needed: set[tuple[BlobDigest, bool]]) -> None:
    """Make every (digest, executable) entry present in the cache (the caller pins them)."""
    fetch: dict[BlobDigest, bool] = {}
    twins: list[tuple[BlobDigest, bool]] = []
    for d, x in sorted(needed, key=lambda n: (n[0], not n[1])):
        if local.has(d, x):
            continue
        if local.has(d, not x) or d in fetch:
            twins.append((d, x))
        else:
            fetch[d] = x
    _fetch(remote, local, fetch)
    for d, x in twins:
        if not local.make_variant(d, x):
            _fetch(remote, local, {d: x})


def _files(root: Path, lay: Layout) -> Iterator[tuple[str, BlobDigest, bool]]:
    for rel, d, x in lay.files:
        yield os.path.join(root, rel), d, x


@dataclass(frozen=True)
class Staging:
    """How an input root is built for the uid that will run in it."""

    owner: tuple[int, int] | None = None  # uid, gid owning its directories (None: the worker's)
    copy: bool = False  # private copies instead of hardlinks (the action runs as the cache's owner)
    limits: InputLimits = InputLimits()


def materialise(remote: RemoteCas, local: LocalCas, function: int, root_digest: BlobDigest, dest: Path,
                staging: Staging = Staging()) -> Layout:
    """Build the input root at dest (an existing empty directory)."""
    tree = fetch_tree(remote, function, root_digest, staging.limits)
    check_size(tree, function, root_digest, staging.limits)
    lay = layout(tree, function, root_digest, staging.limits)
    if staging.owner is not None:
        os.chown(dest, *staging.owner)
    for rel in lay.directories:
        path = os.path.join(dest, rel)
        os.mkdir(path)
        if staging.owner is not None:
            os.chown(path, *staging.owner)
    needed = {(d, x) for _, d, x in lay.files if not dg.is_empty(d)}
    with local.pinned(needed):
        ensure_cached(remote, local, needed)
        retry: list[tuple[str, BlobDigest, bool]] = []
        for path, d, x in _files(dest, lay):
            if dg.is_empty(d):
                with open(path, "xb"):
                    pass
                os.chmod(path, EXECUTABLE if x else READ_ONLY)
            elif staging.copy:
                if not local.copy_to(d, x, path):
                    retry.append((path, d, x))
            elif not local.link_to(d, x, path):
                retry.append((path, d, x))
        if retry:  # evicted by another process between fetch and link: once more
            ensure_cached(remote, local, {(d, x) for _, d, x in retry})
            for path, d, x in retry:
                if not (local.copy_to(d, x, path) if staging.copy else local.link_to(d, x, path)):
                    raise MissingBlobs([d], "input file (evicted while materialising)")
    for rel, target in lay.symlinks:
        os.symlink(target, os.path.join(dest, rel))
    for rel, target in [] if lay.filesystem_image else lay.symlinks:
        if not inside(str(dest), os.path.join(dest, rel)):
            raise InvalidArgument(f"input symlink {rel!r} -> {target!r} resolves outside the input root")
    return lay
