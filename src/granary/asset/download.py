"""Downloading one http(s) URL into a spool file, hashing it on the way.

The body is never held in memory: chunks go to a file under the spool directory (in the data
directory) while the hashers the caller asked for see them; the file is uploaded to the CAS
afterwards (granary.asset.casio), once its digest is known. Refused before any byte is read: other
schemes than http and https, hosts the allow-list does not name (also as redirect targets), and a
Content-Length above the size limit; a body that grows past the limit is cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from granary.errors import (
    DeadlineExceeded,
    GranaryError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

CHUNK = 1 << 20
REDIRECTS = (301, 302, 303, 307, 308)
# headers that carry credentials: not sent on to another host after a redirect
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie")
_WRITER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="granary-asset-spool")


class HostPolicy:
    """Which hosts downloads may reach: exact names/IPs, or `*.example.com` for its subdomains."""

    def __init__(self, allowed: list[str], allow_all: bool):
        self.allow_all = allow_all
        self.exact = {h.lower().strip("[]") for h in allowed if not h.startswith("*.")}
        self.suffixes = tuple(h[1:].lower() for h in allowed if h.startswith("*."))

    def allows(self, host: str) -> bool:
        if self.allow_all:
            return True
        host = host.lower().rstrip(".")
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))

    def check(self, url: URL, what: str) -> None:
        if url.scheme not in ("http", "https"):
            raise PermissionDenied(
                f"{what} {str(url)!r}: scheme {url.scheme or '(none)'!r} is not fetched by this server (http"
                " and https only)"
            )
        if not url.host:
            raise PermissionDenied(f"{what} {str(url)!r} names no host")
        if not self.allows(url.host):
            raise PermissionDenied(
                f"{what} {str(url)!r}: host {url.host!r} is not in remote_asset.allowed_hosts of this server"
            )


@dataclass
class Downloaded:
    path: Path  # the spool file; the caller removes it
    size: int
    hashes: dict[str, Any]  # algorithm name -> finished hasher


def _status_error(uri: str, status: int, reason: str) -> GranaryError:
    what = f"{uri}: HTTP {status} {reason}".rstrip()
    if status in (404, 410):
        return NotFound(what)
    if status == 429 or status >= 500:
        return Unavailable(what)
    return PermissionDenied(f"{what} (the server refused the request)")


async def download(
    session: aiohttp.ClientSession,
    uri: str,
    headers: dict[str, str],
    policy: HostPolicy,
    *,
    max_size: int,
    timeout: float,
    max_redirects: int,
    spool_dir: Path,
    hashers: dict[str, Callable[[], Any]],
) -> Downloaded:
    """GET `uri` into a new spool file, hashing with every hasher in `hashers` (name -> factory)."""
    try:
        url = URL(uri)
    except ValueError as e:
        raise PermissionDenied(f"{uri!r} is not a URL: {e}") from None
    policy.check(url, "URI")
    try:
        async with asyncio.timeout(timeout):
            return await _get(session, uri, url, headers, policy, max_size, max_redirects, spool_dir, hashers)
    except TimeoutError:
        raise DeadlineExceeded(f"{uri}: download did not finish within {timeout:g}s") from None
    except aiohttp.ClientError as e:
        raise Unavailable(f"{uri}: {type(e).__name__}: {e}") from None


async def _get(
    session: aiohttp.ClientSession,
    uri: str,
    url: URL,
    headers: dict[str, str],
    policy: HostPolicy,
    max_size: int,
    max_redirects: int,
    spool_dir: Path,
    hashers: dict[str, Callable[[], Any]],
) -> Downloaded:
    headers = {"Accept-Encoding": "identity", **headers}
    first_host = url.host
    for _ in range(max_redirects + 1):
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            if resp.status in REDIRECTS:
                location = resp.headers.get("Location")
                if not location:
                    raise Unavailable(f"{uri}: HTTP {resp.status} without a Location header")
                url = url.join(URL(location))
                policy.check(url, f"redirect of {uri} to")
                if url.host != first_host:
                    headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
                continue
            if resp.status != 200:
                raise _status_error(uri, resp.status, resp.reason or "")
            length = resp.content_length
            if length is not None and length > max_size:
                raise ResourceExhausted(
                    f"{uri} is {length} bytes, more than remote_asset.max_size ({max_size} bytes)"
                )
            return await _spool(resp, uri, max_size, spool_dir, hashers)
    raise Unavailable(f"{uri}: more than {max_redirects} redirects (remote_asset.max_redirects)")


async def _spool(
    resp: aiohttp.ClientResponse,
    uri: str,
    max_size: int,
    spool_dir: Path,
    hashers: dict[str, Callable[[], Any]],
) -> Downloaded:
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix="fetch-")
    path = Path(name)
    states = {n: make() for n, make in hashers.items()}
    loop = asyncio.get_running_loop()

    def take(chunk: bytes) -> None:  # in a thread: hashlib releases the GIL, so hashing overlaps receiving
        for h in states.values():
            h.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]

    pending: asyncio.Future | None = None
    size = 0
    try:
        async for chunk in resp.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > max_size:
                raise ResourceExhausted(
                    f"{uri} sent more than remote_asset.max_size ({max_size} bytes); download stopped"
                )
            if pending is not None:
                await pending
            pending = loop.run_in_executor(_WRITER, take, chunk)
        if pending is not None:
            await pending
            pending = None
        length = resp.content_length
        if length is not None and size != length:
            raise Unavailable(f"{uri}: body ended after {size} of {length} bytes")
    except BaseException:
        if pending is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending)
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return Downloaded(path, size, states)


def sri_hashers(algorithms: set[str]) -> dict[str, Callable[[], Any]]:
    return {a: getattr(hashlib, a) for a in algorithms}
