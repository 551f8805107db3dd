"""The configuration file as typed models: every key, its type, default and meaning.

`GranaryConfig` is granary.yaml. Validation, `granary config show` (defaults
filled in) and `granary config schema` (JSON Schema for editors) all come
from these models; `granary.config` turns a validated file into the objects
the rest of Granary uses and turns a validation error into one line.

A store is written where it is used: either the name of a store under
`storage:` (or `action_caches:`) or an inline mapping with its own `type:`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from granary.auth.settings import AuthSettings, TlsSettings
from granary.config_values import (
    AutoCount,
    AutoListen,
    AutoPositive,
    Count,
    Duration,
    Flag,
    Fraction,
    Listen,
    Positive,
    RedisUrl,
    Size,
    SqlUrl,
    Text,
    TextOrEmpty,
    Weight,
    limited_size,
    problem,
)

# Tags of the store unions start with this, so error locations can drop them.
TAG = "\x00"
NAME_TAG = TAG + "name"
NONE_TAG = TAG + "none"


class Section(BaseModel):
    """A mapping in the file: unknown keys are refused, naming the allowed ones."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise problem(f"expected a mapping, got {type(data).__name__}")
        allowed = set(cls.model_fields)
        for key in data:
            if key not in allowed:
                listed = ", ".join(sorted(allowed - {"type"}))
                raise problem(f"unknown key (allowed: {listed})", key=str(key))
        return data


def _named(data: Any) -> Any:
    """YAML keys may be numbers or null; names are strings ('' for null)."""
    if isinstance(data, dict):
        return {"" if k is None else str(k): v for k, v in data.items()}
    return data


class StoreName(str):
    """The name of a store defined under `storage:` or `action_caches:`."""


Name = Annotated[str, BeforeValidator(lambda v: v if isinstance(v, str) and v else _no_name(v)),
                 AfterValidator(StoreName), WithJsonSchema({"type": "string", "minLength": 1,
                                                            "description": "the name of a defined store"})]


def _no_name(value: Any) -> str:
    raise problem(f"expected a store name or an inline store mapping with a type, got {value!r}")


OptText = Text | None


class Store(Section):
    kind: ClassVar[str]


# ---- connections shared by CAS and Action Cache stores ------------------------------------------


class RedisConnection(Store):
    url: RedisUrl = Field(description="Redis server, redis://HOST:PORT/DB (rediss:// for TLS, unix:// for a socket).")
    max_connections: Positive = Field(64, description="Connections each server process may open to Redis.")


class S3Connection(Store):
    bucket: Text = Field(description="S3 bucket that holds the objects.")
    endpoint_url: OptText = Field(None, description="S3 endpoint URL; default: AWS for the region.")
    region: OptText = Field(None, description="S3 region; default: the usual AWS environment.")
    access_key_id: OptText = Field(None, description="Access key; default: the usual AWS environment.")
    secret_access_key: OptText = Field(None, description="Secret key; default: the usual AWS environment.")
    session_token: OptText = Field(None, description="Session token for temporary credentials.")
    create_bucket: Flag = Field(False, description="Create the bucket at start-up when it does not exist.")
    addressing_style: Text = Field("auto", description="S3 addressing style: auto, path or virtual.")
    max_connections: Positive = Field(64, description="HTTP connections each server process may open to S3.")


def _channel_options(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise problem(f"expected a mapping, got {type(value).__name__}")
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise problem(f"expected a number or a string, got {v!r}", key=str(k))
    return {str(k): v for k, v in value.items()}


ChannelOptions = Annotated[dict[str, int | str], BeforeValidator(_channel_options)]


class RemoteConnection(Store):
    address: Text = Field(description="The other REAPI server: grpc://HOST:PORT or grpcs://HOST:PORT.")
    tls_ca_cert: OptText = Field(None, description="PEM file of the CA that signed the server's certificate.")
    tls_client_cert: OptText = Field(None, description="PEM client certificate for mutual TLS.")
    tls_client_key: OptText = Field(None, description="PEM private key of the client certificate.")
    auth_token: OptText = Field(None, description="Token sent in auth_header with every call.")
    auth_token_file: OptText = Field(None, description="File holding the token (read at start-up).")
    auth_header: Text = Field("authorization", description="Metadata key that carries the token.")
    channel_options: ChannelOptions = Field(default_factory=dict, description="Extra gRPC channel arguments.")
    timeout: Duration = Field(300.0, description="Deadline of each call to the other server.")


# ---- CAS stores ---------------------------------------------------------------------------------


class MemoryCas(Store):
    """Blobs in this process's memory, least recently used evicted first."""

    kind = "memory"
    type: Literal["memory"] = Field(description="Store type.")
    max_size: Size = Field(1 << 30, description="Bytes kept before the least recently used blobs are evicted.")


class DiskCas(Store):
    """Blobs on local disk: small ones packed, an SQLite index, LRU eviction; shared by processes."""

    kind = "disk"
    type: Literal["disk"] = Field(description="Store type.")
    path: Text = Field(description="Directory of the store, relative to the data directory.")
    max_size: Size = Field(10 << 30, description="Bytes kept before the least recently used blobs are evicted.")
    fsync: Flag = Field(False, description="Make every write durable before it is acknowledged (slower).")
    pack_max_blob: Size = Field(256 << 10, description="Blobs up to this size are appended to pack files.")


RedisBlobSize = limited_size(1, 512 << 20, "Redis holds at most 512MiB in one value")


class RedisCas(RedisConnection):
    """Blobs as Redis values."""

    kind = "redis"
    type: Literal["redis"] = Field(description="Store type.")
    prefix: TextOrEmpty = Field("granary:cas:", description="Prefix of every Redis key.")
    max_blob_size: RedisBlobSize = Field(
        64 << 20, description="Larger blobs are refused (Redis holds at most 512MiB in one value).")
    ttl: Duration = Field(0.0, description="Blobs expire this long after they were last written or found; 0: never.")


class S3Cas(S3Connection):
    """Blobs as S3 objects."""

    kind = "s3"
    type: Literal["s3"] = Field(description="Store type.")
    prefix: TextOrEmpty = Field("cas/", description="Prefix of every object key.")
    part_size: Size = Field(8 << 20, description="Part size of multipart uploads.")
    concurrency: Positive = Field(32, description="Requests to S3 at once per server process.")


class RemoteCas(RemoteConnection):
    """The CAS of another REAPI server."""

    kind = "remote"
    type: Literal["remote"] = Field(description="Store type.")
    instance_name: TextOrEmpty = Field("", description="Instance name used on the other server.")
    max_batch_size: Size = Field(0, description="Largest batch request sent; 0: what the server advertises.")


class TieredCas(Store):
    """A cache in front of a fallback: reads fill the cache, writes go to both."""

    kind = "tiered"
    _stores: ClassVar[tuple[str, ...]] = ("cache", "fallback")
    type: Literal["tiered"] = Field(description="Store type.")
    cache: CasStoreOrName = Field(description="Fast store asked first.")
    fallback: CasStoreOrName = Field(description="Store that holds everything.")
    defer_fallback_writes: Flag = Field(False, description="Acknowledge writes once in the cache; copy later.")
    queue_max_blobs: Positive = Field(100_000, description="Deferred writes waiting at most (blobs).")
    queue_max_bytes: Size = Field(256 << 20, description="Deferred writes waiting at most (bytes).")
    queue_workers: Positive = Field(4, description="Concurrent copies of deferred writes to the fallback.")


def _non_empty_list(example: str) -> Any:
    def check(value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise problem(f"expected a non-empty list of {example}")
        return value

    return BeforeValidator(check)


class SizeTier(Section):
    """Blobs up to max_size go to store."""

    max_size: Size = Field(description="Largest blob (bytes or a size like 1MiB) this tier takes.")
    store: CasStoreOrName = Field(description="Store of this tier.")


class SizeSplitCas(Store):
    """Blobs routed by size: the first tier whose max_size fits, else the fallback."""

    kind = "sizesplit"
    type: Literal["sizesplit"] = Field(description="Store type.")
    stores: Annotated[list[SizeTier], _non_empty_list("{max_size: SIZE, store: STORE}")] = Field(
        description="Tiers by growing max_size.")
    fallback: CasStoreOrName = Field(description="Store of blobs larger than every tier.")


class Shard(Section):
    """One shard of a sharded store."""

    name: OptText = Field(None, description="Shard name (its hash seed); default: the store name or shardN.")
    weight: Weight = Field(1.0, description="Share of the blobs this shard gets, relative to the others.")
    store: CasStoreOrName = Field(description="Store of this shard.")


class ShardedCas(Store):
    """Blobs spread over several stores by rendezvous hashing of their digest."""

    kind = "sharded"
    type: Literal["sharded"] = Field(description="Store type.")
    shards: Annotated[list[Shard], _non_empty_list("{store: STORE, weight: N, name: NAME}")] = Field(
        description="The shards.")

    @model_validator(mode="after")
    def _shard_names(self) -> ShardedCas:
        seen: set[str] = set()
        for i, shard in enumerate(self.shards):
            if shard.name is None:
                shard.name = str(shard.store) if isinstance(shard.store, StoreName) else f"shard{i}"
            if shard.name in seen:
                raise problem(f"{shard.name!r} is used by another shard; shard names must differ",
                              key=f"shards[{i}].name")
            seen.add(shard.name)
        return self


class IndexedCas(Store):
    """A store with an SQL index of its blobs, for size-bounded cleanup (`granary cleanup`)."""

    kind = "indexed"
    type: Literal["indexed"] = Field(description="Store type.")
    store: CasStoreOrName = Field(description="Store that holds the blobs.")
    url: SqlUrl = Field("sqlite:///cas-index.sqlite", description="Database of the index (SQLAlchemy URL).")
    table: Text = Field("cas_index", description="Table of the index.")
    max_size: Size = Field(0, description="Byte budget that cleanup keeps the store under; 0: none.")
    cleanup_to: Fraction = Field(0.9, description="Cleanup deletes down to this share of max_size.")
    janitor_interval: Duration = Field(0.0, description="How often the server cleans up by itself; 0: never.")
    protect_recent: Duration = Field(86400.0, description="Blobs of action results this recent are kept.")


# ---- Action Cache stores ----------------------------------------------------------------------


class MemoryAc(Store):
    """Action results in this process's memory."""

    kind = "memory"
    type: Literal["memory"] = Field(description="Store type.")
    max_entries: Count = Field(100_000, description="Results kept before the oldest are dropped.")
    max_size: Size = Field(256 << 20, description="Bytes of results kept before the oldest are dropped.")


class DiskAc(Store):
    """Action results in an SQLite file inside a directory."""

    kind = "disk"
    type: Literal["disk"] = Field(description="Store type.")
    path: Text = Field(description="Directory of the store, relative to the data directory.")
    max_entries: Count = Field(0, description="Results kept before the oldest are dropped; 0: no limit.")
    max_size: Size = Field(1 << 30, description="Bytes of results kept before the oldest are dropped.")


class SqliteAc(Store):
    """Action results in one SQLite file."""

    kind = "sqlite"
    type: Literal["sqlite"] = Field(description="Store type.")
    path: Text = Field(description="SQLite file, relative to the data directory.")
    max_entries: Count = Field(0, description="Results kept before the oldest are dropped; 0: no limit.")
    max_size: Size = Field(1 << 30, description="Bytes of results kept before the oldest are dropped.")


class RedisAc(RedisConnection):
    """Action results as Redis values."""

    kind = "redis"
    type: Literal["redis"] = Field(description="Store type.")
    prefix: TextOrEmpty = Field("granary:ac:", description="Prefix of every Redis key.")
    max_age: Duration = Field(0.0, description="Results expire this long after their last write; 0: never.")


class S3Ac(S3Connection):
    """Action results as S3 objects."""

    kind = "s3"
    type: Literal["s3"] = Field(description="Store type.")
    prefix: TextOrEmpty = Field("ac/", description="Prefix of every object key.")
    max_age: Duration = Field(0.0, description="Results older than this read as missing; 0: never.")


class SqlAc(Store):
    """Action results in an SQL database (SQLite or PostgreSQL), shared by several servers."""

    kind = "sql"
    type: Literal["sql"] = Field(description="Store type.")
    url: SqlUrl = Field(description="Database (SQLAlchemy URL): sqlite:///PATH or postgresql+psycopg://...")
    table: Text = Field("action_results", description="Table of the results.")
    max_age: Duration = Field(0.0, description="Results older than this read as missing; 0: never.")


class RemoteAc(RemoteConnection):
    """The Action Cache of another REAPI server."""

    kind = "remote"
    type: Literal["remote"] = Field(description="Store type.")
    instance_name: TextOrEmpty | None = Field(
        None, description="Instance name used on the other server; default: the caller's.")


CAS_MODELS: dict[str, type[Store]] = {m.kind: m for m in (
    MemoryCas, DiskCas, RedisCas, S3Cas, RemoteCas, TieredCas, SizeSplitCas, ShardedCas, IndexedCas)}
AC_MODELS: dict[str, type[Store]] = {m.kind: m for m in (
    MemoryAc, DiskAc, SqliteAc, RedisAc, S3Ac, SqlAc, RemoteAc)}


def _tag(value: Any) -> str | None:
    if value is None:
        return NONE_TAG
    if isinstance(value, str):
        return NAME_TAG
    if isinstance(value, Store):  # serializing a validated file
        return TAG + value.kind
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return TAG + value["type"]
    return None


def _store_union(models: dict[str, type[Store]], error: str, name: bool = False, none: bool = False) -> Any:
    choices: list[Any] = [Annotated[m, Tag(TAG + kind)] for kind, m in models.items()]
    if name:
        choices.append(Annotated[Name, Tag(NAME_TAG)])
    if none:
        choices.append(Annotated[None, Tag(NONE_TAG)])
    return Annotated[Union[tuple(choices)], Discriminator(  # noqa: UP007 - built at run time
        _tag, custom_error_type=error, custom_error_message="not a store")]


CasStore = _store_union(CAS_MODELS, "cas_store")
CasStoreOrName = _store_union(CAS_MODELS, "cas_store", name=True)
AcStore = _store_union(AC_MODELS, "ac_store")
AcStoreOrName = _store_union(AC_MODELS, "ac_store", name=True, none=True)
for _model in (TieredCas, SizeTier, SizeSplitCas, Shard, ShardedCas, IndexedCas):
    _model.model_rebuild()


# ---- server, instances, execution -------------------------------------------------------------


class ServerSection(Section):
    """The server process(es)."""

    listen: Listen = Field("127.0.0.1:8980", description="HOST:PORT to listen on; port 0 picks a free port.")
    processes: AutoPositive = Field(
        "auto", validate_default=True, description="Server processes sharing the port; auto: one per core (memory stores need 1).")
    max_batch_size: Size = Field(
        4_000_000, description="Advertised max_batch_total_size_bytes: the largest batch request accepted.")
    data_dir: OptText = Field(
        None, description="Where relative paths live; default ~/.local/share/granary (or --data-dir).")
    drain_timeout: Duration = Field(30.0, description="How long a stopping server lets running actions finish.")
    max_uploads: Positive = Field(
        10_000, description="Unfinished ByteStream uploads one server process keeps at once; more get RESOURCE_EXHAUSTED.")
    max_uploads_per_client: Positive = Field(
        1_000, description="Unfinished uploads one client (peer address) may keep in one server process.")
    max_upload_bytes: Size = Field(
        0, description="Bytes unfinished uploads may hold together per store; 0: the store's max_size.")
    upload_ttl: Duration = Field(600.0, description="An upload idle this long is dropped with its bytes.")
    max_digests_per_request: Positive = Field(
        100_000, description="Digests accepted in one FindMissingBlobs or batch request.")
    max_blob_size: Size = Field(
        0, description="Largest blob accepted; 0: the store's max_size (no limit for stores without one).")
    ac_max_inline_size: Size = Field(
        1 << 20, description="Largest inline stdout_raw, stderr_raw or output file contents in an action result.")
    ac_max_result_size: Size = Field(3 << 20, description="Largest serialized action result accepted.")
    tls: TlsSettings | None = Field(
        None, description="TLS on the gRPC port (cert, key; client_ca for mTLS); relative paths are in the data dir.")
    allow_unauthenticated: Flag = Field(
        False, description="Listen beyond loopback without `auth:` (same as --allow-unauthenticated-network-access).")


class HttpCacheBazelSection(Section):
    """bazel-remote's HTTP protocol: /ac/HASH and /cas/HASH, optionally under /INSTANCE/ (docs/http-cache.md)."""

    enabled: Flag = Field(True, description="Serve GET/PUT/HEAD /ac/HASH, /cas/HASH and /INSTANCE/ac|cas/HASH.")
    instance: TextOrEmpty = Field(
        "", description="The instance a path without an instance prefix uses (\"\": the default instance).")


class HttpCacheOpaqueSection(Section):
    """An opaque-key cache (ccache or Gradle) under one URL prefix, stored in one instance."""

    enabled: Flag = Field(True, description="Serve this protocol.")
    prefix: Text = Field(description="The first path segment of its URLs (no slashes).")
    instance: TextOrEmpty = Field("", description="The instance whose CAS and Action Cache hold its entries.")

    @field_validator("prefix")
    @classmethod
    def _one_segment(cls, v: str) -> str:
        if "/" in v or v in (".", "..", "ui", "api", "metrics", "healthz", "readyz", "ac", "cas"):
            raise ValueError(f"prefix {v!r} must be one path segment not used by other routes")
        return v


class HttpCacheCcacheSection(HttpCacheOpaqueSection):
    """ccache's `remote_storage = http://HOST:PORT/PREFIX|layout=...`."""

    prefix: Text = Field("ccache", description="The first path segment of its URLs (no slashes).")
    layout: Literal["subdirs", "flat", "bazel"] = Field(
        "subdirs", description="The layout= attribute ccache is configured with: which paths name a key.")


class HttpCacheGradleSection(HttpCacheOpaqueSection):
    """Gradle's HttpBuildCache with `url = http://HOST:PORT/PREFIX/`."""

    prefix: Text = Field("cache", description="The first path segment of its URLs (no slashes).")


class HttpCacheSection(Section):
    """Plain HTTP cache protocols on the HTTP port, on the instances' own stores (docs/http-cache.md)."""

    enabled: Flag = Field(False, description="Serve the HTTP cache protocols below on the HTTP port.")
    bazel: HttpCacheBazelSection = Field(
        default_factory=HttpCacheBazelSection, description="bazel-remote's /ac/ and /cas/ protocol (Bazel's --remote_cache=http://).")
    ccache: HttpCacheCcacheSection = Field(
        default_factory=HttpCacheCcacheSection, description="ccache's HTTP remote storage under its own prefix.")
    gradle: HttpCacheGradleSection = Field(
        default_factory=HttpCacheGradleSection, description="Gradle's HTTP build cache under its own prefix.")
    max_entry_size: Size = Field(
        0, description="Largest blob or entry accepted (413 above it); 0: the CAS's own limit, else 4 GiB.")
    max_action_result_size: Size = Field(
        3 << 20, description="Largest /ac/ value (a serialized ActionResult) accepted; 413 above it.")
    body_timeout: Duration = Field(
        300.0, description="Longest time to receive one request body; a slower upload is dropped (408).")
    spool_memory: Size = Field(
        1 << 20, description="Opaque (ccache, Gradle) or chunked uploads up to this size are held in memory;"
                             " larger ones are spooled to a temporary file in the data dir while hashed.")

    @model_validator(mode="after")
    def _positive(self) -> HttpCacheSection:
        if self.body_timeout <= 0:
            raise problem("must be above 0", key="body_timeout")
        if self.ccache.enabled and self.gradle.enabled and self.ccache.prefix == self.gradle.prefix:
            raise problem("ccache and gradle need different prefixes", key="gradle.prefix")
        return self


class HttpSection(Section):
    """The HTTP port beside gRPC: /metrics (Prometheus), /healthz, /readyz, the dashboard (docs/observability.md)."""

    enabled: Flag = Field(True, description="Serve the HTTP port; false: no HTTP port and no metrics are kept.")
    listen: AutoListen = Field(
        "auto", description="HOST:PORT of the HTTP port; auto: the host of server.listen and its port + 1"
                            " (a free port when that port is 0).")
    metrics_public: Flag = Field(
        False, description="With auth: configured, serve /metrics without credentials too (e.g. to a scraper"
                           " on a private network); /healthz and /readyz never need any.")
    dashboard: Flag = Field(
        True, description="Serve the web dashboard (/ui/ and /api/v1/) on the HTTP port; it asks for the same"
                          " credentials and permissions as gRPC when auth: is configured.")
    ready_timeout: Duration = Field(
        2.0, description="How long /readyz waits for each store and the queue database before it says not ready.")
    max_instance_labels: Positive = Field(
        100, description="Instance names that get their own metrics label per server process (configured names"
                         " always do); further names the wildcard answers are counted as (other).")
    cache: HttpCacheSection = Field(
        default_factory=HttpCacheSection,
        description="bazel-remote, ccache and Gradle HTTP caches on this port (docs/http-cache.md).")

    @model_validator(mode="after")
    def _positive_timeout(self) -> HttpSection:
        if self.ready_timeout <= 0:
            raise problem("must be above 0", key="ready_timeout")
        return self


class InstanceSection(Section):
    """One REAPI instance name and the stores that serve it."""

    cas: CasStoreOrName = Field(description="CAS store: a name under storage: or an inline store.")
    action_cache: AcStoreOrName = Field(
        None, description="Action Cache store: a name under action_caches: or an inline store; none: no cache.")
    allow_updates: Flag = Field(True, description="Clients may write action results (false: read-only cache).")
    write_once: Flag = Field(False, description="The first action result stored for an action is kept.")
    check_completeness: Flag = Field(
        True, description="Results whose outputs are missing from the CAS are not returned.")
    execution: Flag | None = Field(
        None, description="This instance executes actions; default: true when the file has an execution section.")


def _platforms(value: Any) -> list[list[tuple[str, str]]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise problem("expected a list of property maps like [{OSFamily: linux, ISA: x86-64}]")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise problem(f"expected a mapping, got {type(entry).__name__}", key=f"[{i}]")
        pairs = []
        for k, v in entry.items():
            for one in v if isinstance(v, list) else [v]:
                if isinstance(one, bool) or not isinstance(one, (str, int, float)):
                    raise problem(f"expected a string or a list of strings, got {one!r}", key=f"[{i}].{k}")
                pairs.append((str(k), str(one)))
        out.append(pairs)
    return out


def _platform_maps(platforms: list[list[tuple[str, str]]]) -> list[dict[str, str | list[str]]]:
    out = []
    for pairs in platforms:
        entry: dict[str, Any] = {}
        for k, v in pairs:
            if k not in entry:
                entry[k] = v
            elif isinstance(entry[k], list):
                entry[k].append(v)
            else:
                entry[k] = [entry[k], v]
        out.append(entry)
    return out


Platforms = Annotated[
    list[list[tuple[str, str]]], BeforeValidator(_platforms), PlainSerializer(_platform_maps),
    WithJsonSchema({"type": "array", "items": {"type": "object", "additionalProperties": {
        "anyOf": [{"type": ["string", "number"]}, {"type": "array", "items": {"type": ["string", "number"]}}]}}}),
]


class LogStreamSection(Section):
    """Live stdout/stderr of running actions (LogStream API and ByteStream Read; docs/execution.md)."""

    enabled: Flag = Field(
        True, description="Workers stream each running action's stdout and stderr; operations name the streams.")
    max_stream_bytes: Size = Field(
        16 << 20, description="Most bytes one stream holds; writes past it get RESOURCE_EXHAUSTED (the worker"
                              " stops streaming that output; the full output still goes to the CAS).")
    max_total_bytes: Size = Field(
        1 << 30, description="Most bytes all streams hold together in the queue database; the oldest finished"
                             " streams are dropped early to make room, then writes get RESOURCE_EXHAUSTED.")
    retention: Duration = Field(600.0, description="How long a finished stream stays readable before it is deleted.")
    idle_timeout: Duration = Field(
        3600.0, description="A stream no running action owns (made by CreateLogStream) and not written this long"
                            " is finished.")
    poll_interval: Duration = Field(
        0.2, description="How often a blocked Read looks in the database for bytes written through another"
                         " server process (writes through its own process wake it at once).")

    @model_validator(mode="after")
    def _positive(self) -> LogStreamSection:
        for key in ("max_stream_bytes", "max_total_bytes", "poll_interval", "idle_timeout"):
            if getattr(self, key) <= 0:
                raise problem("must be above 0", key=key)
        return self


class ExecutionConfig(Section):
    """Remote execution: the job queue, timeouts, bots and local workers."""

    database: SqlUrl | None = Field(
        None, description="Job queue database (SQLAlchemy URL); default: <data dir>/execution.sqlite;"
                          " postgresql+psycopg://... to share it between servers.")
    default_timeout: Duration = Field(600.0, description="Timeout of actions that set none.")
    max_timeout: Duration = Field(3600.0, description="Longest timeout an action may ask for; longer is refused.")
    bot_timeout: Duration = Field(60.0, description="A bot silent this long loses its jobs, which are re-queued.")
    bot_long_poll: Duration = Field(5.0, description="How long UpdateBotSession waits for work before answering.")
    poll_interval: Duration = Field(
        0.05, description="How often a process looks for changes made by other processes when no notification"
                          " (PostgreSQL NOTIFY, local peer sockets) can wake it; otherwise max(5s, this) as a safety net.")
    retry_limit: Count = Field(3, description="How many times one job is re-queued before it fails.")
    cache_failed_actions: Flag = Field(False, description="Store results with a non-zero exit code in the cache.")
    known_platforms: Platforms = Field(
        default_factory=list,
        description="Platforms accepted besides those of connected bots, e.g. [{OSFamily: linux, ISA: x86-64}].")
    platform_grace: Duration = Field(
        30.0, description="After start-up, accept any platform this long while bots connect.")
    local_workers: AutoCount = Field(
        "auto", validate_default=True, description="Slots of the `granary worker` that serve starts; auto: two per core; 0: none.")
    retention: Duration = Field(86400.0, description="How long finished operations stay listed.")
    max_bot_concurrency: Positive = Field(
        64, description="Most leases one bot session holds at once; a larger claimed concurrency is capped.")
    lease_ack_timeout: Duration = Field(
        30.0, description="A lease a bot does not acknowledge this long goes back to the queue for other bots.")
    logstream: LogStreamSection = Field(
        default_factory=LogStreamSection, description="Live stdout/stderr of running actions (LogStream).")

    @model_validator(mode="after")
    def _consistent(self) -> ExecutionConfig:
        for key in ("default_timeout", "max_timeout", "poll_interval"):
            if getattr(self, key) <= 0:
                raise problem("must be above 0", key=key)
        if self.default_timeout > self.max_timeout:
            raise problem(f"{self.default_timeout:g}s is above execution.max_timeout ({self.max_timeout:g}s)",
                          key="default_timeout")
        if self.bot_long_poll >= self.bot_timeout:
            raise problem(f"{self.bot_long_poll:g}s must be shorter than execution.bot_timeout"
                          f" ({self.bot_timeout:g}s)", key="bot_long_poll")
        return self


class RemoteAssetConfig(Section):
    """The Remote Asset API (Fetch and Push, docs/remote-asset.md) on every instance."""

    allowed_hosts: list[Text] = Field(
        default_factory=list,
        description="Hosts FetchBlob/FetchDirectory may download from: exact names or IPs, or *.example.com"
                    " for any subdomain; empty: none (every download is refused unless allow_all_hosts).")
    allow_all_hosts: Flag = Field(False, description="Download from any http(s) host (ignores allowed_hosts).")
    max_size: Size = Field(1 << 30, description="Largest download (bytes); a larger one is refused.")
    default_timeout: Duration = Field(60.0, description="Time limit of a download whose request sets none.")
    max_timeout: Duration = Field(600.0, description="Longest download time a request may ask for; longer is clamped.")
    max_concurrent_fetches: Positive = Field(
        8, description="Downloads one server process runs at once; further requests wait.")
    max_redirects: Count = Field(5, description="HTTP redirects followed (each to an allowed host only).")
    fetch_errors: Literal["rpc", "response"] = Field(
        "rpc", description="Where a failed download is reported: rpc (the call fails with the code; Bazel 4.x"
                           " reads only this) or response (FetchBlobResponse.status, the call succeeds).")
    database: SqlUrl | None = Field(
        None, description="Database of the fetched/pushed URI -> digest records (SQLAlchemy URL); default:"
                          " <data dir>/remote-asset.sqlite; postgresql+psycopg://... to share it between servers.")
    retention: Duration = Field(
        30 * 86400.0, description="A downloaded record is reused this long, then forgotten; pushed records"
                                  " live until their expire_at (or this long if they set none).")
    archive_max_files: Positive = Field(100_000, description="FetchDirectory: most entries an archive may unpack to.")
    archive_max_size: Size = Field(
        4 << 30, description="FetchDirectory: most bytes an archive may unpack to.")
    archive_max_ratio: Positive = Field(
        200, description="FetchDirectory: most unpacked bytes per downloaded byte (refuses decompression bombs).")

    @model_validator(mode="after")
    def _consistent(self) -> RemoteAssetConfig:
        for key in ("default_timeout", "max_timeout", "retention"):
            if getattr(self, key) <= 0:
                raise problem("must be above 0", key=key)
        if self.default_timeout > self.max_timeout:
            raise problem(f"{self.default_timeout:g}s is above remote_asset.max_timeout ({self.max_timeout:g}s)",
                          key="default_timeout")
        return self


class BuildEventsSection(Section):
    """The Build Event Service (bazel --bes_backend) and its query API (docs/build-events.md)."""

    enabled: Flag = Field(True, description="Serve google.devtools.build.v1.PublishBuildEvent and granary.builds.v1.BuildEvents.")
    database: SqlUrl | None = Field(
        None, description="Where events are stored (SQLAlchemy URL); default: <data dir>/build-events.sqlite;"
                          " postgresql+psycopg://... to share it between servers.")
    retention: Duration = Field(
        7 * 86400.0, description="Streams and invocations untouched this long are deleted with their events; 0: kept forever.")
    cleanup_interval: Duration = Field(3600.0, description="How often each server process deletes what retention expired; 0: never.")
    max_event_size: Size = Field(4 << 20, description="Largest serialized event accepted; larger: INVALID_ARGUMENT.")
    max_events_per_stream: Positive = Field(
        1_000_000, description="Events one stream may hold; beyond: RESOURCE_EXHAUSTED.")
    max_streams_per_client: Positive = Field(
        16, description="Event streams one client (peer host, or identity with auth) may have open at once per server process.")
    max_open_streams: Positive = Field(1000, description="Event streams open at once per server process.")
    max_page_size: Positive = Field(1000, description="Most events or invocations one query returns.")
    max_regex_length: Positive = Field(256, description="Longest stream_id_regex accepted.")
    regex_timeout: Duration = Field(2.0, description="How long matching a regex against stream names may take before the query fails.")
    max_regex_streams: Positive = Field(
        100_000, description="Most recently active streams a regex is matched against (older ones are not found by a regex).")


class GranaryConfig(Section):
    """granary.yaml: the configuration of `granary serve`."""

    model_config = ConfigDict(title="granary.yaml")

    server: ServerSection = Field(default_factory=ServerSection, description="The server process(es).")
    storage: dict[str, CasStore] = Field(default_factory=dict, description="Named CAS stores.")
    action_caches: dict[str, AcStore] = Field(default_factory=dict, description="Named Action Cache stores.")
    instances: dict[str, InstanceSection] = Field(
        default_factory=dict, validate_default=True, description='Instance name -> stores; "*" answers every other name.')
    execution: ExecutionConfig | None = Field(
        None, description="Remote execution; instances execute unless they say `execution: false`.")
    auth: AuthSettings | None = Field(
        None, description="Authentication and per-instance permissions (docs/security.md); absent: no checks.")
    http: HttpSection = Field(
        default_factory=HttpSection, description="The HTTP port: metrics, health and readiness (docs/observability.md).")
    remote_asset: RemoteAssetConfig | None = Field(
        None, description="The Remote Asset API (Fetch, Push) on every instance (docs/remote-asset.md); absent: off.")
    build_events: BuildEventsSection = Field(
        default_factory=BuildEventsSection, description="Build Event Service and build queries (docs/build-events.md).")

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in ("storage", "action_caches", "instances"):
                if data.get(key) is None:
                    data.pop(key, None)
                else:
                    data[key] = _named(data[key])
            if "execution" in data and data["execution"] is None:
                data["execution"] = {}  # `execution:` alone turns execution on with the defaults
            if "remote_asset" in data and data["remote_asset"] is None:
                data["remote_asset"] = {}  # likewise `remote_asset:` with the defaults (no download host)
        return data

    @field_validator("instances")
    @classmethod
    def _some_instance(cls, value: dict[str, InstanceSection]) -> dict[str, InstanceSection]:
        if not value:
            raise problem('at least one instance is needed (e.g. "*": {cas: main})')
        return value

    @model_validator(mode="after")
    def _mtls_needs_client_ca(self) -> GranaryConfig:
        if self.auth is not None and self.auth.mtls is not None and (
            self.server.tls is None or self.server.tls.client_ca is None
        ):
            raise problem("needs server.tls.client_ca (the CA that signs client certificates)", path="auth.mtls")
        return self

    @model_validator(mode="after")
    def _execution_switches(self) -> GranaryConfig:
        section = self.execution is not None
        for inst in self.instances.values():
            if inst.execution is None:
                inst.execution = section
        if self.execution is None and any(i.execution for i in self.instances.values()):
            self.execution = ExecutionConfig()
        return self
