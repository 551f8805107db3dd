"""Configuration: YAML, validated up front, errors that name the bad key.

    server:
      listen: 127.0.0.1:8980
      processes: auto          # server processes sharing the port (auto: one per core)
      max_batch_size: 4000000  # bytes, advertised as max_batch_total_size_bytes
    storage:                   # named CAS stores
      main: {type: disk, path: cas, max_size: 10GiB}
    action_caches:             # named action caches
      main: {type: disk, path: ac}
    instances:                 # instance name -> stores ("*" answers any other name)
      "*": {cas: main, action_cache: main}

A store can be named (a string) or written inline where it is used. Paths
are relative to the data directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from granary.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.I)
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


@dataclass
class Config:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8980
    processes: int | None = None  # None: auto
    max_batch_size: int = 4_000_000
    storage: dict[str, StoreSpec] = field(default_factory=dict)
    action_caches: dict[str, StoreSpec] = field(default_factory=dict)
    instances: dict[str, InstanceSpec] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    def resolve_path(self, p: str) -> Path:
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else self.data_dir / path

    def uses_process_local_state(self) -> bool:
        return any(s.type in PROCESS_LOCAL for s in [*self.storage.values(), *self.action_caches.values()])


DEFAULT_YAML = """
storage:
  default: {type: disk, path: cas, max_size: 10GiB}
action_caches:
  default: {type: disk, path: ac}
instances:
  "*": {cas: default, action_cache: default}
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
    _check_keys(raw, {"server": 0, "storage": 0, "action_caches": 0, "instances": 0}, "config")
    cfg = Config(data_dir=data_dir, raw=raw)
    server = _mapping(raw.get("server"), "server")
    _check_keys(server, {"listen": 0, "processes": 0, "max_batch_size": 0, "data_dir": 0}, "server")
    if "listen" in server:
        cfg.host, cfg.port = _listen(server["listen"], "server.listen")
    if "data_dir" in server:
        cfg.data_dir = Path(os.path.expanduser(_str(server["data_dir"], "server.data_dir")))
    if "processes" in server and server["processes"] != "auto":
        cfg.processes = _int(server["processes"], "server.processes") or None
    if "max_batch_size" in server:
        cfg.max_batch_size = parse_size(server["max_batch_size"], "server.max_batch_size")
    for name, value in _mapping(raw.get("storage"), "storage").items():
        cfg.storage[str(name)] = _store(value, f"storage.{name}", CAS_TYPES)
    for name, value in _mapping(raw.get("action_caches"), "action_caches").items():
        cfg.action_caches[str(name)] = _store(value, f"action_caches.{name}", AC_TYPES)
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
        cfg.instances[spec.name] = spec
    return cfg


def _ref(named: dict[str, StoreSpec], value: Any, where: str, types) -> str:
    if isinstance(value, str):
        if value not in named:
            raise ConfigError(f"{where}: no store named {value!r} (defined: {', '.join(sorted(named)) or 'none'})")
        return value
    key = f"<{where}>"
    named[key] = _store(value, where, types)
    return key


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
