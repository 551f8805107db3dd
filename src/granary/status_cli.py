"""`granary status`: a compact view of a running server, read from its HTTP port's /metrics.

The numbers are computed by granary.observability.overview from the Prometheus text, exactly as the
server's own dashboard computes them, so this command needs nothing but HTTP access to /metrics (and
credentials when `auth:` protects it). On a terminal it redraws every --interval seconds (rich's Live
display) until Ctrl-C; --once, or stdout that is not a terminal, prints one plain snapshot and exits, so
the command is as useful in a script or a CI log as on an operator's screen.

Importing this module is cheap (it is imported to build the parser of every `granary status`): rich,
the configuration models and the metrics parser load only when the command runs.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import http.client
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from granary.errors import ConfigError
from granary.progress import human_bytes

if TYPE_CHECKING:
    from granary.observability.overview import Snapshot

PASSWORD_ENV = "GRANARY_PASSWORD"

# exit codes besides 0 (fine) and 2 (a wrong flag or configuration, as for every command)
EXIT_UNREACHABLE = 3  # no HTTP answer: refused, timed out, name unknown, TLS handshake failed
EXIT_UNAUTHORIZED = 4  # 401/403: /metrics wants (other) credentials
EXIT_NOT_GRANARY = 5  # an answer, but not a Granary server's /metrics

_GRANARY_SAMPLE = re.compile(r"^granary_[a-z_]+[{ ]", re.MULTILINE)


class StatusError(Exception):
    """A one-line reason the overview cannot be shown, and the exit code that says which kind."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.message = message
        self.code = code


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="live overview of a running server (rates, cache hits, queue, workers)"
                       " from its HTTP port's /metrics")
    p.add_argument("-c", "--config", type=Path,
                   help="the server's YAML configuration, to find its HTTP port (default: embedded defaults)")
    p.add_argument("--url", help="the HTTP port to read, e.g. http://127.0.0.1:8981 or https://cache:8981"
                   " (/metrics is added; default: from the config, as `granary serve` listens: http.listen,"
                   " else server.listen's host and port + 1; https when server.tls is set)")
    p.add_argument("--interval", type=float, default=2.0,
                   help="seconds between scrapes; rates are over this window (default 2; with --once, 0"
                   " means a single scrape and no rates)")
    p.add_argument("--once", action="store_true",
                   help="print one plain snapshot and exit (the default when stdout is not a terminal)")
    p.add_argument("--top", type=int, default=5, help="how many of the busiest gRPC methods to show (default 5)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each scrape (default 5)")
    p.add_argument("--user", help=f"HTTP Basic user; the password is read from ${PASSWORD_ENV}"
                   " (or asked for on a terminal)")
    p.add_argument("--token-file", type=Path, help="file holding an access token, sent as Bearer")
    p.add_argument("--ca", type=Path, help="PEM CA bundle the server's certificate must chain to"
                   " (https; default: the system roots)")


# ---- where and how to ask ------------------------------------------------------------------------


def metrics_url(url: str | None, config: Path | None) -> str:
    """The full /metrics URL: --url as given (scheme and path filled in), else the configured port."""
    if url:
        if "://" not in url:
            url = "http://" + url
        scheme = url.split("://", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise ConfigError(f"--url: expected http:// or https://, got {url!r}")
        url = url.rstrip("/")
        return url if url.endswith("/metrics") else url + "/metrics"
    from granary.config import load
    from granary.observability.runarea import address_from_environment, format_address

    cfg = load(config, None)
    address = address_from_environment(cfg)
    where = f" in {config}" if config else ""
    if address is None:
        raise ConfigError(f"http.enabled is false{where}: the server has no HTTP port and keeps no metrics")
    host, port = address
    if port == 0:
        raise ConfigError(f"the HTTP port{where} is picked when the server starts (port 0);"
                          " pass --url with the one `granary serve` announced")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # wildcards: ask loopback
    scheme = "https" if cfg.tls is not None else "http"
    return f"{scheme}://{format_address(host, port)}/metrics"


def credential_header(user: str | None, token_file: Path | None) -> str | None:
    """The Authorization header: Basic from --user and $GRANARY_PASSWORD, or Bearer from --token-file."""
    if user is not None and token_file is not None:
        raise ConfigError("give --user or --token-file, not both")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"--token-file: cannot read {token_file}: {e.strerror or e}") from None
        if not token:
            raise ConfigError(f"--token-file: {token_file} is empty")
        return token if " " in token else f"Bearer {token}"
    if user is None:
        return None
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        if not sys.stdin.isatty():
            raise ConfigError(f"--user {user}: set the password in ${PASSWORD_ENV}")
        password = getpass.getpass(f"password for {user}: ")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Scraper:
    """GETs /metrics and turns every way that can fail into a StatusError with its exit code."""

    def __init__(self, url: str, header: str | None, ca: Path | None, timeout: float):
        self.url = url
        self.headers = {"Accept": "text/plain", "User-Agent": "granary-status"}
        if header is not None:
            self.headers["Authorization"] = header
        self.timeout = timeout
        self.context: ssl.SSLContext | None = None
        if url.startswith("https://"):
            try:
                self.context = ssl.create_default_context(cafile=str(ca) if ca else None)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"--ca: cannot use {ca}: {getattr(e, 'strerror', None) or e}") from None
        elif ca is not None:
            raise ConfigError(f"--ca is for https URLs; {url} is plain http")

    def text(self) -> str:
        request = urllib.request.Request(self.url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                why = "no credentials given (--user or --token-file)" if "Authorization" not in self.headers \
                    else "the credentials were refused"
                raise StatusError(f"{self.url}: HTTP {e.code} {e.reason}: {why}", EXIT_UNAUTHORIZED) from None
            raise StatusError(f"{self.url}: HTTP {e.code} {e.reason}: not a Granary server's /metrics",
                              EXIT_NOT_GRANARY) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ssl.SSLError):
                hint, why = "", reason.reason or str(reason)
                if isinstance(reason, ssl.SSLCertVerificationError):
                    hint = " (pass --ca with the CA that signed it)"
                    why = f"certificate verify failed: {reason.verify_message}"
                raise StatusError(f"cannot reach {self.url}: TLS: {why}{hint}", EXIT_UNREACHABLE) from None
            text = getattr(reason, "strerror", None) or str(reason)
            raise StatusError(f"cannot reach {self.url}: {text}", EXIT_UNREACHABLE) from None
        except http.client.InvalidURL as e:
            raise ConfigError(f"--url: {e}") from None
        except http.client.HTTPException as e:  # e.g. HTTP/2 frames: the gRPC port
            raise StatusError(f"{self.url}: the answer is not HTTP/1.1 ({type(e).__name__}): not Granary's HTTP port"
                              " (by default the gRPC port + 1)", EXIT_NOT_GRANARY) from None
        except (TimeoutError, ConnectionError, OSError) as e:
            what = "no answer within " + f"{self.timeout:g}s" if isinstance(e, TimeoutError) else (e.strerror or e)
            raise StatusError(f"cannot reach {self.url}: {what}", EXIT_UNREACHABLE) from None
        text = body.decode("utf-8", errors="replace")
        if not _GRANARY_SAMPLE.search(text):
            raise StatusError(f"{self.url}: the answer has no granary_ metrics: not a Granary server's /metrics",
                              EXIT_NOT_GRANARY)
        return text

    def snapshot(self) -> Snapshot:
        from granary.observability.overview import parse

        text = self.text()
        at = time.monotonic()
        try:
            return parse(text, at)
        except ValueError as e:
            raise StatusError(f"{self.url}: not Prometheus text ({e})", EXIT_NOT_GRANARY) from None


# ---- what to show -------------------------------------------------------------------------------


def _ratio(r: float | None) -> str:
    return "-" if r is None else f"{r * 100:.1f}%"


@dataclass
class View:
    """The rows both displays show: (label, value) pairs and the busiest methods."""

    rows: list[tuple[str, str]]
    methods: list[tuple[str, str, str]]  # method, calls/s, total
    window: float | None  # seconds the rates are over

    @classmethod
    def of(cls, now: Snapshot, before: Snapshot | None, top: int) -> View:
        from granary.observability.overview import overview

        o = overview(now, before)
        rates = o["rates"]

        def per_s(key: str, fmt=lambda v: f"{v:.1f}") -> str:
            return "-/s" if rates is None else f"{fmt(rates[key])}/s"

        def total(v: float) -> str:
            return f"{v:.0f}"

        hit_ratio = (f"{_ratio(rates and rates['hit_ratio'])} recent, {_ratio(o['hit_ratio'])} total"
                     f" ({total(o['hits'])} hits, {total(o['misses'])} misses)")
        queue = (f"{total(o['queued'])} queued, {total(o['executing'])} executing,"
                 f" {per_s('completed')} done (total {total(o['completed'])})")
        workers = (f"{total(o['workers'])} connected, {total(o['workers_busy'])} busy;"
                   f" slots {total(o['slots_busy'])}/{total(o['slots'])} busy")
        rows = [
            ("requests", f"{per_s('requests')}  total {total(o['requests'])}"),
            ("errors", f"{per_s('errors')}  total {total(o['errors'])}"),
            ("AC hit ratio", hit_ratio),
            ("bytes in", f"{per_s('bytes_in', human_bytes)}  total {human_bytes(o['bytes_in'])}"),
            ("bytes out", f"{per_s('bytes_out', human_bytes)}  total {human_bytes(o['bytes_out'])}"),
            ("stored", f"{total(o['stored_blobs'])} blobs, {human_bytes(o['stored_bytes'])}"),
            ("queue", queue),
            ("workers", workers),
            ("uploads", f"{total(o['uploads'])} in progress"),
        ]
        seconds = rates["seconds"] if rates else None
        busiest = []
        for method, calls in now.by_method.items():
            earlier = before.by_method.get(method, 0.0) if before is not None else 0.0
            rate = (calls - earlier if calls >= earlier else calls) / seconds if seconds else None
            busiest.append((rate or 0.0, calls, method, rate))
        busiest.sort(key=lambda b: (b[0], b[1], b[2]), reverse=True)
        methods = [(m, "-" if r is None else f"{r:.1f}/s", total(c)) for _, c, m, r in busiest[:max(0, top)]]
        return cls(rows, methods, seconds)


def plain(view: View, url: str) -> str:
    """The --once text: one `label  value` line each, stable enough for grep and scripts."""
    window = f"rates over {view.window:.1f} s" if view.window else "one scrape, no rates"
    lines = [f"granary status: {url}, {window}"]
    lines += [f"{label + ':':<14}{value}" for label, value in view.rows]
    lines.append("busiest methods:" if view.methods else "busiest methods: none yet")
    width = max((len(m) for m, _, _ in view.methods), default=0)
    lines += [f"  {m:<{width}}  {rate:>9}  total {calls}" for m, rate, calls in view.methods]
    return "\n".join(lines)


def live_view(view: View | None, url: str, interval: float, error: str | None) -> Any:
    """The rich renderable of the live display: the overview, the busiest methods, and the last error."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    header = Text.assemble(("granary status ", "bold"), (url, "cyan"),
                           f"  {datetime.now():%H:%M:%S}, every {interval:g} s; Ctrl-C quits")
    parts: list[Any] = [header]
    if view is not None:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        for label, value in view.rows:
            grid.add_row(label, value)
        parts.append(grid)
        if view.methods:
            methods = Table(box=None, padding=(0, 2), show_edge=False, header_style="bold")
            methods.add_column("busiest methods")
            methods.add_column("calls/s", justify="right")
            methods.add_column("total", justify="right")
            for row in view.methods:
                methods.add_row(*row)
            parts.append(methods)
    if error is not None:
        parts.append(Text(error, style="bold red"))
    return Group(*parts)


# ---- the command ---------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    if args.interval < 0 or (args.interval == 0 and not args.once and sys.stdout.isatty()):
        raise ConfigError(f"--interval: expected seconds above 0, got {args.interval:g}")
    if args.timeout <= 0:
        raise ConfigError(f"--timeout: expected seconds above 0, got {args.timeout:g}")
    url = metrics_url(args.url, args.config)
    scraper = Scraper(url, credential_header(args.user, args.token_file), args.ca, args.timeout)
    try:
        if args.once or not sys.stdout.isatty():
            return _once(scraper, args.interval, args.top)
        return _live(scraper, args.interval, args.top)
    except StatusError as e:
        print(f"granary status: {e.message}", file=sys.stderr)
        return e.code


def _once(scraper: Scraper, interval: float, top: int) -> int:
    before = None
    now = scraper.snapshot()
    if interval > 0:
        time.sleep(interval)
        before, now = now, scraper.snapshot()
    print(plain(View.of(now, before, top), scraper.url), flush=True)
    return 0


def _live(scraper: Scraper, interval: float, top: int) -> int:
    """Redraw every `interval` until Ctrl-C. The first scrape must work (a wrong URL or missing
    credentials is an error, as with --once); later failures show in red while it keeps trying."""
    from rich.console import Console
    from rich.live import Live

    now = scraper.snapshot()
    before: Snapshot | None = None
    error: str | None = None
    console = Console()
    try:
        with Live(live_view(View.of(now, None, top), scraper.url, interval, None), console=console,
                  auto_refresh=False, redirect_stderr=False) as live:
            while True:
                time.sleep(interval)
                try:
                    before, now, error = now, scraper.snapshot(), None
                except StatusError as e:
                    error = e.message
                live.update(live_view(View.of(now, before, top), scraper.url, interval, error), refresh=True)
    except KeyboardInterrupt:
        return 0
