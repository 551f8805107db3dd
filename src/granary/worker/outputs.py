"""Collecting an action's outputs into an ActionResult and the blobs to upload.

Output paths are relative to the working directory; '.' is the working
directory itself (captured as a whole tree) and '..' may climb towards, never
above, the input root (see paths.join_output). Missing outputs are left
out (the client decides whether that is an error). Symlinks are reported as
symlinks, never followed; a path whose parent resolves outside the input
root is refused so a sandboxed action cannot make the worker read host files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from google.protobuf import timestamp_pb2

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.digest import BlobDigest
from granary.errors import FailedPrecondition
from granary.worker.paths import check_relative, inside, join_output, resolve_in_root
from granary.worker.remote_cas import to_proto

HASH_CHUNK = 1 << 20


@dataclass
class Collected:
    result: re_pb2.ActionResult = field(default_factory=re_pb2.ActionResult)
    blobs: dict[BlobDigest, Callable[[], BinaryIO]] = field(default_factory=dict)
    size: int = 0  # bytes of the output files (those in output directories included)
    over: bool = False  # size passed the collector's max_bytes: result and blobs are not to be used


def _open_path(path: str) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")


class _BytesOpener:
    def __init__(self, data: bytes):
        self.data = data

    def __call__(self) -> BinaryIO:
        import io

        return io.BytesIO(self.data)


def hash_file(function: int, path: str) -> BlobDigest:
    h = dg.new_hasher(function)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return BlobDigest(function, h.hexdigest(), size)


class Collector:
    def __init__(self, root: Path, function: int, node_properties: list[str] | None = None,
                 filesystem_image: bool = False, max_bytes: int | None = None):
        self.root = str(root)
        self.max_bytes = max_bytes
        self.function = function
        self.filesystem_image = filesystem_image
        self.want = set(node_properties or ())
        self.out = Collected()

    # ---- single nodes -------------------------------------------------------

    def add_bytes(self, data: bytes) -> BlobDigest:
        d = dg.compute(self.function, data)
        self.out.blobs[d] = _BytesOpener(data)
        return d

    def add_file(self, path: str) -> BlobDigest:
        d = hash_file(self.function, path)
        self.out.blobs[d] = _open_path(path)
        return d

    def _output_bytes(self, path: str, st: os.stat_result) -> BlobDigest:
        """An output file's digest, counted in out.size. Once the size is past max_bytes (the
        worker's --action-output-size) the rest is only counted, not hashed: the result is refused."""
        self.out.size += st.st_size
        if self.max_bytes is not None and self.out.size > self.max_bytes:
            self.out.over = True
        if self.out.over:
            return dg.compute(self.function, b"")
        return self.add_file(path)

    def _properties(self, st: os.stat_result) -> re_pb2.NodeProperties | None:
        if not self.want & {"mtime", "unix_mode"}:
            return None
        props = re_pb2.NodeProperties()
        if "mtime" in self.want:
            props.mtime.CopyFrom(timestamp_pb2.Timestamp(seconds=int(st.st_mtime), nanos=st.st_mtime_ns % 10**9))
        if "unix_mode" in self.want:
            props.unix_mode.value = stat.S_IMODE(st.st_mode)
        return props

    def _file_node(self, name: str, path: str, st: os.stat_result) -> re_pb2.FileNode:
        node = re_pb2.FileNode(name=name, digest=to_proto(self._output_bytes(path, st)),
                               is_executable=bool(st.st_mode & stat.S_IXUSR))
        props = self._properties(st)
        if props is not None:
            node.node_properties.CopyFrom(props)
        return node

    def directory(self, path: str, children: dict[BlobDigest, re_pb2.Directory]) -> re_pb2.Directory:
        """The Directory message of path (recursively), adding every child and file."""
        msg = re_pb2.Directory()
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            st = e.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                msg.symlinks.add(name=e.name, target=os.readlink(e.path))
            elif stat.S_ISDIR(st.st_mode):
                child = self.directory(e.path, children)
                blob = child.SerializeToString(deterministic=True)
                d = self.add_bytes(blob)
                children.setdefault(d, child)
                msg.directories.add(name=e.name, digest=to_proto(d))
            elif stat.S_ISREG(st.st_mode):
                msg.files.append(self._file_node(e.name, e.path, st))
            # sockets, fifos and devices have no REAPI form: left out
        return msg

    # ---- outputs ------------------------------------------------------------

    def _locate(self, working_directory: str, path: str) -> tuple[str, os.stat_result | None]:
        rel = join_output(working_directory, path, "output path")
        if self.filesystem_image:  # links resolve inside the image, as the command saw them
            parent, _, name = rel.rpartition("/")
            if path.split("/")[-1] in ("", ".", ".."):  # names a directory: the one the command saw
                full = resolve_in_root(self.root, rel, "output path")
            else:  # the last component is reported as it is (a symlink stays a symlink)
                full = os.path.join(resolve_in_root(self.root, parent, "output path"), name)
        else:
            full = os.path.join(self.root, rel) if rel else self.root
            if rel and not inside(self.root, os.path.dirname(full)):
                raise FailedPrecondition(f"output path {path!r} lies under a symlink pointing outside the input root")
        try:
            return full, os.lstat(full)
        except (FileNotFoundError, NotADirectoryError):
            return full, None

    def output_file(self, path: str, full: str, st: os.stat_result) -> None:
        f = self.out.result.output_files.add(path=path, digest=to_proto(self._output_bytes(full, st)),
                                             is_executable=bool(st.st_mode & stat.S_IXUSR))
        props = self._properties(st)
        if props is not None:
            f.node_properties.CopyFrom(props)

    def output_directory(self, path: str, full: str) -> None:
        children: dict[BlobDigest, re_pb2.Directory] = {}
        root = self.directory(full, children)
        root_digest = self.add_bytes(root.SerializeToString(deterministic=True))
        tree = re_pb2.Tree(root=root, children=list(children.values()))
        tree_digest = self.add_bytes(tree.SerializeToString(deterministic=True))
        self.out.result.output_directories.add(
            path=path, tree_digest=to_proto(tree_digest), root_directory_digest=to_proto(root_digest)
        )


def collect(root: Path, command: re_pb2.Command, function: int, filesystem_image: bool = False,
            max_bytes: int | None = None) -> Collected:
    """Outputs of a finished command, per the Command's output_paths (or legacy fields). Past
    max_bytes of output files, Collected.over is set and the rest is counted, not hashed."""
    wd = check_relative(command.working_directory, "working_directory")
    c = Collector(root, function, list(command.output_node_properties), filesystem_image, max_bytes)
    result = c.out.result
    if command.output_paths:
        for p in command.output_paths:
            full, st = c._locate(wd, p)
            if st is None:
                continue
            if stat.S_ISLNK(st.st_mode):
                result.output_symlinks.add(path=p, target=os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                c.output_directory(p, full)
            elif stat.S_ISREG(st.st_mode):
                c.output_file(p, full, st)
        return c.out
    for p in command.output_files:
        full, st = c._locate(wd, p)
        if st is None:
            continue
        if stat.S_ISLNK(st.st_mode):
            result.output_file_symlinks.add(path=p, target=os.readlink(full))
        elif stat.S_ISDIR(st.st_mode):
            raise FailedPrecondition(f"output file {p!r} is a directory")
        elif stat.S_ISREG(st.st_mode):
            c.output_file(p, full, st)
    for p in command.output_directories:
        full, st = c._locate(wd, p)
        if st is None:
            continue
        if stat.S_ISLNK(st.st_mode):
            result.output_directory_symlinks.add(path=p, target=os.readlink(full))
        elif stat.S_ISDIR(st.st_mode):
            c.output_directory(p, full)
        else:
            raise FailedPrecondition(f"output directory {p!r} is not a directory")
    return c.out


def output_parents(command: re_pb2.Command) -> list[str]:
    """Directories (relative to the input root) to create before running the command."""
    wd = check_relative(command.working_directory, "working_directory")
    parents: list[str] = []
    for p in [*command.output_paths, *command.output_files, *command.output_directories]:
        rel = join_output(wd, p, "output path")
        parent = os.path.dirname(rel)
        if parent:
            parents.append(parent)
    return list(dict.fromkeys(parents))
