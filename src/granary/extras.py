"""Optional backends, and the extra that installs the library each one needs.

`pip install granary` serves disk and memory stores and runs execution on SQLite. Redis, S3 and
PostgreSQL need `granary[redis]`, `granary[s3]` and `granary[postgres]` (`granary[all]` has all
three). Nothing imports those libraries unless the configuration names their backend; when it
does and the library is missing, start-up stops with one line naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import Any

from sqlalchemy.engine import make_url

from granary.errors import ConfigError

# store or action cache type -> (module its backend imports, library, extra that installs it)
STORE_TYPE_LIBRARIES = {
    "redis": ("redis.asyncio", "redis", "redis"),
    "s3": ("aiobotocore.session", "aiobotocore", "s3"),
}
POSTGRES = ("psycopg", "psycopg", "postgres")  # the driver Granary supports, and its LISTEN/NOTIFY client


def _require(module: str, library: str, extra: str, what: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs the {library} library: pip install 'granary[{extra}]'") from None


def require_store_type(store_type: str, where: str) -> None:
    """Check that the library behind a store or action cache of `store_type` can be imported."""
    if store_type in STORE_TYPE_LIBRARIES:
        _require(*STORE_TYPE_LIBRARIES[store_type], f"{where}.type: {store_type}")


def require_database(url: str, where: str, *, notify: bool = False) -> None:
    """Check that SQLAlchemy's driver for a database URL can be imported; `notify` also asks for
    psycopg on PostgreSQL (the execution queue listens for NOTIFY with it)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return
    driver = parsed.get_driver_name()
    if driver == "psycopg" or notify:
        _require(*POSTGRES, f"{where}: postgresql")
    if driver != "psycopg":
        try:
            importlib.import_module(driver)
        except ImportError:
            raise ConfigError(
                f"{where}: postgresql+{driver} needs the {driver} library, which Granary does not install;"
                " use a postgresql+psycopg:// URL and pip install 'granary[postgres]'"
            ) from None


def require_store(store_type: str, options: dict[str, Any], where: str) -> None:
    """Everything a store or action cache spec needs: its type's library, and its database driver."""
    require_store_type(store_type, where)
    url = options.get("url")
    if store_type in ("indexed", "sql") and isinstance(url, str):
        require_database(url, f"{where}.url")
