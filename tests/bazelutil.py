"""Helpers for driving a real Bazel client against Granary in tests.

Each test gets its own copy of a workspace from tests/workspaces/, its own
Bazel --output_user_root and its own HOME, all under the test's tmp_path, so
no bazel-* symlinks land in the repository, no Bazel server outlives the test
(--batch), and no ~/.bazelrc changes the results.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

WORKSPACES = Path(__file__).resolve().parent / "workspaces"

BAZEL = shutil.which("bazel")

# The final "INFO: N processes: ..." line of a build, e.g.
#   INFO: 47 processes: 25 remote cache hit, 22 internal.
#   INFO: 44 processes: 25 internal, 19 linux-sandbox.
#   INFO: 1 process: 1 internal.
#   INFO: 0 processes.
SUMMARY_RE = re.compile(r"^INFO: (\d+) process(?:es)?(?:: (.*?))?\.?\s*$", re.MULTILINE)
SUMMARY_PART_RE = re.compile(r"^(\d+) (.+)$")

# Environment variables that would change where or how Bazel runs.
_SCRUB_ENV = ("TEST_TMPDIR", "BAZELISK_HOME", "USE_BAZEL_VERSION", "BAZEL_SH", "JAVA_HOME", "XDG_CACHE_HOME")


def have_bazel() -> bool:
    return BAZEL is not None


def bazel_version() -> str:
    """Best-effort version string. Debian's bazel-bootstrap answers `bazel
    --version` with "bazel no_version", so fall back to the package version."""
    if BAZEL is None:
        return "not installed"
    try:
        out = subprocess.run(
            [BAZEL, "--version"], check=False, capture_output=True, text=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    if out and "no_version" not in out:
        return out
    try:
        pkg = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "bazel-bootstrap"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pkg = ""
    return f"bazel {pkg} (Debian bazel-bootstrap)" if pkg else (out or "unknown")


def parse_process_summary(text: str) -> dict[str, int] | None:
    """Counts from the last `INFO: N processes: ...` line in Bazel's output.

    Returns e.g. {"total": 47, "remote cache hit": 25, "internal": 22}, with
    every kind Bazel named ("linux-sandbox", "processwrapper-sandbox",
    "local", "remote", "worker", "disk cache hit", ...). Kinds not named are
    absent (use .get(kind, 0)). None if Bazel printed no summary line.
    """
    matches = list(SUMMARY_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    counts: dict[str, int] = {"total": int(m.group(1))}
    if m.group(2):
        for part in m.group(2).split(","):
            pm = SUMMARY_PART_RE.match(part.strip().rstrip("."))
            if pm:
                kind = pm.group(2).strip()
                counts[kind] = counts.get(kind, 0) + int(pm.group(1))
    return counts


@dataclass
class BazelResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    summary: dict[str, int] | None = field(default=None)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def count(self, kind: str) -> int:
        return (self.summary or {}).get(kind, 0)

    @property
    def cache_hits(self) -> int:
        return self.count("remote cache hit") + self.count("disk cache hit")

    @property
    def non_internal(self) -> int:
        """Processes that are not Bazel-internal bookkeeping: what could have
        hit the cache. Summed from the named kinds, because for `bazel test`
        Bazel 4.2.3 can print kind counts that do not add up to N (e.g.
        "4 processes: 6 linux-sandbox.")."""
        if not self.summary:
            return 0
        return sum(v for k, v in self.summary.items() if k not in ("total", "internal"))

    @property
    def hit_rate(self) -> float:
        n = self.non_internal
        return self.cache_hits / n if n else 0.0

    def describe(self) -> str:
        tail = "\n".join(self.output.splitlines()[-60:])
        return f"bazel {' '.join(self.args)} -> rc={self.returncode} summary={self.summary}\n{tail}"


class BazelWorkspace:
    """A private copy of a test workspace plus the Bazel state that goes with it."""

    def __init__(self, root: Path, state: Path, jobs: int = 4, startup: list[str] | None = None):
        self.root = root
        self.state = state
        # extra startup options for every run (e.g. tls_startup_flags())
        self.startup = list(startup or [])
        self.home = state / "home"
        self.output_user_root = state / "output_user_root"
        self.logs = state / "logs"
        self.jobs = jobs
        self._runs = 0
        for d in (self.home, self.output_user_root, self.logs):
            d.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
        env["HOME"] = str(self.home)
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["LANG"] = env["LC_ALL"] = "C.UTF-8"
        return env

    def startup_flags(self, output_base: Path | None = None) -> list[str]:
        flags = ["--batch", "--nohome_rc", f"--output_user_root={self.output_user_root}"]
        if output_base is not None:
            flags.append(f"--output_base={output_base}")
        return flags + self.startup

    def run(
        self,
        command: str,
        *args: str,
        output_base: Path | None = None,
        check: bool = True,
        timeout: float = 900,
    ) -> BazelResult:
        """Run `bazel --batch ... COMMAND ARGS` in the workspace copy.

        `output_base` gives a fresh Bazel output base (a cold local state)
        without deleting the old one. stdout/stderr are also kept under
        state/logs for post-mortems.
        """
        if BAZEL is None:
            raise RuntimeError("bazel is not on PATH")
        cmd_flags: list[str] = []
        if command in ("build", "test", "run", "coverage"):
            cmd_flags = ["--color=no", "--curses=no", f"--jobs={self.jobs}"]
        full = [BAZEL, *self.startup_flags(output_base), command, *cmd_flags, *args]
        proc = subprocess.run(
            full,
            check=False,
            cwd=self.root,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
        self._runs += 1
        stem = self.logs / f"{self._runs:02d}-{command}"
        stem.with_suffix(".cmd").write_text(" ".join(full) + "\n")
        stem.with_suffix(".out").write_text(proc.stdout)
        stem.with_suffix(".err").write_text(proc.stderr)
        result = BazelResult(
            args=[command, *args],
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
            summary=parse_process_summary(proc.stderr + "\n" + proc.stdout),
        )
        if check and proc.returncode != 0:
            raise AssertionError(result.describe())
        return result

    def build(self, *args: str, **kw) -> BazelResult:
        return self.run("build", *args, **kw)

    def test(self, *args: str, **kw) -> BazelResult:
        return self.run("test", *args, **kw)

    def clean(self, *args: str, output_base: Path | None = None) -> BazelResult:
        return self.run("clean", *args, output_base=output_base)

    def bin_dir(self, output_base: Path | None = None) -> Path:
        """The real bazel-bin directory (resolved, not the convenience symlink,
        which points at whichever output base ran last)."""
        out = self.run("info", "bazel-bin", output_base=output_base).stdout.strip().splitlines()[-1]
        return Path(out)

    def output_hashes(self, output_base: Path | None = None) -> dict[str, str]:
        """Hashes of everything under bazel-bin of output_base (default: the
        output base of the last build, through the bazel-bin symlink)."""
        link = self.root / "bazel-bin"
        if output_base is None and link.is_symlink():
            return hash_tree(link.resolve())
        return hash_tree(self.bin_dir(output_base))


def hash_tree(root: Path, include_runfiles: bool = False) -> dict[str, str]:
    """sha256 of every regular file under root, keyed by relative path; an
    executable file's key gets a trailing "*".

    Symlinks are not followed. Runfiles trees (symlink forests) and
    *.runfiles_manifest files, which Bazel writes locally with absolute
    paths, are skipped unless include_runfiles is set.
    """
    root = Path(root)
    hashes: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if not include_runfiles:
            dirnames[:] = [d for d in dirnames if not d.endswith(".runfiles")]
        dirnames.sort()
        for name in sorted(filenames):
            if not include_runfiles and name.endswith(".runfiles_manifest"):
                continue
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            rel = p.relative_to(root).as_posix()
            if os.access(p, os.X_OK):
                rel += "*"
            hashes[rel] = h.hexdigest()
    return hashes


def copy_workspace(name: str, tmp_path: Path, jobs: int = 4, startup: list[str] | None = None) -> BazelWorkspace:
    """Copy tests/workspaces/NAME to tmp_path/NAME (without any bazel-*
    symlinks) and return a BazelWorkspace whose Bazel state lives in
    tmp_path/bazel-state."""
    src = WORKSPACES / name
    if not (src / "WORKSPACE").exists():
        raise FileNotFoundError(f"no Bazel workspace at {src}")
    dst = Path(tmp_path) / name
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("bazel-*"))
    return BazelWorkspace(dst, Path(tmp_path) / "bazel-state", jobs=jobs, startup=startup)


def remote_flags(address: str, instance: str | None = None, *extra: str) -> list[str]:
    """Flags for using Granary as a remote cache at address ("host:port")."""
    flags = [f"--remote_cache=grpc://{address}", "--remote_timeout=60"]
    if instance is not None:
        flags.append(f"--remote_instance_name={instance}")
    flags.extend(extra)
    return flags


# ---- TLS ----------------------------------------------------------------------------------
#
# Debian's Bazel 4.2.3 bundles a netty whose JDK ALPN code is stripped, so any grpcs://
# remote fails with "JDK provider does not support ALPN protocol". netty's OpenSSL
# backend (libnetty-tcnative-jni) does ALPN itself; netty finds it by the name
# libnetty_tcnative.so on java.library.path, and the library's JNI_OnLoad derives its
# package prefix from its own file name, so it must be a copy under that name, not a link.

TCNATIVE_SYSTEM = Path("/usr/lib/x86_64-linux-gnu/jni/libnetty-tcnative.so")
TCNATIVE_NAME = "libnetty_tcnative.so"


def tcnative_dir(directory: Path, system_library: Path = TCNATIVE_SYSTEM) -> Path | None:
    """Copy netty's OpenSSL JNI library into directory under the name netty loads; None
    when the library is not installed (apt-get install libnetty-tcnative-jni)."""
    if not system_library.is_file():
        return None
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy2(system_library, directory / TCNATIVE_NAME)
    return directory


def tls_startup_flags(library_dir: Path) -> list[str]:
    """Startup options that make Bazel's netty use OpenSSL (and so speak grpcs://)."""
    return [f"--host_jvm_args=-Djava.library.path=/usr/share/bazel/:{library_dir}"]


def tls_flags(
    ca: Path, client_cert: Path | None = None, client_key: Path | None = None, headers: dict[str, str] | None = None
) -> list[str]:
    """Build flags for a grpcs:// remote: the CA that signed the server certificate, an
    optional client certificate and key (PKCS#8 PEM) for mTLS, and --remote_header values."""
    flags = [f"--tls_certificate={ca}"]
    if client_cert is not None:
        flags.append(f"--tls_client_certificate={client_cert}")
    if client_key is not None:
        flags.append(f"--tls_client_key={client_key}")
    flags.extend(f"--remote_header={k}={v}" for k, v in (headers or {}).items())
    return flags
