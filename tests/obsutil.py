"""Helpers for the observability tests: the HTTP port of a running `granary serve`, and its metrics."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families
from serverutil import GranaryProcess

METRICS_URL_RE = re.compile(r"metrics on (https?://[0-9.]+:\d+)/metrics")


def http_url(server: GranaryProcess, timeout: float = 30) -> str:
    """The http://HOST:PORT that `granary serve` announced."""
    deadline = time.monotonic() + timeout
    while True:
        m = METRICS_URL_RE.search(server.log.read_text(errors="replace"))
        if m:
            return m.group(1)
        assert time.monotonic() < deadline, f"no metrics URL announced:\n{server.log.read_text()}"
        time.sleep(0.05)


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of a GET; error statuses are returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


class Metrics:
    """One scrape, parsed: samples by name and labels."""

    def __init__(self, text: str):
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples.append((s.name, dict(s.labels), s.value))

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels`."""
        return sum(v for n, ls, v in self.samples if n == name and all(ls.get(k) == w for k, w in labels.items()))

    def label_values(self, name: str, label: str) -> set[str]:
        return {ls[label] for n, ls, _ in self.samples if n == name and label in ls}

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}


def scrape(base: str, headers: dict[str, str] | None = None) -> Metrics:
    status, body, _ = get(f"{base}/metrics", headers)
    assert status == 200, (status, body)
    return Metrics(body)


def scrape_until(base: str, ready, headers: dict[str, str] | None = None, timeout: float = 30) -> Metrics:
    """Scrape until `ready(metrics)` holds: each server process writes its counts out every second,
    so a scrape answered by one process may miss another's last second."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(base, headers)
        if ready(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.2)


def settled(base: str, names: tuple[str, ...], timeout: float = 60) -> Metrics:
    """A scrape once the totals of `names` stopped moving: equal in two scrapes more than a flush
    interval (1 s) apart, so every server process has written its counts out."""
    deadline = time.monotonic() + timeout
    last = scrape(base)
    while True:
        time.sleep(1.5)
        m = scrape(base)
        if all(m.total(n) == last.total(n) for n in names) or time.monotonic() > deadline:
            return m
        last = m


def pids_in(lines: Iterable[str], marker: str) -> set[str]:
    """The process ids of text log lines (`TIME PID LOGGER LEVEL MESSAGE`) that contain marker."""
    out = set()
    for line in lines:
        if marker in line:
            parts = line.split()
            if len(parts) > 3:
                out.add(parts[2])
    return out
