"""`granary fsck`: check every blob of every disk store in a config against its digest, and repair
the index.

Reads only re-hash small (packed) blobs, and only once per process; a large blob whose bytes
rotted without changing size is found by this walk alone. Each damaged or missing blob's row is
dropped (clients then upload it again), files no row names are removed, and the byte totals
recounted. Safe while `granary serve` runs on the same directories. Exit status: 0 when nothing
was wrong, 1 when something was found and repaired, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from granary.errors import ConfigError

if TYPE_CHECKING:
    from granary.config import Config, StoreSpec


def add_parser(sub) -> None:
    p = sub.add_parser("fsck", help="check every blob of the config's disk stores against its digest;"
                       " drop damaged ones from the index")
    p.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    p.add_argument("--data-dir", type=Path, help="where relative store paths live")
    p.add_argument("--store", help="only the disk store at this config path (e.g. storage.main or"
                   " storage.main.cache)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress on stderr (default: a progress bar on a terminal, else a line every few"
                   " seconds); the result lines on stdout stay")


def disk_specs(cfg: Config) -> Iterator[StoreSpec]:
    """Every disk store spec in the config, nested ones (tiers, shards, indexed stores) included."""
    from granary.config import StoreSpec

    def walk(value: Any) -> Iterator[StoreSpec]:
        if isinstance(value, StoreSpec):
            if value.type == "disk":
                yield value
            for v in value.options.values():
                yield from walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from walk(v)

    for spec in cfg.storage.values():
        yield from walk(spec)


def cmd_fsck(args: argparse.Namespace) -> int:
    import asyncio

    from granary.cas.disk import DiskBlobStore
    from granary.config import load
    from granary.progress import display

    cfg = load(args.config, args.data_dir)
    specs = [s for s in disk_specs(cfg) if args.store is None or s.where == args.store]
    if not specs:
        where = f" at {args.store}" if args.store else ""
        raise ConfigError(f"no disk store{where} in the config (type: disk)")
    shown = display(args.quiet, command="granary fsck")
    repaired = False
    try:
        for spec in specs:
            o = spec.options
            store = DiskBlobStore(cfg.resolve_path(o["path"]), o["max_size"], pack_max_blob=o["pack_max_blob"],
                                  fsync=o["fsync"])
            try:
                progress = shown.callback(spec.where)
                report = store.fsck(lambda done, total, progress=progress: progress("verify", done, total))
            finally:
                asyncio.run(store.close())
            shown.done()
            print(f"{spec.where}: checked {report.blobs} blobs; {report.dropped} damaged or missing (dropped);"
                  f" {report.orphans} unindexed files removed", flush=True)
            repaired = repaired or not report.clean
    finally:
        shown.done()
    return 1 if repaired else 0
