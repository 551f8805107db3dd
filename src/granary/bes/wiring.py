"""Building the Build Event Service from the configuration and adding it to a server.

Imported with granary.server, so a supervisor's server processes share these modules
(granary.preload) instead of each importing its own copy.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from granary._proto.google.devtools.build.v1 import publish_build_event_pb2
from granary._proto.granary.builds.v1 import builds_pb2
from granary.bes.ingest import Ingest, Limits
from granary.bes.query import Queries
from granary.bes.store import EventStore
from granary.config_models import BuildEventsSection
from granary.extras import require_database
from granary.services.bes_service import BuildEventsService, PublishBuildEventService
from granary.services.registry import add_servicer
from granary.sql import resolve_url

if TYPE_CHECKING:
    import grpc

    from granary.config import Config
    from granary.services.client_key import ClientKey


def settings(cfg: Config) -> BuildEventsSection:
    return cfg.file.build_events if cfg.file is not None else BuildEventsSection()


def database_url(cfg: Config) -> str:
    s = settings(cfg)
    if s.database is None:
        return f"sqlite:///{cfg.data_dir / 'build-events.sqlite'}"
    return resolve_url(s.database, cfg.data_dir)  # a relative SQLite file lives in the data directory


@dataclass
class BuildEventServices:
    store: EventStore
    queries: Queries  # also what the dashboard's builds pages ask (observability/dashboard)
    services: list[str]
    retention: float
    cleanup_interval: float
    _tasks: list[asyncio.Future] = field(default_factory=list)

    def start(self) -> None:
        if self.retention > 0 and self.cleanup_interval > 0:
            self._tasks.append(asyncio.ensure_future(self.store.run_cleanup(self.retention, self.cleanup_interval)))

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self.store.close()


def add_build_event_services(server: grpc.aio.Server, cfg: Config, client_key: ClientKey) -> BuildEventServices | None:
    """PublishBuildEvent and BuildEvents on `server` (None when build_events.enabled is false)."""
    s = settings(cfg)
    if not s.enabled:
        return None
    url = database_url(cfg)
    require_database(url, "build_events.database")
    store = EventStore(url, max_events_per_stream=s.max_events_per_stream)
    store.create_schema()
    limits = Limits(s.max_event_size, s.max_streams_per_client, s.max_open_streams)
    queries = Queries(store, max_page_size=s.max_page_size, max_regex_length=s.max_regex_length,
                      regex_timeout=s.regex_timeout, max_regex_streams=s.max_regex_streams,
                      max_events_per_stream=s.max_events_per_stream)
    publish = publish_build_event_pb2.DESCRIPTOR.services_by_name["PublishBuildEvent"]
    query = builds_pb2.DESCRIPTOR.services_by_name["BuildEvents"]
    add_servicer(server, PublishBuildEventService(Ingest(store, limits), client_key), publish)
    add_servicer(server, BuildEventsService(queries), query)
    return BuildEventServices(store, queries, [publish.full_name, query.full_name], s.retention, s.cleanup_interval)
