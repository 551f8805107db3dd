"""A change token several server processes share: 8 bytes in a small file each one maps.

A writer puts a fresh random value there after every commit that can make
what other processes remember stale; a reader that still sees the value it
read before looking something up knows nothing of that kind has happened
since. Random values, not a counter: two writers racing can never leave the
value a reader saw, which increments from a stale read could.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path


def open_token(path: Path) -> mmap.mmap | None:
    """The mapped token file (created if needed); None where it cannot be mapped (callers then
    remember nothing)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < mmap.PAGESIZE:
                os.ftruncate(fd, mmap.PAGESIZE)  # only ever grows: racing processes agree
            return mmap.mmap(fd, mmap.PAGESIZE)
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None


def bump(token: mmap.mmap | None, slot: int = 0) -> None:
    """Write a fresh value into one of the token's 8-byte slots (a file can hold several)."""
    if token is not None:
        token[slot * 8 : slot * 8 + 8] = os.urandom(8)


def read(token: mmap.mmap | None, slot: int = 0) -> bytes | None:
    return None if token is None else token[slot * 8 : slot * 8 + 8]
