"""The REAPI cache surface over real gRPC, against every local storage layout."""

from __future__ import annotations

import hashlib
import os
import uuid
import zlib

import blake3
import grpc
import pytest
import zstandard
from google.rpc import code_pb2
from reapi import Client, bs_pb2, digest, re_pb2
from serverutil import start_granary

MEMORY = """
storage:
  mem: {type: memory, max_size: 256MiB}
action_caches:
  mem: {type: memory}
instances:
  "*": {cas: mem, action_cache: mem}
"""
DISK = None  # the embedded defaults: disk CAS + SQLite action cache

LAYOUTS = {"memory": (MEMORY, 1), "disk": (DISK, 1), "disk-2proc": (DISK, 2)}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def server(request, tmp_path_factory):
    config, processes = LAYOUTS[request.param]
    srv = start_granary(tmp_path_factory.mktemp(request.param), config, processes=processes)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = Client(server.address)
    yield c
    c.close()


def unique(n: int = 100) -> bytes:
    return uuid.uuid4().bytes * (n // 16 + 1)


def code_of(exc_info) -> grpc.StatusCode:
    return exc_info.value.code()


# ---- Capabilities ----------------------------------------------------------


def test_capabilities_advertise_what_is_implemented(client):
    caps = client.caps.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name=""))
    assert (caps.low_api_version.major, caps.low_api_version.minor) == (2, 0)
    assert (caps.high_api_version.major, caps.high_api_version.minor) >= (2, 3)
    cc = caps.cache_capabilities
    fns = set(cc.digest_functions)
    DF = re_pb2.DigestFunction
    assert {DF.SHA256, DF.SHA1, DF.MD5, DF.SHA384, DF.SHA512, DF.BLAKE3} <= fns
    assert re_pb2.Compressor.ZSTD in cc.supported_compressors
    assert re_pb2.Compressor.ZSTD in cc.supported_batch_update_compressors
    assert cc.max_batch_total_size_bytes > 0
    assert cc.action_cache_update_capabilities.update_enabled


# ---- FindMissingBlobs / batches ----------------------------------------------


def test_find_missing_and_empty_blob_always_present(client):
    present = unique()
    (pd,) = client.upload(present)
    absent = digest(unique())
    empty = digest(b"")
    missing = client.missing([pd, absent, empty])
    assert [m.hash for m in missing] == [absent.hash]
    # same hash, wrong size: not the stored blob
    wrong = re_pb2.Digest(hash=pd.hash, size_bytes=pd.size_bytes + 1)
    assert [m.size_bytes for m in client.missing([wrong])] == [wrong.size_bytes]


@pytest.mark.parametrize(
    "bad_hash",
    ["XYZ", "A" * 64, "g" * 64, "a" * 63, ""],
)
def test_malformed_digest_is_invalid_argument_naming_it(client, bad_hash):
    with pytest.raises(grpc.RpcError) as e:
        client.missing([re_pb2.Digest(hash=bad_hash, size_bytes=3)])
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert repr(bad_hash) in e.value.details()


def test_negative_size_is_invalid(client):
    with pytest.raises(grpc.RpcError) as e:
        client.missing([re_pb2.Digest(hash="a" * 64, size_bytes=-1)])
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_batch_update_verifies_each_blob(client):
    good = unique()
    bad = unique()
    lie = digest(unique())  # digest of other data
    req = re_pb2.BatchUpdateBlobsRequest(
        requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(good), data=good),
            re_pb2.BatchUpdateBlobsRequest.Request(digest=lie, data=bad),
            re_pb2.BatchUpdateBlobsRequest.Request(digest=re_pb2.Digest(hash="nothex", size_bytes=1), data=b"x"),
        ]
    )
    resp = client.cas.BatchUpdateBlobs(req)
    codes = [r.status.code for r in resp.responses]
    assert codes == [code_pb2.OK, code_pb2.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT]
    assert lie.hash in resp.responses[1].status.message
    assert client.missing([digest(good), lie]) == [lie]


def test_batch_over_the_advertised_limit_is_refused(client):
    limit = client.caps.GetCapabilities(re_pb2.GetCapabilitiesRequest()).cache_capabilities.max_batch_total_size_bytes
    blob = os.urandom(1 << 20)
    n = limit // len(blob) + 1
    reqs = [re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(blob), data=blob)] * n
    with pytest.raises(grpc.RpcError) as e:
        client.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=reqs))
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        client.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[digest(blob)] * n))
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_batch_read(client):
    a, b = unique(), unique(5000)
    da, db = client.upload(a, b)
    absent = digest(unique())
    resp = client.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[da, absent, digest(b""), db]))
    got = [(r.status.code, r.data) for r in resp.responses]
    assert got == [(code_pb2.OK, a), (code_pb2.NOT_FOUND, b""), (code_pb2.OK, b""), (code_pb2.OK, b)]


@pytest.mark.parametrize("compressor", ["zstd", "deflate"])
def test_compressed_batches(client, compressor):
    data = b"compressible " * 4000 + unique()
    d = digest(data)
    if compressor == "zstd":
        comp, packed = re_pb2.Compressor.ZSTD, zstandard.ZstdCompressor().compress(data)
    else:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        comp, packed = re_pb2.Compressor.DEFLATE, c.compress(data) + c.flush()
    resp = client.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=packed, compressor=comp)]
        )
    )
    assert resp.responses[0].status.code == code_pb2.OK
    r = client.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[d], acceptable_compressors=[comp]))
    entry = r.responses[0]
    assert entry.status.code == code_pb2.OK
    if entry.compressor == re_pb2.Compressor.ZSTD:
        assert zstandard.ZstdDecompressor().decompressobj().decompress(entry.data) == data
    elif entry.compressor == re_pb2.Compressor.DEFLATE:
        assert zlib.decompress(entry.data, -15) == data
    else:
        assert entry.data == data
    # garbage claiming to be compressed fails for that blob only
    bad = client.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(unique()), data=b"junk", compressor=comp)]
        )
    )
    assert bad.responses[0].status.code == code_pb2.INVALID_ARGUMENT


FUNCTIONS = {
    "SHA256": (re_pb2.DigestFunction.SHA256, hashlib.sha256, ""),
    "SHA1": (re_pb2.DigestFunction.SHA1, hashlib.sha1, ""),
    "MD5": (re_pb2.DigestFunction.MD5, hashlib.md5, ""),
    "SHA384": (re_pb2.DigestFunction.SHA384, hashlib.sha384, ""),
    "SHA512": (re_pb2.DigestFunction.SHA512, hashlib.sha512, ""),
    "BLAKE3": (re_pb2.DigestFunction.BLAKE3, blake3.blake3, "blake3/"),
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_digest_functions(client, name):
    fn, hasher, segment = FUNCTIONS[name]
    data = unique(3000)
    d = digest(data, hasher)
    req = re_pb2.BatchUpdateBlobsRequest(
        digest_function=fn, requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=data)]
    )
    assert client.cas.BatchUpdateBlobs(req).responses[0].status.code == code_pb2.OK
    assert not client.cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(digest_function=fn, blob_digests=[d])
    ).missing_blob_digests
    r = client.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digest_function=fn, digests=[d]))
    assert r.responses[0].data == data
    # ByteStream with the resource-name form that carries the function
    data2 = unique(2 << 20)
    d2 = digest(data2, hasher)
    name_w = f"uploads/{uuid.uuid4()}/blobs/{segment}{d2.hash}/{d2.size_bytes}"
    assert client.bs_write(data2, resource=name_w, d=d2) == len(data2)
    assert client.bs_read(d2, resource=f"blobs/{segment}{d2.hash}/{d2.size_bytes}") == data2
    # wrong data for the digest is refused
    with pytest.raises(grpc.RpcError) as e:
        client.bs_write(unique(500), resource=f"uploads/{uuid.uuid4()}/blobs/{segment}{d.hash}/500", d=d)
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT


# ---- GetTree ----------------------------------------------------------------


def _dir(files=(), dirs=()) -> re_pb2.Directory:
    return re_pb2.Directory(
        files=[re_pb2.FileNode(name=n, digest=d) for n, d in files],
        directories=[re_pb2.DirectoryNode(name=n, digest=d) for n, d in dirs],
    )


def test_get_tree_pages(client):
    (f,) = client.upload(unique())
    leaves = [_dir(files=[(f"f{i}", f)]) for i in range(5)]
    leaf_digests = client.upload(*[leaf.SerializeToString() for leaf in leaves])
    mid = _dir(dirs=[(f"d{i}", d) for i, d in enumerate(leaf_digests)])
    (mid_d,) = client.upload(mid.SerializeToString())
    root = _dir(dirs=[("mid", mid_d), ("again", leaf_digests[0])])
    (root_d,) = client.upload(root.SerializeToString())

    whole = [d for r in client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=root_d)) for d in r.directories]
    assert len(whole) == 7  # root, mid, 5 leaves; the shared leaf once
    assert whole[0] == root

    pages = list(client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=root_d, page_size=2)))
    assert [len(p.directories) for p in pages] == [2, 2, 2, 1]
    assert all(p.next_page_token for p in pages[:-1]) and not pages[-1].next_page_token
    assert [d for p in pages for d in p.directories] == whole
    # a page token resumes exactly where that page ended (a retried, broken stream)
    rest = list(
        client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=root_d, page_size=2, page_token=pages[1].next_page_token))
    )
    assert [d for p in rest for d in p.directories] == whole[4:]


def test_get_tree_missing_root_and_bad_token(client):
    with pytest.raises(grpc.RpcError) as e:
        list(client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=digest(unique()))))
    assert code_of(e) == grpc.StatusCode.NOT_FOUND
    (root,) = client.upload(_dir().SerializeToString() + b"")
    with pytest.raises(grpc.RpcError) as e:
        list(client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=root, page_token="%%%")))
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT


# ---- ByteStream ---------------------------------------------------------------


def test_bytestream_roundtrip_offsets_and_limits(client):
    data = os.urandom(3 * (1 << 20) + 7)
    d = digest(data)
    assert client.bs_write(data, chunk=300_000) == len(data)
    assert client.bs_read(d) == data
    assert client.bs_read(d, offset=1000, limit=5000) == data[1000:6000]
    assert client.bs_read(d, offset=len(data)) == b""
    with pytest.raises(grpc.RpcError) as e:
        client.bs_read(d, offset=len(data) + 1)
    assert code_of(e) == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as e:
        client.bs_read(d, offset=-1)
    assert code_of(e) == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as e:
        client.bs_read(digest(unique()))
    assert code_of(e) == grpc.StatusCode.NOT_FOUND
    assert client.bs_read(digest(b"")) == b""


def test_bytestream_small_blob_and_existing_blob_returns_at_once(client):
    data = unique(19)[:19]
    d = digest(data)
    assert client.bs_write(data) == 19
    # uploading it again: the server may stop early, committed_size is the full size
    name = client.write_resource(d)
    reqs = iter([bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[:5])])
    assert client.bs.Write(reqs).committed_size == 19


@pytest.mark.parametrize(
    "name",
    [
        "nonsense",
        "uploads/{u}/blobs/{h}",
        "uploads/{u}/blobs/{h}/notanumber",
        "uploads/{u}/compressed-blobs/lz77/{h}/5",
        "uploads//blobs/{h}/5",
        "blobs/{h}/5",
        "uploads/{u}/blobs/murmur3/{h}/5",
    ],
)
def test_malformed_write_resource_names(client, name):
    name = name.format(u=uuid.uuid4(), h="a" * 64)
    with pytest.raises(grpc.RpcError) as e:
        client.bs.Write(iter([bs_pb2.WriteRequest(resource_name=name, data=b"hello", finish_write=True)]))
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert name in e.value.details() or "murmur3" in e.value.details()


@pytest.mark.parametrize("name", ["nonsense", "blobs/xyz/5", "blobs/{h}", "compressed-blobs/zstd/{h}", "uploads/u/blobs/{h}/5"])
def test_malformed_read_resource_names(client, name):
    name = name.format(h="a" * 64)
    with pytest.raises(grpc.RpcError) as e:
        client.bs_read(None, resource=name)
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_write_offset_must_follow(client):
    data = unique(10_000)
    d = digest(data)
    name = client.write_resource(d)
    with pytest.raises(grpc.RpcError) as e:
        client.bs.Write(iter([bs_pb2.WriteRequest(resource_name=name, write_offset=5, data=data)]))
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        client.bs.Write(
            iter(
                [
                    bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[:100]),
                    bs_pb2.WriteRequest(write_offset=50, data=data[100:], finish_write=True),
                ]
            )
        )
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert client.missing([d]) == [d]


def test_mismatched_upload_is_never_readable(client):
    data = os.urandom(2 << 20)
    lie = digest(os.urandom(2 << 20))
    with pytest.raises(grpc.RpcError) as e:
        client.bs_write(data, resource=client.write_resource(lie), d=lie)
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert client.missing([lie]) == [lie]
    too_long = digest(data[:1000])
    with pytest.raises(grpc.RpcError) as e:
        client.bs_write(data, resource=client.write_resource(too_long), d=too_long)
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_resumable_upload(client):
    data = os.urandom(3 << 20)
    d = digest(data)
    name = client.write_resource(d)
    half = 1 << 20
    # a stream that ends without finish_write keeps what it sent
    r = client.bs.Write(iter([bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[:half])]))
    assert r.committed_size == half
    status = client.bs.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(resource_name=name))
    assert (status.committed_size, status.complete) == (half, False)
    assert client.missing([d]) == [d]  # a partial blob is never visible
    r = client.bs.Write(
        iter([bs_pb2.WriteRequest(resource_name=name, write_offset=half, data=data[half:], finish_write=True)])
    )
    assert r.committed_size == len(data)
    status = client.bs.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(resource_name=name))
    assert status.complete and status.committed_size == len(data)
    assert client.bs_read(d) == data


def test_query_write_status_unknown_upload(client):
    name = client.write_resource(digest(unique()))
    with pytest.raises(grpc.RpcError) as e:
        client.bs.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(resource_name=name))
    assert code_of(e) == grpc.StatusCode.NOT_FOUND


def test_client_vanishing_mid_write_leaves_nothing(client, server):
    data = os.urandom(4 << 20)
    d = digest(data)
    name = client.write_resource(d)

    def gen():
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[: 1 << 20])
        raise RuntimeError("client dies")

    with pytest.raises((grpc.RpcError, RuntimeError)):
        client.bs.Write(gen())
    assert client.missing([d]) == [d]
    # and the server still serves
    assert client.bs_write(data) == len(data)
    assert client.bs_read(d) == data


@pytest.mark.parametrize("compressor", ["zstd", "deflate"])
def test_compressed_bytestream(client, compressor):
    data = (b"abc" * 1_000_000) + unique()
    d = digest(data)
    if compressor == "zstd":
        packed = zstandard.ZstdCompressor().compress(data)
    else:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        packed = c.compress(data) + c.flush()
    name = client.write_resource(d, compressor=compressor)
    chunks = [packed[i : i + 1000] for i in range(0, len(packed), 1000)]
    reqs = []
    off = 0
    for i, ch in enumerate(chunks):
        reqs.append(
            bs_pb2.WriteRequest(
                resource_name=name if i == 0 else "", write_offset=off, data=ch, finish_write=i == len(chunks) - 1
            )
        )
        off += len(ch)
    committed = client.bs.Write(iter(reqs)).committed_size
    assert committed in (-1, len(packed))
    got = b"".join(
        r.data for r in client.bs.Read(bs_pb2.ReadRequest(resource_name=client.read_resource(d, compressor=compressor)))
    )
    if compressor == "zstd":
        assert zstandard.ZstdDecompressor().decompressobj().decompress(got) == data
    else:
        assert zlib.decompress(got, -15) == data
    # read_offset applies to the uncompressed data; read_limit must be 0
    got = b"".join(
        r.data
        for r in client.bs.Read(
            bs_pb2.ReadRequest(resource_name=client.read_resource(d, compressor=compressor), read_offset=10)
        )
    )
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(got) if compressor == "zstd" else zlib.decompress(got, -15)
    assert plain == data[10:]
    with pytest.raises(grpc.RpcError) as e:
        client.bs_read(d, limit=5, resource=client.read_resource(d, compressor=compressor))
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    # uploading it again compressed: committed_size -1 at once
    again = client.bs.Write(iter([bs_pb2.WriteRequest(resource_name=client.write_resource(d, compressor=compressor), data=chunks[0])]))
    assert again.committed_size == -1


def test_instance_names_with_slashes(client):
    data = unique(70_000)
    d = digest(data)
    inst = "team/linux/x86"
    assert client.bs_write(data, resource=client.write_resource(d, instance=inst)) == len(data)
    assert client.bs_read(d, resource=client.read_resource(d, instance=inst)) == data
    assert client.missing([d], instance=inst) == []


def test_garbage_protobuf_keeps_server_serving(client):
    for method in ("FindMissingBlobs", "BatchUpdateBlobs", "BatchReadBlobs"):
        raw = client.channel.unary_unary(f"/build.bazel.remote.execution.v2.ContentAddressableStorage/{method}")
        with pytest.raises(grpc.RpcError) as e:
            raw(b"\xff\xff\xff\xff garbage")
        assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid build.bazel.remote.execution.v2" in e.value.details()
    raw = client.channel.stream_unary("/google.bytestream.ByteStream/Write")
    with pytest.raises(grpc.RpcError):
        raw(iter([b"\x0a\xff\xff\xff\xff"]))
    (d,) = client.upload(b"still alive")
    assert client.missing([d]) == []


def test_empty_write_stream_is_invalid(client):
    with pytest.raises(grpc.RpcError) as e:
        client.bs.Write(iter([]))
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT


# ---- Action Cache --------------------------------------------------------------


def _result(client, with_tree=True):
    out = unique(300)
    stdout = b"hello stdout " + unique(20)
    (out_d, stdout_d) = client.upload(out, stdout)
    result = re_pb2.ActionResult(
        exit_code=0,
        output_files=[re_pb2.OutputFile(path="out/a", digest=out_d, is_executable=True)],
        stdout_digest=stdout_d,
    )
    if with_tree:
        inner = unique(200)
        (inner_d,) = client.upload(inner)
        tree = re_pb2.Tree(root=_dir(files=[("x", inner_d)]))
        (tree_d,) = client.upload(tree.SerializeToString())
        result.output_directories.append(re_pb2.OutputDirectory(path="out/dir", tree_digest=tree_d))
        return result, out, stdout, inner_d
    return result, out, stdout, None


def test_action_cache_roundtrip_and_inline(client):
    result, out, stdout, _ = _result(client)
    action = digest(unique())
    client.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(action_digest=action, action_result=result))
    got = client.ac.GetActionResult(
        re_pb2.GetActionResultRequest(action_digest=action, inline_stdout=True, inline_output_files=["out/a"])
    )
    assert got.output_files[0].digest == result.output_files[0].digest
    assert got.stdout_raw == stdout
    assert got.output_files[0].contents == out
    with pytest.raises(grpc.RpcError) as e:
        client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=digest(unique())))
    assert code_of(e) == grpc.StatusCode.NOT_FOUND


def test_action_cache_accepts_non_action_digests(client):
    # moon keys results by the digest of its own JSON manifest
    manifest = b'{"hash": "moon-task", "inputs": []}' + unique()
    result, _, _, _ = _result(client, with_tree=False)
    client.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(action_digest=digest(manifest), action_result=result))
    assert client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=digest(manifest))).exit_code == 0


def test_action_cache_instances_do_not_share_results(client):
    result, _, _, _ = _result(client, with_tree=False)
    action = digest(unique())
    client.ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(instance_name="a", action_digest=action, action_result=result)
    )
    client.ac.GetActionResult(re_pb2.GetActionResultRequest(instance_name="a", action_digest=action))
    with pytest.raises(grpc.RpcError) as e:
        client.ac.GetActionResult(re_pb2.GetActionResultRequest(instance_name="b", action_digest=action))
    assert code_of(e) == grpc.StatusCode.NOT_FOUND


def test_action_cache_never_returns_results_with_missing_blobs(client):
    result, _, _, _ = _result(client)
    result.output_files.add(path="gone", digest=digest(unique()))
    action = digest(unique())
    client.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(action_digest=action, action_result=result))
    with pytest.raises(grpc.RpcError) as e:
        client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=action))
    assert code_of(e) == grpc.StatusCode.NOT_FOUND
    # a file inside an output directory tree counts too
    result2, _, _, _ = _result(client)
    tree = re_pb2.Tree(root=_dir(files=[("missing", digest(unique()))]))
    (tree_d,) = client.upload(tree.SerializeToString())
    result2.output_directories[0].tree_digest.CopyFrom(tree_d)
    action2 = digest(unique())
    client.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(action_digest=action2, action_result=result2))
    with pytest.raises(grpc.RpcError) as e:
        client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=action2))
    assert code_of(e) == grpc.StatusCode.NOT_FOUND
    # stderr too
    result3, _, _, _ = _result(client, with_tree=False)
    result3.stderr_digest.CopyFrom(digest(unique()))
    action3 = digest(unique())
    client.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(action_digest=action3, action_result=result3))
    with pytest.raises(grpc.RpcError) as e:
        client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=action3))
    assert code_of(e) == grpc.StatusCode.NOT_FOUND


def test_action_cache_rejects_malformed_result_digests(client):
    result = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="x", digest=re_pb2.Digest(hash="zz", size_bytes=1))])
    with pytest.raises(grpc.RpcError) as e:
        client.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(action_digest=digest(unique()), action_result=result))
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert "'zz'" in e.value.details()
