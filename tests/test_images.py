"""Container images (issue 13): pulling from a real registry, unpacking safely, caching, and
running an action inside an image through a real server and `granary worker`.

The registry is Debian's docker-registry (`docker-registry serve CONFIG` on a free loopback port);
the images are built by tests/imageutil.py from busybox-static and pushed with the Registry API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from imageutil import TokenIssuer, have_registry, start_registry, tar_layer
from rwapi import ExecClient, final
from serverutil import start_granary

from granary.worker.images import ImageStore
from granary.worker.images.registry import PullError, read_credentials

pytestmark = [
    pytest.mark.skipif(not have_registry(), reason="docker-registry or busybox-static is not installed"),
    pytest.mark.timeout(300),
]

CONFIG = """
storage: {main: {type: disk, path: cas}}
action_caches: {main: {type: memory}}
instances:
  "": {cas: main, action_cache: main}
execution: {local_workers: 0, platform_grace: 0, bot_long_poll: 1, poll_interval: 0.2}
"""
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    with start_registry(tmp_path_factory.mktemp("registry")) as r:
        base = tar_layer({"etc": None, "etc/granary-image": b"one\n", "etc/old": b"lower\n",
                          "opt": None, "opt/a": b"a", "opt/b": b"b"}, busybox=True)
        top = tar_layer({"etc/.wh.old": b"", "opt/.wh..wh..opq": b"", "opt/c": b"c"})
        r.one = r.push_image("test/one", "v1", [base, top], env=["FOO=from-image", "PATH=/bin"], workdir="/src")
        r.two = r.push_image("test/two", "v1", [tar_layer({"etc": None, "etc/granary-image": b"two\n"},
                                                          busybox=True)])
        yield r


def store(tmp_path: Path, **kw) -> ImageStore:
    return ImageStore(tmp_path / "images", kw.pop("max_bytes", 1 << 30), **kw)


def test_pull_by_tag_and_by_digest_share_one_unpacked_image(reg, tmp_path):
    s = store(tmp_path)
    by_tag = s.acquire(f"docker://{reg.host}/test/one:v1")
    by_digest = s.acquire(f"docker://{reg.host}/test/one@{reg.one}")
    assert by_tag.digest == by_digest.digest == reg.one
    assert by_tag.rootfs == by_digest.rootfs
    assert s.pulls == 1
    root = by_tag.rootfs
    assert (root / "etc/granary-image").read_text() == "one\n"
    assert not (root / "etc/old").exists()  # whiteout
    assert sorted(os.listdir(root / "opt")) == ["c"]  # opaque whiteout hid the lower layer's files
    assert os.access(root / "bin/busybox", os.X_OK)
    assert by_tag.mount == "/src" and (root / "src").is_dir()
    assert ("FOO", "from-image") in by_tag.env


def test_manifest_list_is_picked_by_os_and_architecture(reg, tmp_path):
    one = reg.push_image("test/multi", "a", [tar_layer({"etc": None, "etc/granary-image": b"amd\n"})])
    two = reg.push_image("test/multi", "b", [tar_layer({"etc": None, "etc/granary-image": b"arm\n"})])
    reg.push_list("test/multi", "v1", [("linux", "arm64", two), ("linux", "amd64", one)])
    ref = f"docker://{reg.host}/test/multi:v1"
    for arch, want in (("amd64", "amd\n"), ("arm64", "arm\n")):
        image = store(tmp_path / arch, arch=arch).acquire(ref)
        assert (image.rootfs / "etc/granary-image").read_text() == want
    with pytest.raises(PullError, match=r"test/multi:v1.*no manifest for linux/s390x.*linux/arm64, linux/amd64"):
        store(tmp_path / "s390x", arch="s390x").acquire(ref)


def test_corrupt_layer_is_refused_naming_the_image(reg, tmp_path):
    layer = tar_layer({"etc": None, "etc/granary-image": b"bad\n"}, busybox=False)
    reg.push_image("test/corrupt", "v1", [layer])
    import hashlib
    reg.corrupt("sha256:" + hashlib.sha256(layer).hexdigest())
    s = store(tmp_path)
    ref = f"docker://{reg.host}/test/corrupt:v1"
    with pytest.raises(PullError) as first:
        s.acquire(ref)
    assert ref in str(first.value) and "does not match its digest" in str(first.value)
    with pytest.raises(PullError) as second:  # remembered: the actions behind it fail at once
        s.acquire(ref)
    assert str(second.value) == str(first.value)
    assert s.pulls == 0 and not os.listdir(tmp_path / "images/rootfs") and not os.listdir(tmp_path / "images/layers")
    assert not os.listdir(tmp_path / "images/tmp")  # the half-built root filesystem is gone


def test_missing_image_fails_with_its_name(reg, tmp_path):
    ref = f"docker://{reg.host}/test/nothing:v1"
    with pytest.raises(PullError, match=r"container image docker://127\.0\.0\.1:\d+/test/nothing:v1 could not be"
                                        r" pulled: HTTP 404"):
        store(tmp_path).acquire(ref)


def test_concurrent_requests_pull_once(reg, tmp_path):
    s = store(tmp_path)
    got: list[str] = []
    errors: list[BaseException] = []

    def take(ref: str) -> None:
        try:
            got.append(s.acquire(ref).digest)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    refs = [f"docker://{reg.host}/test/two:v1", f"docker://{reg.host}/test/two@{reg.two}"]  # the same image
    threads = [threading.Thread(target=take, args=(refs[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == [reg.two] * 8
    assert s.pulls == 1


def test_cache_is_bounded_and_evicts_least_recently_used_idle_images(reg, tmp_path):
    probe = store(tmp_path / "probe")
    probe.acquire(f"docker://{reg.host}/test/one:v1")
    size = probe.total()  # its layers and its own bytes
    s = store(tmp_path, max_bytes=size + size // 2)  # room for one image, not two
    one = s.acquire(f"docker://{reg.host}/test/one:v1")
    two = s.acquire(f"docker://{reg.host}/test/two:v1")
    assert one.rootfs.exists() and two.rootfs.exists()  # both in use: neither may go
    s.release(one)
    assert not one.rootfs.exists()  # idle and least recently used: evicted, and its layers with it
    assert set(s.layers()) == set(two.layers)
    assert two.rootfs.exists() and s.total() <= s.max_bytes
    s.release(two)
    again = s.acquire(f"docker://{reg.host}/test/one@{reg.one}")  # pulled again, two makes room
    assert again.rootfs.exists() and not two.rootfs.exists() and s.pulls == 3
    assert set(s.layers()) == set(again.layers)


# ---- layers shared between images ---------------------------------------------------------------


def layered(reg, name: str):
    """Three images on one busybox base layer (made unique to the test by `name`):
    X overwrites a base file; Y overwrites it too, whites out a file and a busybox applet, and makes
    a directory opaque; Z is the base alone. -> (base digest, {X, Y, Z: image reference})."""
    import hashlib

    base = tar_layer({"etc": None, "etc/granary-image": b"base\n", "etc/shared": b"shared\n",
                      "etc/test": name.encode(), "opt": None, "opt/x": b"x"}, busybox=True)
    top_x = tar_layer({"etc/granary-image": b"X\n"})
    top_y = tar_layer({"etc/.wh.shared": b"", "opt/.wh..wh..opq": b"", "bin/.wh.ls": b"",
                       "etc/granary-image": b"Y\n", "opt/y": b"y"})
    refs = {}
    for image, layers in (("x", [base, top_x]), ("y", [base, top_y]), ("z", [base])):
        reg.push_image(f"{name}/{image}", "v1", layers)
        refs[image] = f"docker://{reg.host}/{name}/{image}:v1"
    return "sha256:" + hashlib.sha256(base).hexdigest(), refs


def test_a_shared_base_layer_is_downloaded_and_unpacked_once(reg, tmp_path):
    base, refs = layered(reg, "shared")
    s = store(tmp_path)
    x = s.acquire(refs["x"])
    y = s.acquire(refs["y"])
    assert reg.blob_gets(base) == 1  # the registry served the base layer once, for two images
    assert s.layer_pulls == 3 and s.pulls == 2
    assert x.layers[0] == y.layers[0] == base and s.layers()[base] == 2
    # one copy of the base's files on disk: both root filesystems link the layer's inode
    bx, by = os.stat(x.rootfs / "bin/busybox"), os.stat(y.rootfs / "bin/busybox")
    assert bx.st_ino == by.st_ino and bx.st_nlink == 3  # the layer's file and the two images' links
    # Y's layer changed its own root filesystem only, never the shared files X links to
    assert (x.rootfs / "etc/granary-image").read_text() == "X\n"
    assert (y.rootfs / "etc/granary-image").read_text() == "Y\n"
    assert (x.rootfs / "etc/shared").read_text() == "shared\n" and not (y.rootfs / "etc/shared").exists()
    assert os.listdir(x.rootfs / "opt") == ["x"] and os.listdir(y.rootfs / "opt") == ["y"]
    assert (x.rootfs / "bin/ls").is_symlink() and not (y.rootfs / "bin/ls").is_symlink()
    z = s.acquire(refs["z"])  # the base alone, assembled a third time: as it was pushed
    assert (z.rootfs / "etc/granary-image").read_text() == "base\n" and (z.rootfs / "etc/shared").exists()
    assert reg.blob_gets(base) == 1 and s.layer_pulls == 3
    # the images' own bytes leave out the shared files: the total counts busybox once
    assert s.total() < 2 * os.path.getsize(x.rootfs / "bin/busybox")


def test_images_pulled_at_once_fetch_their_shared_layer_once(reg, tmp_path):
    base, refs = layered(reg, "together")
    s = store(tmp_path)
    errors: list[BaseException] = []

    def take(ref: str) -> None:
        try:
            s.acquire(ref)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=take, args=(refs[k],)) for k in ("x", "y", "z", "x", "y", "z")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert reg.blob_gets(base) == 1 and s.layer_pulls == 3 and s.pulls == 3


def test_eviction_spares_layers_that_cached_images_are_built_from(reg, tmp_path):
    base, refs = layered(reg, "evict")
    probe = store(tmp_path / "probe")
    probe.acquire(f"docker://{reg.host}/test/two:v1")
    bound = probe.total() + probe.total() // 4  # room for one busybox, not two
    s = store(tmp_path, max_bytes=bound)
    x, y = s.acquire(refs["x"]), s.acquire(refs["y"])
    two = s.acquire(f"docker://{reg.host}/test/two:v1")
    assert s.total() > bound  # all three in use: nothing goes
    s.release(x)
    assert not x.rootfs.exists() and x.layers[1] not in s.layers()  # X and its own layer went ...
    assert s.layers()[base] == 1 and (y.rootfs / "bin/busybox").is_file()  # ... the base Y is built from stayed
    assert subprocess.run([str(y.rootfs / "bin/busybox"), "true"], check=False).returncode == 0
    s.release(y)
    assert not y.rootfs.exists() and base not in s.layers()  # now nothing needs the base: it goes too
    assert two.rootfs.exists() and s.total() <= bound
    assert sorted(os.listdir(tmp_path / "images/layers")) == sorted(d.partition(":")[2] for d in s.layers())
    s.release(two)
    s.acquire(refs["x"])  # the base is downloaded again
    assert reg.blob_gets(base) == 2


def test_a_corrupt_upper_layer_is_refused_and_the_cached_base_kept(reg, tmp_path):
    import hashlib

    base, refs = layered(reg, "corruptupper")
    s = store(tmp_path)
    x = s.acquire(refs["x"])
    bad = tar_layer({"etc/granary-image": b"bad\n"})
    basebytes = (reg.storage / "docker/registry/v2/blobs/sha256" / base[7:9] / base[7:] / "data").read_bytes()
    reg.push_image("corruptupper/bad", "v1", [basebytes, bad])
    reg.corrupt("sha256:" + hashlib.sha256(bad).hexdigest())
    with pytest.raises(PullError, match="corruptupper/bad:v1 could not be pulled: blob sha256:.* does not match"):
        s.acquire(f"docker://{reg.host}/corruptupper/bad:v1")
    assert s.layers() == {d: 1 for d in x.layers} and s.pulls == 1  # nothing of the bad image was kept
    assert not os.listdir(tmp_path / "images/tmp")
    assert (x.rootfs / "etc/granary-image").read_text() == "X\n"
    assert reg.blob_gets(base) == 1  # the base came from the cache for the bad image too


@pytest.mark.parametrize("member", ["../escape", "/abs/file"])
def test_layer_paths_outside_the_root_are_refused(reg, tmp_path, member):
    repo = "test/evil" + str(abs(hash(member)) % 1000)
    reg.push_image(repo, "v1", [tar_layer({member: b"x"})])
    with pytest.raises(PullError, match="'\\.\\.'|absolute path"):
        store(tmp_path).acquire(f"docker://{reg.host}/{repo}:v1")


def test_symlinks_in_layers_never_lead_a_write_outside(reg, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    reg.push_image("test/links", "v1", [tar_layer({"evil": f"->{outside}"}), tar_layer({"evil/pwned": b"x"})])
    # the absolute target is taken inside the image, where it does not exist: refused, nothing written
    with pytest.raises(PullError, match="symlink 'evil'.*whose target is missing"):
        store(tmp_path / "a").acquire(f"docker://{reg.host}/test/links:v1")
    assert not (outside / "pwned").exists()
    reg.push_image("test/updots", "v1", [tar_layer({"up": "->../../../..", "tmp": None}),
                                          tar_layer({"up/tmp/pwned": b"y"})])
    image = store(tmp_path / "b").acquire(f"docker://{reg.host}/test/updots:v1")
    assert (image.rootfs / "tmp/pwned").read_text() == "y"  # '..' stops at the image's root


def test_basic_auth_registry(tmp_path):
    with start_registry(tmp_path / "registry", user=("puller", "s3cret")) as r:
        r.push_image("private/img", "v1", [tar_layer({"etc": None, "etc/granary-image": b"private\n"})])
        ref = f"docker://{r.host}/private/img:v1"
        with pytest.raises(PullError, match=r"private/img:v1 could not be pulled: HTTP 401"):
            store(tmp_path / "anonymous").acquire(ref)
        with pytest.raises(PullError, match=r"HTTP 401"):
            store(tmp_path / "wrong", credentials={r.host: ("puller", "nope")}).acquire(ref)
        image = store(tmp_path / "right", credentials={r.host: ("puller", "s3cret")}).acquire(ref)
        assert (image.rootfs / "etc/granary-image").read_text() == "private\n"


def test_token_auth_registry(tmp_path):
    issuer = TokenIssuer(tmp_path, ("puller", "s3cret"))
    with issuer.serving(), start_registry(tmp_path / "registry", issuer=issuer) as r:
        r.basic = "Bearer " + issuer.mint(["repository:private/tok:pull,push"])  # the test's own pushes
        r.push_image("private/tok", "v1", [tar_layer({"etc": None, "etc/granary-image": b"token\n"})])
        ref = f"docker://{r.host}/private/tok:v1"
        with pytest.raises(PullError, match=r"private/tok:v1 could not be pulled: HTTP 401 .* from http://127"
                                            r".*/token\?service=granary-test-registry&scope=repository"):
            store(tmp_path / "anonymous").acquire(ref)
        image = store(tmp_path / "right", credentials={r.host: ("puller", "s3cret")}).acquire(ref)
        assert (image.rootfs / "etc/granary-image").read_text() == "token\n"


def test_registry_credentials_file(tmp_path):
    f = tmp_path / "creds"
    f.write_text("# registries\nreg.example:5000 alice:pa:ss\n\nother.example bob:x\n")
    assert read_credentials(f) == {"reg.example:5000": ("alice", "pa:ss"), "other.example": ("bob", "x")}
    f.write_text("reg.example alice\n")
    with pytest.raises(ValueError, match="USER:PASSWORD"):
        read_credentials(f)


# ---- end to end: a server, a worker that runs images, an action --------------------------------


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("farm")
    server = start_granary(tmp / "server", CONFIG)
    env = {**os.environ, "PYTHONPATH": SRC}
    workers = []
    for name, images in (("imgw", "on"), ("plainw", "off")):
        w = subprocess.Popen(
            [sys.executable, "-m", "granary", "worker", "--server", server.address, "--name", name,
             "--cache-dir", str(tmp / name / "cache"), "--concurrency", "2", "--sandbox", "bwrap",
             "--container-images", images, "--log-level", "info"],
            stdout=subprocess.PIPE, stderr=open(tmp / f"{name}.log", "w"), text=True, env=env)  # noqa: SIM115
        assert w.stdout is not None and "serving" in w.stdout.readline()
        workers.append(w)
    client = ExecClient(server.address)
    time.sleep(0.5)  # the bots' first CreateBotSession
    try:
        yield client, tmp
    finally:
        for w in workers:
            w.terminate()
            w.wait(60)
        server.stop()


def run(client: ExecClient, image: str | None, script: str):
    platform = [("container-image", image)] if image else []
    d, _ = client.action(["/bin/sh", "-c", script], platform=platform, files={"input.txt": b"from the input root\n"})
    return final(client.execute(d, timeout=120))


def out_of(client: ExecClient, response) -> str:
    return client.bs_read(response.result.output_files[0].digest).decode()


def test_action_runs_inside_the_image(reg, farm):
    client, _ = farm
    script = "{ cat /etc/granary-image; pwd; cat input.txt; echo $FOO; } > out"
    r = run(client, f"docker://{reg.host}/test/one:v1", script)
    assert r.status.code == 0 and r.result.exit_code == 0, r
    assert out_of(client, r) == "one\n/src\nfrom the input root\nfrom-image\n"
    assert r.result.execution_metadata.worker.startswith("imgw")
    r2 = run(client, f"docker://{reg.host}/test/two@{reg.two}", script)
    assert r2.result.exit_code == 0, r2
    assert out_of(client, r2).splitlines()[:2] == ["two", "/work"]  # no WorkingDir: the default mount


def test_actions_asking_at_once_make_one_pull(reg, farm):
    client, tmp = farm
    reg.push_image("test/together", "v1", [tar_layer({"etc": None, "etc/granary-image": b"together\n"},
                                                     busybox=True)])
    image = f"docker://{reg.host}/test/together:v1"
    results: list = []
    threads = [threading.Thread(target=lambda i=i: results.append(run(client, image, f"echo {i} > out")))
               for i in range(4)]  # the worker has two slots: two actions pull at the same moment
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out_of(client, r) for r in results) == ["0\n", "1\n", "2\n", "3\n"]
    assert (tmp / "imgw.log").read_text().count(f"pulled container image {image} ") == 1


def test_image_that_cannot_be_pulled_fails_the_action_naming_it(reg, farm):
    client, _ = farm
    image = f"docker://{reg.host}/test/absent:v9"
    r = run(client, image, "echo hi > out")
    assert r.status.code == 9, r  # FAILED_PRECONDITION
    assert image in r.status.message and "could not be pulled" in r.status.message


def test_image_property_goes_only_to_workers_that_run_images(reg, farm):
    client, _ = farm
    for _ in range(4):  # plainw has as many free slots as imgw: only the matching rule keeps them off it
        r = run(client, f"docker://{reg.host}/test/one:v1", "cat /etc/granary-image > out")
        assert r.result.execution_metadata.worker.startswith("imgw"), r


def test_without_a_container_image_both_workers_still_serve(farm):
    client, _ = farm
    r = run(client, None, "echo plain > out")
    assert r.result.exit_code == 0 and out_of(client, r) == "plain\n"


def test_matching_rule_for_container_image():
    from granary.execution.platform import Capabilities, unsatisfied_reason

    reqs = (("OSFamily", "linux"), ("container-image", "docker://r.example:5000/a/b:1"))
    runs_images = Capabilities([("OSFamily", "linux"), ("container-image", "docker://*")])
    plain = Capabilities([("OSFamily", "linux")])
    assert runs_images.satisfies(reqs) and not plain.satisfies(reqs)
    assert unsatisfied_reason(reqs, [runs_images, plain]) is None
    assert unsatisfied_reason(reqs, [plain]) == (
        "no worker can satisfy platform property container-image=docker://r.example:5000/a/b:1"
        " (no worker has property 'container-image')")
    assert not runs_images.satisfies((("container-image", "oci://x/y"),))  # only docker:// is wildcarded
    assert not runs_images.satisfies((("other", "docker://x/y"),))


def test_action_no_worker_can_run_is_refused(tmp_path):
    server = start_granary(tmp_path / "server", CONFIG)
    w = subprocess.Popen(
        [sys.executable, "-m", "granary", "worker", "--server", server.address, "--name", "plain",
         "--cache-dir", str(tmp_path / "cache"), "--concurrency", "1", "--sandbox", "bwrap",
         "--container-images", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert w.stdout is not None and "serving" in w.stdout.readline()
        client = ExecClient(server.address)
        image = "docker://127.0.0.1:5000/demo/busybox:1"
        deadline = time.monotonic() + 30
        while True:  # until the worker's bot session is registered
            try:
                ops = list(client.execute(client.action(["/bin/sh", "-c", "true"],
                                                        platform=[("container-image", image)])[0], timeout=60))
                raise AssertionError(f"executed: {ops[-1]}")
            except grpc.RpcError as e:
                if "no worker is registered" in (e.details() or "") and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert e.details().endswith(f"no worker can satisfy platform property container-image={image}"
                                            " (no worker has property 'container-image')"), e.details()
                break
    finally:
        w.terminate()
        w.wait(60)
        server.stop()
