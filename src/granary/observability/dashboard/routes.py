"""The dashboard's routes on the HTTP port (`http.dashboard`, default on; docs/observability.md).

Pages (one HTML shell, the script fills it from the JSON endpoints):
    /                   -> redirect to /ui/
    /ui/                overview, live (polls /api/v1/overview every 2 s)
    /ui/operations      ListOperations with its filter language, sorting and page tokens
    /ui/operation       one operation (?name=)
    /ui/workers         bot sessions, their platform, slots and jobs
    /ui/cas             the CAS browser (?instance=&digest=&view=)
    /ui/builds          the invocations the Build Event Service stored (`granary builds`), paged
    /ui/build           one invocation (?id=): targets, tests, failures, and its operations
    /ui/static/{file}   the script and style sheet (package data, no data in them)
JSON:
    /api/v1/overview, /api/v1/instances, /api/v1/operations, /api/v1/operation, /api/v1/workers,
    /api/v1/blob; and /api/v1/download (a blob as an attachment, streamed);
    /api/v1/builds, /api/v1/build (the BuildEvents query service's ListInvocations, GetInvocation);
    /api/v1/logstream (a live log stream from an offset, long-polled: a running action's output).

Every request is checked by the gRPC port's authenticator and policy (access.py). Every input is
bounded and validated (views.py); errors are JSON `{"error", "code"}` with the message gRPC gives.
Responses forbid inline script and other origins (Content-Security-Policy) and framing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from google.protobuf.message import DecodeError

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.granary.builds.v1 import builds_pb2
from granary.auth.permissions import Permission
from granary.errors import GranaryError, InvalidArgument, NotFound, Unimplemented
from granary.execution.operations import stream_read_name
from granary.instance import WILDCARD
from granary.observability import overview as ov
from granary.observability.dashboard import views
from granary.observability.dashboard.access import Access, Visitor, http_error
from granary.observability.dashboard.sessions import read_sessions
from granary.resource_names import parse_logstream

if TYPE_CHECKING:
    from granary.auth.settings import AuthRuntime
    from granary.bes.query import Queries
    from granary.bootstrap import App
    from granary.cas.cas import ContentAddressableStorage
    from granary.config import Config

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
       " form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",  # also on refusals, which the port's middleware does not see
    "Cache-Control": "no-store",
}
PAGES = ("/ui", "/ui/", "/ui/operations", "/ui/operation", "/ui/workers", "/ui/cas", "/ui/builds", "/ui/build")
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
SNAPSHOT_REUSE = 1.0  # seconds an overview snapshot serves every poll (many open dashboards: one scrape)
RATE_WINDOW = 6.0  # rates are over the oldest snapshot this recent (a few polls: steady numbers)
HISTORY = 12.0  # seconds of snapshots kept
TEXT_CAP = 64 << 10  # bytes of stdout, stderr or a blob shown inline; the rest is a download away
MAX_PARSED = 4 << 20  # largest Directory, Tree, Action or Command blob read whole to be shown
LOG_CAP = 64 << 10  # bytes of a live log stream one /api/v1/logstream answer carries at most
MAX_OPERATION_INSTANCES = 20  # instances an invocation's operations are counted on
BUILDS_OFF = "build events are off on this server (build_events.enabled: false)"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _secured(handler: Handler) -> Handler:
    """Security headers on every answer, and domain errors as JSON with their HTTP status."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except GranaryError as e:
            err = http_error(e)
            err.headers.update(SECURITY_HEADERS)
            raise err from None
        except web.HTTPException as e:
            e.headers.update(SECURITY_HEADERS)
            raise
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    return run


def _json(body: Any) -> web.Response:
    return web.json_response(body)


class Dashboard:
    def __init__(self, cfg: Config, app: App, auth: AuthRuntime | None, render_metrics: Callable[[], Awaitable[bytes]],
                 builds: Queries | None = None):
        self.cfg = cfg
        self.app = app
        self.builds = builds  # the BuildEvents query service's code over its store; None: build_events is off
        self.access = Access(auth)
        self.render_metrics = render_metrics
        self._history: deque[ov.Snapshot] = deque()
        self._lock = asyncio.Lock()
        files = resources.files("granary.observability.dashboard") / "static"
        self._shell = (files / "index.html").read_bytes()
        self._static = {name: (files / name).read_bytes() for name in STATIC}
        self.started = time.time()

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", _secured(self.root))
        for path in PAGES:
            r.add_get(path, _secured(self.page))
        r.add_get("/ui/static/{name}", _secured(self.static))
        r.add_get("/api/v1/overview", _secured(self.overview))
        r.add_get("/api/v1/instances", _secured(self.instances))
        r.add_get("/api/v1/operations", _secured(self.operations))
        r.add_get("/api/v1/operation", _secured(self.operation))
        r.add_get("/api/v1/workers", _secured(self.workers))
        r.add_get("/api/v1/blob", _secured(self.blob))
        r.add_get("/api/v1/download", _secured(self.download))
        r.add_get("/api/v1/builds", _secured(self.list_builds))
        r.add_get("/api/v1/build", _secured(self.build))
        r.add_get("/api/v1/logstream", _secured(self.logstream))

    # ---- pages ------------------------------------------------------------------------------

    async def root(self, _request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def page(self, request: web.Request) -> web.Response:
        visitor = await self.access.visitor(request)
        self.access.require_known(visitor, "the dashboard")
        return web.Response(body=self._shell, content_type="text/html", charset="utf-8")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self._static.get(name)
        if body is None:
            raise web.HTTPNotFound(text="no such file\n")
        return web.Response(body=body, content_type=STATIC[name], charset="utf-8")

    # ---- overview ---------------------------------------------------------------------------

    async def _snapshot(self) -> ov.Snapshot:
        """The newest snapshot, taken now unless one is younger than SNAPSHOT_REUSE."""
        async with self._lock:
            now = time.monotonic()
            if self._history and now - self._history[-1].at < SNAPSHOT_REUSE:
                return self._history[-1]
            text = (await self.render_metrics()).decode("utf-8", "replace")
            snap = await asyncio.to_thread(ov.parse, text, time.monotonic())
            self._history.append(snap)
            while self._history and snap.at - self._history[0].at > HISTORY:
                self._history.popleft()
            return snap

    def _before(self, snap: ov.Snapshot) -> ov.Snapshot | None:
        for old in self._history:
            if snap.at - old.at <= RATE_WINDOW:
                return old if old is not snap else None
        return None

    async def overview(self, request: web.Request) -> web.Response:
        visitor = await self.access.visitor(request)
        self.access.require_known(visitor, "the overview")
        snap = await self._snapshot()
        body = ov.overview(snap, self._before(snap))
        body["time"] = time.time()
        body["up_seconds"] = time.time() - self.started
        body["execution"] = self.app.execution is not None
        return _json(body)

    async def instances(self, request: web.Request) -> web.Response:
        visitor = await self.access.visitor(request)
        self.access.require_known(visitor, "the instance list")
        out = [{"name": name, "execution": bool(spec.execution), "action_cache": spec.action_cache is not None}
               for name, spec in sorted(self.cfg.instances.items()) if name != WILDCARD]
        return _json({"instances": out, "wildcard": WILDCARD in self.cfg.instances,
                      "execution": self.app.execution is not None})

    # ---- operations -------------------------------------------------------------------------

    def _farm(self) -> Any:
        if self.app.execution is None:
            raise Unimplemented("execution is off on this server: there are no operations")
        return self.app.execution

    async def operations(self, request: web.Request) -> web.Response:
        visitor = await self.access.visitor(request)
        self.access.require_operations(visitor)
        q = request.query
        instance = views.bounded(q.get("instance", ""), views.MAX_NAME, "instance")
        filter_text = views.bounded(q.get("filter", ""), views.MAX_FILTER, "filter")
        token = views.bounded(q.get("page_token", ""), views.MAX_TOKEN, "page_token")
        size = views.page_size(q.get("page_size"))
        farm = self._farm()
        rows, next_token = await farm.scheduler.list_operation_rows(
            instance, filter_text, size, token, self.access.caller(visitor))
        builds = await self._invocations(visitor, [op["invocation_id"] for op, _ in rows])
        return _json({
            "instance": instance, "filter": filter_text, "page_size": size, "page_token": token,
            "next_page_token": next_token, "operations": [views.operation_row(op, job) for op, job in rows],
            "invocations": {k: views.invocation_brief(v) for k, v in builds.items()},
        })

    async def operation(self, request: web.Request) -> web.Response:
        visitor = await self.access.visitor(request)
        self.access.require_operations(visitor)
        name = views.bounded(request.query.get("name", ""), views.MAX_NAME, "name")
        if not name:
            raise InvalidArgument("name is missing: give the operation's name (?name=...)")
        farm = self._farm()
        op, job = await farm.scheduler.operation_rows(name, self.access.caller(visitor))
        instance = op["instance"]
        body: dict[str, Any] = {"operation": views.operation_row(op, job), "job": {
            "priority": job["priority"], "retries": job["retries"], "timeout": job["timeout"],
            "do_not_cache": bool(job["do_not_cache"]), "assigned_time": job["assigned_time"], "bot_name": job["bot_name"],
            "platform": views.properties_of(job["platform_key"]),
        }}
        readable = self.access.allows(visitor, instance, Permission.CACHE_READ)
        body["cas_readable"] = readable
        cas = self._cas_or_none(instance)
        notes: list[str] = []
        if not readable:
            notes.append(f"blob contents are not shown: reading the CAS of instance {instance!r} needs cache-read")
        if cas is None:
            notes.append(f"instance {instance!r} is not served any more: blob contents are not shown")
        action = re_pb2.Action()
        have_action = False
        if job["action"]:
            try:
                action.ParseFromString(job["action"])
                have_action = True
            except DecodeError:
                notes.append("the stored Action does not parse")
        elif readable and cas is not None:
            have_action = await self._message(cas, job["action_key"], job["digest_function"], action, notes, "Action")
        body["action"] = views.action_view(action, job["action_key"]) if have_action else None
        body["command"] = None
        if have_action and readable and cas is not None and action.command_digest.hash:
            command = re_pb2.Command()
            if await self._message(cas, views.digest_text(action.command_digest) or "", job["digest_function"],
                                   command, notes, "Command"):
                body["command"] = views.command_view(command)
        response = views.response_of(job)
        body["result"] = None
        body["status"] = views.status_of(response) if response is not None else None
        body["message"] = response.message[:4000] if response is not None else ""
        if response is not None and response.HasField("result"):
            result = response.result
            body["result"] = views.result_view(result)
            for stream in ("stdout", "stderr"):
                body["result"][stream] = await self._output(
                    cas if readable else None, getattr(result, f"{stream}_raw"),
                    getattr(result, f"{stream}_digest"), job["digest_function"])
        body["notes"] = notes
        # the running action's live output (read names: the same the operation's metadata carries)
        body["streams"] = {"stdout": stream_read_name(job.get("stdout_stream")) or None,
                           "stderr": stream_read_name(job.get("stderr_stream")) or None}
        found = await self._invocations(visitor, [op["invocation_id"]])
        body["invocation"] = views.invocation_brief(found[op["invocation_id"]]) if found else None
        return _json(body)

    async def _invocations(self, visitor: Visitor, ids: list[str]) -> dict[str, Any]:
        """The stored builds among these invocation ids, when the visitor may read builds (else none)."""
        ids = [i for i in ids if i]
        if self.builds is None or not ids or not self.access.allows(visitor, "", Permission.CACHE_READ):
            return {}
        return await self.builds.summaries(ids)

    def _cas_or_none(self, instance: str) -> ContentAddressableStorage | None:
        try:
            return self.app.instances.get(instance).cas
        except GranaryError:
            return None

    async def _message(self, cas: ContentAddressableStorage, key: str, function: int, msg: Any,
                       notes: list[str], what: str) -> bool:
        """Read a small blob into `msg`; False (and a note saying why) when it cannot be."""
        hash_, _, size = key.partition("/")
        try:
            d = dg.make_digest(function, hash_, int(size or 0))
            if d.size > MAX_PARSED:
                notes.append(f"the {what} {key} is {d.size} bytes, too large to show")
                return False
            msg.ParseFromString(await cas.get(d))
            return True
        except NotFound:
            notes.append(f"the {what} {key} is not in the CAS any more")
        except (GranaryError, DecodeError, ValueError) as e:
            notes.append(f"the {what} {key} cannot be read: {getattr(e, 'message', e)}")
        return False

    async def _output(self, cas: ContentAddressableStorage | None, raw: bytes, digest: re_pb2.Digest,
                      function: int) -> dict[str, Any] | None:
        """stdout or stderr: inline bytes, or the first TEXT_CAP bytes of its blob."""
        if raw:
            return {"digest": views.digest_text(digest), "size": len(raw), "text": raw[:TEXT_CAP].decode("utf-8", "replace"),
                    "truncated": len(raw) > TEXT_CAP, "inline": True}
        if not digest.hash:
            return None
        out: dict[str, Any] = {"digest": views.digest_text(digest), "size": digest.size_bytes, "text": None,
                               "truncated": digest.size_bytes > TEXT_CAP, "inline": False}
        if cas is None:
            return out
        try:
            d = dg.make_digest(function, digest.hash, digest.size_bytes)
            out["text"] = (await _head(cas, d, TEXT_CAP)).decode("utf-8", "replace")
        except NotFound:
            out["missing"] = True
        except GranaryError as e:
            out["error"] = e.message
        return out

    # ---- workers ----------------------------------------------------------------------------

    async def workers(self, request: web.Request) -> web.Response:
        visitor = await self.access.visitor(request)
        self.access.require_known(visitor, "the workers page")
        farm = self.app.execution
        if farm is None:
            return _json({"execution": False, "sessions": [], "more": False})
        data = await farm.queue.run(read_sessions, farm.queue)
        caller = self.access.caller(visitor)
        ops_of: dict[str, list[dict[str, Any]]] = {}
        for op in data["operations"]:
            if caller.may_see(op["instance"], op["identity"]):
                ops_of.setdefault(op["job_name"], []).append(
                    {"name": op["name"], "tool_name": op["tool_name"], "invocation_id": op["invocation_id"]})
        jobs_of: dict[str, list[dict[str, Any]]] = {}
        for job in data["jobs"]:
            jobs_of.setdefault(job["bot_name"], []).append({
                "instance": job["instance"], "action_digest": job["action_key"],
                "stage": views.STAGES.get(job["stage"], str(job["stage"])),
                "assigned_time": job["assigned_time"], "start_time": job["start_time"],
                "queued_time": job["queued_time"], "operations": ops_of.get(job["name"], []),
            })
        cutoff = data["now"] - farm.cfg.bot_timeout
        sessions = []
        for s in data["sessions"]:
            held = jobs_of.get(s["name"], [])
            sessions.append({
                "name": s["name"], "bot_id": s["bot_id"], "instance": s["instance"], "queue": s["queue"],
                "properties": views.properties_of(s["properties"]), "slots": s["concurrency"],
                "busy_slots": len(held), "status": s["status"], "created_time": s["created_time"],
                "last_seen": s["last_seen"], "alive": s["last_seen"] >= cutoff, "jobs": held,
            })
        return _json({"execution": True, "sessions": sessions, "more": data["more"], "time": data["now"],
                      "bot_timeout": farm.cfg.bot_timeout})

    # ---- builds -----------------------------------------------------------------------------

    def _require_builds(self, visitor: Visitor) -> None:
        """What the BuildEvents query service needs (auth/interceptor.py: cache-read on the root)."""
        self.access.check(visitor, "", Permission.CACHE_READ)

    async def list_builds(self, request: web.Request) -> web.Response:
        visitor = await self.access.visitor(request)
        self._require_builds(visitor)
        q = request.query
        build_id = views.bounded(q.get("build_id", ""), views.MAX_NAME, "build_id")
        token = views.bounded(q.get("page_token", ""), views.MAX_TOKEN, "page_token")
        size = views.page_size(q.get("page_size"))
        if self.builds is None:
            return _json({"enabled": False, "message": BUILDS_OFF, "invocations": [], "next_page_token": ""})
        page = await self.builds.list_invocations(builds_pb2.ListInvocationsRequest(
            page_size=size, page_token=token, build_id=build_id))
        return _json({"enabled": True, "build_id": build_id, "page_size": size, "page_token": token,
                      "next_page_token": page.next_page_token,
                      "invocations": [views.invocation_view(s) for s in page.invocations]})

    async def build(self, request: web.Request) -> web.Response:
        visitor = await self.access.visitor(request)
        self._require_builds(visitor)
        invocation_id = views.bounded(request.query.get("id", ""), views.MAX_NAME, "id")
        if not invocation_id:
            raise InvalidArgument("id is missing: give the invocation id (?id=...)")
        if self.builds is None:
            raise Unimplemented(BUILDS_OFF)
        detail = await self.builds.get_invocation(builds_pb2.GetInvocationRequest(invocation_id=invocation_id))
        body = views.detail_view(detail)
        body["operations"] = await self._operations_of(visitor, body["summary"]["operations_filter"])
        return _json(body)

    async def _operations_of(self, visitor: Visitor, filter_text: str | None) -> dict[str, Any]:
        """How many operations of each configured instance carry the invocation's id (the first page of
        the operations list each link opens), as far as the visitor may list operations."""
        farm = self.app.execution
        if farm is None:
            return {"listed": False, "why": "execution is off on this server", "instances": []}
        if filter_text is None:
            return {"listed": False, "why": "the operations filter cannot name this invocation id", "instances": []}
        try:
            self.access.require_operations(visitor)
        except GranaryError as e:
            return {"listed": False, "why": e.message, "instances": []}
        caller = self.access.caller(visitor)
        names = [n for n, spec in sorted(self.cfg.instances.items()) if n != WILDCARD and spec.execution]
        out = []
        for name in names[:MAX_OPERATION_INSTANCES]:
            rows, more = await farm.scheduler.list_operation_rows(name, filter_text, views.MAX_PAGE, "", caller)
            if rows:
                out.append({"instance": name, "count": len(rows), "more": bool(more)})
        return {"listed": True, "filter": filter_text, "instances": out,
                "other_instances": WILDCARD in self.cfg.instances or len(names) > MAX_OPERATION_INSTANCES}

    # ---- live logs --------------------------------------------------------------------------

    async def logstream(self, request: web.Request) -> web.Response:
        """A log stream from `offset`: what is there (at most LOG_CAP bytes), waiting up to `wait`
        seconds (at most 10) for some when there is none yet. The page calls again from next_offset
        until `finished`. Reading needs cache-read on the stream's instance, as ByteStream Read."""
        visitor = await self.access.visitor(request)
        q = request.query
        name = views.bounded(q.get("name", ""), views.MAX_NAME, "name")
        if not name:
            raise InvalidArgument("name is missing: give a log stream's read name (an operation's stdout_stream_name)")
        res = parse_logstream(name)
        if res is None:
            raise InvalidArgument(f"{name[:200]!r} is not a log stream name ({{instance}}/logstreams/{{id}})")
        self.access.check(visitor, res.instance, Permission.CACHE_READ)  # before anything about the stream is said
        self.app.instances.get(res.instance)  # an instance this server serves (InvalidArgument naming it if not)
        offset = views.offset_of(q.get("offset"))
        wait = views.wait_of(q.get("wait"))
        farm = self.app.execution
        if farm is None or farm.logstreams is None:
            raise Unimplemented("this server keeps no log streams (execution is off, or execution.logstream.enabled"
                                " is false)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        data = b""
        while True:
            more, size, finished = await farm.logstreams.read_some(
                res, offset + len(data), LOG_CAP - len(data), deadline - loop.time())
            data += more
            ended = finished and offset + len(data) >= size
            text, used = views.utf8_text(data, final=ended)
            if used or ended or not more or loop.time() >= deadline:
                break  # else only part of a character came: wait for the rest of it
        next_offset = offset + used
        return _json({"name": res.read_name, "offset": offset, "next_offset": next_offset, "text": text,
                      "size": size, "finished": finished and next_offset >= size})

    # ---- the CAS ----------------------------------------------------------------------------

    def _blob_target(self, request: web.Request, visitor: Visitor) -> tuple[str, ContentAddressableStorage, dg.BlobDigest]:
        q = request.query
        instance = views.bounded(q.get("instance", ""), views.MAX_NAME, "instance")
        self.access.check(visitor, instance, Permission.CACHE_READ)  # before anything about the request is said
        cas = self.app.instances.get(instance).cas
        d = views.parse_digest(q.get("digest"), q.get("function") or None, cas.max_blob_bytes or None)
        return instance, cas, d

    async def blob(self, request: web.Request) -> web.Response:
        visitor = await self.access.visitor(request)
        instance, cas, d = self._blob_target(request, visitor)
        view = request.query.get("view", "auto")
        if view not in ("auto", "directory", "tree", "text"):
            raise InvalidArgument(f"view {view[:40]!r} is unknown (auto, directory, tree, text)")
        if not await cas.has(d):
            raise NotFound(f"blob {d} is not in the CAS of instance {instance!r}")
        body: dict[str, Any] = {"instance": instance, "digest": str(d), "size": d.size,
                                "function": dg.function_name(d.function), "view": view}
        if view in ("auto", "directory", "tree") and d.size <= MAX_PARSED:
            data = await cas.get(d)
            if view == "tree":
                body.update(_tree_listing(data, d, views.bounded(request.query.get("path", ""), 4096, "path")))
                return _json(body)
            directory = re_pb2.Directory()
            try:
                directory.ParseFromString(data)
                parsed = view == "directory" or views.looks_like_directory(directory)
            except DecodeError:
                parsed = False
            if parsed:
                body["view"] = "directory"
                body["directory"] = views.directory_view(directory)
                return _json(body)
            if view == "directory":
                raise InvalidArgument(f"blob {d} is not a Directory message")
            head = data[:TEXT_CAP]
        elif view in ("directory", "tree"):
            raise InvalidArgument(f"blob {d} is {d.size} bytes, too large to list (at most {MAX_PARSED})")
        else:
            head = await _head(cas, d, TEXT_CAP)
        body["view"] = "text"
        body["truncated"] = d.size > len(head)
        try:
            body["text"] = _utf8_prefix(head)
            body["binary"] = False
        except UnicodeDecodeError:
            body["text"] = None
            body["binary"] = True
            body["hex"] = head[:512].hex()
        return _json(body)

    async def download(self, request: web.Request) -> web.StreamResponse:
        visitor = await self.access.visitor(request)
        instance, cas, d = self._blob_target(request, visitor)
        name = views.bounded(request.query.get("name", ""), 1000, "name")
        try:
            chunks = await cas.read(d, 0, 0)  # NOT_FOUND before any header is sent
        except NotFound:
            raise NotFound(f"blob {d} is not in the CAS of instance {instance!r}") from None
        filename = views.safe_filename(name, d.hash)
        response = web.StreamResponse(headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Length": str(d.size),
            **SECURITY_HEADERS,
        })
        await response.prepare(request)
        async for chunk in chunks:  # the store's read chunks (1 MiB): a huge blob is never held whole
            await response.write(chunk)
        await response.write_eof()
        return response


async def _head(cas: ContentAddressableStorage, d: dg.BlobDigest, cap: int) -> bytes:
    """The first `cap` bytes of a blob."""
    out = bytearray()
    async for chunk in await cas.read(d, 0, min(cap, d.size) if d.size else 0):
        out += chunk
        if len(out) >= cap:
            break
    return bytes(out[:cap])


def _utf8_prefix(data: bytes) -> str:
    """Text of a UTF-8 prefix (a character cut at the end is dropped); UnicodeDecodeError if binary."""
    if b"\x00" in data:
        raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
    for cut in range(4):
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            if cut == 3 or len(data) - cut <= 0:
                raise
    raise AssertionError("unreachable")


def _tree_listing(data: bytes, d: dg.BlobDigest, path: str) -> dict[str, Any]:
    """A directory inside a Tree message (output directories): `path` walked from its root."""
    tree = re_pb2.Tree()
    try:
        tree.ParseFromString(data)
    except DecodeError:
        raise InvalidArgument(f"blob {d} is not a Tree message") from None
    children = {}
    for child in tree.children:
        children[dg.compute(d.function, child.SerializeToString(deterministic=True)).hash] = child
    current = tree.root
    walked: list[str] = []
    for part in [p for p in path.split("/") if p]:
        node = next((n for n in current.directories if n.name == part), None)
        if node is None:
            raise NotFound(f"{'/'.join([*walked, part])!r} is not a directory in tree {d}")
        child = children.get(node.digest.hash)
        if child is None:
            raise NotFound(f"directory {'/'.join([*walked, part])!r} ({node.digest.hash}) is missing from tree {d}")
        current = child
        walked.append(part)
    return {"view": "tree", "path": "/".join(walked), "directory": views.directory_view(current)}
