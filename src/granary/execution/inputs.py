"""Loading an action's Action and Command and checking every input blob is in the CAS."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from granary import digest as dg
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.cas.cas import ContentAddressableStorage
from granary.digest import BlobDigest
from granary.errors import InvalidArgument

MAX_DIRECTORIES = 1_000_000


@dataclass
class LoadedAction:
    action: re_pb2.Action | None = None
    command: re_pb2.Command | None = None
    missing: list[BlobDigest] = field(default_factory=list)


def _parse(data: bytes, message_type, what: str):
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        raise InvalidArgument(f"{what} is not a valid {message_type.DESCRIPTOR.full_name}") from None
    return msg


async def load_action(cas: ContentAddressableStorage, action_digest: BlobDigest) -> LoadedAction:
    """The Action, its Command and the list of missing blobs (Action, Command, directories, files)."""
    out = LoadedAction()
    fn = action_digest.function
    found = await cas.store.get_many([action_digest]) if action_digest.size else {action_digest: b""}
    if action_digest not in found:
        out.missing.append(action_digest)
        return out
    out.action = _parse(found[action_digest], re_pb2.Action, f"action {action_digest}")
    if not out.action.HasField("command_digest"):
        raise InvalidArgument(f"action {action_digest} has no command_digest")
    command_digest = _digest(fn, out.action.command_digest, "command_digest")
    root = _digest(fn, out.action.input_root_digest, "input_root_digest")
    got = await cas.store.get_many([d for d in (command_digest,) if d.size])
    if command_digest.size == 0:
        got[command_digest] = b""
    if command_digest in got:
        out.command = _parse(got[command_digest], re_pb2.Command, f"command {command_digest}")
    else:
        out.missing.append(command_digest)
    out.missing.extend(await missing_in_tree(cas, root))
    return out


def _digest(fn: int, d: re_pb2.Digest, what: str) -> BlobDigest:
    try:
        return dg.make_digest(fn, d.hash, d.size_bytes)
    except InvalidArgument as e:
        raise InvalidArgument(f"Action {what}: {e.message}") from None


async def missing_in_tree(cas: ContentAddressableStorage, root: BlobDigest) -> list[BlobDigest]:
    """Every directory or file under root that the CAS lacks (each listed once)."""
    fn = root.function
    missing: list[BlobDigest] = []
    files: set[BlobDigest] = set()
    seen = {root}
    level = [root]
    while level:
        found = await cas.store.get_many([d for d in level if d.size])
        next_level: list[BlobDigest] = []
        for d in level:
            data = found.get(d, b"" if dg.is_empty(d) else None)
            if data is None:
                missing.append(d)
                continue
            directory = _parse(data, re_pb2.Directory, f"input directory {d}")
            for f in directory.files:
                files.add(_digest(fn, f.digest, f"input file {f.name!r}"))
            for sub in directory.directories:
                cd = _digest(fn, sub.digest, f"input directory {sub.name!r}")
                if cd not in seen:
                    seen.add(cd)
                    next_level.append(cd)
        if len(seen) > MAX_DIRECTORIES:
            raise InvalidArgument(f"input root {root} has more than {MAX_DIRECTORIES} directories")
        level = next_level
    if files:
        missing.extend(await cas.find_missing(sorted(files)))
    return missing
