"""`granary worker` command-line flags."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from granary.errors import ConfigError
from granary.worker.input_limits import DEFAULT_MAX_DEPTH, DEFAULT_MAX_PATHS
from granary.writable_dir import ensure_writable_dir

if TYPE_CHECKING:  # the worker's modules load when it runs: every granary command builds this parser
    from granary.worker.limits import ActionLimits
    from granary.worker.sandbox import ActionUser


def parse_action_user(text: str | None, euid: int) -> ActionUser | None:
    """--action-uid UID[:GID] (GID defaults to UID); only a root worker can run actions as another uid."""
    from granary.worker.sandbox import ActionUser, default_user

    if text is None:
        return default_user()
    uid_s, _, gid_s = text.partition(":")
    try:
        uid, gid = int(uid_s), int(gid_s or uid_s)
    except ValueError:
        raise ConfigError(f"--action-uid: expected UID or UID:GID (numbers), got {text!r}") from None
    if uid <= 0 or gid <= 0:
        raise ConfigError(f"--action-uid: actions must not run as root, got {text!r}")
    if euid != 0:
        if uid == euid:
            return None
        raise ConfigError(f"--action-uid {text}: only a worker running as root can run actions as another uid")
    return ActionUser(uid, gid)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_max_idle(text: str | None) -> float | None:
    """--max-idle 10m (30s, 1h, or seconds); None or 0 means never. Parsed here rather than with
    granary.config_values, which would load the configuration models into every worker."""
    if text is None:
        return None
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"--max-idle: expected a duration like 30s, 10m or 600 (seconds), got {text!r}")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    return seconds or None


def action_limits(args: argparse.Namespace) -> ActionLimits:
    """--action-memory, --action-pids, --action-cpus, --action-disk, --action-output-size and the backend."""
    from granary.sizes import parse_size
    from granary.worker.limits import ActionLimits

    if args.action_pids is not None and args.action_pids < 1:
        raise ConfigError(f"--action-pids: expected 1 or more, got {args.action_pids}")
    sizes: dict[str, int | None] = {}
    for flag, text, least in (("--action-memory", args.action_memory, 1 << 20), ("--action-disk", args.action_disk, 1),
                              ("--action-output-size", args.action_output_size, 1)):
        sizes[flag] = None if text is None else parse_size(text, flag)
        if sizes[flag] is not None and sizes[flag] < least:
            raise ConfigError(f"{flag}: expected at least {'1MiB' if least > 1 else '1 byte'}, got {text}")
    cpus = None
    if args.action_cpus is not None:
        try:
            cpus = float(args.action_cpus)
        except ValueError:
            cpus = -1.0
        if not 0.01 <= cpus < 1e6:
            raise ConfigError(f"--action-cpus: expected a number of CPUs of 0.01 or more, like 1 or 1.5,"
                              f" got {args.action_cpus!r}")
    return ActionLimits(memory=sizes["--action-memory"], pids=args.action_pids, cpus=cpus,
                        disk=sizes["--action-disk"], output_size=sizes["--action-output-size"],
                        backend=args.action_limits_backend)


def add_parser(sub) -> None:
    p = sub.add_parser("worker", help="run actions for a Granary (or any Remote Workers API) server")
    p.add_argument("--server", required=True, help="server address: HOST:PORT, grpc://HOST:PORT or grpcs://HOST:PORT")
    p.add_argument("--instance", default="", help="REAPI instance name (default: empty)")
    p.add_argument("--concurrency", type=int, help="actions at once, one bot session each (default: one per core)")
    p.add_argument("--property", action="append", default=[], metavar="KEY=VALUE",
                   help="extra platform property to advertise (repeatable); OSFamily, ISA/Arch, dockerNetwork and"
                        " Pool=default are detected; a value given here replaces the detected one (an ISA naming no"
                        " CPU, e.g. x86-avx2, is added to it)")
    p.add_argument("--cache-dir", type=Path, help="local CAS cache (default ~/.cache/granary-worker/cas)")
    p.add_argument("--cache-size", default="10GiB", help="bound of the local CAS cache (default 10GiB)")
    p.add_argument("--work-dir", type=Path,
                   help="where input roots are built (default: beside the cache dir, same filesystem)")
    p.add_argument("--sandbox", choices=("none", "bwrap", "auto"), default="auto",
                   help="bwrap: run actions under bubblewrap; auto (default): bwrap when it works here")
    p.add_argument("--sandbox-path", action="append", default=[], metavar="PATH",
                   help="extra host path to show read-only inside the bwrap sandbox (repeatable)")
    p.add_argument("--action-uid", metavar="UID[:GID]",
                   help="host uid (and gid) actions run as when the worker is root (default 65534:65534, nobody);"
                        " never 0. A worker that is not root runs actions as itself")
    p.add_argument("--max-input-paths", type=int, default=DEFAULT_MAX_PATHS,
                   help="refuse input trees that expand to more files, symlinks and directories"
                        f" (default {DEFAULT_MAX_PATHS})")
    p.add_argument("--max-input-depth", type=int, default=DEFAULT_MAX_DEPTH,
                   help=f"refuse input trees with more nested directories (default {DEFAULT_MAX_DEPTH})")
    p.add_argument("--action-memory", metavar="SIZE",
                   help="memory one action may use, e.g. 2GiB: all its processes together (cgroup), else the"
                        " address space of each process (setrlimit); default: no limit")
    p.add_argument("--action-pids", type=int, metavar="N",
                   help="processes and threads one action may have at once (cgroup pids.max, else RLIMIT_NPROC"
                        " in the bwrap sandbox's user namespace); default: no limit")
    p.add_argument("--action-cpus", metavar="N",
                   help="CPU time one action may use per wall time, e.g. 1.5 (cgroup CPU quota, else pinned to"
                        " ceil(N) CPUs); default: no limit")
    p.add_argument("--action-disk", metavar="SIZE",
                   help="bytes one action may write in its work directory (input root, stdout, stderr), e.g."
                        " 10GiB; over it the action is killed; default: no limit")
    p.add_argument("--action-output-size", metavar="SIZE",
                   help="bytes of output files one action may produce, e.g. 4GiB; over it nothing is uploaded"
                        " and the action fails; default: no limit")
    p.add_argument("--action-limits-backend", choices=("auto", "cgroup", "rlimit"), default="auto",
                   help="how --action-memory, --action-pids and --action-cpus are enforced: cgroup (v2, else v1;"
                        " refuse to start without), rlimit (setrlimit and CPU affinity), auto (default: cgroup"
                        " when usable here, else rlimit with a warning)")
    p.add_argument("--name", help="worker name, prefix of bot ids (default: host name); give each worker its own:"
                   " a worker restarted with the same name takes over (and gives back) its old leases")
    p.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="seconds running actions may finish after SIGTERM (default 30)")
    p.add_argument("--max-idle", metavar="DURATION",
                   help="exit (status 0) after holding no lease for this long, e.g. 10m: for short-lived cloud"
                        " workers (default: never)")
    p.add_argument("--tls-ca", type=Path, help="PEM CA bundle the server's certificate must chain to"
                   " (implies TLS; default with grpcs://: the system roots)")
    p.add_argument("--tls-client-cert", type=Path, help="PEM client certificate, for servers that want mTLS")
    p.add_argument("--tls-client-key", type=Path, help="PEM private key of --tls-client-cert")
    p.add_argument("--tls-server-name", help="name the server's certificate must carry (default: the host)")
    p.add_argument("--token-file", type=Path, help="file holding the access token (sent as Bearer)")
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding the access token")
    p.add_argument("--basic-auth-file", type=Path, help="file holding user:password (sent as HTTP Basic)")
    p.add_argument("--auth-header", default="authorization",
                   help="metadata key for the token (default authorization: 'Bearer TOKEN'; e.g. x-granary-token)")
    p.add_argument("--container-images", choices=("on", "off"), default="on",
                   help="on (default): with the bwrap sandbox, run actions whose platform has container-image="
                        "docker://... inside that image (advertised as container-image=docker://*); off: refuse them")
    p.add_argument("--image-dir", type=Path,
                   help="where pulled images are unpacked (default: beside the cache dir; emptied at start)")
    p.add_argument("--image-cache-size", default="10GiB",
                   help="bound of the unpacked images; least recently used idle images go first (default 10GiB)")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                   help="registry spoken to over plain HTTP (repeatable; loopback hosts always are)")
    p.add_argument("--registry-credentials", type=Path, metavar="FILE",
                   help="file of 'HOST[:PORT] USER:PASSWORD' lines: HTTP Basic, or to get a registry token")
    p.add_argument("--log-level", default="warning", help="debug, info, warning (default), error")


def cmd_worker(args: argparse.Namespace) -> int:
    from granary.sizes import parse_size
    from granary.worker.connect import Credentials, auth_header
    from granary.worker.inputs import InputLimits
    from granary.worker.main import WorkerConfig, default_concurrency, run
    from granary.worker.platform import parse_property

    concurrency = default_concurrency() if args.concurrency is None else args.concurrency
    if concurrency < 1:
        raise ConfigError(f"--concurrency: expected 1 or more, got {concurrency}")
    try:
        props = [parse_property(p) for p in args.property]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for flag, value in (("--max-input-paths", args.max_input_paths), ("--max-input-depth", args.max_input_depth)):
        if value < 1:
            raise ConfigError(f"{flag}: expected 1 or more, got {value}")
    cfg_limits = action_limits(args)
    cfg = WorkerConfig(
        server=args.server,
        instance=args.instance,
        concurrency=concurrency,
        properties=props,
        cache_size=parse_size(args.cache_size, "--cache-size"),
        work_dir=args.work_dir,
        sandbox=args.sandbox,
        sandbox_paths=tuple(args.sandbox_path),
        shutdown_grace=args.shutdown_grace,
        max_idle=parse_max_idle(args.max_idle),
        action_user=parse_action_user(args.action_uid, os.geteuid()),
        input_limits=InputLimits(args.max_input_paths, args.max_input_depth),
        action_limits=cfg_limits,
        credentials=Credentials(
            tls_ca=args.tls_ca, tls_client_cert=args.tls_client_cert, tls_client_key=args.tls_client_key,
            tls_server_name=args.tls_server_name,
            header=auth_header(args.token_file, args.token_env, args.basic_auth_file, args.auth_header),
        ),
    )
    from granary.worker.images.registry import read_credentials

    cfg.container_images = args.container_images == "on"
    cfg.image_dir = args.image_dir
    cfg.image_cache_size = parse_size(args.image_cache_size, "--image-cache-size")
    cfg.insecure_registries = tuple(args.insecure_registry)
    try:
        cfg.registry_credentials = read_credentials(args.registry_credentials)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--registry-credentials: {e}") from None
    if args.cache_dir is not None:
        cfg.cache_dir = args.cache_dir
    cfg.cache_dir = ensure_writable_dir(cfg.cache_dir, "--cache-dir" if args.cache_dir else "worker cache directory")
    if args.work_dir is not None:
        cfg.work_dir = ensure_writable_dir(args.work_dir, "--work-dir")
    if args.name:
        cfg.name, cfg.named = args.name, True
    try:
        return run(cfg)
    except ValueError as e:  # the sandbox asked for cannot work here
        raise ConfigError(str(e)) from None
