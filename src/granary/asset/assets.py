"""The Remote Asset API's logic: Fetch (records first, then origin) and Push.

FetchBlob/FetchDirectory look for a record of (instance, digest function, URI, qualifiers) that is
fresh enough (`oldest_content_accepted`, `expire_at`, retention) and whose content is still in the
CAS; otherwise they download each URI in turn (http/https, allowed hosts only), verify it against
`checksum.sri`, put it into the CAS through the ByteStream Write path and record it. Identical
downloads in flight in one process are shared, and a download goes on (and is recorded) when the
call that started it is cancelled, so a client retrying after its deadline finds it done.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from granary import digest as dg
from granary._proto.build.bazel.remote.asset.v1 import remote_asset_pb2 as ra_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.asset import archive, qualifiers
from granary.asset.casio import upload_file
from granary.asset.download import HostPolicy, download, sri_hashers
from granary.asset.records import BLOB, DIRECTORY, AssetRecords, Record
from granary.cas.cas import ContentAddressableStorage
from granary.config_models import RemoteAssetConfig
from granary.digest import BlobDigest
from granary.errors import Aborted, FailedPrecondition, GranaryError, InvalidArgument
from granary.extras import require_database
from granary.instance import Instances
from granary.services.status import status_of
from granary.sql import resolve_url

log = logging.getLogger("granary.asset")

SPOOL = "remote-asset-spool"
EXPIRY_INTERVAL = 3600.0
STALE_SPOOL = 86400.0  # spool files this old were left by a process that died


def database_url(cfg: RemoteAssetConfig, data_dir: Path) -> str:
    if cfg.database is None:
        return f"sqlite:///{data_dir / 'remote-asset.sqlite'}"
    return resolve_url(cfg.database, data_dir)


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class RemoteAssets:
    def __init__(self, cfg: RemoteAssetConfig, instances: Instances, data_dir: Path):
        self.cfg = cfg
        self.instances = instances
        url = database_url(cfg, data_dir)
        require_database(url, "remote_asset.database")
        self.records = AssetRecords(url, cfg.retention)
        self.records.create_schema()
        self.policy = HostPolicy(list(cfg.allowed_hosts), cfg.allow_all_hosts)
        self.spool = data_dir / SPOOL
        self.limits = archive.Limits(cfg.archive_max_files, cfg.archive_max_size, cfg.archive_max_ratio)
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._inflight: dict[tuple, asyncio.Task] = {}
        self._clear_stale_spool()

    # ---- lifecycle ----------------------------------------------------------------

    def _clear_stale_spool(self) -> None:
        """Spool files of a process that died mid-download (several processes share the directory,
        so only old ones go)."""
        if not self.spool.is_dir():
            return
        cutoff = time.time() - STALE_SPOOL
        for entry in os.scandir(self.spool):
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)

    async def run_expiry(self) -> None:
        """Forget expired records now and then (they are never returned anyway)."""
        while True:
            try:
                gone = await self.records.expire()
                if gone:
                    log.info("forgot %d expired remote asset records", gone)
            except Exception as e:  # noqa: BLE001 - the database may be down for a while
                log.warning("cannot expire remote asset records: %s: %s", type(e).__name__, e)
            await asyncio.sleep(EXPIRY_INTERVAL)

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()
        self.records.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,  # the bytes as served: checksums are of those
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                connector=aiohttp.TCPConnector(limit=64),
            )
        return self._session

    # ---- Fetch --------------------------------------------------------------------

    async def fetch_blob(self, request: Any, client: str) -> ra_pb2.FetchBlobResponse:
        return await self._fetch(request, client, BLOB, ra_pb2.FetchBlobResponse, "blob_digest",
                                 self._origin_blob)

    async def fetch_directory(self, request: Any, client: str) -> ra_pb2.FetchDirectoryResponse:
        return await self._fetch(request, client, DIRECTORY, ra_pb2.FetchDirectoryResponse,
                                 "root_directory_digest", self._origin_directory)

    async def _fetch(self, request: Any, client: str, kind: Any, response_type: Any, digest_field: str,
                     from_origin: Any) -> Any:
        """FetchBlob and FetchDirectory: a fresh record when there is one, else the first origin
        that answers; `digest_field` is where the response names the blob or the root directory."""
        function, q = self._check_fetch(request, directory=kind == DIRECTORY)
        cas = self.instances.get(request.instance_name).cas
        response = response_type(digest_function=function)
        record = await self._recorded(request, kind, function, q, cas)
        if record is not None:
            response.uri = record.uri
            getattr(response, digest_field).CopyFrom(re_pb2.Digest(hash=record.hash, size_bytes=record.size))
            if record.expire_at is not None:
                response.expires_at.CopyFrom(_timestamp(record.expire_at))
            return response

        async def origin(uri: str, index: int, timeout: float) -> BlobDigest:
            return await from_origin(cas, request.instance_name, function, uri, index, q, timeout, client)

        uri, result = await self._from_origin(request, kind, function, q, origin)
        response.uri = uri
        if isinstance(result, GranaryError):
            response.status.CopyFrom(status_of(result))
        else:
            getattr(response, digest_field).CopyFrom(re_pb2.Digest(hash=result.hash, size_bytes=result.size))
        return response

    def _check_fetch(self, request: Any, directory: bool) -> tuple[int, qualifiers.Qualifiers]:
        if not request.uris:
            raise InvalidArgument("the request names no URI (uris is empty)")
        function = request.digest_function or dg.SHA256
        if function not in dg.FUNCTIONS:
            dg.resolve_function(function, "")  # raises, naming the supported functions
        return function, qualifiers.parse(request.qualifiers, directory=directory)

    async def _recorded(
        self, request: Any, kind: str, function: int, q: qualifiers.Qualifiers, cas: ContentAddressableStorage
    ) -> Record | None:
        """The first usable record for the request's URIs whose content is all still in the CAS."""
        oldest = _seconds(request.oldest_content_accepted) if request.HasField("oldest_content_accepted") else 0.0
        key = q.record_key()
        found = await self.records.find(request.instance_name, kind, function, list(request.uris), key, oldest)
        for record in found:
            digest = BlobDigest(function, record.hash, record.size)
            present = await cas.has(digest) if kind == BLOB else await self._tree_present(cas, digest)
            if present:
                return record
            await self.records.forget(request.instance_name, kind, function, record.uri, key)
        return None

    def _timeout(self, request: Any) -> float:
        wanted = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else 0.0
        if wanted < 0:
            raise InvalidArgument(f"timeout {wanted:g}s is negative")
        return min(wanted or self.cfg.default_timeout, self.cfg.max_timeout)

    async def _from_origin(
        self,
        request: Any,
        kind: str,
        function: int,
        q: qualifiers.Qualifiers,
        origin: Callable[[str, int, float], Awaitable[BlobDigest]],
    ) -> tuple[str, BlobDigest | GranaryError]:
        """Try each URI in order; -> (uri, digest) of the first that works, or (first uri, error)
        with every URI's failure in the message (raised instead with fetch_errors: rpc)."""
        if q.unsupported:
            raise qualifiers.UnsupportedQualifiers(q.unsupported)
        timeout = self._timeout(request)
        key = q.record_key()
        failures: list[tuple[str, GranaryError]] = []
        for index, uri in enumerate(request.uris):
            flight = (request.instance_name, kind, function, uri, key, tuple(str(s) for s in q.sri))
            task = self._inflight.get(flight)
            if task is None:
                task = asyncio.ensure_future(
                    self._fetch_and_record(request.instance_name, kind, function, uri, index, key, timeout, origin)
                )
                self._inflight[flight] = task
                task.add_done_callback(functools.partial(self._landed, flight))
            try:
                return uri, await asyncio.shield(task)
            except GranaryError as e:
                failures.append((uri, e))
        first_uri, first = failures[0]
        if len(failures) > 1:
            first = type(first)(f"all {len(failures)} URIs failed: " + "; ".join(e.message for _, e in failures))
        if self.cfg.fetch_errors == "rpc":
            raise first
        return first_uri, first

    def _landed(self, flight: tuple, task: asyncio.Task) -> None:
        """A download ended: forget it, and take its error (its caller may be gone, and asyncio
        would log an error nobody retrieved)."""
        if self._inflight.get(flight) is task:
            del self._inflight[flight]
        if not task.cancelled():
            task.exception()

    async def _fetch_and_record(
        self,
        instance: str,
        kind: str,
        function: int,
        uri: str,
        index: int,
        key: str,
        timeout: float,
        origin: Callable[[str, int, float], Awaitable[BlobDigest]],
    ) -> BlobDigest:
        started = time.time()
        digest = await origin(uri, index, timeout)
        await self.records.put(instance, kind, function, [uri], key, digest.hash, digest.size, started)
        log.info("fetched %s %s -> %s", kind, uri, digest)
        return digest

    def _slot(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.cfg.max_concurrent_fetches)
        return self._slots

    async def _download(
        self, uri: str, index: int, q: qualifiers.Qualifiers, timeout: float, extra: dict[str, Callable[[], Any]]
    ):
        hashers = {**sri_hashers({s.algorithm for s in q.sri}), **extra}
        async with self._slot():
            dl = await download(
                self._http(), uri, q.headers_for(index, uri), self.policy,
                max_size=self.cfg.max_size, timeout=timeout, max_redirects=self.cfg.max_redirects,
                spool_dir=self.spool, hashers=hashers,
            )
        try:
            for expected in q.sri:
                actual = dl.hashes[expected.algorithm].digest()
                if actual != expected.digest:
                    raise Aborted(
                        f"{uri}: checksum.sri mismatch: expected {expected}, downloaded content is"
                        f" {expected.algorithm}-{_b64(actual)} ({dl.size} bytes)"
                    )
        except BaseException:
            dl.path.unlink(missing_ok=True)
            raise
        return dl

    async def _origin_blob(
        self, cas: ContentAddressableStorage, instance: str, function: int, uri: str, index: int,
        q: qualifiers.Qualifiers, timeout: float, client: str,
    ) -> BlobDigest:
        name = dg.function_name(function)  # sha256/384/512 share the checksum.sri hasher of that name
        dl = await self._download(uri, index, q, timeout, {name: lambda: dg.new_hasher(function)})
        try:
            digest = BlobDigest(function, dl.hashes[name].hexdigest(), dl.size)
            await upload_file(cas, instance, digest, dl.path, client)
        finally:
            dl.path.unlink(missing_ok=True)
        return digest

    async def _origin_directory(
        self, cas: ContentAddressableStorage, instance: str, function: int, uri: str, index: int,
        q: qualifiers.Qualifiers, timeout: float, client: str,
    ) -> BlobDigest:
        dl = await self._download(uri, index, q, timeout, {})
        scratch: Path | None = None
        try:
            fmt = archive.detect(dl.path, uri, qualifiers.ARCHIVE_TYPES.get(q.resource_type, ""))
            scratch = Path(tempfile.mkdtemp(dir=self.spool, prefix="unpack-"))
            tree = await asyncio.to_thread(archive.unpack, dl.path, fmt, scratch, function, self.limits, uri)
            for d in await cas.find_missing(list(tree.files)):
                await upload_file(cas, instance, d, tree.files[d], client)
            for d, _ in tree.directories:
                cas.check_blob_size(d)
            dirs = dict(tree.directories)
            for d in await cas.find_missing(list(dirs)):
                await cas.put(d, dirs[d])
            return tree.root
        finally:
            dl.path.unlink(missing_ok=True)
            if scratch is not None:
                await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def _tree_present(self, cas: ContentAddressableStorage, root: BlobDigest) -> bool:
        return not await self._tree_missing(cas, root)

    async def _tree_missing(self, cas: ContentAddressableStorage, root: BlobDigest) -> list[BlobDigest]:
        """Digests of the tree under `root` (directories and files) that the CAS lacks; stops at a
        missing directory (what is under it cannot be known)."""
        level = [root]
        seen = {root}
        files: set[BlobDigest] = set()
        while level:
            found = await cas.store.get_many([d for d in level if d.size])
            missing = [d for d in level if d.size and d not in found]
            if missing:
                return missing
            next_level = []
            for d in level:
                msg = re_pb2.Directory()
                try:
                    msg.ParseFromString(found.get(d, b""))
                except DecodeError:
                    return [d]  # not a Directory: as good as missing
                for f in msg.files:
                    files.add(dg.make_digest(d.function, f.digest.hash, f.digest.size_bytes))
                for c in msg.directories:
                    cd = dg.make_digest(d.function, c.digest.hash, c.digest.size_bytes)
                    if cd not in seen:
                        seen.add(cd)
                        next_level.append(cd)
            level = next_level
        return await _find_missing(cas, list(files))

    # ---- Push ---------------------------------------------------------------------

    async def push_blob(self, request: Any) -> ra_pb2.PushBlobResponse:
        q, digest, expire_at = self._check_push(request, request.blob_digest, "blob_digest")
        cas = self.instances.get(request.instance_name).cas
        if not await cas.has(digest):
            subject = f"blobs/{digest.hash}/{digest.size}"
            raise FailedPrecondition(
                f"blob {digest} is not in the CAS; upload it before pushing", [("MISSING", subject, "blob_digest")]
            )
        await self.records.put(request.instance_name, BLOB, digest.function, list(request.uris), q.record_key(),
                               digest.hash, digest.size, time.time(), expire_at, pushed=True)
        return ra_pb2.PushBlobResponse()

    async def push_directory(self, request: Any) -> ra_pb2.PushDirectoryResponse:
        q, digest, expire_at = self._check_push(request, request.root_directory_digest, "root_directory_digest")
        cas = self.instances.get(request.instance_name).cas
        missing = await self._tree_missing(cas, digest)
        if missing:
            raise FailedPrecondition(
                f"the tree of {digest} lacks {len(missing)} blob(s) in the CAS (e.g. {missing[0]}); upload them"
                " before pushing",
                [("MISSING", f"blobs/{d.hash}/{d.size}", "root_directory_digest") for d in missing[:100]],
            )
        await self.records.put(request.instance_name, DIRECTORY, digest.function, list(request.uris),
                               q.record_key(), digest.hash, digest.size, time.time(), expire_at, pushed=True)
        return ra_pb2.PushDirectoryResponse()

    def _check_push(self, request: Any, proto: Any, field: str) -> tuple[qualifiers.Qualifiers, BlobDigest, float | None]:
        if not request.uris:
            raise InvalidArgument("the request names no URI (uris is empty)")
        if not proto.hash:
            raise InvalidArgument(f"{field} is not set")
        digest = dg.from_proto(request.digest_function, proto)
        q = qualifiers.parse(request.qualifiers, directory=field != "blob_digest")
        expire_at = _seconds(request.expire_at) if request.HasField("expire_at") else None
        return q, digest, expire_at


async def _find_missing(cas: ContentAddressableStorage, digests: Sequence[BlobDigest]) -> list[BlobDigest]:
    missing: list[BlobDigest] = []
    step = cas.max_digests_per_request
    for begin in range(0, len(digests), step):
        missing += await cas.find_missing(digests[begin : begin + step])
    return missing
