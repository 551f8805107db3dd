"""The overview of a running server, computed from its Prometheus text: what the dashboard's live
page and `granary status` show. One parse of /metrics gives totals; two snapshots give rates.

Only the standard library and prometheus_client's text parser are used, so a client (the `granary
status` command) can compute it from a scrape over HTTP exactly as the server does in-process.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class Snapshot:
    """Totals at one moment (`at`, monotonic seconds of whoever took it)."""

    at: float
    requests: float = 0.0  # gRPC calls finished
    errors: float = 0.0  # of which not OK, NOT_FOUND (a cache miss) or CANCELLED (the client gave up)
    hits: float = 0.0  # Action Cache lookups that found a result
    misses: float = 0.0
    bytes_in: float = 0.0  # gRPC request bytes
    bytes_out: float = 0.0  # gRPC response bytes
    cas_written_bytes: float = 0.0
    cas_read_bytes: float = 0.0
    stored_blobs: float = 0.0
    stored_bytes: float = 0.0
    queued: float = 0.0  # jobs waiting for a worker
    executing: float = 0.0
    completed: float = 0.0  # jobs workers finished
    workers: float = 0.0  # worker sessions connected
    workers_busy: float = 0.0
    slots: float = 0.0
    slots_busy: float = 0.0
    uploads: float = 0.0  # ByteStream uploads in progress
    by_method: dict[str, float] = field(default_factory=dict)  # "Service/Method" -> calls

    @property
    def hit_ratio(self) -> float | None:
        looked = self.hits + self.misses
        return self.hits / looked if looked else None


def parse(text: str, at: float | None = None) -> Snapshot:
    """The totals in a Prometheus text exposition (summed over every label set)."""
    from prometheus_client.parser import text_string_to_metric_families

    snap = Snapshot(at=time.monotonic() if at is None else at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "granary_grpc_requests_total":
                snap.requests += value
                # CANCELLED is the client's doing: a worker cuts its long poll short each time it
                # has a result to report, and Bazel cancels what it no longer needs
                if labels.get("code") not in ("OK", "NOT_FOUND", "CANCELLED"):
                    snap.errors += value
                key = f"{labels.get('service', '').rsplit('.', 1)[-1]}/{labels.get('method', '')}"
                snap.by_method[key] = snap.by_method.get(key, 0.0) + value
            elif name == "granary_grpc_received_bytes_total":
                snap.bytes_in += value
            elif name == "granary_grpc_sent_bytes_total":
                snap.bytes_out += value
            elif name == "granary_action_cache_hits_total":
                snap.hits += value
            elif name == "granary_action_cache_misses_total":
                snap.misses += value
            elif name == "granary_cas_written_bytes_total":
                snap.cas_written_bytes += value
            elif name == "granary_cas_read_bytes_total":
                snap.cas_read_bytes += value
            elif name == "granary_cas_stored_blobs":
                snap.stored_blobs += value
            elif name == "granary_cas_stored_bytes":
                snap.stored_bytes += value
            elif name == "granary_execution_jobs":
                if labels.get("stage") == "queued":
                    snap.queued += value
                elif labels.get("stage") == "executing":
                    snap.executing += value
            elif name == "granary_execution_jobs_completed_total":
                snap.completed += value
            elif name == "granary_workers_connected":
                snap.workers += value
            elif name == "granary_workers_busy":
                snap.workers_busy += value
            elif name == "granary_worker_slots":
                snap.slots += value
            elif name == "granary_worker_slots_busy":
                snap.slots_busy += value
            elif name == "granary_uploads_in_progress":
                snap.uploads += value
    return snap


def _rate(now: float, before: float, seconds: float) -> float:
    # a counter that went down means the server restarted: count from zero
    return max(0.0, (now - before if now >= before else now) / seconds) if seconds > 0 else 0.0


def overview(now: Snapshot, before: Snapshot | None = None) -> dict:
    """A JSON-ready overview: the totals of `now`, and rates per second since `before` (when given)."""
    out = asdict(now)
    out.pop("at")
    out["hit_ratio"] = now.hit_ratio
    out["rates"] = None
    if before is not None and now.at > before.at:
        s = now.at - before.at
        looked = (now.hits - before.hits) + (now.misses - before.misses)
        out["rates"] = {
            "seconds": s,
            "requests": _rate(now.requests, before.requests, s),
            "errors": _rate(now.errors, before.errors, s),
            "bytes_in": _rate(now.bytes_in, before.bytes_in, s),
            "bytes_out": _rate(now.bytes_out, before.bytes_out, s),
            "completed": _rate(now.completed, before.completed, s),
            "hit_ratio": (now.hits - before.hits) / looked if looked > 0 else None,
        }
    return out
