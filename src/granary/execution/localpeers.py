"""Wake-ups between the server processes of one host that share an SQLite queue.

Each process binds a Unix datagram socket (abstract namespace, so no path
length limit and nothing left behind by a crash) and leaves a marker file named
after its pid in a directory beside the database. A change committed by one
process is announced to every other with one small datagram; peers that are
gone are found when sending to them fails, and their markers removed. Nothing
is sent or received while nobody changes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("granary.execution.localpeers")

NAMES_PER_MESSAGE = 200  # job names (36 characters) per datagram: far below the socket's limit


class LocalPeers:
    def __init__(
        self,
        directory: Path,
        on_jobs: Callable[[list[str]], None],
        on_queue: Callable[[str | None], None],
    ):
        self.directory = directory
        self._on_jobs = on_jobs
        self._on_queue = on_queue
        self._prefix = b"\0granary-peers-" + hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:24].encode()
        self._pid = os.getpid()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _address(self, pid: int) -> bytes:
        return self._prefix + b"-" + str(pid).encode()

    def start(self) -> None:
        """Bind and announce this process; raises OSError when the channel cannot work here."""
        self.directory.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self._address(self._pid))
            sock.setblocking(False)
            (self.directory / str(self._pid)).touch()
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._receive)

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        with contextlib.suppress(OSError):
            (self.directory / str(self._pid)).unlink()

    # ---- sending ------------------------------------------------------------

    def jobs_changed(self, names: Iterable[str]) -> None:
        names = list(names)
        for i in range(0, len(names), NAMES_PER_MESSAGE):
            self._broadcast({"jobs": names[i : i + NAMES_PER_MESSAGE]})

    def queue_changed(self, queue: str | None) -> None:
        self._broadcast({"queue": queue})

    def _peers(self) -> list[int]:
        try:
            entries = os.listdir(self.directory)
        except OSError:
            return []
        return [int(e) for e in entries if e.isdigit() and int(e) != self._pid]

    def _broadcast(self, message: dict) -> None:
        if self._sock is None:
            return
        data = json.dumps(message, separators=(",", ":")).encode()
        for pid in self._peers():
            try:
                self._sock.sendto(data, self._address(pid))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    (self.directory / str(pid)).unlink()  # that process is gone
            except BlockingIOError:
                pass  # its queue is full: it has plenty to wake up for already
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    log.warning("cannot wake server process %d: %s", pid, e)

    # ---- receiving ----------------------------------------------------------

    def _receive(self) -> None:
        while self._sock is not None:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            try:
                message = json.loads(data)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            jobs = message.get("jobs")
            if isinstance(jobs, list):
                self._on_jobs([str(n) for n in jobs])
            if "queue" in message:
                queue = message["queue"]
                self._on_queue(None if queue is None else str(queue))
