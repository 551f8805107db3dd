"""Bazel end-to-end benchmark: Granary, BuildGrid 0.9.1 and the local disk cache in one run.

Generates a workspace (bench/bazel_workspace.py: 60 cc libraries, 60 genrules,
10 binaries, 261 actions at --scale 1) that builds offline with Debian's Bazel
4.2.3, starts `python3 -m granary serve` with its defaults (this checkout's
code, a fresh data dir, a free port; cache and remote execution with local
workers), BuildGrid 0.9.1 cache-only (bench/buildgrid_server.py, Python 3.13
venv from bench/buildgrid_env.sh) and uses a local --disk_cache, then measures
with persistent Bazel servers (--jobs=8, one --output_user_root per backend so
each keeps its own JVM and JIT warm):

  warm-up one untimed build per Bazel server against its own backend, with a
          salt of its own (JIT, OS page cache; --no-warmup skips it).
  cold    clean build that runs every action locally and uploads the results,
          against Granary, BuildGrid, the disk cache, and with no remote cache
          (the baseline). Each cold round uses a fresh salt (a --copt macro
          compiled into every object, an --action_env variable written into
          every genrule output) so every action key AND every output blob is
          new: nothing is already in any cache. --cold-rounds of them,
          backends interleaved.
  warm    `bazel clean` then the same build, everything from the cache (checked
          from Bazel's `INFO: N processes: ... cache hit` line), --rounds of
          them, backends interleaved.
  rexec   --remote_executor against Granary (--noremote_accept_cached, so
          every action really runs on Granary's workers) versus the same build
          locally with no cache, --rexec-rounds, interleaved.

and prints one table with min/median wall times, the ratios the targets of
issue 9 use (from medians), and each server's RSS (summed over its own
processes; action processes started by Granary's workers are not counted):
idle before the first build, peak while building (sampled every 0.2 s), and
after the run.

    python3 bench/bench_bazel.py                      # the full workload
    python3 bench/bench_bazel.py --scale 0.1 --rounds 1 --cold-rounds 1 --rexec-rounds 1
    python3 bench/bench_bazel.py --skip buildgrid,rexec --keep

Every Bazel server is shut down (`bazel shutdown`) and every server process
and temp dir removed at the end, on errors and on SIGTERM/SIGINT (--keep keeps
the temp dir: workspace, server data and logs).
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bazel_workspace import Layout, generate, layout_for, salt_flags

BAZEL = shutil.which("bazel")
JOBS = 8
# Bazel's startup options; identical on every call so each root keeps one server.
MAX_IDLE_SECS = 900  # a server we somehow failed to shut down still goes away on its own

# The final "INFO: N processes: ..." line of a build, e.g.
#   INFO: 302 processes: 261 remote cache hit, 41 internal.
SUMMARY_RE = re.compile(r"^INFO: (\d+) process(?:es)?(?:: (.*?))?\.?\s*$", re.MULTILINE)
SUMMARY_PART_RE = re.compile(r"^(\d+) (.+)$")
LOCAL_KINDS = ("linux-sandbox", "processwrapper-sandbox", "local", "worker", "sandbox", "standalone")
HIT_KINDS = ("remote cache hit", "disk cache hit")
# What Bazel prints when a remote call failed but the build went on anyway.
REMOTE_WARNINGS = (
    "Reading from Remote Cache",
    "Writing to Remote Cache",
    "Failed to query remote execution capabilities",
    "falling back to local execution",
    "Remote execution failed",
)
_SCRUB_ENV = ("TEST_TMPDIR", "BAZELISK_HOME", "USE_BAZEL_VERSION", "BAZEL_SH", "JAVA_HOME", "XDG_CACHE_HOME")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- process bookkeeping ---------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for child in f.read().split():
                    out += process_tree(int(child))
    except OSError:
        pass
    return out


def _is_python(pid: int) -> bool:
    try:
        return "python" in os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False


def tree_memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) summed over the server's own (Python) processes, in MiB: the compilers and
    shells a Granary worker runs for actions are children too but not counted. RSS counts a page
    shared by forked processes once in each of them; PSS divides it among them (the honest sum)."""
    rss = pss = 0
    for p in process_tree(pid):
        if not _is_python(p):
            continue
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, pss / 1024


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by the server's own (Python) processes."""
    ticks = 0
    for p in process_tree(pid):
        if not _is_python(p):
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples tree_memory_mib(pid) every `interval` seconds in a thread; keeps the peaks (RSS, PSS)."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid = pid
        self.interval = interval
        self.peak = (0.0, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = tree_memory_mib(self.pid)
            self.peak = (max(self.peak[0], rss), max(self.peak[1], pss))
            self._stop.wait(self.interval)

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return self.peak


def stop_process_group(proc: subprocess.Popen, timeout: float = 40) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ---- servers --------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    address: str
    idle_rss: tuple[float, float] = (0.0, 0.0)  # (RSS, PSS) MiB
    sampler: RssSampler | None = None
    peak_rss: tuple[float, float] = (0.0, 0.0)
    end_rss: tuple[float, float] = (0.0, 0.0)


def start_granary(data: Path, src: Path | None = None) -> Server:
    """`python3 -m granary serve` with the embedded defaults, this checkout's code (or src's)."""
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src or REPO / "src"), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "granary", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data / "data")]
    with open(data / "serve.log", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode(errors="replace")
    m = re.search(r"grpc://([0-9.]+:\d+)", line)
    if not m:
        stop_process_group(proc)
        raise RuntimeError(f"granary did not start: {line!r}\n{(data / 'serve.log').read_text()[-3000:]}")
    # keep draining stdout so the server never blocks on a full pipe
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return Server("Granary", proc, m.group(1))


def start_buildgrid(data: Path) -> Server:
    from buildgrid_server import start_buildgrid as start

    port = free_port()
    return Server("BuildGrid", start(data, port), f"127.0.0.1:{port}")


def wait_idle(server: Server, seconds: float = 3.0) -> None:
    """Let start-up finish (workers registered, imports done) before the idle RSS."""
    time.sleep(seconds)
    server.idle_rss = tree_memory_mib(server.proc.pid)


# ---- Bazel --------------------------------------------------------------------


def parse_summary(text: str) -> dict[str, int] | None:
    matches = list(SUMMARY_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    counts: dict[str, int] = {"total": int(m.group(1))}
    for part in (m.group(2) or "").split(","):
        pm = SUMMARY_PART_RE.match(part.strip().rstrip("."))
        if pm:
            counts[pm.group(2).strip()] = counts.get(pm.group(2).strip(), 0) + int(pm.group(1))
    return counts


@dataclass
class BuildResult:
    seconds: float
    summary: dict[str, int]
    output: str

    def count(self, *kinds: str) -> int:
        return sum(self.summary.get(k, 0) for k in kinds)

    @property
    def actions(self) -> int:
        """Non-internal processes: what could have hit a cache."""
        return sum(v for k, v in self.summary.items() if k not in ("total", "internal"))

    def line(self) -> str:
        return ", ".join(f"{v} {k}" for k, v in self.summary.items() if k != "total")


class BazelClient:
    """One persistent Bazel server (its own --output_user_root) on the shared workspace."""

    def __init__(self, name: str, workspace: Path, state: Path, flags: list[str]):
        self.name = name
        self.workspace = workspace
        self.root = state / name
        self.home = state / "home"
        self.logs = state / "logs"
        self.flags = flags
        self.started = False
        self._n = 0
        for d in (self.root, self.home, self.logs):
            d.mkdir(parents=True, exist_ok=True)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
        env["HOME"] = str(self.home)
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["LANG"] = env["LC_ALL"] = "C.UTF-8"
        return env

    def _startup(self) -> list[str]:
        return ["--nohome_rc", f"--output_user_root={self.root}", f"--max_idle_secs={MAX_IDLE_SECS}"]

    def run(self, command: str, *args: str, timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess]:
        assert BAZEL is not None
        cmd = [BAZEL, *self._startup(), command, *args]
        self.started = True
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=self.workspace, env=self._env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
        seconds = time.monotonic() - t0
        self._n += 1
        (self.logs / f"{self.name}-{self._n:03d}-{command}.log").write_text(
            " ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise RuntimeError(f"[{self.name}] bazel {command} failed (rc={proc.returncode}):\n{tail}")
        return seconds, proc

    def build(self, *extra: str) -> BuildResult:
        args = ["--color=no", "--curses=no", f"--jobs={JOBS}", "--symlink_prefix=/", *self.flags, *extra, "//..."]
        seconds, proc = self.run("build", *args)
        out = proc.stderr + proc.stdout
        summary = parse_summary(out)
        if summary is None:
            raise RuntimeError(f"[{self.name}] no 'INFO: N processes' line:\n{out[-3000:]}")
        for warning in REMOTE_WARNINGS:
            if warning in out:
                raise RuntimeError(f"[{self.name}] Bazel reported a remote failure ({warning!r}):\n{out[-3000:]}")
        return BuildResult(seconds, summary, out)

    def clean(self) -> None:
        self.run("clean")

    def cpu_seconds(self) -> float:
        """CPU seconds the Bazel server (the JVM, not the compilers it runs) has used so far."""
        total = 0.0
        for pid_file in self.root.glob("*/server/server.pid.txt"):
            try:
                pid = int(pid_file.read_text().strip())
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                pass
        return total

    def shutdown(self) -> None:
        if not self.started:
            return
        try:
            self.run("shutdown", timeout=120)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            log(f"[{self.name}] bazel shutdown failed: {e}")
        self.started = False


# ---- the benchmark --------------------------------------------------------------


@dataclass
class Samples:
    times: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # server CPU seconds per build
    jvm: dict[str, list[float]] = field(default_factory=dict)  # the Bazel server's own CPU seconds per build

    def add(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)

    def min(self, key: str) -> float | None:
        return min(self.times[key]) if self.times.get(key) else None

    def median(self, key: str) -> float | None:
        return statistics.median(self.times[key]) if self.times.get(key) else None


def rotate(items: list, k: int) -> list:
    k %= len(items) if items else 1
    return items[k:] + items[:k]


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise RuntimeError(msg)


def run_benchmark(args: argparse.Namespace, tmp: Path, cleanups: list[Callable[[], None]]) -> None:
    layout: Layout = layout_for(args.scale, args.libs)
    workspace = generate(tmp / "workspace", layout)
    state = tmp / "bazel"
    log(f"workspace {workspace}: {layout.describe()}, expecting {layout.expected_actions} actions")

    servers: dict[str, Server] = {}
    granary = start_granary(tmp / "granary")
    cleanups.append(lambda: stop_process_group(granary.proc))
    servers["granary"] = granary
    log(f"Granary (defaults) on {granary.address}, pid {granary.proc.pid}")
    if "buildgrid" not in args.skip:
        bg = start_buildgrid(tmp / "buildgrid")
        cleanups.append(lambda: stop_process_group(bg.proc))
        servers["buildgrid"] = bg
        log(f"BuildGrid 0.9.1 on {bg.address}, pid {bg.proc.pid}")
    for s in servers.values():
        wait_idle(s)
        s.sampler = RssSampler(s.proc.pid).start()

    common = ["--remote_timeout=60"]
    clients: dict[str, BazelClient] = {
        "granary": BazelClient("granary", workspace, state, [f"--remote_cache=grpc://{granary.address}", *common]),
        "disk": BazelClient("disk", workspace, state, [f"--disk_cache={tmp / 'disk-cache'}"]),
        "none": BazelClient("none", workspace, state, []),
    }
    if "buildgrid" in servers:
        clients["buildgrid"] = BazelClient(
            "buildgrid", workspace, state, [f"--remote_cache=grpc://{servers['buildgrid'].address}", *common])
    rexec_flags = ["--spawn_strategy=remote", "--genrule_strategy=remote", "--remote_local_fallback=false",
                   "--noremote_accept_cached"]
    if "rexec" not in args.skip:
        clients["rexec"] = BazelClient("rexec", workspace, state, [
            f"--remote_executor=grpc://{granary.address}", *common, *rexec_flags])
        if args.rexec_base:
            base = start_granary(tmp / "granary-base", Path(args.rexec_base).resolve())
            cleanups.append(lambda: stop_process_group(base.proc))
            log(f"Granary from {args.rexec_base} (remote execution baseline) on {base.address}, pid {base.proc.pid}")
            clients["rexec-base"] = BazelClient("rexec-base", workspace, state, [
                f"--remote_executor=grpc://{base.address}", *common, *rexec_flags])
    for c in clients.values():
        cleanups.append(c.shutdown)

    caches = [k for k in ("granary", "buildgrid", "disk") if k in clients]
    samples = Samples()
    actions: set[int] = set()

    # start every Bazel server and load/analyse the workspace once, untimed
    for name, c in clients.items():
        t = c.run("build", "--color=no", "--curses=no", "--nobuild", "--symlink_prefix=/", *c.flags, "//...")[0]
        log(f"[{name}] Bazel server up, workspace analysed ({t:.1f} s)")

    # one untimed build per Bazel server against its own backend (a salt of its
    # own): JIT and the OS page cache (compiler, headers) warm for everyone alike
    if not args.no_warmup:
        for name, c in clients.items():
            res = c.build(*salt_flags(f"warmup-{name}-{os.getpid()}"))
            log(f"[{name}] warm-up build {res.seconds:.1f} s ({res.line()})")

    # cold: every action and every output new (fresh salt), run locally, results uploaded
    salt: list[str] = []
    for r in range(args.cold_rounds):
        salt = salt_flags(f"cold{r}-{os.getpid()}")
        for name in rotate([*caches, "none"], r):
            c = clients[name]
            c.clean()
            cpu, jvm = _cpu_of(servers.get(name)), c.cpu_seconds()
            res = c.build(*salt)
            cpu_note = _cpu_note(servers.get(name), cpu, samples, f"cold/{name}")
            cpu_note += _jvm_note(c, jvm, samples, f"cold/{name}")
            check(res.count(*HIT_KINDS) == 0, f"[{name}] cold build hit the cache: {res.line()}")
            check(res.count(*LOCAL_KINDS) == res.actions > 0, f"[{name}] cold build not all local: {res.line()}")
            actions.add(res.actions)
            samples.add(f"cold/{name}", res.seconds)
            log(f"cold  {name:9s} {res.seconds:7.2f} s  ({res.line()}){cpu_note}")

    # warm: bazel clean, everything from the cache the cold builds filled
    for r in range(args.rounds):
        for name in rotate(caches, r):
            c = clients[name]
            c.clean()
            cpu, jvm = _cpu_of(servers.get(name)), c.cpu_seconds()
            res = c.build(*salt)
            cpu_note = _cpu_note(servers.get(name), cpu, samples, f"warm/{name}")
            cpu_note += _jvm_note(c, jvm, samples, f"warm/{name}")
            hits = res.count(*HIT_KINDS)
            check(hits == res.actions > 0, f"[{name}] warm build was not all cache hits: {res.line()}")
            samples.add(f"warm/{name}", res.seconds)
            log(f"warm  {name:9s} {res.seconds:7.2f} s  ({res.line()}){cpu_note}")

    # remote execution on Granary's workers versus a local build
    if "rexec" in clients:
        kinds = ["rexec", "none", *(["rexec-base"] if "rexec-base" in clients else [])]
        for r in range(args.rexec_rounds):
            for name in rotate(kinds, r):
                c = clients[name]
                c.clean()
                res = c.build(*salt)
                if name.startswith("rexec"):
                    check(res.count("remote") == res.actions > 0, f"[{name}] not all executed remotely: {res.line()}")
                    samples.add("rexec/granary" if name == "rexec" else "rexec/base", res.seconds)
                else:
                    check(res.count(*LOCAL_KINDS) == res.actions > 0, f"[local] not all local: {res.line()}")
                    samples.add("rexec/local", res.seconds)
                log(f"rexec {name:9s} {res.seconds:7.2f} s  ({res.line()})")

    for s in servers.values():
        assert s.sampler is not None
        s.peak_rss = s.sampler.stop()
        s.end_rss = tree_memory_mib(s.proc.pid)
        s.peak_rss = (max(s.peak_rss[0], s.end_rss[0]), max(s.peak_rss[1], s.end_rss[1]))

    print_report(args, layout, actions, samples, servers)


def _cpu_of(server: Server | None) -> float:
    return tree_cpu_seconds(server.proc.pid) if server is not None else 0.0


def _cpu_note(server: Server | None, before: float, samples: Samples, key: str) -> str:
    """Record and describe the server CPU seconds one build cost (each one costs Bazel about half
    of it in wall time on two busy cores)."""
    if server is None:
        return ""
    used = tree_cpu_seconds(server.proc.pid) - before
    samples.cpu.setdefault(key, []).append(used)
    return f", server CPU {used:.2f} s"


def _jvm_note(client: BazelClient, before: float, samples: Samples, key: str) -> str:
    used = client.cpu_seconds() - before
    samples.jvm.setdefault(key, []).append(used)
    return f", Bazel JVM CPU {used:.2f} s"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_report(args: argparse.Namespace, layout: Layout, actions: set[int], samples: Samples,
                 servers: dict[str, Server]) -> None:
    n_actions = ", ".join(str(a) for a in sorted(actions)) or "?"
    print()
    print(f"Bazel 4.2.3 (Debian), {layout.describe()}: {n_actions} actions; persistent Bazel servers, "
          f"--jobs={JOBS}; {os.cpu_count()} cores")
    rexec_rounds = 0 if "rexec" in args.skip else args.rexec_rounds
    print(f"rounds: cold {args.cold_rounds}, warm {args.rounds}, remote execution {rexec_rounds}; "
          "times are wall seconds of `bazel build`, min / median")
    print()
    cols = [("granary", "Granary"), ("buildgrid", "BuildGrid 0.9.1"), ("disk", "--disk_cache"), ("none", "no cache")]
    head = f"{'':44s}" + "".join(f"{title:>17s}" for _, title in cols)
    print(head)
    print("-" * len(head))
    for phase, label in (("cold", "cold build, uploads everything"), ("warm", "warm rebuild after clean, all hits")):
        row = f"{label:44s}"
        for key, _ in cols:
            k = f"{phase}/{key}"
            cell = "-" if not samples.times.get(k) else f"{_fmt(samples.min(k))} / {_fmt(samples.median(k))}"
            row += f"{cell:>17s}"
        print(row)
    if samples.times.get("rexec/granary"):
        rex = f"{_fmt(samples.min('rexec/granary'))} / {_fmt(samples.median('rexec/granary'))}"
        loc = f"{_fmt(samples.min('rexec/local'))} / {_fmt(samples.median('rexec/local'))}"
        print(f"{'remote execution on Granary / local build':44s}{rex:>17s}{'':34s}{loc:>17s}")
    if samples.times.get("rexec/base"):
        base = f"{_fmt(samples.min('rexec/base'))} / {_fmt(samples.median('rexec/base'))}"
        print(f"{'remote execution, --rexec-base':44s}{base:>17s}")
    print()

    def ratio(a: str, b: str) -> tuple[float | None, float | None]:
        ma, mb, na, nb = samples.median(a), samples.median(b), samples.min(a), samples.min(b)
        med = ma / mb if ma is not None and mb else None
        mn = na / nb if na is not None and nb else None
        return med, mn

    targets = [
        ("Granary warm / BuildGrid warm", "warm/granary", "warm/buildgrid", 0.85),
        ("Granary warm / disk-cache warm", "warm/granary", "warm/disk", 1.3),
        ("Granary cold / BuildGrid cold", "cold/granary", "cold/buildgrid", 1.0),
        ("Granary cold / no-cache cold", "cold/granary", "cold/none", 1.05),
        ("remote execution / local build", "rexec/granary", "rexec/local", 1.1),
        ("remote execution (--rexec-base) / local build", "rexec/base", "rexec/local", 1.1),
    ]
    print(f"{'ratio':44s}{'median':>10s}{'min':>10s}{'target':>10s}  met")
    print("-" * 80)
    for label, a, b, target in targets:
        med, mn = ratio(a, b)
        met = "-" if med is None else ("yes" if med <= target else "no")
        print(f"{label:44s}{_fmt(med):>10s}{_fmt(mn):>10s}{'<= ' + format(target, '.2f'):>10s}  {met}")
    print()
    for title, table, names in (
            ("server CPU seconds per build (its own processes), median", samples.cpu, ("granary", "buildgrid")),
            ("Bazel JVM CPU seconds per build (not the compilers), median", samples.jvm,
             ("granary", "buildgrid", "disk", "none"))):
        if not table:
            continue
        print(f"{title:62s}{'cold':>6s}{'warm':>12s}")
        for name in names:
            cold, warm = table.get(f"cold/{name}"), table.get(f"warm/{name}")
            if cold or warm:
                c = f"{statistics.median(cold):.2f}" if cold else "-"
                w = f"{statistics.median(warm):.2f}" if warm else "-"
                print(f"  {name:60s}{c:>6s}{w:>12s}")
        print()
    print("server memory, MiB (sum over the server's own processes)   RSS: idle   peak  after"
          "   PSS: idle   peak  after")
    for s in servers.values():
        print(f"  {s.name:52s}{s.idle_rss[0]:11.0f}{s.peak_rss[0]:7.0f}{s.end_rss[0]:7.0f}"
              f"{s.idle_rss[1]:11.0f}{s.peak_rss[1]:7.0f}{s.end_rss[1]:7.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="workspace size relative to the default 60 libraries + 60 genrules (e.g. 0.1)")
    ap.add_argument("--libs", choices=("cc", "genrule"), default="cc",
                    help="what the libraries are (default cc; genrule needs no C compiler)")
    ap.add_argument("--rounds", type=int, default=3, help="warm rebuilds per backend (default 3)")
    ap.add_argument("--cold-rounds", type=int, default=2, help="cold builds per backend (default 2)")
    ap.add_argument("--rexec-rounds", type=int, default=3,
                    help="remote-execution and local builds each (default 3)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the untimed warm-up build each Bazel server does first")
    ap.add_argument("--skip", default="", help="comma-separated: buildgrid, rexec")
    ap.add_argument("--rexec-base", metavar="SRC",
                    help="also run remote execution against a Granary from this source tree (e.g. /work/main/src),"
                         " interleaved with this checkout's and the local build: before/after in one run")
    ap.add_argument("--tmp", type=Path, default=None, help="parent of the temp dir (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (workspace, server data, Bazel logs)")
    args = ap.parse_args()
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - {"buildgrid", "rexec"}
    if unknown:
        ap.error(f"--skip: unknown {', '.join(sorted(unknown))} (buildgrid, rexec)")
    if min(args.rounds, args.cold_rounds) < 1 or args.rexec_rounds < 0 or args.scale <= 0:
        ap.error("--rounds and --cold-rounds must be >= 1, --rexec-rounds >= 0, --scale > 0")
    if BAZEL is None:
        sys.exit("bench_bazel: bazel is not on PATH (apt-get install -y bazel-bootstrap)")
    if args.libs == "cc" and shutil.which("gcc") is None and shutil.which("cc") is None:
        sys.exit("bench_bazel: no C compiler on PATH; use --libs genrule")
    if args.rexec_rounds == 0:
        args.skip.add("rexec")

    tmp = Path(tempfile.mkdtemp(prefix="bench-bazel-", dir=args.tmp))
    cleanups: list[Callable[[], None]] = []
    done = False

    def cleanup() -> None:
        nonlocal done
        if done:
            return
        done = True
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a second signal must not cut cleanup short
            signal.signal(sig, signal.SIG_IGN)
        for fn in reversed(cleanups):  # Bazel servers first, then the REAPI servers
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                log(f"cleanup: {e}")
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    try:
        run_benchmark(args, tmp, cleanups)
    except RuntimeError as e:
        log(f"FAILED: {e}")
        cleanup()
        sys.exit(1)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
