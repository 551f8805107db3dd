"""`granary config check|show|schema`: validate a file, print the effective configuration, or its JSON Schema."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from granary.errors import ConfigError

if TYPE_CHECKING:
    from granary.config import Config, StoreRef, StoreSpec

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("config", help="check a configuration file, show the effective one, or print its schema")
    cmds = p.add_subparsers(dest="config_command", required=True)
    check = cmds.add_parser("check", help="validate FILE: prints `FILE: ok` or the one-line error (exit 2)")
    check.add_argument("file", type=Path, metavar="FILE")
    show = cmds.add_parser("show", help="the effective configuration as YAML, every default filled in")
    show.add_argument("--config", type=Path, help="YAML configuration file (default: embedded defaults)")
    show.add_argument("--data-dir", type=Path, help="data directory, as for `granary serve`")
    cmds.add_parser("schema", help="JSON Schema of granary.yaml, for editors (yaml-language-server)")


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "check":
        return check(args.file)
    if args.config_command == "show":
        sys.stdout.write(show(args.config, args.data_dir))
        return 0
    try:
        json.dump(schema(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `granary config schema | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def check(path: Path) -> int:
    from granary.config import load

    try:
        cfg = load(path, None)
        require_libraries(cfg)
    except ConfigError as e:
        message = str(e) if str(path) in str(e) else f"{path}: {e}"
        print(f"granary: configuration error: {message}", file=sys.stderr)
        return 2
    print(f"{path}: ok")
    return 0


def require_libraries(cfg: Config) -> None:
    """What `serve` would refuse for a missing extra (redis, s3, postgres), `check` refuses too."""
    from granary.config import StoreSpec, child_stores
    from granary.extras import require_database, require_store

    def walk(spec: StoreSpec | StoreRef) -> None:
        if isinstance(spec, StoreSpec):
            require_store(spec.type, spec.options, spec.where)
            for _, child in child_stores(spec):
                walk(child)

    for spec in (*cfg.storage.values(), *cfg.action_caches.values()):
        walk(spec)
    if cfg.execution is not None and any(i.execution for i in cfg.instances.values()):
        from granary.execution.farm import database_url

        require_database(database_url(cfg), "execution.database", notify=True)


def show(path: Path | None, data_dir: Path | None) -> str:
    import yaml

    from granary.config import as_dict, load

    cfg = load(path, data_dir)
    assert cfg.file is not None
    data = as_dict(cfg.file)
    data["server"]["data_dir"] = str(cfg.data_dir)
    header = f"# granary configuration{f' from {path}' if path else ' (embedded defaults)'}, defaults filled in\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def schema() -> dict[str, Any]:
    """granary.yaml as JSON Schema: sizes and durations accept strings (10GiB, 30s) or numbers."""
    from granary.config_models import GranaryConfig

    out = GranaryConfig.model_json_schema(mode="validation")
    return {"$schema": SCHEMA_DIALECT, **out}
