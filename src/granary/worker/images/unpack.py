"""Applying an image layer (a tar, maybe gzip-compressed) to a root filesystem, safely.

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
layers. Both are applied before the layer's own files are written (a first
pass over the tar), so a layer may whiteout and recreate the same name.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path

from granary.errors import FailedPrecondition, InvalidArgument
from granary.worker.paths import resolve_in_root

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


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


def apply_layer(root: Path, layer: Path) -> None:
    """Apply the tar at `layer` on top of the root filesystem at `root`."""
    top = str(root)
    try:
        with _open(layer) as tar:
            members = tar.getmembers()
            for m in members:  # pass 1: whiteouts remove what lower layers put there
                rel = clean_name(m.name)
                base = rel.rpartition("/")[2]
                if base == OPAQUE:
                    d = resolve_in_root(top, rel.rpartition("/")[0], "whiteout")
                    if os.path.isdir(d) and not os.path.islink(d):
                        for entry in os.listdir(d):
                            _remove(os.path.join(d, entry))
                elif base.startswith(WHITEOUT):
                    head = rel.rpartition("/")[0]
                    target = (head + "/" if head else "") + base[len(WHITEOUT):]
                    if clean_name(target) and not target.endswith("/.."):
                        _remove(_parent(top, clean_name(target)))
            for m in members:  # pass 2: the layer's own entries
                rel = clean_name(m.name)
                base = rel.rpartition("/")[2]
                if not rel or base.startswith(WHITEOUT):
                    continue
                _extract(tar, m, top, rel)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise LayerError(f"layer cannot be unpacked: {type(e).__name__}: {e}") from None


def _extract(tar: tarfile.TarFile, m: tarfile.TarInfo, top: str, rel: str) -> None:
    dest = _parent(top, rel)
    mode = m.mode & 0o1777  # no setuid, no setgid
    if m.isdir():
        if os.path.isdir(dest) and not os.path.islink(dest):
            os.chmod(dest, mode | 0o700)
        else:
            _remove(dest)
            os.mkdir(dest, mode | 0o700)
        return
    _remove(dest)
    if m.issym():
        os.symlink(m.linkname, dest)
    elif m.islnk():
        source = resolve_in_root(top, clean_name(m.linkname), "hard link")
        if not os.path.isfile(source) or os.path.islink(source):
            raise LayerError(f"layer member {rel!r} is a hard link to {m.linkname!r}, not a file in the image")
        os.link(source, dest)
    elif m.isfile():
        src = tar.extractfile(m)
        assert src is not None
        with src, open(dest, "xb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.chmod(dest, mode)
    # character and block devices, fifos: skipped (the sandbox mounts its own /dev)
