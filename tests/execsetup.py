"""The `granary serve` config of the execution tests, whose workers the tests play themselves."""

from __future__ import annotations


def config(database: str | None = None, **execution) -> str:
    """One instance "" on a disk CAS and action cache; no local workers, any platform of
    known_platforms accepted at once, short long-polls."""
    ex = {
        "local_workers": 0, "platform_grace": 0, "bot_long_poll": 1, "poll_interval": 0.2,
        "known_platforms": "[{OSFamily: linux, ISA: x86-64}]",
    }
    ex.update(execution)
    if database:
        ex["database"] = database
    body = ", ".join(f"{k}: {v}" for k, v in ex.items())
    return f"""
storage: {{main: {{type: disk, path: cas}}}}
action_caches: {{main: {{type: disk, path: ac}}}}
instances: {{"": {{cas: main, action_cache: main}}}}
execution: {{{body}}}
"""
