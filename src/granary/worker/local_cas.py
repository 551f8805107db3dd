"""The worker's local CAS: content-addressed read-only files, verified, LRU-bounded.

Layout under the cache directory:

    objects/ab/<key>-<size>      blob, mode 0444 (hardlinked into input roots)
    objects/ab/<key>-<size>.x    the same bytes, mode 0555, for executables
    tmp/                         downloads in progress (renamed into place when verified)

Entries are only ever created by an atomic rename of a verified file, so
several worker processes can share one directory. Each process keeps its own
LRU index (built by a scan at start) and bounds what it knows of. Hardlinked
files share their inode with the input roots, so they are only handed to
actions that run as another uid than the worker (which owns them: the
action can neither chmod nor write them); an action running as the worker's
own uid gets copies (copy_to). As a second line, every use re-checks size,
mode and mtime and drops an entry that changed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from granary.digest import BlobDigest

log = logging.getLogger("granary.worker.cache")

READ_ONLY = 0o444
EXECUTABLE = 0o555
STALE_TMP_SECONDS = 3600
FICLONE = 0x40049409  # linux/fs.h: share the extents (btrfs, xfs): a copy that costs nothing


def copy_file(src: str, dest: str, mode: int) -> None:
    """A private copy of a file: a reflink where the filesystem can, else the bytes."""
    with open(src, "rb") as s, open(dest, "xb") as d:
        try:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        except OSError:
            shutil.copyfileobj(s, d, 1 << 20)
    os.chmod(dest, mode)


class _Entry(NamedTuple):
    size: int
    mtime_ns: int


class LocalCas:
    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._index: OrderedDict[str, _Entry] = OrderedDict()  # relative name -> entry, LRU first
        self._pins: dict[str, int] = {}
        self.total = 0
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._scan()

    # ---- naming -------------------------------------------------------------

    @staticmethod
    def name(d: BlobDigest, executable: bool) -> str:
        return f"{d.key[-2:]}/{d.key}-{d.size}" + (".x" if executable else "")

    def path(self, d: BlobDigest, executable: bool) -> Path:
        return self.objects / self.name(d, executable)

    # ---- index --------------------------------------------------------------

    def _scan(self) -> None:
        found: list[tuple[int, str, _Entry]] = []
        for sub in self.objects.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                try:
                    st = f.lstat()
                    size = int(f.name.removesuffix(".x").rsplit("-", 1)[1])
                except (OSError, IndexError, ValueError):
                    continue
                if st.st_size != size or st.st_mode & 0o222:
                    f.unlink(missing_ok=True)  # torn by a crash or written to: drop
                    continue
                found.append((st.st_mtime_ns, f"{sub.name}/{f.name}", _Entry(size, st.st_mtime_ns)))
        for _, name, entry in sorted(found):
            self._index[name] = entry
            self.total += entry.size
        now = time.time()
        for f in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                if now - f.lstat().st_mtime > STALE_TMP_SECONDS:
                    f.unlink()
        self._evict()

    def _intact(self, name: str) -> bool:
        """Whether an entry exists and is unchanged on disk (caller holds the lock)."""
        entry = self._index.get(name)
        if entry is None:
            return False
        try:
            st = os.lstat(self.objects / name)
        except FileNotFoundError:  # evicted by another process sharing the directory
            self._drop(name, unlink=False)
            return False
        if st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns or st.st_mode & 0o222:
            log.warning("cache entry %s changed on disk; dropping it", name)
            self._drop(name, unlink=True)
            return False
        return True

    def _drop(self, name: str, unlink: bool) -> None:
        entry = self._index.pop(name, None)
        if entry is not None:
            self.total -= entry.size
        if unlink:
            with contextlib.suppress(OSError):
                (self.objects / name).unlink()

    def _evict(self) -> None:
        while self.total > self.max_bytes:
            victim = next((n for n in self._index if not self._pins.get(n)), None)
            if victim is None:
                return  # everything pinned: over the bound until the pins go
            self._drop(victim, unlink=True)

    def _add(self, name: str) -> None:
        st = os.lstat(self.objects / name)
        if name not in self._index:
            self.total += st.st_size
        self._index[name] = _Entry(st.st_size, st.st_mtime_ns)
        self._index.move_to_end(name)

    # ---- use ----------------------------------------------------------------

    def has(self, d: BlobDigest, executable: bool = False) -> bool:
        """Present and intact; marks it recently used."""
        name = self.name(d, executable)
        with self._lock:
            if not self._intact(name):
                return False
            self._index.move_to_end(name)
            return True

    @contextlib.contextmanager
    def pinned(self, digests: Iterable[tuple[BlobDigest, bool]]) -> Iterator[None]:
        """Keep these entries (present or about to be) from eviction while inside."""
        names = [self.name(d, x) for d, x in set(digests)]
        with self._lock:
            for n in names:
                self._pins[n] = self._pins.get(n, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for n in names:
                    left = self._pins[n] - 1
                    if left:
                        self._pins[n] = left
                    else:
                        del self._pins[n]
                self._evict()

    def _tmp_file(self) -> Path:
        return self.tmp / uuid.uuid4().hex

    def _commit(self, tmp: Path, d: BlobDigest, executable: bool) -> None:
        os.chmod(tmp, EXECUTABLE if executable else READ_ONLY)
        dest = self.path(d, executable)
        dest.parent.mkdir(exist_ok=True)
        os.replace(tmp, dest)
        name = self.name(d, executable)
        with self._lock:
            self._add(name)
            self._evict()

    def put_bytes(self, d: BlobDigest, data: bytes, executable: bool = False) -> None:
        """Store bytes already verified against d."""
        tmp = self._tmp_file()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            self._commit(tmp, d, executable)
        finally:
            tmp.unlink(missing_ok=True)

    def put_stream(self, d: BlobDigest, fill: Callable[[BinaryIO], None], executable: bool = False) -> None:
        """Store what `fill` writes (it verifies, raising when the bytes are wrong)."""
        tmp = self._tmp_file()
        try:
            with open(tmp, "wb") as f:
                fill(f)
            self._commit(tmp, d, executable)
        finally:
            tmp.unlink(missing_ok=True)

    def make_variant(self, d: BlobDigest, executable: bool) -> bool:
        """Create the other-mode twin of a present entry by copying; False when the source is gone."""
        src = self.path(d, not executable)
        tmp = self._tmp_file()
        try:
            shutil.copyfile(src, tmp)
        except FileNotFoundError:
            return False
        try:
            self._commit(tmp, d, executable)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def copy_to(self, d: BlobDigest, executable: bool, dest: str) -> bool:
        """A private copy of the entry at dest (a reflink where possible). False if the entry is gone."""
        try:
            copy_file(str(self.path(d, executable)), dest, EXECUTABLE if executable else READ_ONLY)
            return True
        except FileNotFoundError:
            if not os.path.exists(os.path.dirname(dest)):
                raise
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
            with self._lock:
                self._drop(self.name(d, executable), unlink=False)
            return False

    def link_to(self, d: BlobDigest, executable: bool, dest: str) -> bool:
        """Hardlink the entry at dest (copy when linking is impossible). False if the entry is gone."""
        src = self.path(d, executable)
        try:
            os.link(src, dest)
            return True
        except FileNotFoundError:
            if not os.path.exists(os.path.dirname(dest)):
                raise
            with self._lock:
                self._drop(self.name(d, executable), unlink=False)
            return False
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EACCES):
                raise
        shutil.copyfile(src, dest)
        os.chmod(dest, EXECUTABLE if executable else READ_ONLY)
        return True
