"""One action end to end: fetch, materialise, run, collect, upload, report.

`ActionRun.run()` never raises: every failure becomes the google.rpc.Status
of the lease (with whatever partial ActionResult exists), so the bot loop
only has to pass results on.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import stat
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.digest import BlobDigest
from granary.errors import FailedPrecondition, GranaryError, InvalidArgument
from granary.services.status import rich_status
from granary.worker.images import PROPERTY as IMAGE_PROPERTY
from granary.worker.images import Image, ImageStore
from granary.worker.inputs import InputLimits, Staging, materialise
from granary.worker.limits import Limiter
from granary.worker.local_cas import LocalCas
from granary.worker.logstream import LiveOutput
from granary.worker.outputs import Collector, collect, output_parents
from granary.worker.paths import check_relative, inside, resolve_in_root
from granary.worker.process import Command, CommandCancelled
from granary.worker.remote_cas import MissingBlobs, RemoteCas, UploadError
from granary.worker.sandbox import NETWORK_PROPERTY, NETWORK_VALUES, ActionUser, Sandbox

log = logging.getLogger("granary.worker.execute")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CANDIDATES = {64: (dg.SHA256, dg.BLAKE3), 40: (dg.SHA1,), 32: (dg.MD5,), 96: (dg.SHA384,), 128: (dg.SHA512,)}


class Cancelled(Exception):
    pass


def now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())  # GetCurrentTime goes through datetime and calendar: 6% of the worker
    return ts


FULL_BELOW = 1 << 20  # bytes free under which a work filesystem counts as full


def work_filesystem_full(path: Path) -> str | None:
    """Why the filesystem of an action's work directory counts as full (a failed write there is the
    host's problem, not the action's), or None."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free < FULL_BELOW or (st.f_files and st.f_favail == 0):
        return f"{free} bytes and {st.f_favail} inodes free under {path.parent}"
    return None


def missing_status(e: MissingBlobs) -> status_pb2.Status:
    return rich_status(FailedPrecondition(
        str(e), [("MISSING", f"blobs/{d.hash}/{d.size}", "not in the CAS") for d in e.digests]
    ))


class Trash:
    """Work directories of finished actions, removed by one background thread.

    Removing an input root of a few hundred hardlinks took 25 ms per Bazel action (median),
    between the upload and the report: a rename into this directory (same filesystem) takes
    it off the path to the result. Whatever is left when the worker stops is removed then.
    """

    def __init__(self, where: Path):
        self.where = where
        self._todo: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def discard(self, path: Path) -> None:
        try:
            self.where.mkdir(mode=0o700, exist_ok=True)
            dest = self.where / path.name
            os.rename(path, dest)
        except OSError:
            remove_tree(path)
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="granary-trash", daemon=True)
                self._thread.start()
        self._todo.put(dest)

    def _run(self) -> None:
        while True:
            path = self._todo.get()
            if path is None:
                return
            try:
                remove_tree(path)
            except Exception:
                log.exception("removing %s failed", path)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._todo.put(None)
            thread.join()
        remove_tree(self.where)


@dataclass
class Executor:
    """What every action of this worker shares."""

    remote: RemoteCas
    local: LocalCas
    sandbox: Sandbox
    work_dir: Path
    worker_name: str
    action_user: ActionUser | None = None  # the uid actions run as (None: the worker's own)
    input_limits: InputLimits = field(default_factory=InputLimits)
    trash: Trash | None = None  # None: work directories are removed before the result is returned
    live_output: LiveOutput | None = None  # None: actions' output is not streamed while they run
    limits: Limiter = field(default_factory=Limiter)  # --action-memory, --action-pids, ... (limits.py)
    images: ImageStore | None = None  # None: container-image actions are refused

    def staging(self) -> Staging:
        """Hardlinks from the cache only for another uid than the cache's owner; copies otherwise."""
        user = self.action_user
        if user is None or user.uid == os.geteuid():
            return Staging(None, copy=True, limits=self.input_limits)
        return Staging((user.uid, user.gid), copy=False, limits=self.input_limits)


class ActionRun:
    """The run of one lease's action; cancel() may be called from any thread."""

    def __init__(self, ex: Executor, action: re_pb2.Action, worker: str = "", streams: tuple[str, str] = ("", "")):
        """streams: write names of the lease's live stdout and stderr streams ('' for none)."""
        self.ex = ex
        self.action = action
        self.streams = streams
        self.command_run = Command()
        self.cancelled = False
        self.meta = re_pb2.ExecutedActionMetadata(worker=worker or ex.worker_name)
        self.result = re_pb2.ActionResult()

    def cancel(self) -> None:
        self.cancelled = True
        self.command_run.cancel()

    def _check(self) -> None:
        if self.cancelled:
            raise Cancelled()

    def run(self) -> tuple[re_pb2.ActionResult, status_pb2.Status]:
        self.meta.worker_start_timestamp.CopyFrom(now())
        work = self.ex.work_dir / uuid.uuid4().hex
        try:
            work.mkdir(parents=True)
            if self.ex.action_user is not None:
                os.chmod(work, 0o711)  # the action uid passes through to its input root, lists nothing
            status = self._run(work)
        except Cancelled:
            status = status_pb2.Status(code=grpc.StatusCode.CANCELLED.value[0], message="action cancelled")
        except MissingBlobs as e:
            status = missing_status(e)
        except GranaryError as e:
            status = rich_status(e)
        except grpc.RpcError as e:
            status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0],
                                       message=f"worker could not reach the CAS: {e.code().name}: {e.details()}")
        except UploadError as e:
            status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message=f"output upload: {e}")
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.exception("action failed inside the worker")
                status = status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0],
                                           message=f"worker error: {type(e).__name__}: {e}")
            else:
                log.warning("action not run: worker %s is out of disk space: %s", self.ex.worker_name, e)
                status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                                           message=f"worker {self.ex.worker_name} is out of disk space: {e}")
        except Exception as e:  # a worker bug or a host problem: report it, keep the worker alive
            log.exception("action failed inside the worker")
            status = status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0],
                                       message=f"worker error: {type(e).__name__}: {e}")
        finally:
            if self.ex.trash is not None:
                self.ex.trash.discard(work)
            else:
                remove_tree(work)
        self.meta.worker_completed_timestamp.CopyFrom(now())
        self.result.execution_metadata.CopyFrom(self.meta)
        return self.result, status

    # ---- stages -------------------------------------------------------------

    def _load(self) -> tuple[re_pb2.Action, int, re_pb2.Command]:
        """The Action, the digest function its digests use, and its Command."""
        d = self.action.command_digest
        function, blob = self._fetch_identified(d, "command")
        command = _parse(re_pb2.Command, blob, f"command {d.hash}/{d.size_bytes}")
        if not command.arguments:
            raise InvalidArgument(f"command {d.hash}/{d.size_bytes} has no arguments")
        return self.action, function, command

    def _fetch_identified(self, d: re_pb2.Digest, what: str) -> tuple[int, bytes]:
        """Fetch a blob, finding which digest function names it (SHA256 and BLAKE3 share a length)."""
        candidates = _CANDIDATES.get(len(d.hash))
        if not candidates:
            raise InvalidArgument(f"digest {d.hash}/{d.size_bytes}: unknown digest function")
        last: MissingBlobs | None = None
        for function in candidates:
            bd = dg.make_digest(function, d.hash, d.size_bytes)
            try:
                return function, self.ex.remote.read_small([bd])[bd]
            except MissingBlobs as e:
                last = e
        assert last is not None
        raise MissingBlobs(last.digests, what or "blob")

    def _run(self, work: Path) -> status_pb2.Status:
        self.meta.input_fetch_start_timestamp.CopyFrom(now())
        action, function, command = self._load()
        self._check()
        wanted = container_image(action, command)
        if not wanted:
            return self._execute(work, action, function, command, None)
        if self.ex.images is None:
            raise FailedPrecondition(f"this worker does not run container images (the action asks for {wanted});"
                                     " it needs the bwrap sandbox and --container-images on")
        image = self.ex.images.acquire(wanted)
        try:
            return self._execute(work, action, function, command, image)
        finally:
            self.ex.images.release(image)

    def _execute(self, work: Path, action: re_pb2.Action, function: int, command: re_pb2.Command,
                 image: Image | None) -> status_pb2.Status:
        root = work / "root"
        root.mkdir()
        input_root = dg.make_digest(function, action.input_root_digest.hash, action.input_root_digest.size_bytes)
        network = wants_network(action, command)
        staging = self.ex.staging()
        layout = materialise(self.ex.remote, self.ex.local, function, input_root, root, staging)
        if image is not None:
            layout.filesystem_image = False  # the image is '/', the input root its working directory
        cwd = self._prepare(root, command, layout.filesystem_image, staging.owner)
        self.meta.input_fetch_completed_timestamp.CopyFrom(now())
        self._check()

        env = dict(image.env) if image is not None else {}  # the image's defaults, then the action's own
        env.update({e.name: e.value for e in command.environment_variables})
        env.setdefault("PATH", DEFAULT_PATH)
        env_fd = environment_fd(env, reaper=self.ex.sandbox.reaper)
        timeout = action.timeout.ToTimedelta().total_seconds() if action.HasField("timeout") else 0
        confinement = None
        try:
            confinement = self.ex.limits.confine(work, host_tools_in_bwrap=self.ex.sandbox.name == "bwrap"
                                                 and not layout.filesystem_image and image is None)
            if image is not None:
                rel_cwd = check_relative(command.working_directory, "working_directory")
                argv = self.ex.sandbox.wrap_container(list(command.arguments), image.rootfs, root, image.mount,
                                                      rel_cwd, network, env_fd)
                cwd = root
                log.info("command %s runs in container image %s", action.command_digest.hash, image.ref)
            elif layout.filesystem_image:
                rel_cwd = check_relative(command.working_directory, "working_directory")
                argv = self.ex.sandbox.wrap_image(list(command.arguments), root, rel_cwd, network, env_fd)
                cwd = root  # bubblewrap enters the working directory inside the image
                log.info("command %s runs with its input root as / (a filesystem image)",
                         action.command_digest.hash)
            else:
                argv = self.ex.sandbox.wrap(confinement.inner(list(command.arguments)), root, cwd, network, env_fd)
            argv = confinement.outer(argv)
            self.meta.execution_start_timestamp.CopyFrom(now())
            live = None
            if self.ex.live_output is not None and any(self.streams):
                live = self.ex.live_output.follow(self.streams, work / "stdout", work / "stderr")
            try:
                # The environment goes through env_fd: the wrapper (bwrap or the reaper, maybe root) gets none.
                outcome = confinement.run(lambda: self.command_run.run(
                    argv, {"PATH": DEFAULT_PATH}, cwd, work / "stdout", work / "stderr", timeout or None,
                    pass_fds=(env_fd,), graceful=self.ex.sandbox.reaper), self.command_run.kill)
            except CommandCancelled:
                raise Cancelled() from None
            finally:
                if live is not None:
                    live.finish()
            over = confinement.verdict(outcome.exit_code, outcome.timed_out)
            failed = outcome.exit_code != 0 and not outcome.timed_out
            note = confinement.note(outcome.exit_code) if failed and not over else ""
        finally:
            os.close(env_fd)
            if confinement is not None:
                confinement.close()
        self.meta.execution_completed_timestamp.CopyFrom(now())
        self.meta.virtual_execution_duration.FromNanoseconds(int(outcome.seconds * 1e9))
        self._check()

        self.meta.output_upload_start_timestamp.CopyFrom(now())
        collected = collect(root, command, function, layout.filesystem_image, self.ex.limits.output_size)
        over = over or self.ex.limits.outputs_over(collected.size)
        if not over:  # an action over a limit reports its exit code, stdout and stderr, no output
            self.result.MergeFrom(collected.result)
        self.result.exit_code = outcome.exit_code
        full = work_filesystem_full(work) if failed and not over else None
        if over or note:
            with open(work / "stderr", "a") as err:
                err.write(f"granary worker: {over}\n" if over else note)
        std = Collector(work, function)
        self.result.stdout_digest.CopyFrom(_proto(std.add_file(str(work / "stdout"))))
        self.result.stderr_digest.CopyFrom(_proto(std.add_file(str(work / "stderr"))))
        self.ex.remote.upload({**({} if over else collected.blobs), **std.out.blobs})
        self.meta.output_upload_completed_timestamp.CopyFrom(now())
        if over:  # not cached (a worker with other limits may well succeed); the client sees why
            return status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message=over)
        if outcome.timed_out:
            return status_pb2.Status(code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
                                     message=f"action timed out after {timeout:g}s; its process group was killed")
        if full is not None:
            # not the action's fault as far as anyone can tell: not cached, and clients retry
            return status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message=(
                f"the action failed (exit status {outcome.exit_code}) while worker {self.ex.worker_name}'s work"
                f" filesystem was full ({full}); not cached: run it again (on another worker)"))
        return status_pb2.Status(code=0)

    def _prepare(self, root: Path, command: re_pb2.Command, filesystem_image: bool,
                 owner: tuple[int, int] | None = None) -> Path:
        """Working directory and output parents, created inside the input root.

        In a filesystem image they are made as `mkdir -p` inside the image
        would (symlinks resolved with the image as '/'); otherwise a path that
        resolves outside the input root through a symlink is refused.
        """
        wd = check_relative(command.working_directory, "working_directory")
        for rel in [wd, *output_parents(command)]:
            if not rel:
                continue
            made: list[str] = []
            if filesystem_image:
                what = "working_directory" if rel == wd else "output path parent"
                resolve_in_root(str(root), rel, what, create=True, made=made)
            else:
                path = root
                for part in rel.split("/"):
                    path = path / part
                    if not path.exists():
                        path.mkdir()
                        made.append(str(path))
                if not inside(str(root), str(path)):
                    raise InvalidArgument(f"path {rel!r} resolves outside the input root through a symlink")
            for p in made if owner is not None else []:
                os.lchown(p, *owner)
        return root / wd if wd else root


def wants_network(action: re_pb2.Action, command: re_pb2.Command) -> bool:
    """dockerNetwork=standard in the action's platform (Action.platform first, then Command.platform)."""
    platform = action.platform if action.platform.properties else command.platform
    values = {p.value for p in platform.properties if p.name == NETWORK_PROPERTY}
    for v in values:
        if v not in NETWORK_VALUES:
            raise InvalidArgument(f"platform property {NETWORK_PROPERTY}={v!r} is not supported"
                                  f" (expected one of {', '.join(NETWORK_VALUES)})")
    if len(values) > 1:
        raise InvalidArgument(f"platform property {NETWORK_PROPERTY} is given twice: {sorted(values)}")
    return values == {"standard"}


def container_image(action: re_pb2.Action, command: re_pb2.Command) -> str:
    """The container-image the action's platform names ('' for none)."""
    platform = action.platform if action.platform.properties else command.platform
    values = sorted({p.value for p in platform.properties if p.name == IMAGE_PROPERTY})
    if len(values) > 1:
        raise InvalidArgument(f"platform property {IMAGE_PROPERTY} is given twice: {values}")
    return values[0] if values else ""


def environment_fd(env: dict[str, str], reaper: bool) -> int:
    """A memory file holding the action's environment: bwrap --args options, or NAME=VALUE for the reaper."""
    items: list[bytes] = [] if reaper else [b"--clearenv"]
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise InvalidArgument(f"environment variable {name!r}: invalid name or value")
        if reaper:
            items.append(f"{name}={value}".encode("utf-8", "surrogateescape"))
        else:
            items += [b"--setenv", name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape")]
    fd = os.memfd_create("granary-action-env")
    os.write(fd, b"".join(i + b"\0" for i in items))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _parse(cls, blob: bytes, what: str):
    msg = cls()
    try:
        msg.ParseFromString(blob)
    except DecodeError:
        raise InvalidArgument(f"{what} is not a valid {cls.DESCRIPTOR.name} message") from None
    return msg


def _proto(d: BlobDigest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=d.hash, size_bytes=d.size)


def remove_tree(path: Path) -> None:
    """Remove a work directory even when the action made parts of it read-only."""

    def retry(func, p, _exc) -> None:
        try:
            parent = os.path.dirname(p)
            os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    if path.exists():
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=retry)
        else:
            shutil.rmtree(path, onerror=retry)
