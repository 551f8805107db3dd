"""The lease contract between the Bots service and workers (BuildGrid/buildbox-worker compatible).

A lease offered to a bot has:
  id       the job name (stable across retries; one job at a time per lease id)
  payload  google.protobuf.Any packing a build.bazel.remote.execution.v2.Action
           (its `timeout` is always set: the server fills in its default)
  state    PENDING

The bot acknowledges by sending the lease back ACTIVE. When the action
finishes it sends it back COMPLETED with
  result   Any(build.bazel.remote.execution.v2.ActionResult)
  status   google.rpc.Status: OK, or DEADLINE_EXCEEDED for a timed-out action
           (with the partial ActionResult), or another code if it could not run
           the action at all (e.g. FAILED_PRECONDITION for missing inputs,
           INTERNAL for a worker fault).
The server sets a lease CANCELLED to tell the bot to kill the action; the bot
drops it (or reports it back CANCELLED/COMPLETED, both accepted).

Worker properties (platform): bot_session.worker.devices[0].properties, one
key/value per entry (a key may repeat for several values), e.g. OSFamily,
ISA, plus custom keys. A bot runs one lease at a time unless its
bot_session.worker.properties holds `CONCURRENCY_PROPERTY` = N, in which case
the server offers up to N leases at once, never more than its
execution.max_bot_concurrency (default 64): a larger claim is capped, not
refused, and the reply's worker.properties says the number granted.
UpdateBotSession long-polls (a few seconds, never past the call's deadline)
when the bot has nothing new.

Live output (LogStream): a bot that can stream an action's stdout and stderr while it runs says
so with `LOGSTREAM_CONFIG` = "v1" in bot_session.worker.configs. Leases offered to it carry in
lease.requirements.configs the write resource names of the two streams made for that run, as
`STDOUT_STREAM_CONFIG` and `STDERR_STREAM_CONFIG` (execution.logstream; absent when off). The bot
appends to them with ByteStream Write while the action runs and finishes them when it ends; the
operation's ExecuteOperationMetadata names the streams (read names) for clients.

A lease the bot does not acknowledge (send back ACTIVE) within
execution.lease_ack_timeout (default 30 s) is taken back and offered to other
bots first; the bot's later reports about it are answered CANCELLED.
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2

from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2, worker_pb2

PENDING = bots_pb2.LeaseState.PENDING
ACTIVE = bots_pb2.LeaseState.ACTIVE
COMPLETED = bots_pb2.LeaseState.COMPLETED
CANCELLED = bots_pb2.LeaseState.CANCELLED

CONCURRENCY_PROPERTY = "concurrency"  # in bot_session.worker.properties, not a platform property
LOGSTREAM_CONFIG = "logstream"  # in bot_session.worker.configs: the bot streams live output
STDOUT_STREAM_CONFIG = "logstream.stdout"  # in lease.requirements.configs: write name of stdout's stream
STDERR_STREAM_CONFIG = "logstream.stderr"


def pack(message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def make_lease(
    job_name: str, action: re_pb2.Action, state: int = PENDING, stdout_stream: str = "", stderr_stream: str = ""
) -> bots_pb2.Lease:
    """A lease for one job; the stream arguments are write names of its live output streams ('' for none)."""
    lease = bots_pb2.Lease(id=job_name, payload=pack(action), state=state)
    for key, name in ((STDOUT_STREAM_CONFIG, stdout_stream), (STDERR_STREAM_CONFIG, stderr_stream)):
        if name:
            lease.requirements.configs.add(key=key, value=name)
    return lease


def lease_streams(lease: bots_pb2.Lease) -> tuple[str, str]:
    """The write names of a lease's stdout and stderr streams ('' where there is none)."""
    configs = {c.key: c.value for c in lease.requirements.configs}
    return configs.get(STDOUT_STREAM_CONFIG, ""), configs.get(STDERR_STREAM_CONFIG, "")


def streams_live_output(session: bots_pb2.BotSession) -> bool:
    """The bot says it streams its actions' output (LOGSTREAM_CONFIG in its worker's configs)."""
    return any(c.key == LOGSTREAM_CONFIG for c in session.worker.configs)


def lease_action(lease: bots_pb2.Lease) -> re_pb2.Action:
    """The Action of a lease offered by the server (ValueError if it carries something else)."""
    action = re_pb2.Action()
    if not lease.payload.Unpack(action):
        raise ValueError(f"lease {lease.id!r}: payload is {lease.payload.type_url!r}, not an Action")
    return action


def complete_lease(
    lease: bots_pb2.Lease, result: re_pb2.ActionResult | None, status: status_pb2.Status | None = None
) -> None:
    """Mark a lease COMPLETED with its ActionResult (and OK unless a status is given)."""
    lease.state = COMPLETED
    lease.ClearField("result")
    if result is not None:
        lease.result.Pack(result)
    lease.status.CopyFrom(status if status is not None else status_pb2.Status(code=code_pb2.OK))


def lease_result(lease: bots_pb2.Lease) -> re_pb2.ActionResult | None:
    """The ActionResult a bot reported, or None if it sent none (or something else)."""
    if not lease.HasField("result"):
        return None
    result = re_pb2.ActionResult()
    return result if lease.result.Unpack(result) else None


def worker_properties(session: bots_pb2.BotSession) -> list[tuple[str, str]]:
    """The platform properties a bot advertises (its primary device's properties)."""
    if not session.worker.devices:
        return []
    return [(p.key, p.value) for p in session.worker.devices[0].properties]


def worker_concurrency(session: bots_pb2.BotSession) -> int:
    for p in session.worker.properties:
        if p.key == CONCURRENCY_PROPERTY:
            try:
                return max(1, int(p.value))
            except ValueError:
                return 1
    return 1


def set_worker_concurrency(worker: worker_pb2.Worker, concurrency: int) -> None:
    """Say in `worker` how many leases it may hold (only when more than one, as bots send it)."""
    kept = [p for p in worker.properties if p.key != CONCURRENCY_PROPERTY]
    if len(kept) == len(worker.properties) and concurrency == 1:
        return
    del worker.properties[:]
    worker.properties.extend(kept)
    worker.properties.add(key=CONCURRENCY_PROPERTY, value=str(concurrency))


def make_worker(properties: list[tuple[str, str]], concurrency: int = 1) -> worker_pb2.Worker:
    """A Worker description as bots send it (for workers and tests)."""
    worker = worker_pb2.Worker(
        devices=[
            worker_pb2.Device(
                handle="primary",
                properties=[worker_pb2.Device.Property(key=k, value=v) for k, v in properties],
            )
        ]
    )
    if concurrency > 1:
        worker.properties.add(key=CONCURRENCY_PROPERTY, value=str(concurrency))
    return worker
