"""Generate an offline Bazel 4.2.3 workspace for bench/bench_bazel.py.

The workspace has N packages lib000 .. lib{N-1}, each with one library
(`:lib`, a cc_library or a genrule, see `kind`) and one genrule (`:gen`).
Library i depends on library (i-1)//2 and genrule i reads library i's header
plus genrule (i-1)//2's output, so the graph is a binary tree about log2(N)
deep: wide enough for --jobs=8, with real dependencies. Outputs vary in size
(a few KiB to about 1 MiB) so the cache moves more than tiny blobs. A handful
of cc_binary targets link subsets of the libraries.

Every output depends on a salt (salt_flags): the C++ sources compile the
GRANARY_BENCH_SALT macro into their objects and the genrules write the
GRANARY_BENCH_SALT environment variable into their outputs, so a build with a
new salt has new action keys AND new output blobs, i.e. a cold build that
really uploads everything even to a cache that saw another salt.

With 60 cc libraries this is 261 actions (60 compiles, 60 archives, 60
shared libraries, 60 genrules, 10 binaries x 2, one big genrule) plus
Bazel's internal ones.

It builds offline: .bazelrc as in tests/workspaces/bazel_basic, local
stand-ins for @rules_cc and @rules_java (Bazel 4.2.3 loads both and would
otherwise download them), .bazelignore for the convenience symlinks.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

BAZELRC = """\
# Debian's /etc/bazel/bazelrc turns sandbox_debug on, which floods the output.
build --nosandbox_debug
# Without this, test rules try to download @remote_coverage_tools.
build --coverage_report_generator=@bazel_tools//tools/coverage:coverage_report_generator
# Fail fast instead of hanging on a download (the machine is offline).
build --experimental_repository_disable_download
"""

WORKSPACE = """\
workspace(name = "granary_bench")

# Offline stand-ins for repositories Bazel 4.2.3 would otherwise download.
local_repository(name = "rules_cc", path = "third_party/rules_cc")

local_repository(name = "rules_java", path = "third_party/rules_java")
"""

CC_MACROS = (
    "cc_binary", "cc_import", "cc_library", "cc_proto_library", "cc_test", "cc_toolchain",
    "cc_toolchain_suite", "fdo_prefetch_hints", "fdo_profile", "objc_import", "objc_library",
)
JAVA_MACROS = (
    "java_binary", "java_import", "java_library", "java_lite_proto_library", "java_proto_library",
    "java_test", "java_package_configuration", "java_plugin", "java_runtime", "java_toolchain",
)

RULES_CC_BUILD = """\
package(default_visibility = ["//visibility:public"])

exports_files(["defs.bzl"])

alias(
    name = "toolchain_type",
    actual = "@bazel_tools//tools/cpp:toolchain_type",
)
"""

RULES_JAVA_BUILD = """\
package(default_visibility = ["//visibility:public"])

exports_files(["defs.bzl"])
"""

BINARIES = 10  # cc_binary targets at full scale


@dataclass(frozen=True)
class Layout:
    libraries: int
    genrules: int
    binaries: int
    kind: str  # "cc" or "genrule"

    @property
    def expected_actions(self) -> int:
        """Non-internal actions a full build runs (what a warm build must all hit)."""
        per_lib = 3 if self.kind == "cc" else 1
        bins = 2 * self.binaries if self.kind == "cc" else 0
        return self.libraries * per_lib + self.genrules + bins + 1

    def describe(self) -> str:
        bins = f" + {self.binaries} cc_binary" if self.kind == "cc" and self.binaries else ""
        return f"{self.libraries} {self.kind} libraries + {self.genrules} genrules{bins} + 1 big genrule"


def layout_for(scale: float, kind: str) -> Layout:
    n = max(2, round(60 * scale))
    return Layout(libraries=n, genrules=n, binaries=max(1, round(BINARIES * scale)), kind=kind)


def _forwarders(macros: tuple[str, ...], what: str) -> str:
    head = f'"""Offline stand-in for {what}: forwards every macro to the native rule."""\n'
    return head + "".join(f"\ndef {m}(**kwargs):\n    native.{m}(**kwargs)\n" for m in macros)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _pkg(i: int) -> str:
    return f"lib{i:03d}"


def _parent(i: int) -> int | None:
    return None if i == 0 else (i - 1) // 2


def _data_bytes(i: int) -> int:
    """Size of the constant table compiled into library i: 1 to 32 KiB."""
    return 1024 * (1 + (i * 7) % 32)


def _gen_lines(i: int) -> int:
    """Lines `seq` writes into genrule i: about 6 KiB to 600 KiB of output."""
    return 1000 * (1 + (i * 13) % 90)


def _cc_sources(i: int) -> tuple[str, str]:
    pkg = _pkg(i)
    parent = _parent(i)
    header = textwrap.dedent(f"""\
        #ifndef BENCH_{pkg.upper()}_H_
        #define BENCH_{pkg.upper()}_H_
        int {pkg}_value(int x);
        #endif
        """)
    n = _data_bytes(i)
    rows = []
    for k in range(0, n, 32):
        rows.append(", ".join(str((k + j) * (i + 11) % 251) for j in range(min(32, n - k))))
    table = ",\n    ".join(rows)
    include_parent = f'#include "{_pkg(parent)}/{_pkg(parent)}.h"\n' if parent is not None else ""
    call_parent = f" + {_pkg(parent)}_value(x + 1)" if parent is not None else ""
    source = (
        f'#include "{pkg}/{pkg}.h"\n{include_parent}\n'
        f"static const unsigned char kData[{n}] = {{\n    {table}\n}};\n\n"
        "#ifndef GRANARY_BENCH_SALT\n#define GRANARY_BENCH_SALT \"none\"\n#endif\n"
        f"const char* {pkg}_salt() {{ return GRANARY_BENCH_SALT; }}\n\n"
        f"int {pkg}_value(int x) {{\n"
        f"  unsigned s = (unsigned)x;\n"
        f"  for (unsigned k = 0; k < sizeof(kData); ++k) s = s * 31u + kData[k];\n"
        f"  return (int)(s & 0x7fff){call_parent};\n"
        f"}}\n"
    )
    return header, source


def _package_build(i: int, layout: Layout) -> str:
    pkg = _pkg(i)
    parent = _parent(i)
    out = ['package(default_visibility = ["//visibility:public"])\n']
    if layout.kind == "cc":
        out.insert(0, 'load("@rules_cc//cc:defs.bzl", "cc_library")\n')
        deps = f'["//{_pkg(parent)}:lib"]' if parent is not None else "[]"
        out.append(
            f'cc_library(\n    name = "lib",\n    srcs = ["{pkg}.cc"],\n    hdrs = ["{pkg}.h"],\n'
            f'    deps = {deps},\n)\n'
        )
    else:
        srcs = [f'"{pkg}.h"', f'"{pkg}.cc"'] + ([f'"//{_pkg(parent)}:lib"'] if parent is not None else [])
        out.append(
            f'genrule(\n    name = "lib",\n    srcs = [{", ".join(srcs)}],\n    outs = ["lib{pkg}.a"],\n'
            f'    cmd = "(cat $(SRCS); echo $$GRANARY_BENCH_SALT; seq 1 {_data_bytes(i) // 4}) > $@",\n)\n'
        )
    if i < layout.genrules:
        srcs = [f'"{pkg}.h"'] + ([f'"//{_pkg(parent)}:gen"'] if parent is not None else [])
        out.append(
            f'genrule(\n    name = "gen",\n    srcs = [{", ".join(srcs)}],\n    outs = ["{pkg}_gen.txt"],\n'
            f'    cmd = "(cat $(SRCS) | sha256sum; echo $$GRANARY_BENCH_SALT; seq 1 {_gen_lines(i)}) > $@",\n)\n'
        )
    return "\n".join(out)


def _apps_build(layout: Layout) -> str:
    out = ['load("@rules_cc//cc:defs.bzl", "cc_binary")\n']
    n = layout.libraries
    if layout.kind == "cc":
        for b in range(layout.binaries):
            # each binary links a leaf and therefore its whole path to the root
            leaf = n - 1 - (b * max(1, n // max(1, layout.binaries))) % n
            out.append(f'cc_binary(\n    name = "app{b:02d}",\n    srcs = ["app{b:02d}.cc"],\n'
                       f'    deps = ["//{_pkg(leaf)}:lib"],\n)\n')
    out.append(
        'genrule(\n    name = "big",\n    outs = ["big.bin"],\n'
        '    cmd = "(echo $$GRANARY_BENCH_SALT; seq -w 1 131072) | head -c 1048576 > $@",\n)\n'
    )
    return "\n".join(out)


def _app_source(b: int, layout: Layout) -> str:
    n = layout.libraries
    leaf = n - 1 - (b * max(1, n // max(1, layout.binaries))) % n
    pkg = _pkg(leaf)
    return (f'#include <stdio.h>\n#include "{pkg}/{pkg}.h"\n\n'
            f'int main() {{ printf("%d\\n", {pkg}_value({b})); return 0; }}\n')


def generate(root: Path, layout: Layout) -> Path:
    """Write the workspace under root (which must not exist or be empty)."""
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "WORKSPACE", WORKSPACE)
    _write(root / ".bazelrc", BAZELRC)
    _write(root / ".bazelignore", "bazel-bin\nbazel-out\nbazel-testlogs\nbazel-workspace\nbazel-granary_bench\n")
    _write(root / "BUILD", "")
    tp = root / "third_party"
    _write(tp / "rules_cc" / "WORKSPACE", 'workspace(name = "rules_cc")\n')
    _write(tp / "rules_cc" / "BUILD", "")
    _write(tp / "rules_cc" / "cc" / "BUILD", RULES_CC_BUILD)
    _write(tp / "rules_cc" / "cc" / "defs.bzl", _forwarders(CC_MACROS, "@rules_cc"))
    _write(tp / "rules_java" / "WORKSPACE", 'workspace(name = "rules_java")\n')
    _write(tp / "rules_java" / "BUILD", "")
    _write(tp / "rules_java" / "java" / "BUILD", RULES_JAVA_BUILD)
    _write(tp / "rules_java" / "java" / "defs.bzl", _forwarders(JAVA_MACROS, "@rules_java"))
    for i in range(layout.libraries):
        pkg = _pkg(i)
        header, source = _cc_sources(i)
        _write(root / pkg / f"{pkg}.h", header)
        _write(root / pkg / f"{pkg}.cc", source)
        _write(root / pkg / "BUILD", _package_build(i, layout))
    _write(root / "apps" / "BUILD", _apps_build(layout))
    if layout.kind == "cc":
        for b in range(layout.binaries):
            _write(root / "apps" / f"app{b:02d}.cc", _app_source(b, layout))
    return root


def salt_flags(salt: str) -> list[str]:
    """Bazel flags that give every action of the workspace a new key and new outputs."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", salt):
        raise ValueError(f"salt must be [A-Za-z0-9_.-]+, got {salt!r}")
    return [f"--action_env=GRANARY_BENCH_SALT={salt}", f'--copt=-DGRANARY_BENCH_SALT="{salt}"']
