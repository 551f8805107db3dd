"""Store trees in the YAML config: nesting, references, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from granary.config import StoreRef, StoreSpec, parse
from granary.errors import ConfigError


def cfg(text: str):
    return parse(yaml.safe_load(text), Path("/tmp/granary-config-test"))


def error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        cfg(text)
    return str(e.value)


def test_nested_inline_stores_and_references_anywhere():
    c = cfg("""
storage:
  hot: {type: redis, url: "redis://127.0.0.1:6379/0"}
  cold: {type: s3, bucket: b, endpoint_url: "http://127.0.0.1:9000"}
  main:
    type: tiered
    cache: hot
    fallback:
      type: sizesplit
      stores:
        - {max_size: 1MiB, store: {type: sharded, shards: [{store: hot, weight: 2}, {store: {type: memory}}]}}
      fallback: {type: indexed, url: "postgresql+psycopg://u@h/db", store: cold, max_size: 10GiB}
instances:
  "*": {cas: main}
""")
    main = c.storage["main"]
    assert main.options["cache"] == StoreRef("hot", "storage.main.cache")
    split = main.options["fallback"]
    assert isinstance(split, StoreSpec) and split.type == "sizesplit"
    (max_size, sharded), = split.options["stores"]
    assert max_size == 1 << 20
    assert [(n, w) for n, w, _ in sharded.options["shards"]] == [("hot", 2.0), ("shard1", 1.0)]
    indexed = split.options["fallback"]
    assert indexed.options["store"].name == "cold" and indexed.options["max_size"] == 10 << 30


@pytest.mark.parametrize("text, message", [
    ("""
storage:
  main: {type: tiered, cache: {type: memory}, fallback: {type: s3}}
instances: {"*": {cas: main}}
""", "storage.main.fallback.bucket: required for type s3"),
    ("""
storage:
  main: {type: tiered, cache: nowhere, fallback: {type: memory}}
instances: {"*": {cas: main}}
""", "storage.main.cache: no store named 'nowhere' (defined: main)"),
    ("""
storage:
  a: {type: tiered, cache: {type: memory}, fallback: b}
  b: {type: sizesplit, stores: [{max_size: 1KiB, store: a}], fallback: {type: memory}}
instances: {"*": {cas: a}}
""", "loop (a -> b -> a)"),
    ("""
storage:
  main: {type: sizesplit, stores: [{store: {type: memory}}], fallback: {type: memory}}
instances: {"*": {cas: main}}
""", "storage.main.stores[0].max_size: required"),
    ("""
storage:
  main: {type: sharded, shards: [{store: {type: memory}, weight: 0}]}
instances: {"*": {cas: main}}
""", "storage.main.shards[0].weight: expected a number above 0"),
    ("""
storage:
  main: {type: redis, url: "redis://h", max_blob_size: 1GiB}
instances: {"*": {cas: main}}
""", "storage.main.max_blob_size: Redis holds at most 512MiB"),
    ("""
storage:
  main: {type: indexed, url: "mysql://x", store: {type: memory}}
instances: {"*": {cas: main}}
""", "storage.main.url: expected a sqlite:///PATH or postgresql+psycopg://... URL"),
    ("""
storage:
  main: {type: memory}
action_caches:
  ac: {type: sql, url: "sqlite:///ac.sqlite", max_age: soon}
instances: {"*": {cas: main, action_cache: ac}}
""", "action_caches.ac.max_age: expected a duration"),
    ("""
storage:
  main: {type: memory}
instances: {"*": {cas: {type: tiered, cache: {type: memory}, fallback: {type: remote}}}}
""", "instances.*.cas.fallback.address: required for type remote"),
    ("""
storage:
  main: {type: tiered, cache: {type: memory, colour: red}, fallback: {type: memory}}
instances: {"*": {cas: main}}
""", "storage.main.cache.colour: unknown key"),
])
def test_errors_name_the_full_key_path(text, message):
    assert message in error(text)


def test_process_local_rule_sees_nested_memory_stores():
    shared = cfg("""
storage:
  main: {type: tiered, cache: {type: memory}, fallback: {type: disk, path: cas}}
action_caches:
  ac: {type: sql, url: "sqlite:///ac.sqlite"}
instances: {"*": {cas: main, action_cache: ac}}
""")
    assert not shared.uses_process_local_state()  # a per-process cache in front of shared storage is fine
    for text in (
        "storage: {main: {type: tiered, cache: {type: disk, path: c}, fallback: {type: memory}}}",
        "storage: {m: {type: memory}, main: {type: sharded, shards: [{store: m}, {store: {type: disk, path: d}}]}}",
        "storage: {main: {type: indexed, store: {type: memory}}}",
    ):
        c = cfg(text + '\ninstances: {"*": {cas: main}}')
        assert c.uses_process_local_state(), text
