"""The observability of one server process, assembled for server.serve: the request interceptor,
health and reflection on the gRPC port, the counting wrappers, and the HTTP port.

Metrics are kept only when the HTTP port is on (`http.enabled`); otherwise prometheus_client and
aiohttp are not even imported, and the interceptor runs only if request logs are wanted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from granary.instance import WILDCARD
from granary.observability.interceptor import InstanceLabels, RequestObserver
from granary.observability.runarea import METRICS_DIR_ENV, address_from_environment

if TYPE_CHECKING:
    import grpc

    from granary.auth.settings import AuthRuntime
    from granary.bootstrap import App
    from granary.config import Config
    from granary.observability.grpc_services import HealthAndReflection
    from granary.observability.http import HttpPort

SAMPLE_EVERY = 1.0  # seconds between updates of this process's live gauges and writes of its counts


class Observability:
    def __init__(self, cfg: Config, app: App, auth: AuthRuntime | None, draining: Callable[[], bool]):
        self.cfg = cfg
        self.app = app
        self.auth = auth
        self.draining = draining
        self.address = address_from_environment(cfg)
        self.labels = InstanceLabels(
            (n for n in cfg.instances if n != WILDCARD), WILDCARD in cfg.instances, cfg.http.max_instance_labels)
        self.metrics: Any = None
        self.instances: Any = app.instances  # what the Action Cache and Execution services use
        if self.address is not None:
            from granary.observability import metrics
            from granary.observability.collector import ScrapeCollector
            from granary.observability.meters import (
                MeteredInstances,
                Sampler,
                count_evictions,
                meter_cas,
                observe_queue,
                store_labels,
            )

            self.metrics = metrics
            stores = store_labels(app)
            meter_cas(app, metrics, stores)
            count_evictions(app, metrics, stores)
            if app.execution is not None:
                observe_queue(app.execution, metrics)
            self.instances = MeteredInstances(app.instances, self.labels, metrics)
            self.sampler = Sampler(app, metrics, stores)
            self.collector = ScrapeCollector(app, cfg, stores)
        self.observer = RequestObserver(self.labels, self.metrics)
        self._grpc: HealthAndReflection | None = None
        self._http: HttpPort | None = None
        self.builds: Any = None  # the Build Event Service's queries (bes/query.py), set by server.serve; None: off
        self._sampling: asyncio.Task | None = None

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The outermost interceptor (before auth): it sees every call, refused ones too."""
        return [self.observer] if self.observer.active else []

    def add_grpc_services(self, server: grpc.aio.Server, services: Iterable[str]) -> None:
        from granary.observability.grpc_services import HealthAndReflection

        self._grpc = HealthAndReflection(server, services)

    async def start(self) -> None:
        if self._grpc is not None:
            await self._grpc.serving()
        if self.address is None:
            return
        from granary.observability.http import HttpPort, HttpState, MetricsAccess, Readiness, tls_context

        readiness = Readiness(self.app, self.draining, self.cfg.http.ready_timeout)
        access = MetricsAccess(self.auth, self.cfg.http.metrics_public)
        from prometheus_client import CONTENT_TYPE_LATEST

        state = HttpState(self.render_metrics, readiness, access, CONTENT_TYPE_LATEST)
        ssl_context = tls_context(self.cfg.tls.files(self.cfg.data_dir)) if self.cfg.tls is not None else None
        host, port = self.address
        self._http = HttpPort(host, port, state, ssl_context)
        if self.cfg.http.dashboard:
            from granary.observability.dashboard.routes import Dashboard

            Dashboard(self.cfg, self.app, self.auth, self.render_metrics, self.builds).register(self._http.app)
        if self.cfg.http.cache.enabled:  # bazel-remote, ccache and Gradle HTTP caches (docs/http-cache.md)
            from granary.httpcache.routes import HttpCache

            HttpCache(self.cfg, self.app, self.auth).register(self._http.app)
        await self._http.start()
        self._sampling = asyncio.ensure_future(self._sample_forever())

    async def begin_draining(self) -> None:
        if self._grpc is not None:
            await self._grpc.draining()

    async def close(self) -> None:
        if self._sampling is not None:
            self._sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampling
        if self._http is not None:
            await self._http.close()
        if self.metrics is not None:
            self.metrics.PENDING.flush()  # the last calls' counts

    def _sample(self) -> None:
        self.sampler.sample()
        self.metrics.PENDING.flush()

    async def _sample_forever(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(SAMPLE_EVERY)

    async def render_metrics(self) -> bytes:
        """The Prometheus text of every server process of this run, plus what is read at scrape time."""
        from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess

        from granary.observability.collector import Families
        from granary.observability.runarea import forget_dead_processes

        self._sample()
        families = await self.collector.gather()
        path = os.environ.get(METRICS_DIR_ENV)

        def build() -> bytes:
            registry = CollectorRegistry(auto_describe=False)
            if path:
                forget_dead_processes(path)
                multiprocess.MultiProcessCollector(registry, path=path)
            else:  # a server process started without a metrics directory: its own values
                registry.register(REGISTRY)
            registry.register(Families(families))
            return generate_latest(registry)

        return await asyncio.to_thread(build)
