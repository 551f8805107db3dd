"""IdleTrim gives memory back once per burst of calls, and arms nothing while the server is idle."""

from __future__ import annotations

from granary.heap import IdleTrim, malloc_trim


class FakeLoop:
    """call_later that runs only when the test says the time has come."""

    def __init__(self) -> None:
        self.pending: list[Timer] = []

    def call_later(self, _delay: float, callback) -> Timer:
        timer = Timer(callback)
        self.pending.append(timer)
        return timer

    def fire(self) -> None:
        due, self.pending = self.pending, []
        for timer in due:
            if not timer.cancelled:
                timer.callback()


class Timer:
    def __init__(self, callback) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_one_trim_after_each_burst_and_none_while_idle() -> None:
    loop, trims = FakeLoop(), []
    idle = IdleTrim(loop, trim=lambda: trims.append(1))  # type: ignore[arg-type]
    loop.fire()
    assert trims == [] and loop.pending == []  # idle from the start: nothing armed
    for _ in range(100):
        idle.activity()
    assert len(loop.pending) == 1  # a burst arms one timer, whatever its size
    for _ in range(5):  # calls keep coming between the timer's firings: no trim yet
        idle.activity()
        loop.fire()
        assert trims == []
    loop.fire()  # a quiet period: the burst is over
    assert trims == [1]
    assert loop.pending == []  # and nothing is armed while idle
    loop.fire()
    assert trims == [1]
    idle.activity()
    loop.fire()
    loop.fire()
    assert trims == [1, 1]


def test_close_disarms() -> None:
    loop, trims = FakeLoop(), []
    idle = IdleTrim(loop, trim=lambda: trims.append(1))  # type: ignore[arg-type]
    idle.activity()
    idle.close()
    loop.fire()
    loop.fire()
    assert trims == []


def test_malloc_trim_runs() -> None:
    malloc_trim()  # (tune_malloc is not called here: it would retune the test runner's own heap)
