"""Compressors REAPI clients may ask for: zstd and raw DEFLATE (RFC 1951)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Protocol

import zstandard

from granary.errors import InvalidArgument

# build.bazel.remote.execution.v2.Compressor.Value numbers (wire contract).
IDENTITY = 0
ZSTD = 1
DEFLATE = 2
BROTLI = 3

NAMES = {ZSTD: "zstd", DEFLATE: "deflate"}
BY_NAME = {v: k for k, v in NAMES.items()}
SUPPORTED = (ZSTD, DEFLATE)

_ZSTD_LEVEL = 1  # speed first: clients mostly sit next to the server
# No shared (de)compressor objects: objects derived from one zstandard context
# share its state, so two concurrent streams would corrupt each other.


class TooLarge(Exception):
    """Decompressed data went past the size the caller allowed."""


class StreamDecompressor(Protocol):
    def decompress(self, data: bytes, limit: int) -> Iterator[bytes]:
        """Decompress `data` in pieces; raises TooLarge once more than `limit` bytes come out.

        Pieces are about _SLICE_OUTPUT bytes (a zstd piece at most ~32 MiB more,
        see _SLICE_INPUT) however well the input compresses, so the caller can
        write each away before the next is made.
        """
        ...


class StreamCompressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


def check(compressor: int) -> None:
    if compressor != IDENTITY and compressor not in SUPPORTED:
        raise InvalidArgument(f"compressor {compressor} is not supported (supported: zstd, deflate)")


def compress(compressor: int, data: bytes) -> bytes:
    if compressor == ZSTD:
        return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)
    if compressor == DEFLATE:
        c = zlib.compressobj(1, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush()
    return data


def decompress(compressor: int, data: bytes, expected_size: int) -> bytes:
    """Decompress a whole blob; at most `expected_size` + 1 bytes are produced."""
    try:
        if compressor == ZSTD:
            # bounded: a small "bomb" must not expand past what the digest allows
            out = bytearray()
            with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as r:
                while len(out) <= expected_size:
                    chunk = r.read(expected_size + 1 - len(out))
                    if not chunk:
                        break
                    out += chunk
            return bytes(out)
        if compressor == DEFLATE:
            d = zlib.decompressobj(-15)
            return d.decompress(data, expected_size + 1)
    except (zstandard.ZstdError, zlib.error) as e:
        raise InvalidArgument(f"data is not valid {NAMES[compressor]}: {e}") from None
    return data


# Input is fed to the decompressors in slices this small: one zstd RLE block
# (4 bytes) makes 128 KiB, so a slice makes at most ~32 MiB before the caller
# sees it; a deflate slice is held to _SLICE_OUTPUT by zlib itself.
_SLICE_INPUT = 1024
_SLICE_OUTPUT = 1 << 20


class _Sink:
    """Write target of a zstd stream_writer that stops it past `limit` bytes."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.pending = 0
        self.limit = 0
        self.produced = 0

    def write(self, data: bytes) -> int:
        self.produced += len(data)
        if self.produced > self.limit:
            raise TooLarge
        self.pieces.append(bytes(data))
        self.pending += len(data)
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.pieces)
        self.pieces = []
        self.pending = 0
        return out


class _ZstdStreamDecompressor:
    def __init__(self) -> None:
        self._sink = _Sink()
        self._w = zstandard.ZstdDecompressor().stream_writer(self._sink, write_return_read=True, closefd=False)

    def decompress(self, data: bytes, limit: int) -> Iterator[bytes]:
        sink = self._sink
        sink.produced = 0
        sink.limit = limit
        view = memoryview(data)
        try:
            for start in range(0, len(view), _SLICE_INPUT):
                self._w.write(view[start : start + _SLICE_INPUT])
                if sink.pending >= _SLICE_OUTPUT:
                    yield sink.take()
            if sink.pieces:
                yield sink.take()
        except zstandard.ZstdError as e:
            raise InvalidArgument(f"data is not valid zstd: {e}") from None


class _DeflateStreamDecompressor:
    def __init__(self) -> None:
        self._d = zlib.decompressobj(-15)

    def decompress(self, data: bytes, limit: int) -> Iterator[bytes]:
        produced = 0
        pending = data
        try:
            while pending:
                out = self._d.decompress(pending, _SLICE_OUTPUT)
                pending = self._d.unconsumed_tail
                produced += len(out)
                if produced > limit:
                    raise TooLarge
                if out:
                    yield out
                elif pending:  # no progress possible (cannot happen with a positive max_length)
                    break
        except zlib.error as e:
            raise InvalidArgument(f"data is not valid deflate: {e}") from None


class _IdentityStream:
    def decompress(self, data: bytes, limit: int) -> Iterator[bytes]:
        if len(data) > limit:
            raise TooLarge
        return iter((data,)) if data else iter(())

    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def stream_decompressor(compressor: int) -> StreamDecompressor:
    if compressor == ZSTD:
        return _ZstdStreamDecompressor()
    if compressor == DEFLATE:
        return _DeflateStreamDecompressor()
    return _IdentityStream()


def stream_compressor(compressor: int) -> StreamCompressor:
    if compressor == ZSTD:
        return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compressobj()
    if compressor == DEFLATE:
        return zlib.compressobj(1, zlib.DEFLATED, -15)
    return _IdentityStream()
