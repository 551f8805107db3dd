"""The Prometheus metrics every server process keeps (docs/observability.md lists them).

prometheus_client runs in multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set (runarea.prepare
sets it before this is imported): each process writes its counters to files there and the process
that answers a scrape sums them. Counters and histograms of processes that exited still count;
gauges are `livesum`, the sum over the processes alive. What the queue database and the stores hold
(queue depth, workers, blobs stored) is not kept here but read at scrape time (collector.py).
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import Counter, Gauge, Histogram

# gRPC calls: from 0.5 ms (a cache hit) to 5 minutes (a long Execute stream)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 300.0)
# execution: queue waits and action run times
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

CALL = ("service", "method", "instance", "code")
REQUESTS = Counter("granary_grpc_requests", "gRPC calls finished, by status code.", CALL)
LATENCY = Histogram("granary_grpc_request_duration_seconds",
                    "Time from a call's arrival to its last response.", CALL, buckets=LATENCY_BUCKETS)
RECEIVED = Counter("granary_grpc_received_bytes", "Bytes of request messages received (serialized).", CALL[:3])
SENT = Counter("granary_grpc_sent_bytes", "Bytes of response messages sent (serialized).", CALL[:3])

CAS_READ_BYTES = Counter("granary_cas_read_bytes", "Bytes read from a CAS store.", ["store"])
CAS_READ_BLOBS = Counter("granary_cas_read_blobs", "Blobs read from a CAS store.", ["store"])
CAS_WRITTEN_BYTES = Counter("granary_cas_written_bytes", "Bytes of verified blobs written to a CAS store.", ["store"])
CAS_WRITTEN_BLOBS = Counter("granary_cas_written_blobs", "Verified blobs written to a CAS store.", ["store"])
CAS_EVICTIONS = Counter("granary_cas_evictions", "Eviction passes of a disk or memory store.", ["store"])
CAS_EVICTED_BYTES = Counter("granary_cas_evicted_bytes", "Bytes evicted from a disk or memory store.", ["store"])
CAS_EVICTED_BLOBS = Counter("granary_cas_evicted_blobs", "Blobs evicted from a disk or memory store.", ["store"])

AC_HITS = Counter("granary_action_cache_hits", "Action Cache lookups that found a complete result.", ["instance"])
AC_MISSES = Counter("granary_action_cache_misses", "Action Cache lookups that found none (or an incomplete one).",
                    ["instance"])
AC_UPDATES = Counter("granary_action_cache_updates", "Action results stored by clients (UpdateActionResult).",
                     ["instance"])

UPLOADS = Gauge("granary_uploads_in_progress", "ByteStream uploads begun and not yet finished.", ["store"],
                multiprocess_mode="livesum")
FALLBACK_BACKLOG = Gauge("granary_cas_fallback_backlog_blobs",
                         "Blobs written to a tiered store's cache and not yet to its fallback.", ["store"],
                         multiprocess_mode="livesum")
FALLBACK_BACKLOG_BYTES = Gauge("granary_cas_fallback_backlog_bytes", "Bytes of those blobs.", ["store"],
                               multiprocess_mode="livesum")
FALLBACK_COPIED = Counter("granary_cas_fallback_copied_blobs", "Deferred writes copied to the fallback.", ["store"])
FALLBACK_LOST = Counter("granary_cas_fallback_lost_blobs",
                        "Deferred writes evicted from the cache before they reached the fallback.", ["store"])

QUEUE_WAIT = Histogram("granary_execution_queue_wait_seconds",
                       "Time a job waited in the queue before a worker started it.", ["queue"], buckets=JOB_BUCKETS)
EXECUTION_TIME = Histogram("granary_execution_duration_seconds",
                           "Time from a worker starting a job to its result reaching the server.", ["queue"],
                           buckets=JOB_BUCKETS)
JOBS_COMPLETED = Counter("granary_execution_jobs_completed", "Jobs workers finished, by outcome.",
                         ["queue", "outcome"])
WORKERS_LOST = Counter("granary_workers_lost",
                       "Worker sessions dropped because they stopped answering (their jobs were re-queued).")


# ---- counts kept in the process, written out in batches ------------------------------------------
#
# A prometheus_client write in multiprocess mode takes a lock and writes the mmap'd file: several
# microseconds (an observation is two writes). The hot paths (every gRPC call, every cache lookup)
# count into plain attributes instead, and `PENDING.flush()` (every second, before this process
# answers a scrape, and when it stops) writes what accumulated. A scrape answered by another
# process may therefore miss this process's last second.


class PendingCounter:
    __slots__ = ("_child", "n")

    def __init__(self, child: object):
        self._child = child
        self.n = 0

    def inc(self, amount: float = 1) -> None:
        self.n += amount

    def flush(self) -> None:
        if self.n:
            n, self.n = self.n, 0
            self._child.inc(n)  # type: ignore[attr-defined]


class PendingHistogram:
    __slots__ = ("_bounds", "_child", "counts", "dirty", "total")

    def __init__(self, child: object):
        self._child = child
        self._bounds = tuple(child._upper_bounds[:-1])  # type: ignore[attr-defined]  # without +Inf
        self.counts = [0] * (len(self._bounds) + 1)
        self.total = 0.0
        self.dirty = False

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.total += amount
        self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        counts, total = self.counts, self.total
        self.counts, self.total, self.dirty = [0] * len(counts), 0.0, False
        child = self._child
        child._sum.inc(total)  # type: ignore[attr-defined]  # what Histogram.observe writes, batched
        for bucket, n in zip(child._buckets, counts, strict=True):  # type: ignore[attr-defined]
            if n:
                bucket.inc(n)


class PendingCalls:
    """The gRPC calls of one (service, method, instance, code): count, latency buckets, bytes in and
    out, with one object so that a call costs a few attribute updates."""

    __slots__ = ("_children", "counts", "dirty", "received", "sent", "total")
    bounds = LATENCY_BUCKETS

    def __init__(self, service: str, method: str, instance: str, code: str):
        self._children = (REQUESTS.labels(service, method, instance, code),
                          LATENCY.labels(service, method, instance, code),
                          RECEIVED.labels(service, method, instance), SENT.labels(service, method, instance))
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.received = 0
        self.sent = 0
        self.dirty = False

    def flush(self) -> None:
        if not self.dirty:
            return
        counts, total, received, sent = self.counts, self.total, self.received, self.sent
        self.counts, self.total, self.received, self.sent, self.dirty = [0] * len(counts), 0.0, 0, 0, False
        requests, latency, received_child, sent_child = self._children
        requests.inc(sum(counts))
        latency._sum.inc(total)  # what Histogram.observe writes, batched
        for bucket, n in zip(latency._buckets, counts, strict=True):
            if n:
                bucket.inc(n)
        if received:
            received_child.inc(received)
        if sent:
            sent_child.inc(sent)


class Pending:
    def __init__(self) -> None:
        self._items: list[PendingCounter | PendingHistogram | PendingCalls] = []

    def calls(self, service: str, method: str, instance: str, code: str) -> PendingCalls:
        item = PendingCalls(service, method, instance, code)
        self._items.append(item)
        return item

    def counter(self, child: object) -> PendingCounter:
        item = PendingCounter(child)
        self._items.append(item)
        return item

    def histogram(self, child: object) -> PendingHistogram:
        item = PendingHistogram(child)
        self._items.append(item)
        return item

    def flush(self) -> None:
        for item in self._items:
            item.flush()


PENDING = Pending()

_AC_COUNTERS: dict[str, tuple[PendingCounter, PendingCounter, PendingCounter]] = {}


def ac_counters(instance: str) -> tuple[PendingCounter, PendingCounter, PendingCounter]:
    """(hits, misses, updates) of an instance label, made once per label."""
    made = _AC_COUNTERS.get(instance)
    if made is None:
        made = _AC_COUNTERS[instance] = (PENDING.counter(AC_HITS.labels(instance)),
                                         PENDING.counter(AC_MISSES.labels(instance)),
                                         PENDING.counter(AC_UPDATES.labels(instance)))
    return made
