"""QueryEvents' stream_id_regex, bounded.

Python's `re` backtracks, so a hostile pattern can take exponential time on a short name
and there is no way to stop it inside a process. So: the pattern is length-limited and
refused if it uses what RE2 does not have either (backreferences, lookaround); a pattern
that is plain text (optionally anchored) becomes an SQL LIKE and never runs as a regex;
any other is matched against at most `max_regex_streams` stream names in a separate
`python3 -I -c` process that is killed after `regex_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from typing import Any

from granary._proto.google.devtools.build.v1 import build_events_pb2
from granary._proto.granary.builds.v1 import builds_pb2
from granary.bes import decode
from granary.bes.store import decode_token, encode_token
from granary.errors import InvalidArgument, NotFound

try:  # the parser behind re.compile (Python 3.11+: re._parser)
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_parse  # type: ignore[no-redef]

UNSUPPORTED = {"GROUPREF": "backreferences", "GROUPREF_EXISTS": "conditional groups",
               "ASSERT": "lookahead/lookbehind", "ASSERT_NOT": "negative lookahead/lookbehind"}
MATCHER = (
    "import json, re, sys\n"
    "d = json.load(sys.stdin)\n"
    "r = re.compile(d['p'])\n"
    "json.dump([i for i, s in enumerate(d['n']) if r.search(s)], sys.stdout)\n"
)


def _walk(parsed: Any) -> list[tuple[str, Any]]:
    out = []
    for op, arg in parsed:
        out.append((str(op), arg))
        args = arg if isinstance(arg, (list, tuple)) else [arg]
        for a in args:
            if isinstance(a, sre_parse.SubPattern):
                out += _walk(a)
            elif isinstance(a, (list, tuple)):
                for b in a:
                    if isinstance(b, sre_parse.SubPattern):
                        out += _walk(b)
    return out


def check(pattern: str, max_length: int) -> Any:
    """Parse the pattern (InvalidArgument when too long, invalid or not RE2-like) -> its parse."""
    if len(pattern) > max_length:
        raise InvalidArgument(f"stream_id_regex is {len(pattern)} characters, more than build_events.max_regex_length"
                              f" ({max_length})")
    try:
        parsed = sre_parse.parse(pattern)
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        raise InvalidArgument(f"stream_id_regex {pattern!r} is not a valid regular expression: {e}") from None
    for op, _ in _walk(parsed):
        if op in UNSUPPORTED:
            raise InvalidArgument(f"stream_id_regex: {UNSUPPORTED[op]} are not supported (RE2 syntax)")
    return parsed


class Literal:
    """A regex that is plain text, optionally anchored: an SQL LIKE narrows the rows (SQLite's
    LIKE ignores ASCII case), `matches` decides exactly."""

    def __init__(self, text: str, begin: bool, end: bool):
        self.text, self.begin, self.end = text, begin, end
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        self.like = ("" if begin else "%") + escaped + ("" if end else "%")

    def matches(self, name: str) -> bool:
        if self.begin and self.end:
            return name == self.text
        if self.begin:
            return name.startswith(self.text)
        if self.end:
            return name.endswith(self.text)
        return self.text in name


def as_literal(parsed: Any) -> Literal | None:
    """The plain text of a regex without metacharacters (but ^ and $ anchors), else None."""
    items = list(parsed)
    begin = bool(items) and str(items[0][0]) == "AT" and str(items[0][1]) == "AT_BEGINNING"
    end = bool(items) and str(items[-1][0]) == "AT" and str(items[-1][1]) in ("AT_END", "AT_END_STRING")
    body = items[1 if begin else 0: len(items) - 1 if end and len(items) > int(begin) else len(items)]
    if any(str(op) != "LITERAL" for op, _ in body):
        return None
    return Literal("".join(chr(c) for _, c in body), begin, end)


async def matching(pattern: str, names: list[str], timeout: float) -> list[int]:
    """Indexes of the names the pattern finds a match in, computed in a child process that
    gets `timeout` seconds."""
    if not names:
        return []
    data = json.dumps({"p": pattern, "n": names}).encode()
    try:  # subprocess.run, not the event loop's spawn: CPython uses vfork, which gRPC's fork handlers ignore
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-I", "-S", "-c", MATCHER], input=data, capture_output=True,
            timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise InvalidArgument(
            f"stream_id_regex {pattern[:80]!r} took longer than build_events.regex_timeout ({timeout:g}s) to"
            " match; simplify it (nested repetition such as (a+)+ backtracks)") from None
    if done.returncode != 0:
        raise InvalidArgument(f"stream_id_regex {pattern[:80]!r} could not be matched")
    out = done.stdout
    return json.loads(out)


class Queries:
    """QueryEvents, ListInvocations and GetInvocation over one store."""

    def __init__(self, store: Any, *, max_page_size: int = 1000, default_page_size: int = 100,
                 max_regex_length: int = 256, regex_timeout: float = 2.0, max_regex_streams: int = 100_000,
                 max_events_per_stream: int = 1_000_000):
        self.store = store
        self.max_page_size = max_page_size
        self.default_page_size = min(default_page_size, max_page_size)
        self.max_regex_length = max_regex_length
        self.regex_timeout = regex_timeout
        self.max_regex_streams = max_regex_streams
        self.max_events_per_stream = max_events_per_stream

    def page_size(self, asked: int) -> int:
        if asked < 0:
            raise InvalidArgument(f"page_size must not be negative, got {asked}")
        return min(asked or self.default_page_size, self.max_page_size)

    async def query_events(self, request: builds_pb2.QueryEventsRequest) -> builds_pb2.QueryEventsResponse:
        size = self.page_size(request.page_size)
        after_name, after_seq = decode_token(request.page_token, (str, int)) if request.page_token else ("", 0)
        pattern = request.stream_id_regex
        parsed = check(pattern, self.max_regex_length)
        literal = as_literal(parsed)
        candidates = await self.store.run(self.store.stream_names, literal.like if literal else None,
                                          self.max_regex_streams)
        if literal is not None:
            chosen = [c for c in candidates if literal.matches(c[0])]
        else:
            chosen = [candidates[i] for i in await matching(pattern, [n for n, _ in candidates], self.regex_timeout)]
        chosen.sort(key=lambda c: (c[0], c[1]))
        out = builds_pb2.QueryEventsResponse()
        for name, key in chosen:
            if name < after_name:
                continue
            after = after_seq if name == after_name else 0
            rows = await self.store.run(self.store.events_of, key, after, size - len(out.events) + 1)
            for seq, payload, received, project_id, keywords in rows:
                if len(out.events) == size:
                    out.next_page_token = encode_token([name, after])
                    return out
                stored = out.events.add(stream_name=name, project_id=project_id,
                                        notification_keywords=json.loads(keywords))
                stored.event.stream_id.build_id, stored.event.stream_id.component = key[0], key[1]
                stored.event.stream_id.invocation_id = key[2]
                stored.event.sequence_number = seq
                stored.event.event.ParseFromString(payload)
                stored.received_time.FromMilliseconds(round(received * 1000))
                after = seq
            if len(out.events) == size:
                # the page is full: a next page exists only if this or a later stream has more
                out.next_page_token = encode_token([name, after])
                return out
        return out

    async def list_invocations(self, request: builds_pb2.ListInvocationsRequest) -> builds_pb2.ListInvocationsResponse:
        size = self.page_size(request.page_size)
        after = tuple(decode_token(request.page_token, (float, str))) if request.page_token else None
        rows = await self.store.run(self.store.list_invocations, size + 1, after, request.build_id)
        out = builds_pb2.ListInvocationsResponse(invocations=[decode.summary_message(r) for r in rows[:size]])
        if len(rows) > size:
            last = rows[size - 1]
            out.next_page_token = encode_token([last["created_time"], last["invocation_id"]])
        return out

    async def summaries(self, invocation_ids: list[str]) -> dict[str, builds_pb2.InvocationSummary]:
        """The summaries of those of these invocations that are stored, by id (what ListInvocations
        would show of each): how the dashboard links operations back to their build."""
        rows = await self.store.run(self.store.summaries, sorted(set(invocation_ids)))
        return {r["invocation_id"]: decode.summary_message(r) for r in rows}

    async def get_invocation(self, request: builds_pb2.GetInvocationRequest) -> builds_pb2.InvocationDetail:
        if not request.invocation_id:
            raise InvalidArgument("invocation_id is required")
        row, payloads, truncated = await self.store.run(
            self.store.invocation, request.invocation_id, self.max_events_per_stream)
        if row is None:
            raise NotFound(f"no invocation {request.invocation_id!r} is stored (unknown, or older than the retention)")
        bazel = []
        for payload in payloads:
            event = build_events_pb2.BuildEvent()
            event.ParseFromString(payload)
            b = decode.bazel_event(event)
            if b is not None:
                bazel.append(b)
        targets, tests, failures = decode.detail(bazel)
        return builds_pb2.InvocationDetail(summary=decode.summary_message(row), targets=targets, tests=tests,
                                           failures=failures, truncated=truncated)
