"""Configuration validation and per-instance behaviour through a real server."""

from __future__ import annotations

import subprocess
import sys
import uuid

import grpc
import pytest
from reapi import Client, digest, re_pb2
from serverutil import start_granary

from granary.config import load, parse
from granary.errors import ConfigError

CONFIG = """
storage:
  shared: {type: disk, path: shared-cas, max_size: 1GiB}
  private: {type: memory, max_size: 64MiB}
action_caches:
  main: {type: disk, path: ac}
instances:
  "team/a": {cas: shared, action_cache: main}
  "team/b": {cas: shared, action_cache: main, write_once: true}
  "readers": {cas: shared, action_cache: main, allow_updates: false}
  "sandbox": {cas: private, action_cache: {type: memory}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_granary(tmp_path_factory.mktemp("instances"), CONFIG)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = Client(server.address)
    yield c
    c.close()


def _update(client, instance, action, result):
    return client.ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(instance_name=instance, action_digest=action, action_result=result)
    )


def test_instances_share_or_separate_storage(client):
    data = uuid.uuid4().bytes * 50
    (d,) = client.upload(data, instance="team/a")
    assert client.missing([d], instance="team/b") == []  # same store
    assert client.missing([d], instance="sandbox") == [d]  # its own store
    with pytest.raises(grpc.RpcError) as e:
        client.missing([d], instance="nobody")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'nobody'" in e.value.details()


def test_write_once_keeps_the_first_result(client):
    action = digest(uuid.uuid4().bytes)
    first = _update(client, "team/b", action, re_pb2.ActionResult(exit_code=0))
    assert first.exit_code == 0
    second = _update(client, "team/b", action, re_pb2.ActionResult(exit_code=7))
    assert second.exit_code == 0  # the stored result comes back
    got = client.ac.GetActionResult(re_pb2.GetActionResultRequest(instance_name="team/b", action_digest=action))
    assert got.exit_code == 0
    # a normal instance overwrites
    _update(client, "team/a", action, re_pb2.ActionResult(exit_code=0))
    _update(client, "team/a", action, re_pb2.ActionResult(exit_code=3))
    got = client.ac.GetActionResult(re_pb2.GetActionResultRequest(instance_name="team/a", action_digest=action))
    assert got.exit_code == 3


def test_read_only_action_cache(client):
    caps = client.caps.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name="readers"))
    assert not caps.cache_capabilities.action_cache_update_capabilities.update_enabled
    with pytest.raises(grpc.RpcError) as e:
        _update(client, "readers", digest(b"x"), re_pb2.ActionResult())
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("storage: {main: {type: disk}}\ninstances: {'*': {cas: main}}", "storage.main.path: required for type disk"),
        ("storage: {main: {type: dsk, path: x}}\ninstances: {'*': {cas: main}}", "storage.main.type: expected one of"),
        ("storage: {main: {type: disk, path: x, pth: y}}\ninstances: {'*': {cas: main}}", "storage.main.pth: unknown key"),
        ("storage: {main: {type: disk, path: x, max_size: lots}}\ninstances: {'*': {cas: main}}",
         "storage.main.max_size: expected a size"),
        ("storage: {main: {type: memory}}\ninstances: {'*': {cas: nope}}", "instances.*.cas: no store named 'nope'"),
        ("storage: {main: {type: memory}}", "instances: at least one instance"),
        ("storage: {main: {type: memory}}\ninstances: {'*': {cas: main, write_once: maybe}}",
         "instances.*.write_once: expected true or false"),
        ("server: {listen: nowhere}\nstorage: {main: {type: memory}}\ninstances: {'*': {cas: main}}",
         "server.listen: expected HOST:PORT"),
        ("bogus: 1", "config.bogus: unknown key"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, message):
    import yaml

    with pytest.raises(ConfigError) as e:
        parse(yaml.safe_load(text), tmp_path)
    assert message in str(e.value)


def test_sizes_parse(tmp_path):
    cfg = parse(
        {"storage": {"m": {"type": "memory", "max_size": "1.5GiB"}}, "instances": {"*": {"cas": "m"}}}, tmp_path
    )
    assert cfg.storage["m"].options["max_size"] == int(1.5 * (1 << 30))
    assert load(None, tmp_path).instances["*"].cas == "default"


def test_bad_config_stops_start_up_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: {main: {type: disk, path: x, max_size: lots}}\ninstances: {'*': {cas: main}}\n")
    r = subprocess.run(
        [sys.executable, "-m", "granary", "serve", "--config", str(bad), "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "storage.main.max_size" in lines[0], r.stderr


def test_memory_stores_refuse_several_processes(tmp_path):
    cfg = tmp_path / "mem.yaml"
    cfg.write_text("storage: {m: {type: memory}}\ninstances: {'*': {cas: m}}\n")
    r = subprocess.run(
        [sys.executable, "-m", "granary", "serve", "--config", str(cfg), "--processes", "2", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert r.returncode == 2 and "memory" in r.stderr


def test_lost_backend_is_unavailable_not_internal(tmp_path):
    from services import free_port

    config = f"""
storage:
  gone: {{type: redis, url: "redis://127.0.0.1:{free_port()}/0"}}
instances:
  "*": {{cas: gone}}
"""
    with start_granary(tmp_path, config) as srv:
        c = Client(srv.address)
        with pytest.raises(grpc.RpcError) as e:
            c.missing([digest(uuid.uuid4().bytes)])
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # the server itself keeps answering
        assert c.caps.GetCapabilities(re_pb2.GetCapabilitiesRequest()).cache_capabilities.max_batch_total_size_bytes
        c.close()


@pytest.mark.parametrize("processes", [1, 2])
def test_fixed_port_restart_and_conflict(tmp_path, processes):
    from services import free_port

    port = free_port()
    first = start_granary(tmp_path / "a", None, "--listen", f"127.0.0.1:{port}", processes=processes)
    c = Client(first.address)
    c.upload(b"leaves connections in TIME_WAIT when the server goes")
    # a second server on the same port is refused, even though gRPC sets SO_REUSEPORT
    r = subprocess.run(
        [sys.executable, "-m", "granary", "serve", "--listen", f"127.0.0.1:{port}", "--processes", str(processes),
         "--data-dir", str(tmp_path / "b")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert r.returncode == 2 and "cannot listen" in r.stderr, r.stderr
    c.close()
    first.stop()
    # and a restart right away reuses the port
    again = start_granary(tmp_path / "a", None, "--listen", f"127.0.0.1:{port}", processes=processes)
    assert again.address.endswith(f":{port}")
    again.stop()
