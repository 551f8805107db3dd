"""Publishing: requests checked, batched, stored in order and acknowledged in order.

A PublishBuildToolEventStream call is read by one task into a queue and written by the
call itself: whatever events have arrived while the previous batch was being committed form
the next batch (one transaction), so a fast publisher costs one commit per batch, not per
event, and every acknowledgement still follows its event's commit.

Errors use the codes Bazel 4.2.3's BES uploader reads: INVALID_ARGUMENT and
FAILED_PRECONDITION end its upload for good (a gap, a rewritten event, a malformed
request: retrying cannot help); any other status makes it retry, re-sending from its first
unacknowledged event, which is why an event already stored identically is acknowledged
again. RESOURCE_EXHAUSTED (too many open streams) is retried by Bazel after a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from granary._proto.google.devtools.build.v1 import build_events_pb2
from granary._proto.google.devtools.build.v1 import publish_build_event_pb2 as pbe
from granary.bes.schema import ID
from granary.bes.store import CallState, EventStore, Incoming, Key
from granary.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from granary.services.registry import Malformed

MAX_BATCH = 500  # events committed in one transaction at most
MAX_KEYWORDS = 64
CONTROLLER = build_events_pb2.StreamId.CONTROLLER
_END = object()


@dataclass
class Limits:
    max_event_size: int = 4 << 20
    max_streams_per_client: int = 16
    max_open_streams: int = 1000


def _checked_text(value: str, what: str) -> str:
    if len(value) > ID:
        raise InvalidArgument(f"{what} is {len(value)} characters, more than {ID}")
    return value


def incoming(ordered: pbe.OrderedBuildEvent, project_id: str, keywords: Any, limits: Limits) -> Incoming:
    """Check the shape of one event (not its order) -> what the store takes."""
    if not ordered.HasField("stream_id") or not ordered.stream_id.build_id:
        raise InvalidArgument("ordered_build_event.stream_id.build_id is required")
    sid = ordered.stream_id
    key: Key = (_checked_text(sid.build_id, "stream_id.build_id"), int(sid.component),
                _checked_text(sid.invocation_id, "stream_id.invocation_id"))
    if ordered.sequence_number < 1:
        raise InvalidArgument(f"sequence_number must be 1 or more, got {ordered.sequence_number}")
    if not ordered.HasField("event") or ordered.event.WhichOneof("event") is None:
        raise InvalidArgument(f"event {ordered.sequence_number} of stream {sid.build_id} has no payload")
    payload = ordered.event.SerializeToString()
    if len(payload) > limits.max_event_size:
        raise InvalidArgument(f"event {ordered.sequence_number} is {len(payload)} bytes, more than"
                              f" build_events.max_event_size ({limits.max_event_size})")
    if len(keywords) > MAX_KEYWORDS:
        raise InvalidArgument(f"{len(keywords)} notification_keywords, more than {MAX_KEYWORDS}")
    words = [_checked_text(k, "a notification keyword") for k in keywords]
    return Incoming(key, ordered.sequence_number, ordered.event, payload,
                    _checked_text(project_id, "project_id"), words)


def ack(item: Incoming) -> pbe.PublishBuildToolEventStreamResponse:
    build_id, component, invocation_id = item.key
    return pbe.PublishBuildToolEventStreamResponse(
        stream_id=build_events_pb2.StreamId(build_id=build_id, component=component, invocation_id=invocation_id),
        sequence_number=item.sequence)


class Ingest:
    """Publishing into one store, with the per-process bounds on open streams."""

    def __init__(self, store: EventStore, limits: Limits):
        self.store = store
        self.limits = limits
        self.open_streams = 0
        self.open_by_client: Counter[str] = Counter()

    @contextlib.contextmanager
    def stream_slot(self, client: str):
        if self.open_streams >= self.limits.max_open_streams:
            raise ResourceExhausted(f"{self.open_streams} build event streams are open in this server process,"
                                    f" build_events.max_open_streams; retry later")
        if self.open_by_client[client] >= self.limits.max_streams_per_client:
            raise ResourceExhausted(f"this client has {self.open_by_client[client]} build event streams open,"
                                    " build_events.max_streams_per_client; retry later")
        self.open_streams += 1
        self.open_by_client[client] += 1
        try:
            yield
        finally:
            self.open_streams -= 1
            self.open_by_client[client] -= 1
            if self.open_by_client[client] <= 0:
                del self.open_by_client[client]

    async def lifecycle(self, request: pbe.PublishLifecycleEventRequest) -> None:
        """One lifecycle event: stored in its stream like a tool event, but a gap is accepted
        unless the request asks for its predecessor to be present."""
        item = incoming(request.build_event, request.project_id, request.notification_keywords, self.limits)
        if (request.check_preceding_lifecycle_events_present and item.sequence > 1
                and not await self.store.run(self.store.lifecycle_present, item.key, item.sequence - 1)):
            raise FailedPrecondition(f"lifecycle event {item.sequence - 1} of build {item.key[0]} was not received")
        _, error = await self.store.run(self.store.ingest, CallState(), [item], True)
        if error is not None:
            raise error

    async def publish(self, requests: AsyncIterator[Any], client: str
                      ) -> AsyncIterator[list[pbe.PublishBuildToolEventStreamResponse]]:
        """Acknowledgements, batch by batch, for a PublishBuildToolEventStream call; raises the
        error that ends it (after acknowledging everything stored before it)."""
        with self.stream_slot(client):
            queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=4 * MAX_BATCH)
            reader = asyncio.ensure_future(self._read(requests, queue))
            state = CallState()
            first = True
            try:
                while True:
                    batch, end = await self._next_batch(queue)
                    if batch:
                        if first:
                            await self._check_preceding(batch[0])
                            first = False
                        items, bad = self._items(batch)
                        if items:
                            done, error = await self.store.run(self.store.ingest, state, items)
                            yield [ack(i) for i in items[:done]]
                            if error is not None:
                                raise error
                        if bad is not None:
                            raise bad
                    if end:
                        return
            finally:
                reader.cancel()

    def _items(self, batch: list[Any]) -> tuple[list[Incoming], Exception | None]:
        """The batch's events up to the first bad request, and the error that one gets."""
        items: list[Incoming] = []
        for r in batch:
            if isinstance(r, Exception):
                return items, r
            try:
                items.append(incoming(r.ordered_build_event, r.project_id, r.notification_keywords, self.limits))
            except InvalidArgument as e:
                return items, e
        return items, None

    async def _check_preceding(self, request: Any) -> None:
        if isinstance(request, Exception) or not request.check_preceding_lifecycle_events_present:
            return
        sid = request.ordered_build_event.stream_id
        key = (sid.build_id, CONTROLLER, sid.invocation_id)
        if not await self.store.run(self.store.lifecycle_present, key, 1):
            raise FailedPrecondition(f"no InvocationAttemptStarted was received for invocation {sid.invocation_id}"
                                     " (check_preceding_lifecycle_events_present)")

    async def _read(self, requests: AsyncIterator[Any], queue: asyncio.Queue[Any]) -> None:
        try:
            async for r in requests:
                if isinstance(r, Malformed):
                    await queue.put(InvalidArgument(r.describe()))
                    return
                try:
                    if not r.HasField("ordered_build_event"):
                        raise InvalidArgument("ordered_build_event is required")
                except InvalidArgument as e:
                    await queue.put(e)
                    return
                await queue.put(r)
        except Exception:  # noqa: BLE001, S110 - the client went away: the call ends with what arrived
            pass
        finally:
            await queue.put(_END)

    @staticmethod
    async def _next_batch(queue: asyncio.Queue[Any]) -> tuple[list[Any], bool]:
        """What has arrived (at least one request, unless the stream ended); ends at an error."""
        first = await queue.get()
        if first is _END:
            return [], True
        batch = [first]
        while len(batch) < MAX_BATCH and not isinstance(batch[-1], Exception):
            try:
                nxt = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if nxt is _END:
                return batch, True
            batch.append(nxt)
        return batch, False
