"""The composition root: configuration in, wired objects out. Nothing else builds stores."""

from __future__ import annotations

from dataclasses import dataclass, field

from granary.actioncache.actioncache import ActionCache
from granary.actioncache.store import ActionCacheStore
from granary.cas.blobstore import BlobStore
from granary.cas.cas import ContentAddressableStorage
from granary.cleanup import Janitor
from granary.config import Config, InstanceSpec, StoreSpec
from granary.execution.farm import ExecutionFarm, database_url
from granary.execution.scheduler import ExecutionInstance, execution_capabilities
from granary.extras import require_database
from granary.instance import WILDCARD, Instance, Instances
from granary.storage_builder import StoreBuilder


def build_blob_store(spec: StoreSpec, cfg: Config) -> BlobStore:
    """One store (a whole tree of them for wrapping types); see storage_builder."""
    return StoreBuilder(cfg).blob_store(spec)


def build_ac_store(spec: StoreSpec, cfg: Config) -> ActionCacheStore:
    return StoreBuilder(cfg).ac_store(spec)


@dataclass
class App:
    instances: Instances
    cas_by_store: dict[str, ContentAddressableStorage]
    blob_stores: list[BlobStore] = field(default_factory=list)
    ac_stores: list[ActionCacheStore] = field(default_factory=list)
    execution: ExecutionFarm | None = None
    janitors: list[Janitor] = field(default_factory=list)  # cleanup of indexed stores
    builder: StoreBuilder | None = None  # owns every store of every tree

    async def close(self) -> None:
        if self.execution is not None:
            await self.execution.close()
        if self.builder is not None:  # closes every store of every tree, wrappers first
            await self.builder.close()
            return
        for s in self.blob_stores:
            await s.close()
        for a in self.ac_stores:
            await a.close()


def build_app(cfg: Config) -> App:
    blob_stores: dict[str, BlobStore] = {}
    cas_by_store: dict[str, ContentAddressableStorage] = {}
    ac_stores: dict[str, ActionCacheStore] = {}

    builder = StoreBuilder(cfg)

    def cas_for(name: str) -> ContentAddressableStorage:
        if name not in cas_by_store:
            blob_stores[name] = builder.named_blob_store(name)
            limits = cfg.server
            cas_by_store[name] = ContentAddressableStorage(
                blob_stores[name],
                max_batch_bytes=cfg.max_batch_size,
                max_digests_per_request=limits.max_digests_per_request,
                max_blob_bytes=limits.max_blob_size,
                max_uploads=limits.max_uploads,
                max_uploads_per_client=limits.max_uploads_per_client,
                max_upload_bytes=limits.max_upload_bytes,
                upload_ttl=limits.upload_ttl,
            )
        return cas_by_store[name]

    def ac_store_for(name: str) -> ActionCacheStore:
        if name not in ac_stores:
            ac_stores[name] = builder.named_ac_store(name)
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
                max_inline_field_bytes=cfg.server.ac_max_inline_size,
                max_result_bytes=cfg.server.ac_max_result_size,
            )
        inst = Instance(name, cas, ac)
        if spec.execution and cfg.execution is not None:
            inst.extras["execution"] = ExecutionInstance(queue=spec.cas)
            inst.extras["execution_capabilities"] = execution_capabilities(cfg.execution)
        return inst

    exact = {name: make(spec, name) for name, spec in cfg.instances.items() if name != WILDCARD}
    wildcard = None
    if WILDCARD in cfg.instances:
        wspec = cfg.instances[WILDCARD]
        make(wspec, "")  # open its stores now, so configuration errors show at start-up

        def wildcard(name: str) -> Instance:
            return make(wspec, name)

    instances = Instances(exact, wildcard)
    farm = None
    if cfg.execution is not None and any(s.execution for s in cfg.instances.values()):
        require_database(database_url(cfg), "execution.database", notify=True)
        farm = ExecutionFarm(cfg.execution, database_url(cfg), instances)
    return App(
        instances, cas_by_store, list(blob_stores.values()), list(ac_stores.values()), farm,
        janitors=builder.janitors(), builder=builder,
    )
