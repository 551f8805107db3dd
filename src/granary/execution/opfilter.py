"""The ListOperations filter language (as BuildGrid documents it).

    filter   := term ('&' term)*
    term     := FIELD OP VALUE | 'sort_order' '=' KEY (',' KEY)*
    KEY      := FIELD ['(asc)' | '(desc)']
    OP       := '=' | '!=' | '>' | '>=' | '<' | '<='

Fields: name, stage, queued_time, start_time, completed_time, tool_name,
tool_version, invocation_id, correlated_invocations_id, identity (who called
Execute; `identity = alice`). Stages are named
(QUEUED, EXECUTING, COMPLETED, ... any case) or numbered; times are ISO 8601
(UTC unless an offset is given). Several sort_order terms add sort keys in
order. The default is `stage != COMPLETED & sort_order = queued_time`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from granary.errors import InvalidArgument
from granary.execution.operations import STAGE_NAMES

DEFAULT_FILTER = "stage != COMPLETED & sort_order = queued_time"
FIELDS = (
    "name", "stage", "queued_time", "start_time", "completed_time",
    "tool_name", "tool_version", "invocation_id", "correlated_invocations_id", "identity",
)
TIME_FIELDS = {"queued_time", "start_time", "completed_time"}
OPERATORS = ("!=", ">=", "<=", "=", ">", "<")
_TERM = re.compile(r"^\s*([A-Za-z_]+)\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*$", re.DOTALL)
_SORT_KEY = re.compile(r"^\s*([A-Za-z_]+)\s*(?:\(\s*(asc|desc)\s*\))?\s*$", re.IGNORECASE)


@dataclass
class Condition:
    field: str
    op: str
    value: str | int | float


@dataclass
class Query:
    conditions: list[Condition] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)


def parse(text: str) -> Query:
    text = text.strip() or DEFAULT_FILTER
    q = Query()
    for raw in text.split("&"):
        if not raw.strip():
            raise InvalidArgument(f"filter {text!r}: empty term (check the '&' separators)")
        m = _TERM.match(raw)
        if not m:
            raise InvalidArgument(
                f"filter term {raw.strip()!r}: expected FIELD OPERATOR VALUE"
                f" with an operator among {' '.join(OPERATORS)}"
            )
        name, op, value = m.group(1).lower(), m.group(2), _unquote(m.group(3))
        if name == "sort_order":
            if op != "=":
                raise InvalidArgument(f"filter term {raw.strip()!r}: sort_order takes '=', not {op!r}")
            q.sort.extend(_sort_keys(value))
            continue
        if name not in FIELDS:
            raise InvalidArgument(f"filter term {raw.strip()!r}: unknown field {name!r} (fields: {', '.join(FIELDS)})")
        if value == "":
            raise InvalidArgument(f"filter term {raw.strip()!r}: missing value")
        q.conditions.append(Condition(name, op, _value(name, value)))
    return q


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _sort_keys(value: str) -> list[tuple[str, bool]]:
    keys = []
    for part in value.split(","):
        m = _SORT_KEY.match(part)
        if not m or m.group(1).lower() not in FIELDS:
            raise InvalidArgument(
                f"sort_order key {part.strip()!r}: expected a field ({', '.join(FIELDS)})"
                " optionally followed by (asc) or (desc)"
            )
        keys.append((m.group(1).lower(), (m.group(2) or "asc").lower() == "desc"))
    return keys


def _value(name: str, value: str) -> str | int | float:
    if name == "stage":
        if value.isascii() and value.isdigit():  # str.isdigit() alone admits '²', which int() refuses
            return int(value)
        stage = STAGE_NAMES.get(value.upper())
        if stage is None:
            raise InvalidArgument(
                f"filter: unknown stage {value!r} (stages: {', '.join(STAGE_NAMES)})"
            )
        return stage
    if name in TIME_FIELDS:
        try:
            t = datetime.fromisoformat(value.replace(" ", "T", 1) if " " in value else value)
        except ValueError:
            raise InvalidArgument(
                f"filter: {name} value {value!r} is not an ISO 8601 time such as 2024-05-01T12:00:00Z"
            ) from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return t.timestamp()
    return value
