"""Streaming a running action's stdout and stderr to the server while it runs (the LogStream API).

A lease may carry write resource names for the action's two outputs (execution/leases.py). The
action writes its output to files in its work directory as before (process.py: the sandboxed
process holds them open; the worker only reads them). One thread per output looks at its file
every FLUSH_EVERY seconds and, once there is something in it, sends what is new through one
ByteStream Write call, at most MAX_REQUEST bytes per request, and finish_write once the process
has ended and the file is read to its end. An output that stays empty costs no call: the server
finishes the streams of a job when its result arrives.

Streaming is a convenience for people watching: a failure (the stream passed its size bound,
the server refused or went away) is logged once and that output is no longer streamed. The
action, its result and its stdout/stderr in the CAS are never affected.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import grpc

from granary._proto.google.bytestream import bytestream_pb2 as bs_pb2
from granary._proto.google.bytestream import bytestream_pb2_grpc as bs_grpc

log = logging.getLogger("granary.worker.logstream")

FLUSH_EVERY = 0.15  # seconds between looks at an output file: how late a line shows at most (plus the network)
MAX_REQUEST = 64 << 10  # bytes per WriteRequest (the server keeps chunks of this size)
FINISH_WAIT = 5.0  # seconds the end of an action waits for its streams to send their last bytes


class OutputStream:
    """One output file followed into one stream."""

    def __init__(self, stub: bs_grpc.ByteStreamStub, write_name: str, path: Path, what: str):
        self.stub = stub
        self.write_name = write_name
        self.path = path
        self.what = what
        self.sent = 0  # bytes sent so far (committed once the call succeeds)
        self.error: grpc.RpcError | None = None
        self._named = False  # the first request names the stream, the others need not
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"granary-logstream-{what}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def end(self) -> None:
        """The process has ended: send what is left, then finish the stream."""
        self._ended.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _has_output(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def _run(self) -> None:
        # No call before there is something to send: most actions (compilers) print nothing, and the
        # server finishes their streams when their result arrives (JobQueue.complete).
        while not self._has_output():
            if self._ended.wait(FLUSH_EVERY):
                if not self._has_output():
                    return
                break
        try:
            self.stub.Write(self._requests())
        except grpc.RpcError as e:
            self.error = e
            bounded = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # a bound reached, as configured
            (log.info if bounded else log.warning)(
                "live %s of this action no longer streamed to %s after %d bytes (%s: %s); the whole output"
                " still goes to the CAS", self.what, self.write_name.rsplit("/", 1)[0], self.sent,
                e.code().name, e.details())
            if bounded:
                self._finish_short()
        except Exception:  # never the action's problem
            log.exception("live %s of this action: streaming failed", self.what)

    def _finish_short(self) -> None:
        """Finish a stream the server stopped taking bytes for, so its readers end now rather than
        when the server notices the action is over."""
        try:
            status = self.stub.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(resource_name=self.write_name),
                                                timeout=FINISH_WAIT)
            if not status.complete:
                self.stub.Write(iter([bs_pb2.WriteRequest(resource_name=self.write_name,
                                                          write_offset=status.committed_size, finish_write=True)]),
                                timeout=FINISH_WAIT)
        except grpc.RpcError as e:
            log.debug("finishing the %s stream failed: %s", self.what, e.code().name)

    def _request(self, data: bytes = b"", finish: bool = False) -> bs_pb2.WriteRequest:
        name = "" if self._named else self.write_name
        self._named = True
        return bs_pb2.WriteRequest(resource_name=name, write_offset=self.sent, data=data, finish_write=finish)

    def _requests(self) -> Iterator[bs_pb2.WriteRequest]:
        f: BinaryIO | None = None
        first = True  # _run saw bytes already: send them without waiting
        try:
            while True:
                ended = self._ended.is_set() if first else self._ended.wait(FLUSH_EVERY)
                first = False
                if f is None:
                    try:
                        f = open(self.path, "rb")  # noqa: SIM115 - kept open across the loop
                    except FileNotFoundError:
                        f = None  # the process has not started yet (or never did)
                while f is not None:
                    data = f.read(MAX_REQUEST)
                    if not data:
                        break
                    request = self._request(data)
                    self.sent += len(data)
                    yield request
                if ended:
                    yield self._request(finish=True)
                    return
        finally:
            if f is not None:
                f.close()


class LiveOutput:
    """What every action of a worker shares for streaming: the ByteStream stub on its channel."""

    def __init__(self, stub: bs_grpc.ByteStreamStub):
        self.stub = stub

    def follow(self, streams: tuple[str, str], stdout: Path, stderr: Path) -> Following:
        """Start following an action's output files into the lease's streams (('', '') for none)."""
        outputs = [OutputStream(self.stub, name, path, what)
                   for name, path, what in ((streams[0], stdout, "stdout"), (streams[1], stderr, "stderr")) if name]
        for o in outputs:
            o.start()
        return Following(outputs)


class Following:
    def __init__(self, outputs: list[OutputStream]):
        self.outputs = outputs

    def finish(self, timeout: float = FINISH_WAIT) -> None:
        """The process has ended: let the streams send their last bytes (waiting at most `timeout`)."""
        for o in self.outputs:
            o.end()
        for o in self.outputs:
            if not o.join(timeout):
                log.warning("live %s of this action: last bytes not sent within %gs; going on", o.what, timeout)
