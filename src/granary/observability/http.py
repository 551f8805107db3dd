"""The HTTP port beside gRPC (aiohttp): /metrics, /healthz, /readyz.

Every server process serves it on the same port (SO_REUSEPORT), so any of them may answer; /metrics
sums all of them (prometheus_client multiprocess mode). The application's state is under the STATE
key and more routes can be added to `HttpPort.app` before it starts (the dashboard's:
observability/dashboard, with `http.dashboard`).

- /healthz: 200 `ok` while the process runs (a liveness probe; also while it drains).
- /readyz: 200 when every store and the queue database answer a cheap probe within
  `http.ready_timeout`, 503 otherwise and while the server drains at shutdown; the body says why.
- /metrics: Prometheus text format. With `auth:` configured it needs credentials (HTTP Basic or a
  bearer token, checked like gRPC's) unless `http.metrics_public` is set.
With `server.tls` the port speaks HTTPS with the same certificate (re-read when it changes), and with
`server.tls.client_ca` it requires a client certificate that CA signed, as the gRPC port does; with
`auth.mtls` that certificate names the caller (peer_auth_context).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from granary.errors import ConfigError, GranaryError

if TYPE_CHECKING:
    from granary.auth.identity import Identity
    from granary.auth.settings import AuthRuntime
    from granary.auth.tls import TlsFiles
    from granary.bootstrap import App

log = logging.getLogger("granary.observability")

READY_CACHE = 1.0  # seconds a readiness result is reused (probes from many load balancers)
TEXT = "text/plain"


class Readiness:
    """Whether this server should get new work: not while draining, nor when storage or the queue
    database does not answer."""

    def __init__(self, app: App, draining: Callable[[], bool], timeout: float):
        self.app = app
        self.draining = draining
        self.timeout = timeout
        self._last: tuple[float, bool, list[str]] | None = None
        self._running: asyncio.Future | None = None

    async def check(self) -> tuple[bool, list[str]]:
        if self.draining():
            return False, ["draining: the server is shutting down; send new work to another server"]
        last = self._last
        if last is not None and time.monotonic() - last[0] < READY_CACHE:
            return last[1], last[2]
        if self._running is None:  # concurrent probes share one check
            self._running = asyncio.ensure_future(self._probe_all())
        running = self._running
        try:
            ok, lines = await asyncio.shield(running)
        finally:
            if running.done() and self._running is running:
                self._running = None
        self._last = (time.monotonic(), ok, lines)
        return ok, lines

    async def _probe_all(self) -> tuple[bool, list[str]]:
        probes: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        for name, cas in self.app.cas_by_store.items():
            probes.append((f"storage {name}", lambda cas=cas: cas.store.find_missing([_probe_digest()])))
        builder = self.app.builder
        ac_stores = builder.ac_named.items() if builder is not None else []
        for name, store in ac_stores:
            probes.append((f"action cache {name}", lambda s=store: s.get(f"granary-readiness-probe-{uuid.uuid4()}")))
        farm = self.app.execution
        if farm is not None:
            probes.append(("queue database", lambda: farm.queue.run(_select_one, farm.queue)))
        results = await asyncio.gather(*(self._probe(what, fn) for what, fn in probes))
        ok = all(r[0] for r in results)
        return ok, [line for _, line in results]

    async def _probe(self, what: str, fn: Callable[[], Awaitable[Any]]) -> tuple[bool, str]:
        start = time.perf_counter()
        try:
            await asyncio.wait_for(fn(), self.timeout)
        except TimeoutError:
            return False, f"{what}: no answer within {self.timeout:g}s"
        except Exception as e:  # noqa: BLE001 - any failure means not ready, and says why
            return False, f"{what}: {type(e).__name__}: {e}"[:500]
        return True, f"{what}: ok ({(time.perf_counter() - start) * 1000:.1f} ms)"


def _probe_digest() -> Any:
    from granary import digest as dg

    return dg.compute(dg.SHA256, b"granary readiness probe " + uuid.uuid4().bytes)


def _select_one(queue: Any) -> None:
    from sqlalchemy import text

    with queue.read_engine.connect() as conn:
        conn.execute(text("SELECT 1")).scalar_one()


class MetricsAccess:
    """Who may read /metrics: anyone without `auth:` (or with http.metrics_public), else a caller whose
    credentials the server accepts, or anyone when anonymous callers may do something somewhere."""

    def __init__(self, auth: AuthRuntime | None, public: bool):
        self.auth = None if public else auth

    async def check(self, request: web.Request) -> None:
        if self.auth is None:
            return
        from granary.auth.permissions import Permission

        identity = await identify(self.auth, request)
        if identity.authenticated or any(self.auth.policy.anonymous_may_anywhere(p) for p in Permission):
            return
        raise web.HTTPUnauthorized(
            text="/metrics needs credentials (Authorization: Basic or Bearer), or http.metrics_public: true\n",
            headers=CHALLENGE)


CHALLENGE = {"WWW-Authenticate": 'Basic realm="granary"'}


async def identify(auth: AuthRuntime, request: web.Request) -> Identity:
    """The caller of an HTTP request, by the gRPC port's authenticator (Authorization: Basic or
    Bearer, the token header, or with auth.mtls the TLS client certificate); 401 for credentials it
    refuses, 503 when it cannot check them."""
    from granary.auth.authenticator import AUTHORIZATION

    authenticator = auth.authenticator
    wanted = {AUTHORIZATION, authenticator.token_header.lower()}
    metadata = [(k.lower(), v) for k, v in request.headers.items() if k.lower() in wanted]
    try:
        return await authenticator.identify(metadata, peer_auth_context(request))
    except GranaryError as e:
        raise web.HTTPUnauthorized(text=f"{e.message}\n", headers=CHALLENGE) from None
    except Exception as e:  # noqa: BLE001 - e.g. the token database is down
        raise web.HTTPServiceUnavailable(text=f"cannot check credentials now: {type(e).__name__}\n") from None


def peer_auth_context(request: web.Request) -> dict[str, list[bytes]] | None:
    """The client certificate of an HTTPS request in the shape gRPC reports it (its auth context), so
    `auth.mtls` names HTTP callers as it names gRPC ones; None without TLS or a certificate."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport is not None else None
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return None
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    alt = [value for _kind, value in cert.get("subjectAltName", ())]
    return {
        "transport_security_type": [b"ssl"],
        "x509_common_name": [n.encode() for n in names],
        "x509_subject_alternative_name": [a.encode() for a in alt],
    }


class HttpState:
    """What the routes use."""

    def __init__(self, render_metrics: Callable[[], Awaitable[bytes]], readiness: Readiness,
                 access: MetricsAccess, content_type: str):
        self.render_metrics = render_metrics
        self.readiness = readiness
        self.access = access
        self.content_type = content_type


STATE = web.AppKey("granary_http", HttpState)


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n", content_type=TEXT)


async def readyz(request: web.Request) -> web.Response:
    ok, lines = await request.app[STATE].readiness.check()
    body = "\n".join(["ready" if ok else "not ready", *lines]) + "\n"
    return web.Response(text=body, status=200 if ok else 503, content_type=TEXT)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await state.access.check(request)
    body = await state.render_metrics()
    return web.Response(body=body, headers={"Content-Type": state.content_type})


@web.middleware
async def _headers(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    response = await handler(request)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """The gRPC port's certificate, re-read on a new handshake when its files changed."""
    from granary.auth.tls import _read

    def load() -> ssl.SSLContext:
        _read(files.cert, "cert")  # one-line errors naming the key for unreadable files
        _read(files.key, "key")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(files.cert, files.key)
        if files.client_ca is not None:  # mTLS, as on the gRPC port: a certificate the CA signed
            ctx.load_verify_locations(cafile=str(_read_path(files.client_ca)))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _read_path(path: Any) -> Any:
        _read(path, "client_ca")
        return path

    def mtimes() -> tuple[int, ...]:
        paths = [files.cert, files.key] + ([files.client_ca] if files.client_ca is not None else [])
        return tuple(os.stat(p).st_mtime_ns for p in paths)

    try:
        current = [load(), mtimes()]
    except ssl.SSLError as e:
        raise ConfigError(f"server.tls: cannot use the certificate for the HTTP port: {e}") from None

    def renew(sock: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        try:
            seen = mtimes()
            if seen != current[1]:
                current[:] = [load(), seen]
                current[0].sni_callback = renew
            sock.context = current[0]
        except (OSError, ssl.SSLError, ConfigError) as e:
            log.warning("HTTP port: keeping the old certificate: %s", e)

    current[0].sni_callback = renew
    return current[0]


class HttpPort:
    def __init__(self, host: str, port: int, state: HttpState, ssl_context: ssl.SSLContext | None = None):
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.app = web.Application(middlewares=[_headers], client_max_size=1 << 20)
        self.app[STATE] = state
        self.app.router.add_get("/healthz", healthz)
        self.app.router.add_get("/readyz", readyz)
        self.app.router.add_get("/metrics", metrics)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        # bodies are stored as sent: the HTTP cache (httpcache/) decodes Content-Encoding: zstd itself
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_port=True, ssl_context=self.ssl_context)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(f"http.listen: cannot listen on {self.host}:{self.port}: {e.strerror}") from None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
