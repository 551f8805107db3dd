"""Configuration: YAML, validated up front, errors that name the bad key.

    server:
      listen: 127.0.0.1:8980
      processes: auto          # server processes sharing the port (auto: one per core)
      max_batch_size: 4000000  # bytes, advertised as max_batch_total_size_bytes
      drain_timeout: 30s       # on SIGTERM, running actions may finish this long before the server stops
    storage:                   # named CAS stores
      main: {type: disk, path: cas, max_size: 10GiB}
    action_caches:             # named action caches
      main: {type: disk, path: ac}
    instances:                 # instance name -> stores ("*" answers any other name)
      "*": {cas: main, action_cache: main, execution: true}
    execution:                 # remote execution (instances execute unless `execution: false`)
      database: sqlite:///...  # job queue; default <data dir>/execution.sqlite; postgresql+psycopg://... to share
      default_timeout: 10m     # for actions that set none
      max_timeout: 1h          # longer requested timeouts are refused
      bot_timeout: 60s         # a bot silent this long loses its jobs (re-queued)
      bot_long_poll: 5s        # UpdateBotSession waits this long for work
      poll_interval: 50ms      # look for others' changes this often if no notification can wake us (else max(5s, this))
      retry_limit: 3           # re-queues of one job before it fails
      cache_failed_actions: false
      known_platforms: []      # [{OSFamily: linux, ISA: x86-64}, ...]: accepted besides connected bots'
      platform_grace: 30s      # after start-up, accept any platform this long (bots are connecting)
      local_workers: auto      # `granary worker` processes started by serve (auto: one per core; 0: none)
      retention: 1d            # finished operations are forgotten after this

A store can be named (a string) or written inline where it is used. Paths
are relative to the data directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from granary.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024, "m": 10**6, "mb": 10**6,
          "mi": 1 << 20, "mib": 1 << 20, "g": 10**9, "gb": 10**9, "gi": 1 << 30, "gib": 1 << 30,
          "t": 10**12, "tb": 10**12, "ti": 1 << 40, "tib": 1 << 40}


def parse_size(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size like 10GiB, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    m = _SIZE.match(str(value))
    if not m or m.group(2) is not None and m.group(2).lower() not in _UNITS:
        raise ConfigError(f"{where}: expected a size like 10GiB or 500MB, got {value!r}")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: expected a whole number >= 0, got {value!r}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _listen(value: Any, where: str) -> tuple[str, int]:
    s = _str(value, where)
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{where}: expected HOST:PORT such as 127.0.0.1:8980, got {value!r}")
    return host.strip("[]"), int(port)


# type name -> {key: (parser, default)}; `...` marks a required key
Field = tuple[Callable[[Any, str], Any], Any]
CAS_TYPES: dict[str, dict[str, Field]] = {
    "memory": {"max_size": (parse_size, 1 << 30)},
    "disk": {
        "path": (_str, ...),
        "max_size": (parse_size, 10 << 30),
        "fsync": (_bool, False),
        "pack_max_blob": (parse_size, 256 << 10),
    },
}
AC_TYPES: dict[str, dict[str, Field]] = {
    "memory": {"max_entries": (_int, 100_000)},
    "disk": {"path": (_str, ...), "max_entries": (_int, 0)},
    "sqlite": {"path": (_str, ...), "max_entries": (_int, 0)},
}
PROCESS_LOCAL = {"memory"}  # types whose contents one process cannot share with another
INSTANCE_KEYS: dict[str, Field] = {
    "cas": (None, ...),  # checked separately
    "action_cache": (None, None),
    "allow_updates": (_bool, True),
    "write_once": (_bool, False),
    "check_completeness": (_bool, True),
    "execution": (_bool, None),  # default: true when the execution section is present
}


@dataclass
class StoreSpec:
    type: str
    options: dict[str, Any]
    where: str


@dataclass
class InstanceSpec:
    name: str
    cas: str  # key into Config.storage
    action_cache: str | None  # key into Config.action_caches
    allow_updates: bool = True
    write_once: bool = False
    check_completeness: bool = True
    execution: bool = False


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration like 30s, 10m or 600, got {value!r}")
    if isinstance(value, (int, float)) and value >= 0:
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(f"{where}: expected a duration like 30s, 10m or 600 (seconds), got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def _platforms(value: Any, where: str) -> list[list[tuple[str, str]]]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of property maps like [{{OSFamily: linux, ISA: x86-64}}]")
    out = []
    for i, entry in enumerate(value):
        entry = _mapping(entry, f"{where}[{i}]")
        pairs = []
        for k, v in entry.items():
            for one in v if isinstance(v, list) else [v]:
                if isinstance(one, bool) or not isinstance(one, (str, int, float)):
                    raise ConfigError(f"{where}[{i}].{k}: expected a string or a list of strings, got {one!r}")
                pairs.append((str(k), str(one)))
        out.append(pairs)
    return out


def _workers(value: Any, where: str) -> int | None:
    return None if value == "auto" else _int(value, where)


EXECUTION_KEYS: dict[str, Field] = {
    "database": (_str, None),  # SQLAlchemy URL; default sqlite file in the data dir
    "default_timeout": (parse_duration, 600.0),
    "max_timeout": (parse_duration, 3600.0),
    "bot_timeout": (parse_duration, 60.0),
    "bot_long_poll": (parse_duration, 5.0),
    "poll_interval": (parse_duration, 0.05),
    "retry_limit": (_int, 3),
    "cache_failed_actions": (_bool, False),
    "known_platforms": (_platforms, []),
    "platform_grace": (parse_duration, 30.0),
    "local_workers": (_workers, None),  # None: one per core
    "retention": (parse_duration, 86400.0),  # how long finished operations stay listed
}


@dataclass
class ExecutionConfig:
    database: str | None = None
    default_timeout: float = 600.0
    max_timeout: float = 3600.0
    bot_timeout: float = 60.0
    bot_long_poll: float = 5.0
    poll_interval: float = 0.05
    retry_limit: int = 3
    cache_failed_actions: bool = False
    known_platforms: list[list[tuple[str, str]]] = field(default_factory=list)
    platform_grace: float = 30.0
    local_workers: int | None = None
    retention: float = 86400.0


@dataclass
class Config:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8980
    processes: int | None = None  # None: auto
    max_batch_size: int = 4_000_000
    drain_timeout: float = 30.0  # seconds
    storage: dict[str, StoreSpec] = field(default_factory=dict)
    action_caches: dict[str, StoreSpec] = field(default_factory=dict)
    instances: dict[str, InstanceSpec] = field(default_factory=dict)
    execution: ExecutionConfig | None = None  # None: no instance executes
    raw: dict = field(default_factory=dict)

    def resolve_path(self, p: str) -> Path:
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else self.data_dir / path

    def uses_process_local_state(self) -> bool:
        return any(_tree_is_process_local(self, s) for s in self.storage.values()) or any(
            s.type in PROCESS_LOCAL for s in self.action_caches.values()
        )


DEFAULT_YAML = """
storage:
  default: {type: disk, path: cas, max_size: 10GiB}
action_caches:
  default: {type: disk, path: ac}
instances:
  "*": {cas: default, action_cache: default}
execution: {}
"""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "granary"


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(value: dict, allowed: dict, where: str) -> None:
    for key in value:
        if key not in allowed:
            raise ConfigError(
                f"{where}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})"
            )


def _store(value: Any, where: str, types: dict[str, dict[str, Field]]) -> StoreSpec:
    value = _mapping(value, where)
    kind = value.get("type")
    if kind not in types:
        raise ConfigError(f"{where}.type: expected one of {', '.join(sorted(types))}, got {kind!r}")
    spec = types[kind]
    _check_keys({k: v for k, v in value.items() if k != "type"}, spec, where)
    options = {}
    for key, (parse, default) in spec.items():
        if key in value:
            options[key] = parse(value[key], f"{where}.{key}")
        elif default is ...:
            raise ConfigError(f"{where}.{key}: required for type {kind}")
        else:
            options[key] = default
    return StoreSpec(kind, options, where)


def parse(raw: Any, data_dir: Path) -> Config:
    raw = _mapping(raw, "config")
    _check_keys(raw, {"server": 0, "storage": 0, "action_caches": 0, "instances": 0, "execution": 0}, "config")
    cfg = Config(data_dir=data_dir, raw=raw)
    server = _mapping(raw.get("server"), "server")
    _check_keys(server, {"listen": 0, "processes": 0, "max_batch_size": 0, "data_dir": 0, "drain_timeout": 0}, "server")
    if "listen" in server:
        cfg.host, cfg.port = _listen(server["listen"], "server.listen")
    if "data_dir" in server:
        cfg.data_dir = Path(os.path.expanduser(_str(server["data_dir"], "server.data_dir")))
    if "processes" in server and server["processes"] != "auto":
        cfg.processes = _int(server["processes"], "server.processes") or None
    if "max_batch_size" in server:
        cfg.max_batch_size = parse_size(server["max_batch_size"], "server.max_batch_size")
    if "drain_timeout" in server:
        cfg.drain_timeout = parse_duration(server["drain_timeout"], "server.drain_timeout")
    for name, value in _mapping(raw.get("storage"), "storage").items():
        cfg.storage[str(name)] = _store(value, f"storage.{name}", CAS_TYPES)
    for name, value in _mapping(raw.get("action_caches"), "action_caches").items():
        cfg.action_caches[str(name)] = _store(value, f"action_caches.{name}", AC_TYPES)
    if "execution" in raw:
        cfg.execution = _execution(raw["execution"])
    instances = _mapping(raw.get("instances"), "instances")
    if not instances:
        raise ConfigError("instances: at least one instance is needed (e.g. \"*\": {cas: main})")
    for name, value in instances.items():
        where = f"instances.{name!s}" if name else "instances.''"
        value = _mapping(value, where)
        _check_keys(value, INSTANCE_KEYS, where)
        if "cas" not in value:
            raise ConfigError(f"{where}.cas: required (a store name or an inline store)")
        cas = _ref(cfg.storage, value["cas"], f"{where}.cas", CAS_TYPES)
        ac = None
        if value.get("action_cache") is not None:
            ac = _ref(cfg.action_caches, value["action_cache"], f"{where}.action_cache", AC_TYPES)
        spec = InstanceSpec(str(name or ""), cas, ac)
        for key in ("allow_updates", "write_once", "check_completeness"):
            if key in value:
                setattr(spec, key, INSTANCE_KEYS[key][0](value[key], f"{where}.{key}"))
        spec.execution = cfg.execution is not None
        if "execution" in value:
            spec.execution = _bool(value["execution"], f"{where}.execution")
            if spec.execution and cfg.execution is None:
                cfg.execution = ExecutionConfig()
        cfg.instances[spec.name] = spec
    _check_store_refs(cfg)
    return cfg


def _execution(value: Any) -> ExecutionConfig:
    value = _mapping(value, "execution")
    _check_keys(value, EXECUTION_KEYS, "execution")
    ex = ExecutionConfig()
    for key, (parse_value, _default) in EXECUTION_KEYS.items():
        if key in value:
            setattr(ex, key, parse_value(value[key], f"execution.{key}"))
    if ex.default_timeout <= 0 or ex.max_timeout <= 0:
        raise ConfigError("execution.default_timeout and execution.max_timeout must be above 0")
    if ex.default_timeout > ex.max_timeout:
        raise ConfigError(
            f"execution.default_timeout ({ex.default_timeout:g}s) is above execution.max_timeout"
            f" ({ex.max_timeout:g}s)"
        )
    if ex.bot_long_poll >= ex.bot_timeout:
        raise ConfigError(
            f"execution.bot_long_poll ({ex.bot_long_poll:g}s) must be shorter than execution.bot_timeout"
            f" ({ex.bot_timeout:g}s)"
        )
    if ex.poll_interval <= 0:
        raise ConfigError("execution.poll_interval: must be above 0")
    if ex.database is not None and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", ex.database):
        raise ConfigError(
            f"execution.database: expected a sqlite:///PATH or postgresql+psycopg://... URL, got {ex.database!r}"
        )
    return ex


def _ref(named: dict[str, StoreSpec], value: Any, where: str, types) -> str:
    if isinstance(value, str):
        if value not in named:
            raise ConfigError(f"{where}: no store named {value!r} (defined: {', '.join(sorted(named)) or 'none'})")
        return value
    key = f"<{where}>"
    named[key] = _store(value, where, types)
    return key


# ---- store trees: backends that talk to services, and stores that wrap stores ----
#
# Wherever a store is expected inside another store (tiered.cache/fallback,
# sizesplit.stores[].store/fallback, sharded.shards[].store, indexed.store),
# the value is either the name of a store under `storage:` or an inline
# mapping with its own `type:`. References are checked (and cycles refused)
# once the whole file is read, so names may be used before they are defined.


@dataclass(frozen=True)
class StoreRef:
    """A reference by name to a store under `storage:`."""

    name: str
    where: str


def _nested_store(value: Any, where: str) -> StoreSpec | StoreRef:
    if isinstance(value, str):
        return StoreRef(_str(value, where), where)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a store name or an inline store mapping with a type, got {value!r}")
    return _store(value, where, CAS_TYPES)


def _str_or_empty(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _positive(value: Any, where: str) -> int:
    n = _int(value, where)
    if n < 1:
        raise ConfigError(f"{where}: expected a whole number >= 1, got {value!r}")
    return n


def _channel_options(value: Any, where: str) -> dict[str, int | str]:
    value = _mapping(value, where)
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ConfigError(f"{where}.{k}: expected a number or a string, got {v!r}")
    return {str(k): v for k, v in value.items()}


def _sql_url(value: Any, where: str) -> str:
    url = _str(value, where)
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", url):
        raise ConfigError(f"{where}: expected a sqlite:///PATH or postgresql+psycopg://... URL, got {url!r}")
    return url


def _redis_url(value: Any, where: str) -> str:
    url = _str(value, where)
    if not re.match(r"^(redis|rediss|unix)://", url):
        raise ConfigError(f"{where}: expected a redis://HOST:PORT/DB URL, got {url!r}")
    return url


def _redis_blob_size(value: Any, where: str) -> int:
    size = parse_size(value, where)
    if not 0 < size <= 512 << 20:
        raise ConfigError(f"{where}: Redis holds at most 512MiB in one value, got {value!r}")
    return size


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{where}: expected a number above 0 and at most 1, got {value!r}")
    return float(value)


def _tiers(value: Any, where: str) -> list[tuple[int, StoreSpec | StoreRef]]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of {{max_size: SIZE, store: STORE}}")
    out = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        item = _mapping(item, at)
        _check_keys(item, {"max_size": 0, "store": 0}, at)
        for key in ("max_size", "store"):
            if key not in item:
                raise ConfigError(f"{at}.{key}: required")
        out.append((parse_size(item["max_size"], f"{at}.max_size"), _nested_store(item["store"], f"{at}.store")))
    return out


def _shards(value: Any, where: str) -> list[tuple[str, float, StoreSpec | StoreRef]]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of {{store: STORE, weight: N, name: NAME}}")
    out = []
    names: set[str] = set()
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        item = _mapping(item, at)
        _check_keys(item, {"store": 0, "weight": 0, "name": 0}, at)
        if "store" not in item:
            raise ConfigError(f"{at}.store: required")
        store = _nested_store(item["store"], f"{at}.store")
        weight = item.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise ConfigError(f"{at}.weight: expected a number above 0, got {weight!r}")
        default_name = store.name if isinstance(store, StoreRef) else f"shard{i}"
        name = _str(item.get("name", default_name), f"{at}.name")
        if name in names:
            raise ConfigError(f"{at}.name: {name!r} is used by another shard; shard names must differ")
        names.add(name)
        out.append((name, float(weight), store))
    return out


_REDIS_CONNECTION: dict[str, Field] = {"url": (_redis_url, ...), "max_connections": (_positive, 64)}
_S3_CONNECTION: dict[str, Field] = {
    "bucket": (_str, ...),
    "endpoint_url": (_str, None),
    "region": (_str, None),
    "access_key_id": (_str, None),  # default: the usual AWS environment
    "secret_access_key": (_str, None),
    "session_token": (_str, None),
    "create_bucket": (_bool, False),
    "addressing_style": (_str, "auto"),
    "max_connections": (_positive, 64),
}
_REMOTE_CONNECTION: dict[str, Field] = {
    "address": (_str, ...),  # grpc://HOST:PORT or grpcs://HOST:PORT
    "tls_ca_cert": (_str, None),
    "tls_client_cert": (_str, None),
    "tls_client_key": (_str, None),
    "auth_token": (_str, None),
    "auth_token_file": (_str, None),
    "auth_header": (_str, "authorization"),
    "channel_options": (_channel_options, {}),
    "timeout": (parse_duration, 300.0),
}

CAS_TYPES.update({
    "redis": {
        **_REDIS_CONNECTION,
        "prefix": (_str_or_empty, "granary:cas:"),
        "max_blob_size": (_redis_blob_size, 64 << 20),
        "ttl": (parse_duration, 0.0),
    },
    "s3": {
        **_S3_CONNECTION,
        "prefix": (_str_or_empty, "cas/"),
        "part_size": (parse_size, 8 << 20),
        "concurrency": (_positive, 32),
    },
    "remote": {**_REMOTE_CONNECTION, "instance_name": (_str_or_empty, ""), "max_batch_size": (parse_size, 0)},
    "tiered": {
        "cache": (_nested_store, ...),
        "fallback": (_nested_store, ...),
        "defer_fallback_writes": (_bool, False),
        "queue_max_blobs": (_positive, 100_000),
        "queue_max_bytes": (parse_size, 256 << 20),
        "queue_workers": (_positive, 4),
    },
    "sizesplit": {"stores": (_tiers, ...), "fallback": (_nested_store, ...)},
    "sharded": {"shards": (_shards, ...)},
    "indexed": {
        "store": (_nested_store, ...),
        "url": (_sql_url, "sqlite:///cas-index.sqlite"),
        "table": (_str, "cas_index"),
        "max_size": (parse_size, 0),  # byte budget for cleanup; 0: none
        "cleanup_to": (_fraction, 0.9),  # the janitor cleans down to this share of max_size
        "janitor_interval": (parse_duration, 0.0),  # 0: no background janitor
        "protect_recent": (parse_duration, 86400.0),  # AC entries this recent keep their blobs
    },
})
AC_TYPES.update({
    "redis": {**_REDIS_CONNECTION, "prefix": (_str_or_empty, "granary:ac:"), "max_age": (parse_duration, 0.0)},
    "s3": {**_S3_CONNECTION, "prefix": (_str_or_empty, "ac/"), "max_age": (parse_duration, 0.0)},
    "sql": {"url": (_sql_url, ...), "table": (_str, "action_results"), "max_age": (parse_duration, 0.0)},
    "remote": {**_REMOTE_CONNECTION, "instance_name": (_str_or_empty, None)},
})


def child_stores(spec: StoreSpec) -> list[tuple[str, StoreSpec | StoreRef]]:
    """The stores directly inside `spec`, with the option name they sit under."""
    out: list[tuple[str, StoreSpec | StoreRef]] = []
    for key, value in spec.options.items():
        if isinstance(value, (StoreSpec, StoreRef)):
            out.append((key, value))
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, tuple):
                    out.extend((key, part) for part in item if isinstance(part, (StoreSpec, StoreRef)))
    return out


def _check_store_refs(cfg: Config) -> None:
    defined = ", ".join(sorted(n for n in cfg.storage if not n.startswith("<"))) or "none"

    def walk(spec: StoreSpec, path: tuple[str, ...]) -> None:
        for _, child in child_stores(spec):
            if isinstance(child, StoreRef):
                if child.name not in cfg.storage:
                    raise ConfigError(f"{child.where}: no store named {child.name!r} (defined: {defined})")
                if child.name in path:
                    cycle = " -> ".join([*path[path.index(child.name):], child.name])
                    raise ConfigError(f"{child.where}: stores refer to each other in a loop ({cycle})")
                walk(cfg.storage[child.name], (*path, child.name))
            else:
                walk(child, path)

    for name, spec in cfg.storage.items():
        walk(spec, (name,))


def _tree_is_process_local(cfg: Config, spec: StoreSpec | StoreRef, as_cache: bool = False) -> bool:
    """A memory store holds what no other process sees, unless it is only a tiered store's cache."""
    if isinstance(spec, StoreRef):
        spec = cfg.storage[spec.name]
    if spec.type in PROCESS_LOCAL:
        return not as_cache
    return any(
        _tree_is_process_local(cfg, child, as_cache=spec.type == "tiered" and key == "cache")
        for key, child in child_stores(spec)
    )


def load(path: Path | None, data_dir: Path | None) -> Config:
    if path is None:
        raw = yaml.safe_load(DEFAULT_YAML)
    else:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    cfg = parse(raw, data_dir or default_data_dir())
    if data_dir is not None:
        cfg.data_dir = data_dir
    return cfg
