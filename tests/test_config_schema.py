"""The configuration schema: descriptions, `granary config check|show|schema`, and the parsing rules."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel

from granary.config import ExecutionConfig, load, parse, parse_duration, parse_size
from granary.config_models import AC_MODELS, CAS_MODELS, GranaryConfig
from granary.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
GRANARY = [sys.executable, "-m", "granary"]

RICH = """
server:
  listen: "[::1]:9000"
  processes: 2
  max_batch_size: 2MiB
  drain_timeout: 2m
storage:
  main: {type: disk, path: cas, max_size: 50GiB, fsync: true}
  hot: {type: redis, url: "redis://127.0.0.1:6379/0", ttl: 7d}
  cold: {type: s3, bucket: b, endpoint_url: "http://127.0.0.1:9000"}
  far: {type: remote, address: "grpc://10.0.0.1:8980", channel_options: {grpc.lb_policy_name: round_robin}}
  tree:
    type: tiered
    cache: hot
    fallback:
      type: sizesplit
      stores:
        - {max_size: 1MiB, store: {type: sharded, shards: [{store: hot, weight: 2}, {store: {type: disk, path: s1}}]}}
      fallback: {type: indexed, url: "sqlite:///idx.sqlite", store: cold, max_size: 10GiB, janitor_interval: 1h}
action_caches:
  main: {type: disk, path: ac}
  shared: {type: sql, url: "postgresql+psycopg://u@h/db", max_age: 30d}
  upstream: {type: remote, address: "grpc://10.0.0.1:8980"}
instances:
  "team/linux": {cas: main, action_cache: main}
  "ci": {cas: tree, action_cache: shared, write_once: true}
  "readers": {cas: main, action_cache: main, allow_updates: false, execution: false}
  "": {cas: {type: disk, path: c2, max_size: 64MiB}, action_cache: {type: sqlite, path: ac2.sqlite}}
  "*": {cas: main, action_cache: upstream}
execution:
  database: "postgresql+psycopg://u@h/queue"
  default_timeout: 90s
  max_timeout: 2h
  poll_interval: 250ms
  known_platforms: [{OSFamily: linux, ISA: [x86-64, aarch64]}, {OSFamily: macos}]
  local_workers: 0
"""


def granary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GRANARY, *args], capture_output=True, text=True, timeout=120, check=False)


def models(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[type[BaseModel]]:
    """`model` and every model reachable from its fields."""
    seen = set() if seen is None else seen
    if model not in seen:
        seen.add(model)
        for f in model.model_fields.values():
            for t in _types(f.annotation):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    models(t, seen)
    return seen


def _types(annotation) -> list:
    out = [annotation]
    for arg in get_args(annotation):
        out += _types(arg)
    return out


def test_every_key_has_a_one_sentence_description():
    every = models(GranaryConfig)
    for m in (*CAS_MODELS.values(), *AC_MODELS.values()):
        every |= models(m)
    assert len(every) > 20
    for model in every:
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no description"
            assert f.description.rstrip().endswith((".", ")")), f"{model.__name__}.{name}: {f.description!r}"


def test_execution_keys_are_all_described():
    keys = ["database", "default_timeout", "max_timeout", "bot_timeout", "bot_long_poll", "poll_interval",
            "retry_limit", "cache_failed_actions", "known_platforms", "platform_grace", "local_workers",
            "retention", "max_bot_concurrency", "lease_ack_timeout", "logstream"]
    assert sorted(ExecutionConfig.model_fields) == sorted(keys)
    for key in keys:
        assert ExecutionConfig.model_fields[key].description
    assert "execution" in GranaryConfig.model_fields["instances"].annotation.__args__[1].model_fields


@pytest.mark.parametrize(("text", "expected"), [
    ("10GiB", 10 << 30), ("500MB", 500 * 10**6), ("1.5GiB", int(1.5 * (1 << 30))), (4096, 4096), ("512", 512),
    ("4 KiB", 4096), ("2tb", 2 * 10**12),
])
def test_sizes(text, expected):
    assert parse_size(text, "x") == expected


@pytest.mark.parametrize("text", ["lots", "-1", -1, True, "10GiBs", "1.5.2MB", [1]])
def test_bad_sizes(text):
    with pytest.raises(ConfigError, match=r"^--flag: expected a size like 10GiB or 500MB, got "):
        parse_size(text, "--flag")


@pytest.mark.parametrize(("text", "expected"), [
    ("30s", 30.0), ("10m", 600.0), ("1h", 3600.0), ("50ms", 0.05), ("1d", 86400.0), (600, 600.0), (1.5, 1.5),
    ("2.5s", 2.5),
])
def test_durations(text, expected):
    assert parse_duration(text, "x") == expected


@pytest.mark.parametrize("text", ["soon", "-5", "5 minutes", True, "1w"])
def test_bad_durations(text):
    with pytest.raises(ConfigError, match=r"^x: expected a duration like 30s, 10m or 600"):
        parse_duration(text, "x")


def test_drain_timeout(tmp_path):
    base = 'instances: {"*": {cas: {type: memory}}}\n'
    assert parse(yaml.safe_load(base), tmp_path).drain_timeout == 30.0
    assert parse(yaml.safe_load("server: {drain_timeout: 2m}\n" + base), tmp_path).drain_timeout == 120.0
    assert parse(yaml.safe_load("server: {drain_timeout: 5}\n" + base), tmp_path).drain_timeout == 5.0
    with pytest.raises(ConfigError, match=r"^server.drain_timeout: expected a duration"):
        parse(yaml.safe_load("server: {drain_timeout: forever}\n" + base), tmp_path)


def error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse(yaml.safe_load(text), Path("/tmp/granary-config-test"))
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("text", "message"), [
    ('storage: {a: {type: memory}, b: {type: memory}}\ninstances: {x: {cas: nope}}',
     "instances.x.cas: no store named 'nope' (defined: a, b)"),
    ('storage: {main: {type: disk, path: x, max_size: lots}}\ninstances: {"*": {cas: main}}',
     "storage.main.max_size: expected a size like 10GiB or 500MB, got 'lots'"),
    ('server: {listen: "127.0.0.1:1", colour: red}\ninstances: {"*": {cas: {type: memory}}}',
     ("server.colour: unknown key (allowed: ac_max_inline_size, ac_max_result_size, allow_unauthenticated,"
      " data_dir, drain_timeout, listen, max_batch_size, max_blob_size, max_digests_per_request,"
      " max_upload_bytes, max_uploads, max_uploads_per_client, processes, tls, upload_ttl)")),
    ('server: {processes: 0}\ninstances: {"*": {cas: {type: memory}}}',
     "server.processes: expected auto or a whole number >= 1, got 0"),
    ('instances: {"*": {cas: {type: memory}, action_cache: nope}}',
     "instances.*.action_cache: no store named 'nope' (defined: none)"),
    ('instances: {"*": {cas: {type: memory}, action_cache: {type: tiered}}}',
     "instances.*.action_cache.type: expected one of disk, memory, redis, remote, s3, sql, sqlite, got 'tiered'"),
    ('instances: {"*": {cas: 5}}',
     "instances.*.cas: expected a store name or an inline store mapping with a type, got 5"),
    ('instances: {"*": {cas: {type: memory}, oops: 1}}', "instances.*.oops: unknown key"),
    ('instances: [a]', "instances: expected a mapping, got list"),
    ('instances: {"*": {}}', "instances.*.cas: required"),
    ('storage: {m: {max_size: 1}}\ninstances: {"*": {cas: m}}', "storage.m.type: expected one of"),
    ('instances: {"*": {cas: {type: memory}}}\nexecution: {default_timeout: 2h}',
     "execution.default_timeout: 7200s is above execution.max_timeout (3600s)"),
    ('instances: {"*": {cas: {type: memory}}}\nexecution: {bot_long_poll: 1m}',
     "execution.bot_long_poll: 60s must be shorter than execution.bot_timeout (60s)"),
    ('instances: {"*": {cas: {type: memory}}}\nexecution: {poll_interval: 0}', "execution.poll_interval: must be above 0"),
    ('instances: {"*": {cas: {type: memory}}}\nexecution: {retry_limit: -1}',
     "execution.retry_limit: expected a whole number >= 0, got -1"),
    ('instances: {"*": {cas: {type: memory}}}\nexecution: {local_workers: many}',
     "execution.local_workers: expected auto or a whole number >= 0, got 'many'"),
    ('instances: {"*": {cas: {type: memory}}}\nexecution: {database: "mysql://x"}',
     "execution.database: expected a sqlite:///PATH or postgresql+psycopg://... URL"),
    ('instances: {"*": {cas: {type: memory}}}\nexecution: {known_platforms: [{OSFamily: {a: b}}]}',
     "execution.known_platforms[0].OSFamily: expected a string or a list of strings"),
    (('storage: {s: {type: sharded, shards: [{store: {type: memory}, name: x}, {store: {type: memory}, name: x}]}}\n'
     'instances: {"*": {cas: s}}'), "storage.s.shards[1].name: 'x' is used by another shard"),
    ('storage: {s: {type: sizesplit, stores: [], fallback: {type: memory}}}\ninstances: {"*": {cas: s}}',
     "storage.s.stores: expected a non-empty list"),
    ('storage: {r: {type: remote, address: "grpc://h:1", channel_options: {a: [1]}}}\ninstances: {"*": {cas: r}}',
     "storage.r.channel_options.a: expected a number or a string, got [1]"),
    ("[1, 2]", "config: expected a mapping, got list"),
    ('server: {processes: 2}\ninstances: {"*": {cas: {type: memory}}}',
     "server.processes: 2 server processes cannot share memory stores"),
])
def test_errors_are_one_line_naming_the_key(text, message):
    assert message in error(text)


def test_execution_switches(tmp_path):
    def executing(text: str) -> dict[str, bool]:
        cfg = parse(yaml.safe_load(text), tmp_path)
        return {n: i.execution for n, i in cfg.instances.items()} | {"<section>": cfg.execution is not None}

    two = 'instances: {a: {cas: {type: memory}}, b: {cas: {type: memory}, execution: false}}\n'
    assert executing(two) == {"a": False, "b": False, "<section>": False}
    assert executing(two + "execution: {}") == {"a": True, "b": False, "<section>": True}
    assert executing(two + "execution:") == {"a": True, "b": False, "<section>": True}
    asks = 'instances: {a: {cas: {type: memory}}, b: {cas: {type: memory}, execution: true}}\n'
    assert executing(asks) == {"a": False, "b": True, "<section>": True}


def test_every_default_is_filled_in():
    cfg = load(None, Path("/tmp/granary-defaults"))
    assert cfg.execution is not None and cfg.execution.default_timeout == 600.0
    assert cfg.storage["default"].options == {"path": "cas", "max_size": 10 << 30, "fsync": False,
                                              "pack_max_blob": 256 << 10}
    assert (cfg.host, cfg.port, cfg.processes, cfg.max_batch_size) == ("127.0.0.1", 8980, None, 4_000_000)


@pytest.mark.parametrize("text", [None, RICH], ids=["defaults", "rich"])
def test_config_show_round_trips_through_check(tmp_path, text):
    args = ["config", "show", "--data-dir", str(tmp_path / "data")]
    original = load(None, tmp_path / "data")
    if text is not None:
        src = tmp_path / "granary.yaml"
        src.write_text(text)
        args += ["--config", str(src)]
        original = load(src, tmp_path / "data")
    shown = granary(*args)
    assert shown.returncode == 0, shown.stderr
    out = tmp_path / "shown.yaml"
    out.write_text(shown.stdout)
    checked = granary("config", "check", str(out))
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, f"{out}: ok\n", "")
    again = load(out, None)
    assert again == original
    assert again.data_dir == tmp_path / "data"
    # every key of every section is written out, defaults included
    data = yaml.safe_load(shown.stdout)
    assert set(data["server"]) == set(GranaryConfig.model_fields["server"].annotation.model_fields)
    assert set(data["execution"]) == set(ExecutionConfig.model_fields)


def test_config_show_of_the_rich_file_reads_as_written(tmp_path):
    src = tmp_path / "granary.yaml"
    src.write_text(RICH)
    data = yaml.safe_load(granary("config", "show", "--config", str(src)).stdout)
    assert data["server"]["max_batch_size"] == "2MiB" and data["server"]["drain_timeout"] == "2m"
    assert data["execution"]["poll_interval"] == "250ms"
    assert data["execution"]["known_platforms"] == [{"OSFamily": "linux", "ISA": ["x86-64", "aarch64"]},
                                                    {"OSFamily": "macos"}]
    shards = data["storage"]["tree"]["fallback"]["stores"][0]["store"]["shards"]
    assert [s["name"] for s in shards] == ["hot", "shard1"]
    assert data["instances"]["readers"]["execution"] is False and data["instances"]["ci"]["execution"] is True


def test_config_check_reports_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('storage: {main: {type: disk, path: x, max_size: lots}}\ninstances: {"*": {cas: main}}\n')
    r = granary("config", "check", str(bad))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"granary: configuration error: {bad}: storage.main.max_size: expected a size like 10GiB or 500MB, got 'lots'"
    ]


def readme_config() -> dict:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert block is not None
    return yaml.safe_load(block.group(1))


def doc_store_examples() -> list[dict]:
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "storage.md").read_text(), re.DOTALL)
    out = []
    for block in blocks:
        data = yaml.safe_load(block)
        if isinstance(data, dict) and "TYPE" not in block:  # not the `NAME: {type: TYPE}` outline
            out.append(data)
    return out


@pytest.fixture(scope="module")
def schema() -> dict:
    r = granary("config", "schema")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_schema_describes_the_file(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == {
        "server", "storage", "action_caches", "instances", "execution", "auth", "http", "remote_asset",
        "build_events"}
    assert schema["additionalProperties"] is False
    server = schema["$defs"]["ServerSection"]["properties"]
    assert server["drain_timeout"]["description"] == "How long a stopping server lets running actions finish."
    size_kinds = {k.get("type") for k in server["max_batch_size"]["anyOf"]}
    assert size_kinds == {"integer", "string"}  # sizes are strings or numbers
    assert {k.get("type") for k in server["drain_timeout"]["anyOf"]} == {"number", "string"}
    # every default is a value the schema itself accepts
    jsonschema = pytest.importorskip("jsonschema")
    for name, model in schema["$defs"].items():
        for key, prop in model.get("properties", {}).items():
            if "default" in prop:
                sub = {"$defs": schema["$defs"], **{k: v for k, v in prop.items() if k != "default"}}
                assert jsonschema.Draft202012Validator(sub).is_valid(prop["default"]), (name, key, prop["default"])


def test_schema_validates_the_readme_and_docs_examples(schema):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    examples = [readme_config(), *doc_store_examples(), yaml.safe_load(RICH)]
    assert len(examples) > 10
    for example in examples:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(example)]
        assert errors == [], example
    # the README's example is a whole valid configuration, and so is the rich one
    parse(readme_config(), Path("/tmp/granary-readme"))
    # and the schema refuses what the server refuses
    for wrong in ({"storage": {"m": {"type": "memory", "max_size": "lots"}}},
                  {"server": {"colour": "red"}},
                  {"storage": {"m": {"type": "floppy"}}},
                  {"execution": {"default_timeout": "soon"}},
                  {"instances": {"*": {"cas": {"type": "disk"}}}}):
        assert not validator.is_valid(wrong), wrong


def test_schema_piped_into_a_reader_that_stops_early_prints_no_traceback():
    done = subprocess.run(
        ["sh", "-c", f"'{sys.executable}' -m granary config schema | head -c 10"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.stdout == '{\n  "$sche'
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
