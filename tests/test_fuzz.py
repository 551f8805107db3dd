"""Property-based fuzzing (Hypothesis) of everything that parses input a client or an operator controls.

Each parser may refuse its input only with the error type it documents (InvalidArgument, which the
gRPC layer turns into INVALID_ARGUMENT; ConfigError for configuration): anything else would reach a
client as INTERNAL, or stop `granary serve` with a traceback. Where a parser has a writer, what is
written parses back to the same thing; path checks never let a path leave the input root.

Bounded for CI (profile "ci": 200 examples per property, no deadline). The long run uses profile
"long" (GRANARY_FUZZ_PROFILE=long, GRANARY_FUZZ_EXAMPLES=N): `python3 bench/fuzz.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import string
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from granary import compression
from granary import digest as dg
from granary import resource_names as rn
from granary._proto.build.bazel.remote.asset.v1 import remote_asset_pb2 as ra_pb2
from granary._proto.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from granary.asset import qualifiers
from granary.bes import query as bes_query
from granary.cas.cas import ContentAddressableStorage
from granary.cas.memory import MemoryBlobStore
from granary.config import load as load_config
from granary.errors import ConfigError, InvalidArgument
from granary.execution import inputs as server_inputs
from granary.execution import opfilter
from granary.worker import inputs as worker_inputs
from granary.worker import paths

settings.register_profile("ci", max_examples=200, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=int(os.environ.get("GRANARY_FUZZ_EXAMPLES", "20000")),
                          deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("GRANARY_FUZZ_PROFILE", "ci"))

HEX = "0123456789abcdef"
# text biased towards what these parsers split on and look for, plus anything at all
SEGMENT_WORDS = sorted(rn.RESERVED | set(dg.BY_NAME) | set(compression.BY_NAME) | {"", ".", "..", "x", "main"})


def segment_text() -> st.SearchStrategy[str]:
    hexes = st.integers(0, 200).map(lambda n: hashlib.sha256(str(n).encode()).hexdigest()[: [64, 40, 32, 96, 63][n % 5]])
    return st.one_of(st.sampled_from(SEGMENT_WORDS), hexes, st.integers(-5, 10**20).map(str),
                     st.text(max_size=8), st.sampled_from(["²", "٣", "1_0", " 1", "+1", "0x1", "ABCDEF"]))


def path_like(parts: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[str]:
    return st.lists(segment_text() if parts is None else parts, max_size=10).map("/".join)


# ---- resource names -------------------------------------------------------------------------------------


@given(st.one_of(path_like(), st.text(max_size=200)))
def test_resource_names_raise_only_invalid_argument(name: str) -> None:
    for parse in (rn.read_target, rn.write_target, rn.parse_read, rn.parse_write):
        try:
            parse(name)
        except InvalidArgument:
            pass


instance_segment = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=8).filter(
    lambda s: s not in rn.RESERVED and s not in (".", ".."))
functions = st.sampled_from(sorted(dg.FUNCTIONS))


@st.composite
def blob_digests(draw) -> dg.BlobDigest:
    fn = draw(functions)
    data = draw(st.binary(max_size=64))
    return dg.BlobDigest(fn, dg.compute(fn, data).hash, draw(st.integers(0, 2**63 - 1)))


@given(st.lists(instance_segment, max_size=4).map("/".join), blob_digests(),
       st.sampled_from(["", *compression.BY_NAME]), st.uuids(), st.lists(instance_segment, max_size=3))
def test_resource_names_round_trip(instance: str, d: dg.BlobDigest, compressor: str, upload, metadata) -> None:
    prefix = f"{instance}/" if instance else ""
    kind = f"compressed-blobs/{compressor}" if compressor else "blobs"
    # a function that cannot be inferred from the hash length (BLAKE3) must be named; the others may be
    named = f"{dg.function_name(d.function)}/" if d.function in dg.NAMED_IN_RESOURCE or d.size % 2 else ""
    tail = f"{kind}/{named}{d.hash}/{d.size}"
    comp = compression.BY_NAME[compressor] if compressor else compression.IDENTITY
    read = rn.read_target(prefix + tail)
    assert read == rn.BlobResource(instance, d, comp)
    write = rn.write_target(f"{prefix}uploads/{upload}/{tail}" + "".join(f"/{m}" for m in metadata))
    assert write == rn.BlobResource(instance, d, comp, str(upload))


@given(st.lists(instance_segment, max_size=3).map("/".join), instance_segment, st.one_of(st.just(""), instance_segment))
def test_logstream_names_round_trip(instance: str, stream_id: str, token: str) -> None:
    name = rn.logstream_name(instance, stream_id, token)
    assert rn.parse_logstream(name) == rn.LogStreamResource(instance, stream_id, token)


# ---- digests --------------------------------------------------------------------------------------------


@given(st.integers(-3, 12), st.one_of(segment_text(), st.text(HEX + "ABX", max_size=130)),
       st.integers(-(2**63), 2**63 - 1))
def test_digest_validation_raises_only_invalid_argument_and_check_agrees(fn: int, hash_: str, size: int) -> None:
    try:
        d = dg.make_digest(fn, hash_, size)
    except InvalidArgument:
        refused = True
    else:
        refused = False
        assert len(d.hash) == dg.FUNCTIONS[d.function].hex_length and set(d.hash) <= set(HEX) and d.size >= 0
    try:  # the fast path FindMissingBlobs uses must refuse exactly the same digests
        dg.check(fn, hash_, size)
    except InvalidArgument:
        assert refused
    else:
        assert not refused


@given(functions, st.binary(max_size=300))
def test_computed_digests_validate(fn: int, data: bytes) -> None:
    d = dg.compute(fn, data)
    assert dg.make_digest(fn, d.hash, d.size) == d
    if fn in (dg.SHA256, dg.SHA1, dg.MD5, dg.SHA384, dg.SHA512):  # inferable from the hash's length
        assert dg.make_digest(dg.UNKNOWN, d.hash, d.size) == d


# ---- the operations filter ---------------------------------------------------------------------------------

FILTER_WORDS = [*opfilter.FIELDS, "sort_order", *opfilter.OPERATORS, "&", ",", "(asc)", "(desc)", "COMPLETED",
                "queued", "2024-05-01T12:00:00Z", "0001-01-01T00:00:00+05:00", "9999-12-31 23:59:59-05:00",
                "'", '"', " ", "²", "٣", "4", "-1"]


@given(st.one_of(st.lists(st.sampled_from(FILTER_WORDS), max_size=12).map("".join),
                 st.lists(st.sampled_from(FILTER_WORDS), max_size=12).map(" ".join), st.text(max_size=80)))
@example("stage = ²")  # str.isdigit() accepts it, int() does not: was a ValueError (INTERNAL)
@example("stage = ٣")
def test_operations_filter_raises_only_invalid_argument(text: str) -> None:
    try:
        q = opfilter.parse(text)
    except InvalidArgument:
        return
    for c in q.conditions:
        assert c.field in opfilter.FIELDS and c.op in opfilter.OPERATORS
    for key, _ in q.sort:
        assert key in opfilter.FIELDS


@given(st.lists(st.tuples(st.sampled_from([f for f in opfilter.FIELDS if f not in opfilter.TIME_FIELDS]),
                          st.sampled_from(opfilter.OPERATORS),
                          st.text(string.ascii_letters + string.digits + "-_.:/", min_size=1, max_size=12)),
                min_size=1, max_size=5),
       st.lists(st.tuples(st.sampled_from(opfilter.FIELDS), st.booleans()), max_size=3))
def test_operations_filter_round_trips(terms, sort) -> None:
    terms = [(f, o, v) for f, o, v in terms if f != "stage" or v.isdigit()]
    text = " & ".join([f"{f} {o} {v}" for f, o, v in terms]
                      + ([f"sort_order = {', '.join(f + ('(desc)' if d else '') for f, d in sort)}"] if sort else []))
    if not terms and not sort:
        return
    q = opfilter.parse(text)
    assert [(c.field, c.op, c.value) for c in q.conditions] == [(f, o, int(v) if f == "stage" else v)
                                                                for f, o, v in terms]
    assert q.sort == list(sort)


# ---- input trees: the server's check (execution/inputs.py) --------------------------------------------------

names = st.one_of(st.sampled_from(["a", "b", "c", ".", "..", "", "a/b", "/", "x\0y", "../x"]),
                  st.text(max_size=6))


def directory_bytes(children: list[re_pb2.Digest]) -> st.SearchStrategy[bytes]:
    files = st.lists(st.builds(re_pb2.FileNode, name=names, is_executable=st.booleans()), max_size=3)
    links = st.lists(st.builds(re_pb2.SymlinkNode, name=names, target=path_like(names)), max_size=2)

    @st.composite
    def one(draw) -> bytes:
        d = re_pb2.Directory(files=draw(files), symlinks=draw(links))
        for f in d.files:
            f.digest.CopyFrom(draw(st.sampled_from(children)) if children else re_pb2.Digest())
        for name in draw(st.lists(names, max_size=3)):
            d.directories.add(name=name).digest.CopyFrom(draw(st.sampled_from(children)) if children
                                                         else re_pb2.Digest())
        raw = d.SerializeToString()
        return draw(st.one_of(st.just(raw), st.binary(max_size=40), st.just(raw[: len(raw) // 2])))

    return one()


@st.composite
def stored_trees(draw) -> tuple[list[bytes], re_pb2.Digest]:
    """Blobs of a few levels of (mostly) Directory messages, each naming blobs of the level below or
    malformed digests, and the digest of the top one."""
    blobs: list[bytes] = []
    digests: list[re_pb2.Digest] = [re_pb2.Digest(hash="0" * 64, size_bytes=5),
                                    re_pb2.Digest(hash="XYZ", size_bytes=1),
                                    re_pb2.Digest(hash="a" * 64, size_bytes=-1)]
    for _ in range(draw(st.integers(1, 4))):
        level = draw(st.lists(directory_bytes(digests), min_size=1, max_size=3))
        for raw in level:
            blobs.append(raw)
            digests.append(re_pb2.Digest(hash=hashlib.sha256(raw).hexdigest(), size_bytes=len(raw)))
    return blobs, digests[-1]


@given(stored_trees(), st.booleans())
def test_server_input_tree_check_raises_only_invalid_argument(tree, as_action: bool) -> None:
    blobs, root = tree

    async def check() -> None:
        cas = ContentAddressableStorage(MemoryBlobStore(1 << 24))
        await cas.store.put_many([(dg.compute(dg.SHA256, b), b) for b in blobs])
        if not as_action:
            await server_inputs.missing_in_tree(cas, dg.from_proto(dg.SHA256, root))
            return
        command = re_pb2.Command(arguments=["true"]).SerializeToString()
        action = re_pb2.Action(command_digest=re_pb2.Digest(hash=hashlib.sha256(command).hexdigest(),
                                                            size_bytes=len(command)), input_root_digest=root)
        raw = action.SerializeToString()
        await cas.store.put_many([(dg.compute(dg.SHA256, command), command), (dg.compute(dg.SHA256, raw), raw)])
        loaded = await server_inputs.load_action(cas, dg.compute(dg.SHA256, raw))
        assert loaded.action is not None and loaded.command is not None

    try:
        asyncio.run(check())
    except InvalidArgument:
        pass


# ---- input trees: the worker's check (worker/inputs.py, paths.py) -----------------------------------------


@st.composite
def worker_trees(draw):
    """A tree as the worker fetched it: every distinct Directory by digest (some may repeat, or loop)."""
    n = draw(st.integers(1, 5))
    keys = [dg.BlobDigest(dg.SHA256, hashlib.sha256(str(i).encode()).hexdigest(), 10 + i) for i in range(n)]
    tree = {}
    file_digest = re_pb2.Digest(hash=hashlib.sha256(b"f").hexdigest(), size_bytes=1)
    for i, key in enumerate(keys):
        d = re_pb2.Directory()
        for name in draw(st.lists(names, max_size=3)):
            d.files.add(name=name, digest=file_digest)
        for name in draw(st.lists(names, max_size=2)):
            d.symlinks.add(name=name, target=draw(path_like(names)))
        # children mostly below (a DAG); sometimes any directory, loops included
        below = keys[i + 1:] if draw(st.integers(0, 9)) else keys
        for name in draw(st.lists(names, max_size=3)) if below else []:
            child = draw(st.sampled_from(below))
            d.directories.add(name=name, digest=re_pb2.Digest(hash=child.hash, size_bytes=child.size))
        tree[key] = d
    return tree, keys[0]


@given(worker_trees())
def test_worker_input_layout_never_escapes(tree_root) -> None:
    tree, root = tree_root
    limits = worker_inputs.InputLimits(max_paths=2000, max_depth=20)
    try:
        count = worker_inputs.check_size(tree, dg.SHA256, root, limits)
        lay = worker_inputs.layout(tree, dg.SHA256, root, limits)
    except InvalidArgument:
        return
    every = lay.directories + [p for p, _, _ in lay.files] + [p for p, _ in lay.symlinks]
    assert len(every) == count
    assert len(set(every)) == len(every)  # no two entries at one path
    for p in every:
        assert p and not p.startswith("/") and "\0" not in p
        assert posixpath.normpath(p) == p and ".." not in p.split("/")
    for p, target in lay.symlinks:
        if not lay.filesystem_image:
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(p), target))
            assert not target.startswith("/") and resolved != ".." and not resolved.startswith("../")


@given(path_like(names))
def test_check_relative_stays_inside(path: str) -> None:
    try:
        out = paths.check_relative(path, "working directory")
    except InvalidArgument:
        return
    assert not out.startswith("/") and ".." not in out.split("/") and "" not in out.split("/")[bool(not out):]
    assert out == "" or posixpath.normpath(out) == out


@given(path_like(names), path_like(names))
def test_output_paths_stay_inside(working_directory: str, path: str) -> None:
    try:
        wd = paths.check_relative(working_directory, "working directory")
        out = paths.join_output(wd, path, "output")
    except InvalidArgument:
        return
    assert not out.startswith("/") and "\0" not in out
    assert out == "" or (posixpath.normpath(out) == out and ".." not in out.split("/"))


@given(path_like(st.sampled_from(["a", "b", "c"])), path_like(names))
def test_symlink_check_is_lexical_containment(link: str, target: str) -> None:
    link = posixpath.normpath(link) if link else "l"
    if link.startswith("..") or link == ".":
        link = "l"
    inside = paths.symlink_stays_inside(link, target)
    if inside:
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
        assert not target.startswith("/") and resolved != ".." and not resolved.startswith("../")


# ---- configuration files --------------------------------------------------------------------------------

CONFIG_KEYS = ["storage", "action_caches", "instances", "execution", "server", "http", "auth", "build_events",
               "type", "path", "max_size", "cas", "action_cache", "local_workers", "listen", "default_timeout",
               "fsync", "main", "default", "*", "poll_interval", "database", "allow_updates", "backends"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12), st.floats(allow_nan=True),
                    st.sampled_from(["disk", "memory", "redis", "s3", "tiered", "10GiB", "1m", "auto", "0",
                                     "-1s", "cas", "main", "127.0.0.1:0", "sqlite:///x"]), st.text(max_size=10))
config_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(CONFIG_KEYS), inner, max_size=4)), max_leaves=20)


@given(st.one_of(config_values.map(lambda v: yaml.safe_dump(v)),
                 st.dictionaries(st.sampled_from(CONFIG_KEYS[:8]), config_values, max_size=5).map(yaml.safe_dump),
                 st.text(max_size=200), st.binary(max_size=100).map(lambda b: b.decode("latin-1"))))
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_config_files_raise_only_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "granary.yaml"
        path.write_text(text, errors="surrogateescape")
        try:
            load_config(path, Path(tmp) / "data")
        except ConfigError:
            pass


# ---- Remote Asset qualifiers, BES stream_id_regex ------------------------------------------------------------

QUALIFIER_NAMES = [qualifiers.CHECKSUM_SRI, qualifiers.CANONICAL_ID, qualifiers.AUTH_HEADERS, qualifiers.RESOURCE_TYPE,
                   "http_header:Authorization", "http_header:", "http_header:a b", "http_header_url:0:X",
                   "http_header_url:²:X", "http_header_url:x:X", "http_header_url:1", "other"]
QUALIFIER_VALUES = ["sha256-" + "A" * 43 + "=", "sha256-!!", "sha384-", "md5-abc", "", "a\r\nb", '{"u": {"h": "v"}}',
                    '{"u": 1}', "[", "[" * 5000, "application/zip", "application/x-tar", *qualifiers.ARCHIVE_TYPES]


@given(st.lists(st.tuples(st.one_of(st.sampled_from(QUALIFIER_NAMES), st.text(max_size=20)),
                          st.one_of(st.sampled_from(QUALIFIER_VALUES), st.text(max_size=40))), max_size=5),
       st.booleans())
@example([("http_header_url:²:X", "v")], False)  # isdigit() but not int(): was a ValueError (INTERNAL)
@example([(qualifiers.AUTH_HEADERS, "[" * 100_000)], False)  # json.loads: RecursionError (INTERNAL)
def test_asset_qualifiers_raise_only_invalid_argument(pairs, directory: bool) -> None:
    items = [ra_pb2.Qualifier(name=n, value=v) for n, v in pairs]
    try:
        q = qualifiers.parse(items, directory=directory)
    except InvalidArgument:
        return
    assert len(q.record_key()) == 64
    for index in range(3):
        for name, value in q.headers_for(index, "u").items():
            assert name.isascii() and ":" not in name and "\n" not in value and "\r" not in value


@given(st.one_of(st.lists(st.sampled_from(list("()[]{}?*+|\\^$.a1-,:<>=!P") + ["(?P<n>", "(?=", "\\1", "{99999}"]),
                          max_size=20).map("".join), st.text(max_size=40)))
@pytest.mark.filterwarnings("ignore::FutureWarning")  # re's 'possible nested set' on patterns like '[['
def test_bes_stream_regex_check_raises_only_invalid_argument(pattern: str) -> None:
    try:
        bes_query.check(pattern, max_length=200)
    except InvalidArgument:
        pass
