"""The composition root: configuration in, wired objects out. Nothing else builds stores."""

from __future__ import annotations

from dataclasses import dataclass, field

from granary.actioncache.actioncache import ActionCache
from granary.actioncache.store import ActionCacheStore, MemoryActionCacheStore, SqliteActionCacheStore
from granary.cas.blobstore import BlobStore
from granary.cas.cas import ContentAddressableStorage
from granary.cas.disk import DiskBlobStore
from granary.cas.memory import MemoryBlobStore
from granary.config import Config, InstanceSpec, StoreSpec
from granary.instance import WILDCARD, Instance, Instances


def build_blob_store(spec: StoreSpec, cfg: Config) -> BlobStore:
    o = spec.options
    if spec.type == "memory":
        return MemoryBlobStore(o["max_size"])
    if spec.type == "disk":
        return DiskBlobStore(
            cfg.resolve_path(o["path"]),
            o["max_size"],
            pack_max_blob=o["pack_max_blob"],
            fsync=o["fsync"],
        )
    raise AssertionError(spec.type)


def build_ac_store(spec: StoreSpec, cfg: Config) -> ActionCacheStore:
    o = spec.options
    if spec.type == "memory":
        return MemoryActionCacheStore(o["max_entries"])
    if spec.type == "disk":
        return SqliteActionCacheStore(cfg.resolve_path(o["path"]) / "actioncache.sqlite", o["max_entries"])
    if spec.type == "sqlite":
        return SqliteActionCacheStore(cfg.resolve_path(o["path"]), o["max_entries"])
    raise AssertionError(spec.type)


@dataclass
class App:
    instances: Instances
    cas_by_store: dict[str, ContentAddressableStorage]
    blob_stores: list[BlobStore] = field(default_factory=list)
    ac_stores: list[ActionCacheStore] = field(default_factory=list)

    async def close(self) -> None:
        for s in self.blob_stores:
            await s.close()
        for a in self.ac_stores:
            await a.close()


def build_app(cfg: Config) -> App:
    blob_stores: dict[str, BlobStore] = {}
    cas_by_store: dict[str, ContentAddressableStorage] = {}
    ac_stores: dict[str, ActionCacheStore] = {}

    def cas_for(name: str) -> ContentAddressableStorage:
        if name not in cas_by_store:
            blob_stores[name] = build_blob_store(cfg.storage[name], cfg)
            cas_by_store[name] = ContentAddressableStorage(blob_stores[name], max_batch_bytes=cfg.max_batch_size)
        return cas_by_store[name]

    def ac_store_for(name: str) -> ActionCacheStore:
        if name not in ac_stores:
            ac_stores[name] = build_ac_store(cfg.action_caches[name], cfg)
        return ac_stores[name]

    def make(spec: InstanceSpec, name: str) -> Instance:
        cas = cas_for(spec.cas)
        ac = None
        if spec.action_cache is not None:
            ac = ActionCache(
                ac_store_for(spec.action_cache),
                cas,
                namespace=name,
                allow_updates=spec.allow_updates,
                write_once=spec.write_once,
                check_completeness=spec.check_completeness,
            )
        return Instance(name, cas, ac)

    exact = {name: make(spec, name) for name, spec in cfg.instances.items() if name != WILDCARD}
    wildcard = None
    if WILDCARD in cfg.instances:
        wspec = cfg.instances[WILDCARD]
        make(wspec, "")  # open its stores now, so configuration errors show at start-up

        def wildcard(name: str) -> Instance:
            return make(wspec, name)

    return App(Instances(exact, wildcard), cas_by_store, list(blob_stores.values()), list(ac_stores.values()))
