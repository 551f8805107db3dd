"""Progress output of long command-line work (`granary cleanup`, `--reindex`): a walk of millions of
blobs takes minutes, and an operator should see that it moves and how far it is.

On a terminal (stderr is a TTY) a rich progress bar per stage; otherwise (cron, CI, a pipe) a plain line
on stderr now and then, so a log shows progress without a line per batch; nothing with --quiet. stdout
keeps only the results, whatever the display. The loops report through a callback every thousand or so
items (granary.cas.indexed.PROGRESS_EVERY), so what is displayed costs nothing measurable.

Importing this module is cheap; rich loads only when a bar is shown.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

PLAIN_EVERY = 5.0  # seconds between two plain lines of one stage


def human_bytes(n: float) -> str:
    """1023 B, 1.5 KiB, 2.0 GiB: binary units, as sizes are written in the configuration."""
    if n < 1024:
        return f"{n:.0f} B"
    unit = "B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024:
            break
    return f"{n:.1f} {unit}"


# what each stage counts, and how its amount reads
STAGES = {
    "reindex": ("indexing blobs the store holds", "blobs"),
    "scan": ("reading action cache entries", "entries"),
    "delete": ("deleting least recently used blobs", "bytes"),
    "verify": ("checking blobs against their digests", "bytes"),
}


def amount(stage: str, done: int, total: int | None) -> str:
    unit = STAGES.get(stage, (stage, ""))[1]
    if unit == "bytes":
        text = human_bytes(done) if total is None else f"{human_bytes(done)} of {human_bytes(total)}"
    else:
        text = f"{done} {unit}" if total is None else f"{done} of {total} {unit}"
    if total:
        text += f" ({min(100.0, done * 100 / total):.0f}%)"
    return text


class Display:
    """Where stage progress goes. `callback(where)` is handed to the loops; `done()` closes the last
    stage of every store (its final count shown) once the work is over."""

    def callback(self, where: str):
        def report(stage: str, done: int, total: int | None = None) -> None:
            self.update(where, stage, done, total)

        return report

    def update(self, where: str, stage: str, done: int, total: int | None) -> None:
        pass

    def done(self) -> None:
        pass


class PlainDisplay(Display):
    """`granary cleanup: WHERE: STAGE: AMOUNT` on stderr every PLAIN_EVERY seconds while a stage runs,
    and once (`, done`) when it ends: a quick stage is one line, a long one a line now and then."""

    def __init__(self, out: TextIO | None = None, every: float = PLAIN_EVERY, command: str = "granary cleanup"):
        self.out = out or sys.stderr
        self.command = command
        self.every = every
        self.current: dict[str, tuple[str, int, int | None]] = {}  # where -> stage, done, total
        self.last: dict[str, float] = {}  # where -> when its stage started or its last line was shown

    def _line(self, where: str, stage: str, done: int, total: int | None, end: str = "") -> None:
        label = STAGES.get(stage, (stage, ""))[0]
        print(f"{self.command}: {where}: {label}: {amount(stage, done, total)}{end}", file=self.out, flush=True)

    def update(self, where: str, stage: str, done: int, total: int | None) -> None:
        previous = self.current.get(where)
        if previous is not None and previous[0] != stage:
            self._finish(where)
            previous = None
        now = time.monotonic()
        if previous is None:
            self.last[where] = now
        elif now - self.last[where] >= self.every:
            self._line(where, stage, done, total)
            self.last[where] = now
        self.current[where] = (stage, done, total)

    def _finish(self, where: str) -> None:
        stage, done, total = self.current.pop(where)
        self._line(where, stage, done, total, ", done")

    def done(self) -> None:
        for where in list(self.current):
            self._finish(where)


class BarDisplay(Display):
    """A rich progress bar per store and stage on stderr: a growing bar when the total is known (bytes
    to delete), a pulsing one with the count and rate when it is not (blobs the store holds). `done()`
    takes the bars off the live display (they stay on screen), so the result lines the command then
    prints on stdout do not fight with redraws."""

    def __init__(self, console: Any = None) -> None:
        self.console = console
        self.progress: Any = None
        self.tasks: dict[str, tuple[str, Any]] = {}  # where -> stage, task id

    def _start(self) -> Any:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(finished_text="[green]done"),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[amount]}"),
            TimeElapsedColumn(),
            console=self.console or Console(stderr=True),
            refresh_per_second=5,
            redirect_stdout=False,  # stdout has the results, wherever it goes
            redirect_stderr=False,
        )
        self.progress.start()
        return self.progress

    def update(self, where: str, stage: str, done: int, total: int | None) -> None:
        progress = self.progress or self._start()
        current = self.tasks.get(where)
        if current is not None and current[0] != stage:
            self._finish(where)
            current = None
        if current is None:
            label = f"{where}: {STAGES.get(stage, (stage, ''))[0]}"
            current = (stage, progress.add_task(label, total=total, amount=""))
            self.tasks[where] = current
        progress.update(current[1], completed=done, total=total, amount=amount(stage, done, total))

    def _finish(self, where: str) -> None:
        _stage, task = self.tasks.pop(where)
        t = next(t for t in self.progress.tasks if t.id == task)
        if t.total is None:  # a count: full once it is over (a byte budget stays as far as it got)
            self.progress.update(task, total=t.completed)
        self.progress.stop_task(task)

    def done(self) -> None:
        for where in list(self.tasks):
            self._finish(where)
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def display(quiet: bool, stream: TextIO | None = None, command: str = "granary cleanup") -> Display:
    """The display for this run: none with --quiet, a bar on a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    if quiet:
        return Display()
    if stream.isatty():
        return BarDisplay()
    return PlainDisplay(stream, command=command)
