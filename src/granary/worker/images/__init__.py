"""Container images as actions' root filesystems (platform property container-image=docker://...).

An ImageStore pulls an image from its registry (registry.py), verifies
every blob against its digest as it streams in, and keeps two kinds of
things under its directory DIR, both named by digest:

- layers: DIR/layers/<layer digest>/, each layer downloaded, verified and
  unpacked once (unpack.unpack_layer: its files' contents and the list of
  its members), whichever images use it;
- images: DIR/rootfs/<manifest digest>/root, one root filesystem per image,
  assembled from its layers in order with whiteouts applied
  (unpack.assemble). Its regular files are hard links to the layers' files,
  so a second image on the same base layers costs the registry nothing for
  them, and on disk only its own directories, symlinks and upper layers.

Hard links share inodes, so nothing may write through them: assembling only
removes and makes directory entries (an upper layer's file or whiteout
unlinks the lower layer's link), a file's mode is set once when its layer is
unpacked, and actions see the root filesystem read-only. Keeping compressed
blobs and unpacking them per image would be simpler but would unpack (and
store) a shared base once per image.

Everything is bounded together by the size bound: the total is the images'
own bytes plus the layers' bytes, each counted once. When over it, the least
recently used of the idle images (no running action holds them) and the
unreferenced layers (no cached image is built from them, none is being
built from them) are removed, oldest first, until the total fits. A layer an
image is built from cannot go before the image: its files are that image's
files. An image in use is never removed, so the bound can be exceeded while
actions hold more than it.

One lock per image reference makes concurrent actions asking for the same
image wait for one pull, and one lock per layer digest makes images sharing
a layer fetch it once even when pulled at the same moment. A failed pull is
remembered for FAIL_TTL seconds, so the actions queued behind it fail at once
with the same message instead of each pulling again. A tag is resolved to a
manifest digest at most every TAG_TTL seconds; a digest reference needs the
registry only the first time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
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
from granary.worker.images.unpack import LayerError, assemble, unpack_layer
from granary.worker.paths import resolve_in_root
from granary.worker.platform import cpu

log = logging.getLogger("granary.worker.images")

PROPERTY = "container-image"
ANY = "docker://*"  # what a worker that runs container images advertises under PROPERTY
DEFAULT_MOUNT = "/work"  # where the input root is mounted when the image names no WorkingDir
TAG_TTL = 60.0
FAIL_TTL = 30.0


def go_arch() -> str:
    """This machine's architecture as image indexes name it (amd64, arm64, ...)."""
    return cpu()[1]


@dataclass
class Image:
    """An assembled image: its root filesystem, where the input root goes, its environment."""

    ref: str
    digest: str
    rootfs: Path
    mount: str  # absolute path inside the image where the input root is mounted
    env: list[tuple[str, str]]
    size: int  # bytes of its own (directories, symlinks; not the layers' files)
    layers: tuple[str, ...] = ()  # layer digests, bottom first


@dataclass
class _Entry:
    image: Image
    users: int = 0
    used: float = field(default_factory=time.monotonic)


@dataclass
class _Layer:
    digest: str
    path: Path
    size: int
    refs: int = 0  # cached images assembled from it (one per occurrence in their manifests)
    users: int = 0  # images being assembled from it right now
    used: float = field(default_factory=time.monotonic)


class ImageStore:
    """Pulled images and their layers, for one worker (thread-safe)."""

    def __init__(self, directory: Path, max_bytes: int, insecure: tuple[str, ...] = (),
                 credentials: dict[str, tuple[str, str]] | None = None, os_name: str = "linux",
                 arch: str | None = None):
        self.dir = directory
        self.max_bytes = max_bytes
        self.insecure = set(insecure)
        self.credentials = credentials or {}
        self.os_name, self.arch = os_name, arch or go_arch()
        self.pulls = 0  # images assembled (for tests and logs)
        self.layer_pulls = 0  # layers downloaded and unpacked
        self._lock = threading.Lock()
        self._ref_locks: dict[str, threading.Lock] = {}
        self._digest_locks: dict[str, threading.Lock] = {}
        self._layer_locks: dict[str, threading.Lock] = {}
        self._images: dict[str, _Entry] = {}  # manifest digest -> entry
        self._layers: dict[str, _Layer] = {}  # layer digest -> layer
        self._tags: dict[str, tuple[str, float]] = {}  # ref text -> (digest, when resolved)
        self._failed: dict[str, tuple[str, float]] = {}  # ref text -> (message, when)
        self._registries: dict[str, Registry] = {}
        shutil.rmtree(self.dir, ignore_errors=True)  # unpacked by an earlier process: sizes unknown, start clean
        for sub in ("rootfs", "layers", "tmp"):
            (self.dir / sub).mkdir(parents=True)
        for d in (self.dir, self.dir / "rootfs"):
            os.chmod(d, 0o711)  # traversable by the action uid, not listable
        os.chmod(self.dir / "layers", 0o700)  # reached by actions only through the root filesystems' links

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
                self._touch(entry)
        self._evict()

    def _hold(self, digest: str) -> Image:
        entry = self._images[digest]
        entry.users += 1
        self._touch(entry)
        return entry.image

    def _touch(self, entry: _Entry) -> None:
        """Mark an image used now, and its layers with it (they go after it, not before)."""
        entry.used = now = time.monotonic()
        for d in entry.image.layers:
            layer = self._layers.get(d)
            if layer is not None:
                layer.used = now

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
        """Bytes on disk: the images' own plus every cached layer's, each once."""
        with self._lock:
            return self._total()

    def _total(self) -> int:
        return sum(e.image.size for e in self._images.values()) + sum(x.size for x in self._layers.values())

    def layers(self) -> dict[str, int]:
        """Cached layers: digest -> how many cached images are built from it."""
        with self._lock:
            return {d: x.refs for d, x in self._layers.items()}

    def _evict(self) -> None:
        """Drop the least recently used idle images and unreferenced layers while over the size bound."""
        doomed: list[tuple[str, int, Path]] = []
        with self._lock:
            total = self._total()
            while total > self.max_bytes:
                idle = [(e.used, "image", d) for d, e in self._images.items() if not e.users]
                idle += [(x.used, "layer", d) for d, x in self._layers.items() if not x.refs and not x.users]
                if not idle:
                    break  # everything left is in use
                _, kind, digest = min(idle)
                # out of the way at once (a new pull of it may rename into the same place)
                gone = self.dir / "tmp" / f"evicted-{uuid.uuid4().hex}"
                if kind == "image":
                    entry = self._images.pop(digest)
                    self._tags = {k: v for k, v in self._tags.items() if v[0] != digest}
                    for d in entry.image.layers:
                        self._layers[d].refs -= 1
                    total -= entry.image.size
                    os.rename(entry.image.rootfs.parent, gone)
                    doomed.append((f"container image {entry.image.ref}", entry.image.size, gone))
                else:
                    layer = self._layers.pop(digest)
                    total -= layer.size
                    os.rename(layer.path, gone)
                    doomed.append((f"image layer {digest}", layer.size, gone))
        for what, size, gone in doomed:
            log.info("evicting %s (%d bytes)", what, size)
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
            manifest = json.loads(body)
            held: list[_Layer] = []
            try:
                for desc in manifest.get("layers", []):
                    held.append(self._layer(reg, ref.repo, desc))
                image = self._build(reg, ref, manifest, digest, held)
                with self._lock:
                    for layer in held:
                        layer.refs += 1
                    self._images[digest] = _Entry(image)
                    return self._hold(digest)
            finally:
                with self._lock:
                    for layer in held:
                        layer.users -= 1

    def _layer(self, reg: Registry, repo: str, desc: dict) -> _Layer:
        """The unpacked layer for a manifest's layer descriptor, downloaded if not cached; held for a build."""
        digest = str(desc["digest"])
        with self._lock:
            lock = self._layer_locks.setdefault(digest, threading.Lock())
        with lock:
            with self._lock:
                layer = self._layers.get(digest)
                if layer is not None:
                    layer.users += 1
                    layer.used = time.monotonic()
                    return layer
            work = Path(tempfile.mkdtemp(prefix="layer-", dir=self.dir / "tmp"))
            try:
                blob = work / "blob"
                with open(blob, "wb") as out:
                    reg.blob(repo, digest, int(desc.get("size", -1)), out)
                try:
                    size = unpack_layer(blob, work / "unpacked")
                except LayerError as e:
                    raise PullError(f"layer {digest}: {e}") from None
                final = self.dir / "layers" / digest.partition(":")[2]
                os.rename(work / "unpacked", final)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            with self._lock:
                layer = self._layers[digest] = _Layer(digest, final, size, users=1)
                self.layer_pulls += 1
            log.info("pulled image layer %s (%d bytes unpacked)", digest, size)
            return layer

    def _build(self, reg: Registry, ref: ImageRef, manifest: dict, digest: str, layers: list[_Layer]) -> Image:
        """Assemble the root filesystem DIR/rootfs/<digest>/root from the (held) layers."""
        final = self.dir / "rootfs" / digest.partition(":")[2]
        build = Path(tempfile.mkdtemp(prefix="image-", dir=self.dir / "tmp"))
        try:
            root = build / "root"
            root.mkdir(mode=0o755)
            config = self._json_blob(reg, ref.repo, manifest["config"])
            cfg = config.get("config") or {}
            copied = 0
            for layer in layers:
                try:
                    copied += assemble(root, layer.path)
                except LayerError as e:
                    raise PullError(f"layer {layer.digest}: {e}") from None
            workdir = cfg.get("WorkingDir") or ""
            mount = workdir if workdir not in ("", "/") else DEFAULT_MOUNT
            for point in ("proc", "dev", "tmp", mount.strip("/")):  # bwrap cannot make them in a read-only /
                resolve_in_root(str(root), point, "mount point", create=True)
            env = [tuple(e.split("=", 1)) for e in cfg.get("Env") or [] if "=" in e]
            size = _own_bytes(root) + copied
            os.chmod(root, 0o755)
            os.chmod(build, 0o711)  # the action uid passes through to the root filesystem
            shutil.rmtree(final, ignore_errors=True)
            os.rename(build, final)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        self.pulls += 1
        log.info("pulled container image %s (%s, %d layer(s), %d bytes of its own)", ref.text, digest,
                 len(layers), size)
        return Image(ref.text, digest, final / "root", "/" + mount.strip("/"), env,  # type: ignore[arg-type]
                     size, tuple(x.digest for x in layers))

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


def _own_bytes(root: Path) -> int:
    """Bytes of a root filesystem's own entries: its directories and symlinks (its regular files are
    hard links to the layers' files, counted with the layers)."""
    total = 0
    for dirpath, dirs, files in os.walk(root):
        for name in files + dirs:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                total += st.st_blocks * 512
    return total


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason} from {e.url}"
    if isinstance(e, urllib.error.URLError):
        return f"registry unreachable: {e.reason}"
    return f"{type(e).__name__}: {e}"
