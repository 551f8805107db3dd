"""The HTTP cache routes on the HTTP port (`http.cache.enabled`; docs/http-cache.md).

bazel-remote's protocol (what Bazel's `--remote_cache=http://...` speaks):
    GET|HEAD|PUT /ac/HASH, /cas/HASH, and the same under /INSTANCE/ (INSTANCE may contain slashes).
    /ac/ values are serialized ActionResults, stored in the instance's Action Cache and read back
    through its completeness check (a result whose outputs are gone is a 404). /cas/ bodies are
    hashed while they stream into the CAS and become readable only when whole and matching.
    zstd as bazel-remote offers it: a GET with `Accept-Encoding: zstd` gets `Content-Encoding: zstd`;
    a PUT with `Content-Encoding: zstd` must say the uncompressed size in `X-Digest-SizeBytes`.
ccache's HTTP storage: GET|HEAD|PUT|DELETE /PREFIX/KEY-PATH in the configured layout.
Gradle's HTTP build cache: GET|HEAD|PUT /PREFIX/KEY; 413 for an entry over the limit (Gradle
    then goes on without storing it), also before the body when it sends `Expect: 100-continue`.

Every request is authenticated like a gRPC call and checked against the same policy: reads need
cache-read, CAS writes cache-write, Action Cache writes ac-write, opaque entries (which write a
blob and an index record) cache-write and ac-write, all on the instance the request maps to.
Statuses: 200 found/stored, 404 miss, 400 malformed, 401/403 refused, 408 body too slow,
413 too large, 415 unknown Content-Encoding, 503 storage unavailable.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from google.protobuf.message import DecodeError

from granary import compression
from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.auth.permissions import Permission
from granary.errors import GranaryError, InvalidArgument, NotFound
from granary.httpcache import bodies
from granary.httpcache.index import OpaqueIndex, SizeIndex
from granary.instance import Instance
from granary.observability.dashboard.access import Access, Visitor
from granary.observability.http import CHALLENGE

if TYPE_CHECKING:
    from granary.auth.settings import AuthRuntime
    from granary.bootstrap import App
    from granary.config import Config
    from granary.config_models import HttpCacheSection

log = logging.getLogger("granary.httpcache")

DEFAULT_MAX_ENTRY = 4 << 30  # with no limit from the CAS either
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
OPAQUE_KEY_RE = re.compile(r"^[A-Za-z0-9._-]{1,512}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=message.rstrip("\n") + "\n", content_type="text/plain",
                        headers=headers)


def _error(e: GranaryError) -> web.Response:
    status = {
        "INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "FAILED_PRECONDITION": 400, "UNAUTHENTICATED": 401,
        "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 413, "UNAVAILABLE": 503,
        "DEADLINE_EXCEEDED": 504,
    }.get(e.code.name, 500)
    return _text(status, e.message, dict(CHALLENGE) if status == 401 else None)


class HttpCache:
    """The routes of one server process's HTTP port, over its instances."""

    def __init__(self, cfg: Config, app: App, auth: AuthRuntime | None):
        self.cfg = cfg
        self.settings: HttpCacheSection = cfg.http.cache
        self.app = app
        self.access = Access(auth)
        self.tmp_dir = Path(cfg.data_dir) / "tmp" / "httpcache"
        self._sizes: dict[str, SizeIndex] = {}

    # ---- wiring ------------------------------------------------------------------------------

    def register(self, web_app: web.Application) -> None:
        s = self.settings
        r = web_app.router
        if s.ccache.enabled:
            r.add_route("*", f"/{s.ccache.prefix}/{{path:.+}}", self._guard(self.ccache),
                        expect_handler=self._expect)
        if s.gradle.enabled:
            r.add_route("*", f"/{s.gradle.prefix}/{{path:.+}}", self._guard(self.gradle),
                        expect_handler=self._expect)
        if s.bazel.enabled:
            r.add_route("*", r"/{instance:(?:.+/)?}{kind:ac|cas}/{hash:[^/]*}", self._guard(self.bazel),
                        expect_handler=self._expect)

    def _guard(self, handler: Handler) -> Handler:
        """Domain errors as statuses, oversized and slow bodies as 413 and 408: never a 500 for input."""

        async def run(request: web.Request) -> web.StreamResponse:
            # uploads are bounded in time; downloads are paced by the client as gRPC reads are
            timeout = self.settings.body_timeout if request.method == "PUT" else None
            try:
                async with asyncio.timeout(timeout):
                    return await handler(request)
            except _Unsupported as e:
                return _text(415, e.message)
            except GranaryError as e:
                return _error(e)
            except bodies.TooLarge as e:
                return _too_large(e.limit)
            except TimeoutError:
                return _text(408, f"the request body did not arrive within {self.settings.body_timeout:g}s",
                             {"Connection": "close"})

        return run

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: refuse an announced oversized body before it is sent."""
        length = request.content_length
        if request.method == "PUT" and length is not None and length > self._limit_for(request):
            return _too_large(self._limit_for(request))
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # as aiohttp's own handler: the response has not begun
        return None

    def _limit_for(self, request: web.Request) -> int:
        if request.match_info.get("kind") == "ac":
            return self.settings.max_action_result_size
        return self.max_entry()

    def max_entry(self, instance: Instance | None = None) -> int:
        if self.settings.max_entry_size:
            return self.settings.max_entry_size
        cas_max = instance.cas.max_blob_bytes if instance is not None else 0
        return cas_max or DEFAULT_MAX_ENTRY

    # ---- auth --------------------------------------------------------------------------------

    async def _allow(self, request: web.Request, instance: str, *permissions: Permission) -> Visitor:
        visitor = await self.access.visitor(request)
        for p in permissions:
            self.access.check(visitor, instance, p)
        return visitor

    def _client(self, request: web.Request, visitor: Visitor) -> str:
        if visitor.identity.authenticated:
            return f"user:{visitor.identity.name}"
        return f"peer:{request.remote or ''}"

    def _sizes_of(self, instance: Instance) -> SizeIndex:
        index = self._sizes.get(instance.name)
        if index is None or index.instance is not instance:
            index = self._sizes[instance.name] = SizeIndex(instance)
        return index

    # ---- bazel-remote ------------------------------------------------------------------------

    async def bazel(self, request: web.Request) -> web.StreamResponse:
        prefix = request.match_info["instance"]
        name = prefix[:-1] if prefix else self.settings.bazel.instance
        kind = request.match_info["kind"]
        hash_ = request.match_info["hash"]
        if not HASH_RE.match(hash_):
            return _text(400, f"{hash_!r} is not a lowercase SHA-256 hash (64 hex digits)")
        method = request.method
        if method not in ("GET", "HEAD", "PUT"):
            return _text(405, f"{method} is not allowed on /{kind}/", {"Allow": "GET, HEAD, PUT"})
        instance = self.app.instances.get(name)
        if method == "PUT":
            needs = (Permission.AC_WRITE,) if kind == "ac" else (Permission.CACHE_WRITE,)
        else:
            needs = (Permission.CACHE_READ,)
        visitor = await self._allow(request, name, *needs)
        if kind == "cas":
            if method == "PUT":
                return await self._cas_put(request, instance, hash_, visitor)
            return await self._cas_get(request, instance, hash_)
        if method == "PUT":
            return await self._ac_put(request, instance, hash_)
        return await self._ac_get(request, instance, hash_)

    async def _cas_get(self, request: web.Request, instance: Instance, hash_: str) -> web.StreamResponse:
        size = await self._sizes_of(instance).size(dg.SHA256, hash_)
        if size is None:
            return _text(404, f"blob {hash_} is not in the CAS of instance {instance.name!r}")
        d = dg.BlobDigest(dg.SHA256, hash_, size)
        return await _send_blob(request, instance, d, zstd_ok=True)

    async def _cas_put(self, request: web.Request, instance: Instance, hash_: str,
                       visitor: Visitor) -> web.StreamResponse:
        compressor = _content_encoding(request)
        limit = self.max_entry(instance)
        size: int | None
        if compressor == compression.ZSTD:
            raw_size = request.headers.get("X-Digest-SizeBytes", "")
            if not raw_size.isdigit():
                return _text(400, "a zstd upload needs X-Digest-SizeBytes: the size of the uncompressed blob")
            size = int(raw_size)
        else:
            size = request.content_length
        if size is not None and size > limit:
            return _too_large(limit)
        cas = instance.cas
        sizes = self._sizes_of(instance)
        if size is not None:
            d = dg.make_digest(dg.SHA256, hash_, size)
            # compressed bodies are bounded by what they decompress to (ByteStream's check), and
            # by the limit itself on the wire: zstd never makes a blob much larger
            wire_limit = size if compressor == compression.IDENTITY else max(limit, size + (1 << 20))
            await bodies.write_known(cas, instance.name, d, compressor, request, wire_limit,
                                     self._client(request, visitor))
        else:  # chunked without a size: hash it whole (memory or a temporary file), then store
            body = await bodies.spool(request, limit, self.settings.spool_memory, self.tmp_dir, compressor)
            try:
                d = body.digest
                if d.hash != hash_:
                    return _text(400, f"uploaded data hashes to {d.hash}, not {hash_}")
                await bodies.store_spooled(cas, body)
            finally:
                body.close()
        await sizes.record(d)
        return _text(200, "stored")

    async def _ac_lookup(self, instance: Instance, hash_: str) -> re_pb2.ActionResult | None:
        ac = instance.action_cache
        if ac is None:
            raise NotFound(f"instance {instance.name!r} has no action cache")
        keys = [dg.BlobDigest(dg.SHA256, hash_, 0)]
        size = await self._sizes_of(instance).size(dg.SHA256, hash_)
        if size:
            keys.append(dg.BlobDigest(dg.SHA256, hash_, size))
        for key in keys:
            try:
                return await ac.get(key)
            except NotFound:
                continue
        return None

    async def _ac_get(self, request: web.Request, instance: Instance, hash_: str) -> web.StreamResponse:
        result = await self._ac_lookup(instance, hash_)
        if result is None:
            return _text(404, f"no action result for {hash_} in instance {instance.name!r}")
        sizes = self._sizes_of(instance)
        for f in result.output_files:
            sizes.remember(dg.BlobDigest(dg.SHA256, f.digest.hash, f.digest.size_bytes))
        for out in result.output_directories:
            sizes.remember(dg.BlobDigest(dg.SHA256, out.tree_digest.hash, out.tree_digest.size_bytes))
        for field in ("stdout_digest", "stderr_digest"):
            if result.HasField(field):
                got = getattr(result, field)
                sizes.remember(dg.BlobDigest(dg.SHA256, got.hash, got.size_bytes))
        body = result.SerializeToString(deterministic=True)
        if request.method == "HEAD":
            return await _head(request, len(body))
        return web.Response(body=body, content_type="application/octet-stream")

    async def _ac_put(self, request: web.Request, instance: Instance, hash_: str) -> web.StreamResponse:
        ac = instance.action_cache
        if ac is None:
            return _text(404, f"instance {instance.name!r} has no action cache")
        if _content_encoding(request) != compression.IDENTITY:
            return _text(415, "/ac/ values are accepted uncompressed only")
        limit = self.settings.max_action_result_size
        if (request.content_length or 0) > limit:
            return _too_large(limit)
        body = await bodies.spool(request, limit, limit, self.tmp_dir, compression.IDENTITY)
        assert body.data is not None
        result = re_pb2.ActionResult()
        try:
            result.ParseFromString(body.data)
        except DecodeError:
            return _text(400, "the body is not a serialized ActionResult")
        # under the hash alone (the HTTP key); and under (hash, size) when the Action blob is known,
        # so gRPC's GetActionResult finds the same entry
        await ac.update(dg.BlobDigest(dg.SHA256, hash_, 0), result)
        size = await self._sizes_of(instance).size(dg.SHA256, hash_)
        if size:
            await ac.update(dg.BlobDigest(dg.SHA256, hash_, size), result)
        return _text(200, "stored")

    # ---- opaque keys: ccache and Gradle --------------------------------------------------------

    async def ccache(self, request: web.Request) -> web.StreamResponse:
        s = self.settings.ccache
        path = request.match_info["path"]
        key = _ccache_key(path, s.layout)
        if key is None:
            return _text(400, f"{path!r} is not a ccache key path in layout {s.layout!r}")
        return await self._opaque(request, s.instance, "ccache", key, allow_delete=True)

    async def gradle(self, request: web.Request) -> web.StreamResponse:
        s = self.settings.gradle
        key = request.match_info["path"]
        if not OPAQUE_KEY_RE.match(key):
            return _text(400, f"{key!r} is not a build cache key")
        return await self._opaque(request, s.instance, "gradle", key, allow_delete=False)

    async def _opaque(self, request: web.Request, name: str, namespace: str, key: str,
                      allow_delete: bool) -> web.StreamResponse:
        method = request.method
        allowed = ("GET", "HEAD", "PUT", "DELETE") if allow_delete else ("GET", "HEAD", "PUT")
        if method not in allowed:
            return _text(405, f"{method} is not allowed here", {"Allow": ", ".join(allowed)})
        instance = self.app.instances.get(name)
        if method in ("GET", "HEAD"):
            await self._allow(request, name, Permission.CACHE_READ)
        else:
            await self._allow(request, name, Permission.CACHE_WRITE, Permission.AC_WRITE)
        index = OpaqueIndex(instance, namespace)
        if method == "DELETE":
            await index.delete(key)
            return _text(200, "deleted")
        if method == "PUT":
            if _content_encoding(request) != compression.IDENTITY:
                return _text(415, "entries are accepted uncompressed only")
            limit = self.max_entry(instance)
            if (request.content_length or 0) > limit:
                return _too_large(limit)
            body = await bodies.spool(request, limit, self.settings.spool_memory, self.tmp_dir,
                                      compression.IDENTITY)
            try:
                await bodies.store_spooled(instance.cas, body)
            finally:
                body.close()
            await index.record(key, body.digest)
            return _text(200, "stored")
        d = await index.lookup(key)
        if d is None:
            return _text(404, f"no {namespace} entry {key!r}")
        return await _send_blob(request, instance, d, zstd_ok=False)


def _ccache_key(path: str, layout: str) -> str | None:
    """The key a ccache URL path names in `layout` (ccache's layout= attribute), or None."""
    parts = path.split("/")
    if layout == "flat":
        key = path if len(parts) == 1 else ""
    elif layout == "subdirs":
        key = parts[0] + parts[1] if len(parts) == 2 and len(parts[0]) == 2 else ""
    else:  # bazel: /ac/ and 64 hex digits
        key = parts[1] if len(parts) == 2 and parts[0] == "ac" and HASH_RE.match(parts[1]) else ""
    return key if key and OPAQUE_KEY_RE.match(key) else None


def _content_encoding(request: web.Request) -> int:
    value = request.headers.get("Content-Encoding", "identity").strip().lower()
    if value in ("", "identity"):
        return compression.IDENTITY
    if value == "zstd":
        return compression.ZSTD
    raise _Unsupported(value)


class _Unsupported(InvalidArgument):
    def __init__(self, value: str):
        super().__init__(f"Content-Encoding {value!r} is not supported (identity or zstd)")


def _too_large(limit: int) -> web.Response:
    return _text(413, f"the entry is larger than this cache accepts ({limit} bytes)", {"Connection": "close"})


async def _head(request: web.Request, size: int) -> web.StreamResponse:
    """The headers a GET would send (Content-Length: the blob's size), and no body."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    await response.write_eof()
    return response


def _accepts_zstd(request: web.Request) -> bool:
    for part in request.headers.get("Accept-Encoding", "").split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() == "zstd" and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


async def _send_blob(request: web.Request, instance: Instance, d: dg.BlobDigest, zstd_ok: bool) -> web.StreamResponse:
    """A blob as the body, streamed from the store; 404 (before any header) when it is not there."""
    cas = instance.cas
    if request.method == "HEAD":
        if not await cas.has(d):
            return _text(404, f"blob {d.hash} is not in the CAS of instance {instance.name!r}")
        return await _head(request, d.size)
    zstd = zstd_ok and _accepts_zstd(request) and d.size > 0
    try:
        chunks = await cas.read(d, 0, 0)
    except NotFound:
        return _text(404, f"blob {d.hash} is not in the CAS of instance {instance.name!r}")
    headers = {"Content-Type": "application/octet-stream"}
    response = web.StreamResponse(headers=headers)
    if zstd:
        response.headers["Content-Encoding"] = "zstd"
        response.enable_chunked_encoding()
        compressor = compression.stream_compressor(compression.ZSTD)
    else:
        response.content_length = d.size
    await response.prepare(request)
    async for chunk in chunks:
        await response.write(compressor.compress(chunk) if zstd else chunk)
    if zstd:
        tail = compressor.flush()
        if tail:
            await response.write(tail)
    await response.write_eof()
    return response
