"""Part of the composition root: store specs (trees of them) in, store objects out.

A named store is built once and shared by everything that refers to it.
`built` lists every store in construction order (children before parents),
so closing in reverse closes wrappers (which may still flush to their
children) before what they wrap. The janitors of indexed stores are wired
here too, each with the Action Caches of the instances whose CAS holds it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from granary.actioncache.remote import RemoteActionCacheStore
from granary.actioncache.sql import SqlActionCacheStore
from granary.actioncache.store import ActionCacheStore, MemoryActionCacheStore, SqliteActionCacheStore
from granary.cas.blobstore import BlobStore
from granary.cas.disk import DiskBlobStore
from granary.cas.indexed import IndexedBlobStore
from granary.cas.memory import MemoryBlobStore
from granary.cas.remote import RemoteBlobStore
from granary.cas.sharded import ShardedBlobStore
from granary.cas.sizesplit import SizeSplitBlobStore
from granary.cas.tiered import TieredBlobStore
from granary.cleanup import Janitor
from granary.config import Config, StoreRef, StoreSpec
from granary.errors import ConfigError
from granary.extras import require_store
from granary.instance import WILDCARD as WILDCARD_INSTANCE
from granary.remote_endpoint import RemoteEndpoint
from granary.sql import make_engine, resolve_url

if TYPE_CHECKING:
    from granary.s3_client import S3Connection

T = TypeVar("T")


class StoreBuilder:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.named: dict[str, BlobStore] = {}
        self.built: list[BlobStore] = []
        self.ac_named: dict[str, ActionCacheStore] = {}
        self.ac_built: list[ActionCacheStore] = []
        self.indexed: list[tuple[IndexedBlobStore, StoreSpec]] = []
        self._indexed_under: dict[int, list[IndexedBlobStore]] = {}  # id(store) -> indexed stores in its tree

    # ---- CAS ----------------------------------------------------------------

    def named_blob_store(self, name: str) -> BlobStore:
        if name not in self.named:
            self.named[name] = self.blob_store(self.cfg.storage[name])
        return self.named[name]

    def blob_store(self, spec: StoreSpec | StoreRef) -> BlobStore:
        if isinstance(spec, StoreRef):
            return self.named_blob_store(spec.name)
        store = self._make(spec)
        self.built.append(store)
        return store

    def indexed_under(self, store: BlobStore) -> list[IndexedBlobStore]:
        return self._indexed_under.get(id(store), [])

    def _note(self, parent: BlobStore, children: list[BlobStore]) -> None:
        under: list[IndexedBlobStore] = []
        for child in children:
            under += [i for i in self.indexed_under(child) if i not in under]
        if isinstance(parent, IndexedBlobStore):
            under.append(parent)
        self._indexed_under[id(parent)] = under

    def _make(self, spec: StoreSpec) -> BlobStore:
        o, cfg = spec.options, self.cfg
        require_store(spec.type, o, spec.where)  # Redis, S3 and PostgreSQL are extras, imported only here
        children: list[BlobStore] = []

        def child(s: StoreSpec | StoreRef) -> BlobStore:
            store = self.blob_store(s)
            children.append(store)
            return store

        store: BlobStore
        if spec.type == "memory":
            store = MemoryBlobStore(o["max_size"])
        elif spec.type == "disk":
            store = DiskBlobStore(
                cfg.resolve_path(o["path"]), o["max_size"], pack_max_blob=o["pack_max_blob"], fsync=o["fsync"]
            )
        elif spec.type == "redis":
            from granary.cas.redis import RedisBlobStore

            store = RedisBlobStore(
                o["url"], prefix=o["prefix"], max_blob_size=o["max_blob_size"], ttl=int(o["ttl"]),
                max_connections=o["max_connections"],
            )
        elif spec.type == "s3":
            from granary.cas.s3 import S3BlobStore

            store = S3BlobStore(s3_connection(o), prefix=o["prefix"], part_size=o["part_size"],
                                concurrency=o["concurrency"])
        elif spec.type == "remote":
            store = RemoteBlobStore(remote_endpoint(o, spec.where, cfg.data_dir), instance_name=o["instance_name"],
                                    max_batch_size=o["max_batch_size"])
        elif spec.type == "tiered":
            store = TieredBlobStore(
                child(o["cache"]), child(o["fallback"]), defer_fallback_writes=o["defer_fallback_writes"],
                queue_max_blobs=o["queue_max_blobs"], queue_max_bytes=o["queue_max_bytes"],
                queue_workers=o["queue_workers"],
                # the backlog of deferred copies survives a crash (granary.cas.fallback_queue)
                queue_journal=cfg.data_dir / "fallback-queue" / f"{spec.where}.sqlite"
                if o["defer_fallback_writes"] else None,
            )
        elif spec.type == "sizesplit":
            tiers = [(max_size, child(s)) for max_size, s in o["stores"]]
            store = SizeSplitBlobStore(tiers, child(o["fallback"]))
        elif spec.type == "sharded":
            store = ShardedBlobStore([(name, weight, child(s)) for name, weight, s in o["shards"]])
        elif spec.type == "indexed":
            inner = child(o["store"])
            store = _open_db(spec.where, lambda: IndexedBlobStore(
                inner, make_engine(resolve_url(o["url"], cfg.data_dir)), table=o["table"]))
            self.indexed.append((store, spec))
        else:
            raise AssertionError(spec.type)
        self._note(store, children)
        return store

    # ---- Action Cache ---------------------------------------------------------

    def named_ac_store(self, name: str) -> ActionCacheStore:
        if name not in self.ac_named:
            store = self.ac_store(self.cfg.action_caches[name])
            self.ac_named[name] = store
        return self.ac_named[name]

    def ac_store(self, spec: StoreSpec) -> ActionCacheStore:
        o, cfg = spec.options, self.cfg
        require_store(spec.type, o, spec.where)
        store: ActionCacheStore
        if spec.type == "memory":
            store = MemoryActionCacheStore(o["max_entries"], o["max_size"])
        elif spec.type == "disk":
            store = SqliteActionCacheStore(
                cfg.resolve_path(o["path"]) / "actioncache.sqlite", o["max_entries"], o["max_size"]
            )
        elif spec.type == "sqlite":
            store = SqliteActionCacheStore(cfg.resolve_path(o["path"]), o["max_entries"], o["max_size"])
        elif spec.type == "redis":
            from granary.actioncache.redis import RedisActionCacheStore

            store = RedisActionCacheStore(o["url"], prefix=o["prefix"], max_age=int(o["max_age"]),
                                          max_connections=o["max_connections"])
        elif spec.type == "s3":
            from granary.actioncache.s3 import S3ActionCacheStore

            store = S3ActionCacheStore(s3_connection(o), prefix=o["prefix"], max_age=int(o["max_age"]))
        elif spec.type == "sql":
            store = _open_db(spec.where, lambda: SqlActionCacheStore(
                make_engine(resolve_url(o["url"], cfg.data_dir)), table=o["table"], max_age=int(o["max_age"])))
        elif spec.type == "remote":
            store = RemoteActionCacheStore(remote_endpoint(o, spec.where, cfg.data_dir),
                                           instance_name=o["instance_name"])
        else:
            raise AssertionError(spec.type)
        self.ac_built.append(store)
        return store

    # ---- janitors -------------------------------------------------------------

    def janitors(self) -> list[Janitor]:
        """One per indexed store, with the Action Caches of the instances whose CAS contains it."""
        cfg = self.cfg
        exact = {n for n in cfg.instances if n != WILDCARD_INSTANCE}
        out = []
        for index, spec in self.indexed:
            caches: list[tuple[ActionCacheStore, Callable[[str], bool]]] = []
            for name, inst in cfg.instances.items():
                if inst.action_cache is None or inst.cas not in self.named:
                    continue
                if index not in self.indexed_under(self.named[inst.cas]):
                    continue
                if name == WILDCARD_INSTANCE:
                    wanted: Callable[[str], bool] = lambda ns: ns not in exact
                else:
                    wanted = lambda ns, name=name: ns == name
                caches.append((self.named_ac_store(inst.action_cache), wanted))
            o = spec.options
            out.append(Janitor(
                index, spec.where, caches, max_size=o["max_size"], cleanup_to=o["cleanup_to"],
                interval=o["janitor_interval"], protect_recent=o["protect_recent"],
            ))
        return out

    async def close(self) -> None:
        for store in reversed(self.built):
            await store.close()
        for ac in reversed(self.ac_built):
            await ac.close()


def _open_db(where: str, make: Callable[[], T]) -> T:
    """Open a store whose database must answer now: failure stops start-up with one line."""
    try:
        return make()
    except SQLAlchemyError as e:
        detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise ConfigError(f"{where}.url: cannot use the database: {detail}") from None


def s3_connection(o: dict) -> S3Connection:
    from granary.s3_client import S3Connection

    return S3Connection(
        bucket=o["bucket"], endpoint_url=o["endpoint_url"], region=o["region"],
        access_key_id=o["access_key_id"], secret_access_key=o["secret_access_key"],
        session_token=o["session_token"], max_connections=o["max_connections"],
        create_bucket=o["create_bucket"], addressing_style=o["addressing_style"],
    )


def remote_endpoint(o: dict, where: str, base: Path) -> RemoteEndpoint:
    def path(key: str) -> Path | None:
        if o[key] is None:
            return None
        p = Path(o[key]).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise ConfigError(f"{where}.{key}: no such file {str(p)!r}")
        return p

    token = o["auth_token"]
    token_file = path("auth_token_file")
    if token_file is not None:
        token = token_file.read_text().strip()
    return RemoteEndpoint(
        address=o["address"], tls_ca_cert=path("tls_ca_cert"), tls_client_cert=path("tls_client_cert"),
        tls_client_key=path("tls_client_key"), auth_header=o["auth_header"], auth_token=token,
        channel_options=dict(o["channel_options"]), timeout=o["timeout"],
    )
