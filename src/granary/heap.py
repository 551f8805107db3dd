"""glibc malloc settings for a server process, and giving memory back after a burst of work.

For server.py to call (it owns the process's start-up); nothing calls this module yet.

tune_malloc() keeps 1 MiB message buffers out of mmap, which glibc would otherwise map and
unmap, and the kernel fault in again, for every chunk: building a 1 MiB message measured
20x slower here without it (notes/performance-here.md). The trim threshold only has to sit
above the few MiB a stream recycles: 16 MiB (and 8 MiB) measured as fast as 1 GiB on that
benchmark, 4 MiB as slow as no tuning. 1 GiB with a 64 MiB top pad keeps whatever a burst
used for ever, in every arena: after bench/bench_memory.py's load one server held 70-75 MiB
in gRPC's thread arenas, which malloc_trim cannot reach (it trims only the main heap's top),
and the default tree's PSS after the load was 206-236 MiB against 165-200 at 16 MiB with
the default top pad (3 rounds each, interleaved).

IdleTrim: glibc trims only the top of a heap, so pages freed below a live allocation stay
resident. malloc_trim(0) returns them (sub-millisecond here); IdleTrim runs it once, when a
burst of calls is over, and arms no timer while the server is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import Callable

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # a 1 MiB (or 4 MiB) buffer is recycled inside the heap, never mmapped
TRIM_THRESHOLD = 16 << 20  # free memory at a heap's top beyond this goes back to the kernel
QUIET = 2.0  # seconds without a call after which a burst is over


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_malloc() -> None:
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(Exception):
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def malloc_trim() -> None:
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(Exception):
            libc.malloc_trim(0)


class IdleTrim:
    """Calls trim() once after every burst of activity(), `quiet` seconds after its last call.

    activity() is cheap enough for every call a server takes (a flag, and at most one timer
    armed); while calls keep coming the timer fires once per `quiet` seconds and re-arms.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, quiet: float = QUIET,
                 trim: Callable[[], None] = malloc_trim):
        self._loop = loop
        self._quiet = quiet
        self._trim = trim
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None

    def activity(self) -> None:
        self._busy = True
        if self._timer is None:
            self._timer = self._loop.call_later(self._quiet, self._check)

    def _check(self) -> None:
        if self._busy:  # calls since the timer was armed: the burst goes on
            self._busy = False
            self._timer = self._loop.call_later(self._quiet, self._check)
            return
        self._timer = None
        self._trim()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
