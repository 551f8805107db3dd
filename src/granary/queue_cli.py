"""`granary queue`: the execution queue of a running server, per queue and platform, read from /metrics.

What a person deciding whether to add workers (or an autoscaler's script) wants: how many jobs wait,
for which platform, how many run, how long the oldest has waited, and how many worker slots are
connected and busy. It reads the same gauges as Prometheus does (granary_execution_queue_depth,
granary_execution_jobs, granary_execution_oldest_queued_seconds, granary_workers_connected,
granary_worker_slots, granary_worker_slots_busy), computed from the shared queue database by whichever
server process answers, so one server's /metrics is the whole farm's queue.

Reaching the server (URL from --url or the configuration, credentials, TLS, exit codes 3/4/5) is
`granary status`'s: the same flags mean the same here. --json prints one JSON object (for scripts and
autoscalers); --once, or stdout that is not a terminal, prints one plain table; otherwise the table is
redrawn every --interval seconds until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from granary.errors import ConfigError
from granary.status_cli import PASSWORD_ENV, Scraper, StatusError, credential_header, metrics_url


def add_parser(sub) -> None:
    p = sub.add_parser("queue", help="execution queue depth per platform and jobs by stage of a running server"
                       " (from its HTTP port's /metrics)")
    p.add_argument("-c", "--config", type=Path,
                   help="the server's YAML configuration, to find its HTTP port (default: embedded defaults)")
    p.add_argument("--url", help="the HTTP port to read, e.g. http://127.0.0.1:8981 (/metrics is added;"
                   " default: from the config, as for `granary status`)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between redraws on a terminal (default 2)")
    p.add_argument("--once", action="store_true",
                   help="print one plain snapshot and exit (the default when stdout is not a terminal)")
    p.add_argument("--json", action="store_true", help="print one JSON object and exit (for scripts, autoscalers)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the scrape (default 5)")
    p.add_argument("--user", help=f"HTTP Basic user; the password is read from ${PASSWORD_ENV}"
                   " (or asked for on a terminal)")
    p.add_argument("--token-file", type=Path, help="file holding an access token, sent as Bearer")
    p.add_argument("--ca", type=Path, help="PEM CA bundle the server's certificate must chain to"
                   " (https; default: the system roots)")


@dataclass
class QueueView:
    """One execution queue (one per storage: instances sharing a CAS share a queue)."""

    queued: int = 0
    executing: int = 0
    oldest_queued_seconds: float = 0.0
    workers: int = 0  # worker sessions connected
    slots: int = 0  # actions those sessions may run at once
    slots_busy: int = 0
    platforms: dict[str, int] = field(default_factory=dict)  # waiting jobs by platform ("K=V,K=V")


def parse(text: str) -> dict[str, QueueView]:
    """The queues in a Prometheus text exposition, by queue name."""
    from prometheus_client.parser import text_string_to_metric_families

    queues: dict[str, QueueView] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if "queue" not in labels:
                continue
            q = queues.setdefault(labels["queue"], QueueView())
            if name == "granary_execution_queue_depth":
                platform = labels.get("platform", "")
                q.platforms[platform] = q.platforms.get(platform, 0) + int(value)
            elif name == "granary_execution_jobs":
                if labels.get("stage") == "queued":
                    q.queued += int(value)
                elif labels.get("stage") == "executing":
                    q.executing += int(value)
            elif name == "granary_execution_oldest_queued_seconds":
                q.oldest_queued_seconds = max(q.oldest_queued_seconds, value)
            elif name == "granary_workers_connected":
                q.workers += int(value)
            elif name == "granary_worker_slots":
                q.slots += int(value)
            elif name == "granary_worker_slots_busy":
                q.slots_busy += int(value)
    return {k: queues[k] for k in sorted(queues)}


def as_json(url: str, queues: dict[str, QueueView]) -> dict[str, Any]:
    return {
        "url": url,
        "queued": sum(q.queued for q in queues.values()),
        "executing": sum(q.executing for q in queues.values()),
        "queues": {name: asdict(q) for name, q in queues.items()},
    }


def plain(url: str, queues: dict[str, QueueView]) -> str:
    """The --once text: a line per queue, then its waiting jobs per platform."""
    lines = [f"granary queue: {url}"]
    if not queues:
        lines.append("no execution queues (is execution configured on this server?)")
        return "\n".join(lines)
    width = max(len(n) for n in queues)
    lines.append(f"{'queue':<{width}}  {'queued':>6}  {'executing':>9}  {'oldest':>7}  {'workers':>7}  slots busy/all")
    for name, q in queues.items():
        lines.append(f"{name:<{width}}  {q.queued:>6}  {q.executing:>9}  {q.oldest_queued_seconds:>6.0f}s"
                     f"  {q.workers:>7}  {q.slots_busy}/{q.slots}")
    waiting = [(name, p, n) for name, q in queues.items() for p, n in sorted(q.platforms.items(), key=lambda kv: -kv[1])
               if n]
    lines.append("queued by platform:" if waiting else "queued by platform: none")
    lines += [f"  {name:<{width}}  {n:>6}  {p or '(no properties)'}" for name, p, n in waiting]
    return "\n".join(lines)


def _read(scraper: Scraper) -> dict[str, QueueView]:
    text = scraper.text()
    try:
        return parse(text)
    except ValueError as e:
        raise StatusError(f"{scraper.url}: not Prometheus text ({e})", 5) from None


def cmd_queue(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise ConfigError(f"--interval: expected seconds above 0, got {args.interval:g}")
    if args.timeout <= 0:
        raise ConfigError(f"--timeout: expected seconds above 0, got {args.timeout:g}")
    url = metrics_url(args.url, args.config)
    scraper = Scraper(url, credential_header(args.user, args.token_file), args.ca, args.timeout)
    scraper.headers["User-Agent"] = "granary-queue"
    try:
        if args.json:
            print(json.dumps(as_json(url, _read(scraper)), indent=2), flush=True)
            return 0
        if args.once or not sys.stdout.isatty():
            print(plain(url, _read(scraper)), flush=True)
            return 0
        return _live(scraper, args.interval)
    except StatusError as e:
        print(f"granary queue: {e.message}", file=sys.stderr)
        return e.code


def _live(scraper: Scraper, interval: float) -> int:
    """Redraw until Ctrl-C; the first read must work, later failures show in red while it retries."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    def render(queues: dict[str, QueueView], error: str | None) -> Group:
        header = Text(f"{datetime.now():%H:%M:%S}, every {interval:g} s; Ctrl-C quits", style="dim")
        parts: list[Any] = [Text(plain(scraper.url, queues)), header]
        if error is not None:
            parts.append(Text(error, style="bold red"))
        return Group(*parts)

    queues = _read(scraper)
    try:
        with Live(render(queues, None), console=Console(), auto_refresh=False, redirect_stderr=False) as live:
            while True:
                time.sleep(interval)
                error = None
                try:
                    queues = _read(scraper)
                except StatusError as e:
                    error = e.message
                live.update(render(queues, error), refresh=True)
    except KeyboardInterrupt:
        return 0
