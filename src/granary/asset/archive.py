"""Unpacking a downloaded archive (tar, tar.gz, tar.xz, tar.bz2, zip) into REAPI Directory protos.

Runs in a thread: the archive is read member by member with tarfile/zipfile, and each member is
written by this module itself (never extractall) into a scratch directory, hashed on the way. The
whole archive is refused (ArchiveRefused: INVALID_ARGUMENT, which clients do not retry) when a member:

- has an absolute name, a `..` component, a NUL, or would be written through a symlink;
- is a symlink whose target is absolute or leaves the root (resolved against the link's directory);
- is a hard link to something not unpacked before it, or a device/FIFO;
- would pass the limits: entries (`max_files`), unpacked bytes (`max_size`) or unpacked bytes per
  archive byte (`max_ratio`, against decompression bombs).

The result lists the files (digest, path) to upload and the Directory messages, children first.
"""

from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.digest import BlobDigest
from granary.errors import InvalidArgument

CHUNK = 1 << 20


class ArchiveRefused(InvalidArgument):
    """The archive is unsafe or too large to unpack; the message names the member and the rule."""


@dataclass
class Limits:
    max_files: int
    max_size: int
    max_ratio: int


@dataclass
class Tree:
    root: BlobDigest
    files: dict[BlobDigest, Path] = field(default_factory=dict)  # one path per distinct content
    directories: list[tuple[BlobDigest, bytes]] = field(default_factory=list)


def detect(path: Path, uri: str, resource_type_format: str) -> str:
    """The archive format: from the file's first bytes, else resource_type, else the URI's ending."""
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "tar.xz"
    if head.startswith(b"BZh"):
        return "tar.bz2"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if resource_type_format:
        return resource_type_format
    name = uri.split("?", 1)[0].lower()
    for ending, fmt in ((".zip", "zip"), (".tar", "tar")):
        if name.endswith(ending):
            return fmt
    raise ArchiveRefused(f"{uri}: not a tar, tar.gz, tar.xz, tar.bz2 or zip archive")


class _Unpacker:
    def __init__(self, root: Path, function: int, limits: Limits, archive_size: int, uri: str):
        self.root = root
        self.function = function
        self.limits = limits
        self.archive_size = max(archive_size, 1)
        self.uri = uri
        self.entries = 0
        self.total = 0
        self.digests: dict[str, BlobDigest] = {}  # relative file path -> digest

    def refuse(self, member: str, why: str) -> ArchiveRefused:
        return ArchiveRefused(f"{self.uri}: archive member {member!r} {why}; archive refused")

    def clean(self, name: str) -> str:
        """The member's path relative to the root ('' for the root itself), or refused."""
        if "\x00" in name:
            raise self.refuse(name, "has a NUL in its name")
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise self.refuse(name, "has an absolute path")
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(name, "has a '..' component (it would leave the archive's root)")
        return "/".join(parts)

    def count(self, member: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise self.refuse(member, f"is past remote_asset.archive_max_files ({self.limits.max_files} entries)")

    def grow(self, member: str, n: int) -> None:
        self.total += n
        if self.total > self.limits.max_size:
            raise self.refuse(member, f"takes the unpacked size past remote_asset.archive_max_size"
                                      f" ({self.limits.max_size} bytes)")
        if self.total > self.limits.max_ratio * self.archive_size:
            raise self.refuse(member, f"takes the unpacked size past {self.limits.max_ratio} times the archive's"
                                      f" {self.archive_size} bytes (remote_asset.archive_max_ratio)")

    def parent(self, rel: str, member: str) -> Path:
        """Create the directories above `rel` (never through a symlink); -> the parent path."""
        here = self.root
        for part in rel.split("/")[:-1]:
            here = here / part
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                os.mkdir(here)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise self.refuse(member, f"would be written through the symlink {str(here.relative_to(self.root))!r}")
            if not stat.S_ISDIR(st.st_mode):
                raise self.refuse(member, f"needs {str(here.relative_to(self.root))!r} to be a directory")
        return here

    def _clear(self, path: Path, member: str) -> None:
        """A later member of the same name replaces an earlier file or link (as tar does)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise self.refuse(member, "replaces a directory")
        os.unlink(path)
        self.digests.pop(str(path.relative_to(self.root)), None)

    def directory(self, name: str) -> None:
        rel = self.clean(name)
        self.count(name)
        if not rel:
            return
        path = self.parent(rel, name) / rel.rsplit("/", 1)[-1]
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise self.refuse(name, "is a directory where another member is not")

    def file(self, name: str, source: IO[bytes], executable: bool) -> None:
        rel = self.clean(name)
        if not rel:
            raise self.refuse(name, "is a file at the archive's root path")
        self.count(name)
        path = self.parent(rel, name) / rel.rsplit("/", 1)[-1]
        self._clear(path, name)
        hasher = dg.new_hasher(self.function)
        size = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if executable else 0o644)
        try:
            while True:
                chunk = source.read(CHUNK)
                if not chunk:
                    break
                self.grow(name, len(chunk))
                size += len(chunk)
                hasher.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        self.digests[rel] = BlobDigest(self.function, hasher.hexdigest(), size)

    def symlink(self, name: str, target: str) -> None:
        rel = self.clean(name)
        if not rel:
            raise self.refuse(name, "is a symlink at the archive's root path")
        self.count(name)
        if not target or target.startswith("/") or "\x00" in target:
            raise self.refuse(name, f"is a symlink to {target!r}, which is absolute or empty")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
        if resolved == ".." or resolved.startswith("../"):
            raise self.refuse(name, f"is a symlink to {target!r}, which leaves the archive's root")
        path = self.parent(rel, name) / rel.rsplit("/", 1)[-1]
        self._clear(path, name)
        os.symlink(target, path)

    def hardlink(self, name: str, target: str, executable: bool) -> None:
        src_rel = self.clean(target)
        src = self.root / src_rel if src_rel else None
        if src is None or src_rel not in self.digests:
            raise self.refuse(name, f"is a hard link to {target!r}, which is not a file unpacked before it")
        with src.open("rb") as f:
            self.file(name, f, executable)


def _unpack_tar(u: _Unpacker, path: Path, fmt: str) -> None:
    mode = {"tar": "r:", "tar.gz": "r:gz", "tar.xz": "r:xz", "tar.bz2": "r:bz2"}[fmt]
    with tarfile.open(path, mode) as tar:
        for m in tar:
            if m.isdir():
                u.directory(m.name)
            elif m.isreg():
                source = tar.extractfile(m)
                assert source is not None
                u.file(m.name, source, bool(m.mode & 0o100))
            elif m.issym():
                u.symlink(m.name, m.linkname)
            elif m.islnk():
                u.hardlink(m.name, m.linkname, bool(m.mode & 0o100))
            else:
                raise u.refuse(m.name, "is a device, FIFO or other special file")
            tar.members = []  # tarfile keeps every member otherwise: memory grows with the entry count


def _unpack_zip(u: _Unpacker, path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            mode = info.external_attr >> 16
            if info.is_dir():
                u.directory(info.filename)
            elif stat.S_ISLNK(mode):
                if info.file_size > 4096:
                    raise u.refuse(info.filename, "is a symlink with a target longer than 4096 bytes")
                u.symlink(info.filename, z.read(info).decode("utf-8", "surrogateescape"))
            else:
                with z.open(info) as source:
                    u.file(info.filename, source, bool(mode & 0o100))


def unpack(path: Path, fmt: str, scratch: Path, function: int, limits: Limits, uri: str) -> Tree:
    """Unpack the archive at `path` into `scratch` (an empty directory) and describe it as a tree."""
    u = _Unpacker(scratch, function, limits, path.stat().st_size, uri)
    try:
        if fmt == "zip":
            _unpack_zip(u, path)
        else:
            _unpack_tar(u, path, fmt)
    except (
        tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile, lzma.LZMAError, zlib.error, ValueError,
        NotADirectoryError, IsADirectoryError, FileExistsError,
    ) as e:  # a broken archive; other OSErrors (a full disk) are the server's and propagate
        raise ArchiveRefused(f"{uri}: cannot unpack as {fmt}: {type(e).__name__}: {e}") from None
    tree = Tree(root=dg.empty(function))
    tree.root = _describe(u, scratch, "", tree)
    return tree


def _describe(u: _Unpacker, directory: Path, rel: str, tree: Tree) -> BlobDigest:
    msg = re_pb2.Directory()
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name.encode())
    for e in entries:
        child = f"{rel}/{e.name}" if rel else e.name
        st = e.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            msg.symlinks.add(name=e.name, target=os.readlink(e.path))
        elif stat.S_ISDIR(st.st_mode):
            d = _describe(u, Path(e.path), child, tree)
            msg.directories.add(name=e.name, digest=re_pb2.Digest(hash=d.hash, size_bytes=d.size))
        else:
            d = u.digests[child]
            tree.files.setdefault(d, Path(e.path))
            msg.files.add(
                name=e.name,
                digest=re_pb2.Digest(hash=d.hash, size_bytes=d.size),
                is_executable=bool(st.st_mode & 0o100),
            )
    data = msg.SerializeToString(deterministic=True)
    digest = dg.compute(u.function, data)
    tree.directories.append((digest, data))
    return digest
