"""Path checks: names and relative paths that cannot leave the input root."""

from __future__ import annotations

import os
import posixpath
import stat

from granary.errors import InvalidArgument

MAX_SYMLINKS = 40  # as Linux's path resolution


def check_name(name: str, what: str) -> str:
    """A single path component from a Directory node: no separators, no '.', '..' or empty."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InvalidArgument(f"{what}: invalid name {name!r} (must be one path component)")
    return name


def check_relative(path: str, what: str) -> str:
    """A working directory: a relative path that stays inside the root.

    Returns it normalised ('' for the root itself). '..' is refused even when
    it would come back inside: a working directory is a plain downward path.
    """
    if "\0" in path:
        raise InvalidArgument(f"{what}: invalid path {path!r}")
    if path.startswith("/"):
        raise InvalidArgument(f"{what}: path {path!r} must be relative to the input root")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"{what}: path {path!r} must not contain '..'")
    return "/".join(parts)


def join_output(working_directory: str, path: str, what: str) -> str:
    """An output path (relative to the working directory) as a normalised path relative to the input root.

    '' is the input root itself. '.' names the working directory (REAPI: capture
    the whole working directory), and '..' may climb out of the working
    directory as long as it stays inside the input root: BuildStream asks for
    its install directory as '../../../buildstream-install'. Absolute paths
    and paths that climb above the input root are refused.
    """
    if "\0" in path:
        raise InvalidArgument(f"{what}: invalid path {path!r}")
    if path.startswith("/"):
        raise InvalidArgument(f"{what}: path {path!r} must be relative to the working directory")
    parts = [p for p in working_directory.split("/") if p]
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidArgument(
                    f"{what}: path {path!r} climbs out of the input root through '..'"
                    f" (working directory {working_directory or '.'!r})"
                )
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def symlink_stays_inside(link_rel: str, target: str) -> bool:
    """Whether a symlink at link_rel (relative to the root) pointing at target stays inside the root.

    Absolute targets are outside by definition; relative ones are resolved
    lexically from the link's directory, component by component, so
    'a/../../x' is caught even when it ends up back inside.
    """
    if not target or target.startswith("/") or "\0" in target:
        return False
    depth = len([p for p in posixpath.dirname(link_rel).split("/") if p])
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        else:
            depth += 1
    return True


def inside(root: str, path: str) -> bool:
    """Whether the real path of `path` (symlinks resolved) is within the real path of root."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root + os.sep)


def resolve_in_root(root: str, rel: str, what: str, create: bool = False, made: list[str] | None = None) -> str:
    """The host path of `rel` as a command chrooted into `root` sees it (for filesystem images).

    Symlinks are followed inside root only: an absolute target starts again
    from root, '..' stops at root. Every component before the last one that
    exists is a real directory under root, so the worker never follows a link
    out of it. With create, missing directories of `rel` itself are made, as
    `mkdir -p` in the image would; like it, a symlink whose target is missing
    is an error. Without create, resolution stops at the first missing name or
    non-directory, giving a path that lstat reports as absent.
    """
    todo = [(p, "") for p in rel.split("/") if p not in ("", ".")]  # (name, the link it comes from)
    done: list[str] = []
    links = 0
    while todo:
        part, via = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        path = os.path.join(root, *done, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                return os.path.join(root, *done, part, *(p for p, _ in todo))
            if via:
                raise InvalidArgument(f"{what}: {rel!r} goes through the symlink {via}, whose target is missing")
            os.mkdir(path)
            if made is not None:
                made.append(path)
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise InvalidArgument(f"{what}: {rel!r} has too many levels of symbolic links")
            target = os.readlink(path)
            link = f"{'/'.join([*done, part])!r} -> {target!r}"
            if target.startswith("/"):
                done = []
            todo = [(p, link) for p in target.split("/") if p not in ("", ".")] + todo
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            if not create:  # a path that cannot exist: lstat says so (ENOTDIR)
                return os.path.join(root, *done, part, *(p for p, _ in todo))
            raise InvalidArgument(
                f"{what}: {rel!r} goes through {'/'.join([*done, part])!r}, which is not a directory"
            )
        done.append(part)
    return os.path.join(root, *done)
