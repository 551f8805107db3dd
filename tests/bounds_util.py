"""Helpers for the attack tests: the server's resident memory and compression bombs."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import zstandard

MiB = 1 << 20
GiB = 1 << 30


def rss(pid: int) -> int:
    """Resident set size of a process in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def zstd_bomb(size: int) -> bytes:
    """One zstd frame of `size` zero bytes (~32 KiB of frame per GiB)."""
    c = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(64 * MiB)
    out = [c.compress(zeros) for _ in range(size // len(zeros))]
    out.append(c.compress(bytes(size % len(zeros))))
    out.append(c.flush())
    return b"".join(out)


def zstd_lying_frame(claimed: int, blocks: int) -> bytes:
    """A zstd frame whose header claims `claimed` bytes of content, made of `blocks` RLE blocks of 128 KiB."""
    header = struct.pack("<IBB", 0xFD2FB528, 0xC0, 0x58) + struct.pack("<Q", claimed)
    rle = (128 * 1024) << 3 | 1 << 1
    body = (struct.pack("<I", rle)[:3] + b"\0") * (blocks - 1)
    last = struct.pack("<I", rle | 1)[:3] + b"\0"
    return header + body + last


def deflate_bomb(size: int) -> bytes:
    """Raw DEFLATE of `size` zero bytes, built from byte-aligned full-flush segments of 1 MiB."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15)
    return segment * (size // MiB) + end.flush()
