"""`granary` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from granary import __version__
from granary.errors import ConfigError
from granary.observability import logs
from granary.writable_dir import ensure_writable_dir

if TYPE_CHECKING:
    from granary.config import Config

# Each process imports only what its command uses (tests/test_imports.py): a worker no
# configuration models, server modules or other commands' flags; the server processes what
# their supervisor imported for them (granary.preload).

OWN_PARSERS = ("serve", "cleanup", "fsck", "worker", "config", "status", "queue", "builds", "build")  # commands whose parser is built alone

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class OneLineParser(argparse.ArgumentParser):
    """A wrong flag is one line on stderr, like every other start-up mistake."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def log_level(name: str) -> int:
    if name.lower() not in LOG_LEVELS:
        raise ConfigError(f"--log-level: expected one of {', '.join(LOG_LEVELS)}, got {name!r}")
    return getattr(logging, name.upper())


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the REAPI server (cache; execution when configured)")
    p.add_argument("--config", type=Path, help="YAML configuration file (default: embedded defaults)")
    p.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:8980; port 0 picks one)")
    p.add_argument("--data-dir", type=Path, help="where relative store paths live (default ~/.local/share/granary)")
    p.add_argument("--processes", type=int, help="server processes sharing the port (default: one per core)")
    p.add_argument("--log-level", default="warning", help="debug, info, warning (default), error")
    p.add_argument("--log-format", default="text", help="text (default) or json: one JSON object per line")
    p.add_argument("--allow-unauthenticated-network-access", action="store_true",
                   help="listen beyond loopback although no authentication (auth:) is configured:"
                   " anyone who reaches the port can read, write and execute")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's flags, or only those of `command` (one of OWN_PARSERS): the others'
    modules then stay unloaded."""
    parser = OneLineParser(prog="granary", description="Granary: REAPI v2 remote cache and execution")
    parser.add_argument("--version", action="version", version=f"granary {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    wanted = OWN_PARSERS if command not in OWN_PARSERS else (command,)
    if "serve" in wanted:
        _serve_parser(sub)
    if "cleanup" in wanted:
        from granary import cleanup_cli

        cleanup_cli.add_parser(sub)
    if "fsck" in wanted:
        from granary import fsck_cli

        fsck_cli.add_parser(sub)
    if "worker" in wanted:
        from granary.worker import cli as worker_cli

        worker_cli.add_parser(sub)
    if "config" in wanted:
        from granary import config_cli

        config_cli.add_parser(sub)
    if "status" in wanted:
        from granary import status_cli

        status_cli.add_parser(sub)
    if "queue" in wanted:
        from granary import queue_cli

        queue_cli.add_parser(sub)
    if "builds" in wanted or "build" in wanted:
        from granary.bes import cli as bes_cli

        bes_cli.add_parsers(sub)
    if command not in OWN_PARSERS:
        from granary.auth import cli as auth_cli

        auth_cli.add_parser(sub)
    return parser


def _load(args) -> Config:
    from granary.auth.settings import AuthSettings, check_exposure
    from granary.config import load
    from granary.config_values import parse_listen

    cfg = load(args.config, args.data_dir)
    if args.listen:
        cfg.host, cfg.port = parse_listen(args.listen, "--listen")
    if args.processes is not None:
        if args.processes < 1:
            raise ConfigError(f"--processes: expected 1 or more, got {args.processes}")
        cfg.processes = args.processes
    check_exposure(cfg.host, cfg.auth or AuthSettings(),
                   args.allow_unauthenticated_network_access or cfg.allow_unauthenticated)
    ensure_writable_dir(cfg.data_dir, "data directory")
    return cfg


def cmd_serve(args) -> int:
    from granary import supervisor
    from granary.observability import runarea

    cfg = _load(args)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    if cfg.processes and cfg.processes > 1 and cfg.uses_process_local_state():
        raise ConfigError(
            f"processes: {cfg.processes} server processes cannot share memory stores;"
            " use disk stores or processes: 1"
        )
    processes = cfg.processes or supervisor.default_processes(cfg)
    observability = runarea.prepare(cfg, args.allow_unauthenticated_network_access or cfg.allow_unauthenticated)  # before servers start
    from granary.execution.localworkers import LocalWorkers

    workers = LocalWorkers(cfg)
    credential = None
    if workers.count and (cfg.auth is not None or cfg.tls is not None):
        from granary.auth.localworker import LocalWorkerCredential

        credential = LocalWorkerCredential.mint(cfg.data_dir)  # before server processes start: they inherit it
        workers.connect_through(credential.socket, credential.token_file if cfg.auth is not None else None)
    scheme = "grpc" if cfg.tls is None else "grpcs"

    def announce(port: int) -> None:
        workers.start(port)
        print(
            f"granary: serving REAPI on {scheme}://{cfg.host}:{port} with {processes} process"
            f"{'es' if processes > 1 else ''}; data in {cfg.data_dir}{observability.announce()}",
            flush=True,
        )

    try:
        if processes == 1:
            from granary import server

            server.run_single(cfg, cfg.port, False, announce, workers)
            return 0
        # The server processes are forks of this one: what they run on is imported once,
        # here, and shared by them all (granary.preload).
        from granary.preload import preload_server

        preload_server(cfg)

        def serve(port: int) -> None:
            from granary import server

            server.run_child(cfg, port)

        return supervisor.run_supervisor(cfg, processes, serve, announce, workers)
    finally:
        workers.stop()
        if credential is not None:
            credential.remove()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        logs.configure(log_level(str(getattr(args, "log_level", "warning"))), getattr(args, "log_format", "text"))
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "cleanup":
            from granary import cleanup_cli

            return cleanup_cli.cmd_cleanup(args)
        if args.command == "fsck":
            from granary import fsck_cli

            return fsck_cli.cmd_fsck(args)
        if args.command == "worker":
            from granary.worker import cli as worker_cli

            return worker_cli.cmd_worker(args)
        if args.command == "config":
            from granary import config_cli

            return config_cli.cmd_config(args)
        if args.command == "status":
            from granary import status_cli

            return status_cli.cmd_status(args)
        if args.command == "queue":
            from granary import queue_cli

            return queue_cli.cmd_queue(args)
        if args.command in ("builds", "build"):
            from granary.bes import cli as bes_cli

            return bes_cli.cmd_builds(args) if args.command == "builds" else bes_cli.cmd_build(args)
        from granary.auth import cli as auth_cli

        if args.command in auth_cli.COMMANDS:
            return auth_cli.run(args)
    except ConfigError as e:
        print(f"granary: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1
