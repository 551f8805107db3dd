"""`granary cleanup`: run the cleanup of every indexed CAS in a config once, now."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from granary.errors import ConfigError

if TYPE_CHECKING:
    from granary.config import Config
    from granary.progress import Display


def add_parser(sub) -> None:
    p = sub.add_parser(
        "cleanup",
        help="delete least-recently-used blobs of indexed CAS stores down to their byte budget",
    )
    p.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    p.add_argument("--data-dir", type=Path, help="where relative store paths live")
    p.add_argument("--target", help="clean down to this size (e.g. 50GiB); default: the store's max_size")
    p.add_argument("--store", help="only the indexed store at this config path (e.g. storage.main)")
    p.add_argument("--reindex", action="store_true",
                   help="first add blobs the wrapped store holds but the index lacks")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress on stderr (default: a progress bar on a terminal, else a line every few"
                   " seconds); the result lines on stdout stay")


def cmd_cleanup(args: argparse.Namespace) -> int:
    import asyncio

    from granary.config import load, parse_size

    cfg = load(args.config, args.data_dir)
    target = parse_size(args.target, "--target") if args.target is not None else None
    from granary.progress import display

    return asyncio.run(_cleanup(cfg, target, args.store, args.reindex, display(args.quiet)))


async def _cleanup(cfg: Config, target: int | None, only: str | None, reindex: bool, shown: Display) -> int:
    from granary.storage_builder import StoreBuilder  # heavy (S3, SQL clients): only when cleaning

    builder = StoreBuilder(cfg)
    try:
        for name in cfg.storage:
            builder.named_blob_store(name)
        for name in cfg.action_caches:
            builder.named_ac_store(name)
        janitors = [j for j in builder.janitors() if only is None or j.where == only]
        if not janitors:
            where = f" at {only}" if only else ""
            raise ConfigError(f"no indexed CAS store{where} in the config (type: indexed)")
        for j in janitors:
            if target is None and not j.max_size:
                raise ConfigError(f"{j.where}.max_size: not set, so cleanup needs --target SIZE")
            progress = shown.callback(j.where)
            if reindex:
                seen = await j.index.reindex(lambda n, progress=progress: progress("reindex", n, None))
                shown.done()
                print(f"{j.where}: indexed {seen} blobs", flush=True)
            report = await j.clean(target, progress)
            shown.done()
            print(f"granary cleanup: {report}", flush=True)
    finally:
        shown.done()
        await builder.close()
    return 0
