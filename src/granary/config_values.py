"""Value types of the configuration: sizes, durations, addresses, URLs.

Each is an `Annotated` type for the pydantic models in `config_models`: it
parses what an operator writes (`10GiB`, `30s`, `127.0.0.1:8980`), writes it
back the same way (`granary config show`), and describes itself in the JSON
Schema. A bad value raises `problem(...)`, a pydantic error whose message is
the one line start-up prints after the key path.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

from granary.errors import ConfigError
from granary.sizes import bytes_in, not_a_size

PROBLEM = "granary_config"


def problem(detail: str, key: str | None = None, path: str | None = None) -> PydanticCustomError:
    """A validation error whose message is `detail`; `key` extends the location, `path` replaces it."""
    ctx: dict[str, Any] = {"detail": detail}
    if key is not None:
        ctx["key"] = key
    if path is not None:
        ctx["path"] = path
    return PydanticCustomError(PROBLEM, "{detail}", ctx)


# ---- sizes ----------------------------------------------------------------------------------

_SIZE_NAMES = [("TiB", 1 << 40), ("TB", 10**12), ("GiB", 1 << 30), ("GB", 10**9), ("MiB", 1 << 20),
               ("MB", 10**6), ("KiB", 1 << 10), ("KB", 1000)]


def size_value(value: Any) -> int:
    """10GiB, 500MB, 1.5GiB or a whole number of bytes."""
    n = bytes_in(value)
    if n is None:
        raise problem(not_a_size(value))
    return n


def format_size(n: int) -> int | str:
    for name, unit in _SIZE_NAMES:
        if n and n % unit == 0:
            return f"{n // unit}{name}"
    return n


_SIZE_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0},
                          {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([kKmMgGtT][iI]?)?[bB]?\s*$"}]}
Size = Annotated[int, BeforeValidator(size_value), PlainSerializer(format_size), WithJsonSchema(_SIZE_SCHEMA)]


def limited_size(low: int, high: int | None, detail: str) -> Any:
    """A size in [low, high]; `detail` says why outside is wrong."""

    def check(value: Any) -> int:
        n = size_value(value)
        if n < low or high is not None and n > high:
            raise problem(f"{detail}, got {value!r}")
        return n

    return Annotated[int, BeforeValidator(check), PlainSerializer(format_size), WithJsonSchema(_SIZE_SCHEMA)]


# ---- durations ------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_DURATION_NAMES = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]


def duration_value(value: Any) -> float:
    """30s, 10m, 1h, 50ms, 1d or a number of seconds."""
    if isinstance(value, bool):
        raise problem(f"expected a duration like 30s, 10m or 600, got {value!r}")
    if isinstance(value, (int, float)) and value >= 0:
        return float(value)
    m = _DURATION.match(value) if isinstance(value, str) else None
    if not m:
        raise problem(f"expected a duration like 30s, 10m or 600 (seconds), got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def format_duration(seconds: float) -> float | str:
    if seconds == 0:
        return "0s"
    for name, unit in _DURATION_NAMES:
        if seconds % unit == 0:
            return f"{int(seconds // unit)}{name}"
    ms = seconds * 1000
    if ms == round(ms) and duration_value(f"{round(ms)}ms") == seconds:
        return f"{round(ms)}ms"
    return seconds


def parse_duration(value: Any, where: str) -> float:
    """A duration from a command-line flag; a bad one is a ConfigError naming `where`."""
    try:
        return duration_value(value)
    except PydanticCustomError as e:
        raise ConfigError(f"{where}: {e.message()}") from None


_DURATION_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0},
                              {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"}]}
Duration = Annotated[float, BeforeValidator(duration_value), PlainSerializer(format_duration),
                     WithJsonSchema(_DURATION_SCHEMA)]


# ---- numbers, strings, URLs -----------------------------------------------------------------


def _whole(low: int) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise problem(f"expected a whole number >= {low}, got {value!r}")
        return value

    return Annotated[int, BeforeValidator(check), WithJsonSchema({"type": "integer", "minimum": low})]


Count = _whole(0)
Positive = _whole(1)


def _auto_or(low: int) -> Any:
    """`auto` (None inside) or a whole number >= low."""

    def check(value: Any) -> int | None:
        if value == "auto" or value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise problem(f"expected auto or a whole number >= {low}, got {value!r}")
        return value

    schema = {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": low}]}
    return Annotated[int | None, BeforeValidator(check), PlainSerializer(lambda v: "auto" if v is None else v),
                     WithJsonSchema(schema)]


AutoCount = _auto_or(0)
AutoPositive = _auto_or(1)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise problem(f"expected true or false, got {value!r}")
    return value


Flag = Annotated[bool, BeforeValidator(_flag), WithJsonSchema({"type": "boolean"})]


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise problem(f"expected a non-empty string, got {value!r}")
    return value


def _text_or_empty(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"expected a string, got {value!r}")
    return value


Text = Annotated[str, BeforeValidator(_text), WithJsonSchema({"type": "string", "minLength": 1})]
TextOrEmpty = Annotated[str, BeforeValidator(_text_or_empty), WithJsonSchema({"type": "string"})]


def _sql_url(value: Any) -> str:
    url = _text(value)
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", url):
        raise problem(f"expected a sqlite:///PATH or postgresql+psycopg://... URL, got {url!r}")
    return url


def _redis_url(value: Any) -> str:
    url = _text(value)
    if not re.match(r"^(redis|rediss|unix)://", url):
        raise problem(f"expected a redis://HOST:PORT/DB URL, got {url!r}")
    return url


SqlUrl = Annotated[str, BeforeValidator(_sql_url),
                   WithJsonSchema({"type": "string", "pattern": r"^(sqlite|postgresql)(\+\w+)?://"})]
RedisUrl = Annotated[str, BeforeValidator(_redis_url),
                     WithJsonSchema({"type": "string", "pattern": r"^(redis|rediss|unix)://"})]


def listen_address(value: Any) -> tuple[str, int]:
    """HOST:PORT (IPv6 hosts in brackets) as (host, port)."""
    s = _text(value)
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise problem(f"expected HOST:PORT such as 127.0.0.1:8980, got {value!r}")
    return host.strip("[]"), int(port)


def _listen(value: Any) -> str:
    listen_address(value)
    return value


Listen = Annotated[str, BeforeValidator(_listen),
                   WithJsonSchema({"type": "string", "pattern": r"^.+:\d{1,5}$", "examples": ["127.0.0.1:8980"]})]


def _auto_listen(value: Any) -> str:
    if value == "auto":
        return value
    try:
        listen_address(value)
    except PydanticCustomError:
        raise problem(f"expected auto or HOST:PORT such as 127.0.0.1:8981, got {value!r}") from None
    return value


AutoListen = Annotated[str, BeforeValidator(_auto_listen), WithJsonSchema(
    {"anyOf": [{"const": "auto"}, {"type": "string", "pattern": r"^.+:\d{1,5}$"}], "examples": ["127.0.0.1:8981"]})]


def fraction_value(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise problem(f"expected a number above 0 and at most 1, got {value!r}")
    return float(value)


Fraction = Annotated[float, BeforeValidator(fraction_value),
                     WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 1})]


def _weight(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise problem(f"expected a number above 0, got {value!r}")
    return float(value)


Weight = Annotated[float, BeforeValidator(_weight), WithJsonSchema({"type": "number", "exclusiveMinimum": 0})]


def parse_listen(value: Any, where: str) -> tuple[str, int]:
    """HOST:PORT from a command-line flag; a bad one is a ConfigError naming `where`."""
    try:
        return listen_address(value)
    except PydanticCustomError as e:
        raise ConfigError(f"{where}: {e.message()}") from None
