"""Configuration: granary.yaml validated up front, errors that name the bad key.

    server:
      listen: 127.0.0.1:8980
      processes: auto          # server processes sharing the port (auto: one per core)
      max_batch_size: 4000000  # bytes, advertised as max_batch_total_size_bytes
      drain_timeout: 30s       # how long a stopping server lets running actions finish
    storage:                   # named CAS stores
      main: {type: disk, path: cas, max_size: 10GiB}
    action_caches:             # named action caches
      main: {type: disk, path: ac}
    instances:                 # instance name -> stores ("*" answers any other name)
      "*": {cas: main, action_cache: main, execution: true}
    execution:                 # remote execution (instances execute unless `execution: false`)
      database: sqlite:///...  # job queue; default <data dir>/execution.sqlite; postgresql+psycopg://... to share
      default_timeout: 10m     # for actions that set none

Every key, its type, default and meaning is in `granary.config_models`
(`granary config show` prints them all, `granary config schema` gives the
JSON Schema). This module loads the file, turns a validation error into one
line (`storage.main.max_size: expected a size like 10GiB or 500MB, got
'lots'`), checks references between stores, and builds the objects the rest
of Granary uses: `Config`, `StoreSpec` trees, `InstanceSpec`s and the
`ExecutionConfig` section.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from granary.auth.settings import AuthSettings, TlsSettings
from granary.config_models import (
    AC_MODELS,
    CAS_MODELS,
    TAG,
    ExecutionConfig,
    GranaryConfig,
    HttpSection,
    InstanceSection,
    ServerSection,
    Shard,
    SizeTier,
    Store,
    StoreName,
)
from granary.config_values import PROBLEM, listen_address, parse_duration
from granary.errors import ConfigError
from granary.sizes import parse_size

__all__ = [
    "AC_TYPES", "CAS_TYPES", "DEFAULT_YAML", "Config", "ExecutionConfig", "InstanceSpec", "StoreRef", "StoreSpec",
    "as_dict", "child_stores", "default_data_dir", "load", "one_line", "parse", "parse_duration", "parse_size",
    "read_file", "validate",
]

CAS_TYPES = CAS_MODELS  # type name -> model of its options
AC_TYPES = AC_MODELS
PROCESS_LOCAL = {"memory"}  # types whose contents one process cannot share with another

DEFAULT_YAML = """
storage:
  default: {type: disk, path: cas, max_size: 10GiB}
action_caches:
  default: {type: disk, path: ac}
instances:
  "*": {cas: default, action_cache: default}
execution: {}
"""


@dataclass
class StoreSpec:
    type: str
    options: dict[str, Any]  # parsed values; stores inside are StoreSpec or StoreRef
    where: str  # key path in the file, for errors


@dataclass(frozen=True)
class StoreRef:
    """A reference by name to a store under `storage:`."""

    name: str
    where: str


@dataclass
class InstanceSpec:
    name: str
    cas: str  # key into Config.storage
    action_cache: str | None  # key into Config.action_caches
    allow_updates: bool
    write_once: bool
    check_completeness: bool
    execution: bool


@dataclass
class Config:
    """The validated configuration, as the rest of Granary uses it (defaults live in config_models)."""

    data_dir: Path
    host: str
    port: int
    processes: int | None  # None: auto
    max_batch_size: int
    drain_timeout: float  # seconds a stopping server lets running actions finish
    server: ServerSection = field(default_factory=ServerSection, compare=False)  # limits and the rest of `server:`
    storage: dict[str, StoreSpec] = field(default_factory=dict)
    action_caches: dict[str, StoreSpec] = field(default_factory=dict)
    instances: dict[str, InstanceSpec] = field(default_factory=dict)
    execution: ExecutionConfig | None = None  # None: no instance executes
    auth: AuthSettings | None = None  # None: no authentication, every call allowed
    tls: TlsSettings | None = None  # None: plain gRPC
    allow_unauthenticated: bool = False  # listen beyond loopback without auth
    http: HttpSection = field(default_factory=HttpSection, compare=False)  # the HTTP port (metrics, health)
    file: GranaryConfig | None = field(default=None, compare=False, repr=False)  # as validated

    def resolve_path(self, p: str) -> Path:
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else self.data_dir / path

    def uses_process_local_state(self) -> bool:
        return any(_tree_is_process_local(self, s) for s in self.storage.values()) or any(
            s.type in PROCESS_LOCAL for s in self.action_caches.values()
        )


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "granary"


# ---- errors -----------------------------------------------------------------------------------


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith("["):
            out += part
        else:
            text = str(part) if part != "" else "''"
            out += f".{text}" if out else text
    return out or "config"


def _expected_types(kind: str) -> str:
    return ", ".join(sorted(CAS_TYPES if kind == "cas_store" else AC_TYPES))


def one_line(error: ValidationError, under: str = "") -> str:
    """The first problem of a validation error: `key.path: what is wrong` (the path starting at `under`)."""
    err = error.errors(include_url=False)[0]
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    loc: list[Any] = [under] if under else []
    loc += [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(TAG))]
    if not loc:
        loc = ["config"]  # the file as a whole
    if "key" in ctx:
        loc.append(ctx["key"])
    if kind == PROBLEM:
        message = ctx["detail"]
    elif kind == "missing":
        of_type = value.get("type") if isinstance(value, dict) else None
        message = f"required for type {of_type}" if isinstance(of_type, str) else "required"
    elif kind in ("cas_store", "ac_store"):
        if isinstance(value, dict):
            loc.append("type")
            message = f"expected one of {_expected_types(kind)}, got {value.get('type')!r}"
        else:
            message = f"expected a store name or an inline store mapping with a type, got {value!r}"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        message = f"expected a mapping, got {type(value).__name__}"
    elif kind == "list_type":
        message = f"expected a list, got {type(value).__name__}"
    else:
        message = f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {value!r}"
    path = ctx.get("path") or _dotted(loc)
    return f"{path}: {message}"


# ---- from the validated file to Config -----------------------------------------------------------


def _option(value: Any, where: str) -> Any:
    if isinstance(value, StoreName):
        return StoreRef(str(value), where)
    if isinstance(value, Store):
        return _spec(value, where)
    if isinstance(value, list):
        out: list[Any] = []
        for i, item in enumerate(value):
            at = f"{where}[{i}]"
            if isinstance(item, SizeTier):
                out.append((item.max_size, _option(item.store, f"{at}.store")))
            elif isinstance(item, Shard):
                out.append((item.name, item.weight, _option(item.store, f"{at}.store")))
            else:
                out.append(item)
        return out
    return value


def _spec(store: Store, where: str) -> StoreSpec:
    options = {key: _option(getattr(store, key), f"{where}.{key}") for key in type(store).model_fields
               if key != "type"}
    return StoreSpec(store.kind, options, where)


def _ref(named: dict[str, StoreSpec], value: Any, where: str) -> str:
    if isinstance(value, StoreName):
        if value not in named:
            defined = ", ".join(sorted(n for n in named if not n.startswith("<"))) or "none"
            raise ConfigError(f"{where}: no store named {str(value)!r} (defined: {defined})")
        return str(value)
    key = f"<{where}>"
    named[key] = _spec(value, where)
    return key


def _build(file: GranaryConfig, data_dir: Path) -> Config:
    server = file.server
    host, port = listen_address(server.listen)
    cfg = Config(
        data_dir=Path(os.path.expanduser(server.data_dir)) if server.data_dir else data_dir,
        host=host, port=port, processes=server.processes, max_batch_size=server.max_batch_size,
        drain_timeout=server.drain_timeout, server=server, execution=file.execution, file=file,
        auth=file.auth, tls=server.tls, allow_unauthenticated=server.allow_unauthenticated, http=file.http,
    )
    cfg.storage = {name: _spec(store, f"storage.{name}") for name, store in file.storage.items()}
    cfg.action_caches = {name: _spec(store, f"action_caches.{name}") for name, store in file.action_caches.items()}
    for name, inst in file.instances.items():
        cfg.instances[name] = _instance(cfg, name, inst)
    _check_store_refs(cfg)
    if cfg.processes is not None and cfg.processes > 1 and cfg.uses_process_local_state():
        raise ConfigError(f"server.processes: {cfg.processes} server processes cannot share memory stores;"
                          " use disk stores or processes: 1")
    return cfg


def _instance(cfg: Config, name: str, inst: InstanceSection) -> InstanceSpec:
    where = f"instances.{name}" if name else "instances.''"
    cas = _ref(cfg.storage, inst.cas, f"{where}.cas")
    ac = None
    if inst.action_cache is not None:
        ac = _ref(cfg.action_caches, inst.action_cache, f"{where}.action_cache")
    return InstanceSpec(name, cas, ac, allow_updates=inst.allow_updates, write_once=inst.write_once,
                        check_completeness=inst.check_completeness, execution=bool(inst.execution))


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
    """Names may be used before they are defined; every one must exist and none may loop."""
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


# ---- entry points -------------------------------------------------------------------------------


def validate(raw: Any) -> GranaryConfig:
    """The file's contents as models; a mistake is a ConfigError of one line naming the key."""
    if not isinstance(raw, dict) and raw is not None:
        raise ConfigError(f"config: expected a mapping, got {type(raw).__name__}")
    try:
        return GranaryConfig.model_validate(raw or {})
    except ValidationError as e:
        raise ConfigError(one_line(e)) from None


def parse(raw: Any, data_dir: Path) -> Config:
    return _build(validate(raw), data_dir)


def _store(value: Any, where: str, types: dict[str, type[Store]]) -> StoreSpec:
    """One store mapping outside a file (tests build stores this way)."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in types:
        raise ConfigError(f"{where}.type: expected one of {', '.join(sorted(types))}, got {kind!r}")
    try:
        return _spec(types[kind].model_validate(value), where)
    except ValidationError as e:
        raise ConfigError(one_line(e, under=where)) from None


def read_file(path: Path) -> Any:
    """The YAML in `path`; unreadable or invalid YAML is a ConfigError of one line."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file ({e.reason} at byte {e.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_problem(path, e)) from None


def _yaml_problem(path: Path, e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem, context = getattr(e, "problem", None), getattr(e, "context", None)
    what = " ".join(f"{problem or type(e).__name__} {f'({context})' if context else ''}".split())
    return f"{where}: invalid YAML: {what}"


def load(path: Path | None, data_dir: Path | None) -> Config:
    raw = yaml.safe_load(DEFAULT_YAML) if path is None else read_file(path)
    cfg = parse(raw, data_dir or default_data_dir())
    if data_dir is not None:
        cfg.data_dir = data_dir
    return cfg


def as_dict(model: BaseModel) -> dict[str, Any]:
    """A validated file as plain data, sizes and durations written the way operators write them."""
    return model.model_dump(mode="json")
