"""Container images as actions' root filesystems (platform property container-image=docker://...).

An ImageStore pulls an image from its registry (registry.py), verifies
every blob against its digest, applies the layers in order into one root
filesystem (unpack.py) and keeps it under DIR/rootfs/<manifest digest>,
bounded in total size: when over the bound, the least recently used images
that no running action holds are removed. One lock per image reference
makes concurrent actions asking for the same image wait for one pull; a
failed pull is remembered for FAIL_TTL seconds, so the actions queued
behind it fail at once with the same message instead of each pulling
again. A tag is resolved to a manifest digest at most every TAG_TTL
seconds; a digest reference needs the registry only the first time.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
import urllib.error
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from granary.worker.images.registry import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    ImageRef,
    PullError,
    Registry,
    parse_ref,
)
from granary.worker.images.unpack import LayerError, apply_layer
from granary.worker.paths import resolve_in_root

log = logging.getLogger("granary.worker.images")

PROPERTY = "container-image"
ANY = "docker://*"  # what a worker that runs container images advertises under PROPERTY
DEFAULT_MOUNT = "/work"  # where the input root is mounted when the image names no WorkingDir
TAG_TTL = 60.0
FAIL_TTL = 30.0
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
         "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def go_arch() -> str:
    m = platform.machine().lower()
    return _ARCH.get(m, m)


@dataclass
class Image:
    """An unpacked image: its root filesystem, where the input root goes, its environment."""

    ref: str
    digest: str
    rootfs: Path
    mount: str  # absolute path inside the image where the input root is mounted
    env: list[tuple[str, str]]
    size: int


@dataclass
class _Entry:
    image: Image
    users: int = 0
    used: float = field(default_factory=time.monotonic)


class ImageStore:
    """Pulled images of one worker (thread-safe)."""

    def __init__(self, directory: Path, max_bytes: int, insecure: tuple[str, ...] = (),
                 credentials: dict[str, tuple[str, str]] | None = None, os_name: str = "linux",
                 arch: str | None = None):
        self.dir = directory
        self.max_bytes = max_bytes
        self.insecure = set(insecure)
        self.credentials = credentials or {}
        self.os_name, self.arch = os_name, arch or go_arch()
        self.pulls = 0  # images downloaded and unpacked (for tests and logs)
        self._lock = threading.Lock()
        self._ref_locks: dict[str, threading.Lock] = {}
        self._digest_locks: dict[str, threading.Lock] = {}
        self._images: dict[str, _Entry] = {}  # manifest digest -> entry
        self._tags: dict[str, tuple[str, float]] = {}  # ref text -> (digest, when resolved)
        self._failed: dict[str, tuple[str, float]] = {}  # ref text -> (message, when)
        self._registries: dict[str, Registry] = {}
        shutil.rmtree(self.dir, ignore_errors=True)  # unpacked by an earlier process: sizes unknown, start clean
        (self.dir / "rootfs").mkdir(parents=True)
        (self.dir / "tmp").mkdir()
        for d in (self.dir, self.dir / "rootfs"):
            os.chmod(d, 0o711)  # traversable by the action uid, not listable

    # ---- use --------------------------------------------------------------------------

    def acquire(self, text: str) -> Image:
        """The image for a container-image value, pulled if needed; release() it after the action."""
        ref = parse_ref(text)
        with self._lock:
            lock = self._ref_locks.setdefault(ref.text, threading.Lock())
        with lock:
            with self._lock:
                failed = self._failed.get(ref.text)
                if failed and time.monotonic() - failed[1] < FAIL_TTL:
                    raise PullError(failed[0])
                digest = ref.digest or self._fresh_tag(ref.text)
                if digest and digest in self._images:
                    return self._hold(digest)
            try:
                image = self._pull(ref)
            except PullError as e:
                self._fail(ref, str(e))
            except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as e:
                self._fail(ref, _describe(e))
            with self._lock:  # _pull registered the image and holds it for us
                self._failed.pop(ref.text, None)
                if not ref.digest:
                    self._tags[ref.text] = (image.digest, time.monotonic())
            self._evict()
            return image

    def release(self, image: Image) -> None:
        with self._lock:
            entry = self._images.get(image.digest)
            if entry is not None:
                entry.users -= 1
                entry.used = time.monotonic()
        self._evict()

    def _hold(self, digest: str) -> Image:
        entry = self._images[digest]
        entry.users += 1
        entry.used = time.monotonic()
        return entry.image

    def _fresh_tag(self, text: str) -> str:
        hit = self._tags.get(text)
        return hit[0] if hit and time.monotonic() - hit[1] < TAG_TTL else ""

    def _fail(self, ref: ImageRef, why: str) -> None:
        message = f"container image {ref.text} could not be pulled: {why}"
        log.warning("%s", message)
        with self._lock:
            self._failed[ref.text] = (message, time.monotonic())
        raise PullError(message)

    def total(self) -> int:
        with self._lock:
            return sum(e.image.size for e in self._images.values())

    def _evict(self) -> None:
        """Drop least recently used idle images while over the size bound."""
        doomed: list[tuple[Image, Path]] = []
        with self._lock:
            total = sum(e.image.size for e in self._images.values())
            for digest, entry in sorted(self._images.items(), key=lambda kv: kv[1].used):
                if total <= self.max_bytes:
                    break
                if entry.users:
                    continue
                del self._images[digest]
                self._tags = {k: v for k, v in self._tags.items() if v[0] != digest}
                total -= entry.image.size
                # out of the way at once (a new pull of it may rename into the same place)
                gone = self.dir / "tmp" / f"evicted-{uuid.uuid4().hex}"
                os.rename(entry.image.rootfs.parent, gone)
                doomed.append((entry.image, gone))
        for image, gone in doomed:
            log.info("evicting container image %s (%d bytes)", image.ref, image.size)
            shutil.rmtree(gone, ignore_errors=True)

    # ---- pull -------------------------------------------------------------------------

    def _registry(self, host: str) -> Registry:
        with self._lock:
            reg = self._registries.get(host)
            if reg is None:
                reg = self._registries[host] = Registry(host, host in self.insecure, self.credentials.get(host))
            return reg

    def _pull(self, ref: ImageRef) -> Image:
        reg = self._registry(ref.host)
        kind, body, digest = reg.manifest(ref.repo, ref.reference)
        if kind in INDEX_TYPES:
            chosen = self._pick(ref, json.loads(body))
            kind, body, digest = reg.manifest(ref.repo, chosen)
        if kind not in MANIFEST_TYPES:
            raise PullError(f"unsupported manifest type {kind!r}")
        with self._lock:  # one build per digest, even for a tag and a digest naming it at once
            build_lock = self._digest_locks.setdefault(digest, threading.Lock())
        with build_lock:
            with self._lock:
                if digest in self._images:  # a tag moved to an image we have, or another ref pulled it
                    return self._hold(digest)
            image = self._build(reg, ref, body, digest)
            with self._lock:
                self._images[digest] = _Entry(image)
                return self._hold(digest)

    def _build(self, reg: Registry, ref: ImageRef, body: bytes, digest: str) -> Image:
        """Download and unpack the manifest's layers into DIR/rootfs/<digest>."""
        manifest = json.loads(body)
        final = self.dir / "rootfs" / digest.partition(":")[2]
        build = Path(tempfile.mkdtemp(prefix="pull-", dir=self.dir / "tmp"))
        try:
            root = build / "root"
            root.mkdir(mode=0o755)
            config = self._json_blob(reg, ref.repo, manifest["config"])
            cfg = config.get("config") or {}
            for layer in manifest.get("layers", []):
                blob = build / f"layer-{uuid.uuid4().hex}"
                with open(blob, "wb") as out:
                    reg.blob(ref.repo, layer["digest"], int(layer.get("size", -1)), out)
                try:
                    apply_layer(root, blob)
                except LayerError as e:
                    raise PullError(f"layer {layer['digest']}: {e}") from None
                blob.unlink()
            workdir = cfg.get("WorkingDir") or ""
            mount = workdir if workdir not in ("", "/") else DEFAULT_MOUNT
            for point in ("proc", "dev", "tmp", mount.strip("/")):  # bwrap cannot make them in a read-only /
                resolve_in_root(str(root), point, "mount point", create=True)
            env = [tuple(e.split("=", 1)) for e in cfg.get("Env") or [] if "=" in e]
            size = _du(root)
            os.chmod(root, 0o755)
            os.chmod(build, 0o711)  # the action uid passes through to the root filesystem
            shutil.rmtree(final, ignore_errors=True)
            os.rename(build, final)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        self.pulls += 1
        log.info("pulled container image %s (%s, %d bytes unpacked)", ref.text, digest, size)
        return Image(ref.text, digest, final / "root", "/" + mount.strip("/"), env, size)  # type: ignore[arg-type]

    def _pick(self, ref: ImageRef, index: dict) -> str:
        offered = []
        for m in index.get("manifests", []):
            p = m.get("platform") or {}
            offered.append(f"{p.get('os')}/{p.get('architecture')}")
            if p.get("os") == self.os_name and p.get("architecture") == self.arch:
                return m["digest"]
        raise PullError(f"the image index has no manifest for {self.os_name}/{self.arch}"
                        f" (it offers {', '.join(offered) or 'none'})")

    def _json_blob(self, reg: Registry, repo: str, desc: dict) -> dict:
        with tempfile.TemporaryFile(dir=self.dir / "tmp") as f:
            reg.blob(repo, desc["digest"], int(desc.get("size", -1)), f)  # type: ignore[arg-type]
            f.seek(0)
            return json.loads(f.read())


def _du(root: Path) -> int:
    total = 0
    for dirpath, dirs, files in os.walk(root):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason} from {e.url}"
    if isinstance(e, urllib.error.URLError):
        return f"registry unreachable: {e.reason}"
    return f"{type(e).__name__}: {e}"
