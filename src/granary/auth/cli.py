"""`granary token`, `granary login` and `granary credential-helper`.

    granary token create --name ci --scope cache-read --scope cache-write --expires 30d [--instance team/]
    granary token list
    granary token revoke NAME|ID
    granary login --server grpcs://cache.example.com:8980 [--token-file FILE]   (else the token is read from stdin)
    granary credential-helper get    (Bazel: --credential_helper=cache.example.com=granary-credential-helper...)

The token database is `--database`, else `auth.tokens.database` of `--config`, else
tokens.sqlite in the data directory. `login` keeps tokens in
$XDG_CONFIG_HOME/granary/credentials.json (mode 0600); the credential helper answers Bazel's
credential-helper protocol with the token stored for the server of the requested URI.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from granary.auth.permissions import Permission
from granary.errors import ConfigError

COMMANDS = ("token", "login", "credential-helper")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_PORTS = {"grpcs": 443, "https": 443, "grpc": 80, "http": 80}


def parse_expiry(value: str) -> float | None:
    """'30d', '12h', '90m', '3600s', '2w' -> seconds; 'never' -> None."""
    if value == "never":
        return None
    m = _DURATION.match(value.strip())
    if not m:
        raise ConfigError(f"--expires: expected a duration like 30d, 12h, 90m or 'never', got {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def add_parser(sub) -> None:
    token = sub.add_parser("token", help="create, list and revoke personal access tokens")
    tsub = token.add_subparsers(dest="token_command", required=True)
    for name, help_ in [
        ("create", "create a token and print it (once)"),
        ("list", "list tokens (never their secrets)"),
        ("revoke", "revoke a token by id, or every token of a name"),
    ]:
        p = tsub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, help="YAML configuration file (for auth.tokens.database)")
        p.add_argument("--data-dir", type=Path, help="where a relative SQLite database lives")
        p.add_argument("--database", help="SQLAlchemy URL of the token database (overrides the config)")
        if name == "create":
            p.add_argument("--name", required=True, help="identity the token authenticates as")
            p.add_argument(
                "--scope", action="append", required=True, choices=[x.value for x in Permission],
                help="permission the token may use (repeat); the identity's rules still apply",
            )
            p.add_argument("--expires", default="90d", help="lifetime such as 30d, 12h or 'never' (default 90d)")
            p.add_argument("--instance", help="only instance names under this prefix")
        if name == "revoke":
            p.add_argument("target", metavar="NAME|ID", help="token id, or a name (revokes all its tokens)")

    login = sub.add_parser("login", help="store an access token for a server (for the credential helper)")
    login.add_argument("--server", required=True, help="server URL, e.g. grpcs://cache.example.com:8980")
    login.add_argument("--token-file", type=Path, help="file holding the token (default: read from stdin)")

    helper = sub.add_parser("credential-helper", help="Bazel credential helper (reads a JSON request on stdin)")
    helper.add_argument("action", nargs="?", default="get", help="only 'get' is defined by the protocol")


def run(args: argparse.Namespace) -> int:
    if args.command == "token":
        return _token(args)
    if args.command == "login":
        return _login(args)
    if args.command == "credential-helper":
        return _credential_helper(args)
    raise ValueError(f"not an auth command: {args.command}")


# ---- tokens -------------------------------------------------------------------------------


def _data_dir(args: argparse.Namespace, raw: dict[str, Any]) -> Path:
    if args.data_dir is not None:
        return args.data_dir.expanduser()
    server = raw.get("server") or {}
    if isinstance(server, dict) and server.get("data_dir"):
        return Path(os.path.expanduser(str(server["data_dir"])))
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "granary"


def _database(args: argparse.Namespace) -> tuple[str, Path]:
    import yaml

    raw: dict[str, Any] = {}
    if args.config is not None:
        try:
            raw = yaml.safe_load(args.config.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"--config: cannot read {args.config}: {e}") from None
    from granary.auth.settings import DEFAULT_TOKEN_DATABASE, TokenSettings

    url = args.database
    if url is None:
        tokens = (raw.get("auth") or {}).get("tokens") if isinstance(raw.get("auth"), dict) else None
        url = TokenSettings.model_validate(tokens).database if isinstance(tokens, dict) else DEFAULT_TOKEN_DATABASE
    return url, _data_dir(args, raw)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t is not None else "-"


def _token(args: argparse.Namespace) -> int:
    from granary.auth.tokens import TokenStore
    from granary.sql import resolve_url

    url, data_dir = _database(args)
    store = TokenStore(resolve_url(url, data_dir))
    store.create_schema()
    try:
        if args.token_command == "create":
            expires = parse_expiry(args.expires)
            info, secret = store.create(args.name, args.scope, expires, args.instance)
            print(secret)
            print(
                f"token {info.id} for {info.name!r}, scopes {', '.join(sorted(info.scopes))},"
                f" expires {_when(info.expires)} UTC; it is shown only this once",
                file=sys.stderr,
            )
            return 0
        if args.token_command == "list":
            rows = [("ID", "NAME", "SCOPES", "INSTANCE", "CREATED", "EXPIRES", "REVOKED")]
            for t in store.list():
                rows.append((t.id, t.name, ",".join(sorted(t.scopes)), t.instance_prefix or "*",
                             _when(t.created), _when(t.expires), _when(t.revoked)))
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for r in rows:
                print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            return 0
        n = store.revoke(args.target)
        if not n:
            print(f"granary: no unrevoked token with id or name {args.target!r}", file=sys.stderr)
            return 1
        print(f"revoked {n} token{'s' if n > 1 else ''}")
        return 0
    finally:
        store.close()


# ---- login and the credential helper ----------------------------------------------------------


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "granary" / "credentials.json"


def _read_credentials(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"servers": []}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("servers"), list):
        raise ConfigError(f"{path}: not a Granary credentials file")
    return data


def _endpoint(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return host, port if port is not None else DEFAULT_PORTS.get(parts.scheme.lower())


def _login(args: argparse.Namespace) -> int:
    host, _ = _endpoint(args.server)
    if not host:
        raise ConfigError(f"--server: expected a URL such as grpcs://cache.example.com:8980, got {args.server!r}")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"--token-file: cannot read {args.token_file}: {e.strerror}") from None
    elif sys.stdin.isatty():
        token = getpass.getpass("access token: ").strip()
    else:
        token = sys.stdin.readline().strip()
    if not token or any(c.isspace() for c in token):
        raise ConfigError("login: expected one access token (gnr_...), got nothing usable")
    path = credentials_path()
    data = _read_credentials(path)
    data["servers"] = [s for s in data["servers"] if s.get("server") != args.server]
    data["servers"].append({"server": args.server, "token": token})
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    print(f"granary: token for {args.server} stored in {path}", file=sys.stderr)
    return 0


def token_for(uri: str, servers: list[dict[str, Any]]) -> str | None:
    """The stored token whose server has the URI's host and port (an exact port match first)."""
    host, port = _endpoint(uri)
    loose = None
    for entry in servers:
        s_host, s_port = _endpoint(str(entry.get("server", "")))
        if s_host != host or not isinstance(entry.get("token"), str):
            continue
        if s_port == port:
            return entry["token"]
        if loose is None and (s_port is None or port is None):
            loose = entry["token"]
    return loose


def _credential_helper(args: argparse.Namespace) -> int:
    if args.action != "get":
        print(f"granary credential-helper: unknown action {args.action!r} (only 'get')", file=sys.stderr)
        return 2
    try:
        request = json.loads(sys.stdin.read() or "null")
    except ValueError as e:
        print(f"granary credential-helper: request is not JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(request, dict) or not isinstance(request.get("uri"), str):
        print('granary credential-helper: expected {"uri": "..."} on stdin', file=sys.stderr)
        return 2
    token = token_for(request["uri"], _read_credentials(credentials_path())["servers"])
    headers = {"Authorization": [f"Bearer {token}"]} if token else {}
    json.dump({"headers": headers}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def credential_helper_main(argv: list[str] | None = None) -> int:
    """The `granary-credential-helper` console script: Bazel runs `granary-credential-helper get`
    (--credential_helper=cache.example.com=granary-credential-helper)."""
    return main(["credential-helper", *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> int:
    """These commands alone (`python -m granary.auth.cli ...`); `granary` registers them too."""
    parser = argparse.ArgumentParser(prog="granary")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ConfigError as e:
        print(f"granary: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
