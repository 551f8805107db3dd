"""Image layers (tars, maybe gzip-compressed): unpacked once, then assembled into root filesystems, safely.

Two steps, so that a layer shared by several images is unpacked once:

1. unpack_layer(blob, dest) reads the tar once. Each regular file's content
   goes to dest/f/N (N: the member's number, never a name from the tar), with
   its mode; the members (directories, symlinks, hard links, files, whiteouts)
   are listed in order in dest/index.json. Nothing of the tar's names becomes
   a path yet, so nothing in dest can point anywhere.
2. assemble(root, dest) replays that list onto a root filesystem, after the
   layers below it. Regular files are hard links to dest/f/N (one copy on
   disk however many images use the layer).

A layer comes from a registry, i.e. from anyone: no member may land outside
the root. Names are relative (no absolute path, no '..'); every parent
directory is resolved as a process chrooted into the root would see it
(paths.resolve_in_root: symlinks are followed inside the root only), so a
symlink made by an earlier member or layer never leads a write out of it.
Hard links must name a regular file inside the root. Device nodes and fifos
are skipped (the sandbox gives its own /dev), setuid/setgid bits are dropped
and ownership is not kept (files belong to the worker; the action reads them
through their mode bits).

Whiteouts (OCI image spec, layer.md): `DIR/.wh.NAME` removes NAME from the
lower layers, `DIR/.wh..wh..opq` empties DIR of everything from the lower
layers. Both are applied before the layer's own entries are written (a first
pass over the list), so a layer may whiteout and recreate the same name.

Files shared with the layer store are never written through: assembling only
ever removes a directory entry and makes a new one (a whiteout or a file of an
upper layer unlinks the lower layer's link, it does not open it); modes are set
on the layer's own copy when it is unpacked; and the root filesystem is shown to
actions read-only.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tarfile
import zlib
from pathlib import Path

from granary.errors import FailedPrecondition, InvalidArgument
from granary.worker.paths import resolve_in_root

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
INDEX = "index.json"
FILES = "f"


class LayerError(FailedPrecondition):
    """A layer that cannot be applied safely."""


def clean_name(name: str) -> str:
    """The member's path relative to the root ('' for the root itself); refuses escapes."""
    if name.startswith("/"):
        raise LayerError(f"layer member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"layer member {name!r} contains '..'")
    return "/".join(parts)


def _open(path: Path) -> tarfile.TarFile:
    with open(path, "rb") as f:
        magic = f.read(2)
    mode = "r:gz" if magic == b"\x1f\x8b" else "r:"
    try:
        return tarfile.open(path, mode)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise LayerError(f"layer is not a readable tar archive: {e}") from None


# ---- step 1: unpack a layer once -------------------------------------------------------------------


def unpack_layer(blob: Path, dest: Path) -> int:
    """Unpack the layer tar at `blob` into the new directory `dest`; returns its size on disk (bytes)."""
    (dest / FILES).mkdir(parents=True)
    files = str(dest / FILES)
    entries: list[list] = []
    size = 0
    try:
        with _open(blob) as tar:
            for m in tar:  # one pass, forward only: a gzip layer is decompressed once
                rel = clean_name(m.name)
                head, _, base = rel.rpartition("/")
                if base == OPAQUE:
                    entries.append(["opaque", head])
                elif base.startswith(WHITEOUT):
                    entries.append(["whiteout", clean_name((head + "/" if head else "") + base[len(WHITEOUT):])])
                elif not rel:
                    continue
                elif m.isdir():
                    entries.append(["dir", rel, m.mode & 0o1777])
                elif m.issym():
                    entries.append(["symlink", rel, m.linkname])
                elif m.islnk():
                    entries.append(["link", rel, clean_name(m.linkname)])
                elif m.isfile():
                    n = len(entries)
                    src = tar.extractfile(m)
                    assert src is not None
                    with src, open(f"{files}/{n}", "xb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                        os.fchmod(out.fileno(), m.mode & 0o1777)  # no setuid, no setgid
                        out.flush()
                        size += os.fstat(out.fileno()).st_blocks * 512
                    entries.append(["file", rel, n])
                # character and block devices, fifos: skipped (the sandbox mounts its own /dev)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise LayerError(f"layer cannot be unpacked: {type(e).__name__}: {e}") from None
    index = dest / INDEX
    index.write_text(json.dumps(entries, separators=(",", ":")))
    return size + os.lstat(index).st_blocks * 512


# ---- step 2: assemble root filesystems from unpacked layers ----------------------------------------


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _parent(root: str, rel: str) -> str:
    """The host path of rel's parent directory inside root (made if missing), plus rel's name."""
    head, _, name = rel.rpartition("/")
    try:
        parent = resolve_in_root(root, head, "layer member", create=True) if head else root
    except (InvalidArgument, OSError) as e:
        raise LayerError(f"layer member {rel!r}: its directory cannot be made inside the image: {e}") from None
    if not os.path.isdir(parent) or os.path.islink(parent):
        raise LayerError(f"layer member {rel!r}: its parent is not a directory in the image")
    return os.path.join(parent, name)


def assemble(root: Path, layer: Path) -> int:
    """Apply the unpacked layer at `layer` on top of the root filesystem at `root`.

    Returns the bytes copied rather than linked (0 unless the filesystem refused a hard link)."""
    top = str(root)
    entries = json.loads((layer / INDEX).read_text())
    files = str(layer / FILES)
    copied = 0
    try:
        for kind, rel, *_ in entries:  # pass 1: whiteouts remove what lower layers put there
            if kind == "opaque":
                d = resolve_in_root(top, rel, "whiteout")
                if os.path.isdir(d) and not os.path.islink(d):
                    for entry in os.listdir(d):
                        _remove(os.path.join(d, entry))
            elif kind == "whiteout" and rel:
                _remove(_parent(top, rel))
        for kind, rel, arg in (e for e in entries if e[0] not in ("opaque", "whiteout")):  # pass 2
            dest = _parent(top, rel)
            if kind == "dir":
                if os.path.isdir(dest) and not os.path.islink(dest):
                    os.chmod(dest, arg | 0o700)  # a directory of this root filesystem's own
                else:
                    _remove(dest)
                    os.mkdir(dest, arg | 0o700)
                continue
            _remove(dest)
            if kind == "symlink":
                os.symlink(arg, dest)
            elif kind == "link":
                source = resolve_in_root(top, arg, "hard link")
                if not os.path.isfile(source) or os.path.islink(source):
                    raise LayerError(f"layer member {rel!r} is a hard link to {arg!r}, not a file in the image")
                copied += _link(source, dest)
            elif kind == "file":
                copied += _link(f"{files}/{arg}", dest)
    except InvalidArgument as e:
        raise LayerError(str(e)) from None
    except OSError as e:
        raise LayerError(f"layer cannot be applied: {type(e).__name__}: {e}") from None
    return copied


def _link(source: str, dest: str) -> int:
    """Hard link source at dest; a copy when the filesystem refuses (too many links): its size."""
    try:
        os.link(source, dest)
        return 0
    except OSError as e:
        if e.errno not in (errno.EMLINK, errno.EXDEV, errno.EPERM):
            raise
    shutil.copy2(source, dest)
    return os.lstat(dest).st_blocks * 512
