#!/usr/bin/env python3
"""Regenerate Granary's Python protobuf/gRPC modules from ``proto/``.

Usage::

    python scripts/gen_protos.py           # regenerate src/granary/_proto
    python scripts/gen_protos.py --check   # exit 1 if the committed files are stale

The ``.proto`` sources under ``proto/`` are compiled with ``grpc_tools.protoc``
into ``src/granary/_proto`` (``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py``).
Imports between our own generated modules are then rewritten to live under the
``granary._proto`` package, e.g.::

    from build.bazel.semver import semver_pb2
    -> from granary._proto.build.bazel.semver import semver_pb2

Imports of ``google.api``, ``google.rpc``, ``google.longrunning`` and
``google.protobuf`` are left alone: those come from the installed
``googleapis-common-protos`` and ``protobuf`` distributions.

Output depends only on the ``.proto`` sources and the installed grpcio-tools
version (which pins the bundled protoc).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
OUT_DIR = REPO_ROOT / "src" / "granary" / "_proto"
PACKAGE_PREFIX = "granary._proto"

# Top-level python module prefixes that belong to us (generated from proto/).
# Anything else (google.api, google.rpc, google.longrunning, google.protobuf)
# is provided by third-party distributions.
OWN_MODULE_PREFIXES = (
    "build.bazel",
    "google.bytestream",
    "google.devtools.remoteworkers",
    "google.devtools.build",
    "build_event_stream",  # Bazel's Build Event Protocol (decoded by granary.bes)
    "granary.builds",  # our query API over stored build events
)

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

# googleapis-common-protos ships google/longrunning/operations.proto under a
# different file name; see _longrunning_shim().
LONGRUNNING_CANONICAL = "google/longrunning/operations.proto"
LONGRUNNING_SHIPPED = "google/longrunning/operations_proto.proto"


def _grpc_tools_include() -> Path:
    import grpc_tools

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    if not (include / "google" / "protobuf" / "descriptor.proto").is_file():
        raise SystemExit(f"grpc_tools bundled protos not found under {include}")
    return include


def _googleapis_include() -> Path:
    """Return the site-packages root that holds googleapis-common-protos' .proto files."""
    import google.api  # namespace package from googleapis-common-protos

    candidates = [Path(p) for p in google.api.__path__]
    for api_dir in candidates:
        root = api_dir.resolve().parent.parent
        if (
            (root / "google/api/annotations.proto").is_file()
            and (root / "google/rpc/status.proto").is_file()
            and ((root / LONGRUNNING_CANONICAL).is_file() or (root / LONGRUNNING_SHIPPED).is_file())
        ):
            return root
    raise SystemExit(
        "googleapis-common-protos .proto files (google/api/annotations.proto, "
        f"google/rpc/status.proto, {LONGRUNNING_CANONICAL}) not found; "
        f"searched {[str(c) for c in candidates]}"
    )


def _longrunning_shim(googleapis_root: Path, shim_dir: Path) -> Path:
    """Expose googleapis-common-protos' long-running operations proto under its canonical name.

    The wheel ships ``google/longrunning/operations.proto`` as
    ``operations_proto.proto``, but its generated module (imported as
    ``google.longrunning.operations_pb2``) registers the canonical name
    ``google/longrunning/operations.proto`` in the descriptor pool. We import
    the canonical name (as upstream REAPI does), so give protoc a copy under
    that name. Nothing from the shim is written to the output.
    """
    target = shim_dir / LONGRUNNING_CANONICAL
    if (googleapis_root / LONGRUNNING_CANONICAL).is_file():
        return shim_dir  # shipped under the canonical name; nothing to do
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(googleapis_root / LONGRUNNING_SHIPPED, target)
    return shim_dir


def _proto_files() -> list[Path]:
    files = sorted(p.relative_to(PROTO_DIR) for p in PROTO_DIR.rglob("*.proto"))
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    return files


def _run_protoc(out_dir: Path) -> None:
    googleapis_root = _googleapis_include()
    with tempfile.TemporaryDirectory(prefix="granary-proto-shim-") as shim:
        includes = [
            PROTO_DIR,
            googleapis_root,
            _longrunning_shim(googleapis_root, Path(shim)),
            _grpc_tools_include(),
        ]
        cmd = [sys.executable, "-m", "grpc_tools.protoc"]
        cmd += [f"-I{inc}" for inc in includes]
        cmd += [
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
        ]
        cmd += [p.as_posix() for p in _proto_files()]
        result = subprocess.run(cmd, cwd=PROTO_DIR, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout)
        sys.stderr.write(result.stderr)
        raise SystemExit(f"protoc failed with exit code {result.returncode}")
    # protoc writes warnings (e.g. unused imports) to stderr; surface them.
    if result.stderr.strip():
        sys.stderr.write(result.stderr)


_OWN_ALT = "|".join(re.escape(p) for p in OWN_MODULE_PREFIXES)
# "from build.bazel.semver import semver_pb2 as ..."
_FROM_RE = re.compile(rf"^(\s*)from ((?:{_OWN_ALT})(?:\.[A-Za-z0-9_]+)*) import ", re.MULTILINE)
# "import build.bazel.semver.semver_pb2 ..." (not emitted by current protoc,
# handled for robustness)
_IMPORT_RE = re.compile(rf"^(\s*)import ((?:{_OWN_ALT})(?:\.[A-Za-z0-9_]+)*)", re.MULTILINE)


def _rewrite_imports(text: str) -> str:
    text = _FROM_RE.sub(lambda m: f"{m.group(1)}from {PACKAGE_PREFIX}.{m.group(2)} import ", text)
    text = _IMPORT_RE.sub(lambda m: f"{m.group(1)}import {PACKAGE_PREFIX}.{m.group(2)}", text)
    return text


def _post_process(out_dir: Path) -> None:
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES):
            original = path.read_text(encoding="utf-8")
            rewritten = _rewrite_imports(original)
            if rewritten != original:
                path.write_text(rewritten, encoding="utf-8", newline="\n")
    # Every directory (including the root) becomes a regular package.
    for directory in [out_dir, *sorted(d for d in out_dir.rglob("*") if d.is_dir())]:
        if directory.name == "__pycache__":
            continue
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("", encoding="utf-8")


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _run_protoc(out_dir)
    _post_process(out_dir)


def _tree_files(root: Path) -> set[str]:
    if not root.is_dir():
        return set()
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def check() -> int:
    with tempfile.TemporaryDirectory(prefix="granary-protos-") as tmp:
        fresh = Path(tmp) / "_proto"
        generate(fresh)
        expected = _tree_files(fresh)
        actual = _tree_files(OUT_DIR)
        differing: list[str] = []
        for rel in sorted(expected | actual):
            if rel not in actual:
                differing.append(f"missing: {rel}")
            elif rel not in expected:
                differing.append(f"unexpected: {rel}")
            elif not filecmp.cmp(fresh / rel, OUT_DIR / rel, shallow=False):
                differing.append(f"differs: {rel}")
    if differing:
        print("Generated protobuf code is stale; run `python scripts/gen_protos.py`.")
        for line in differing:
            print(f"  {line}")
        return 1
    print("Generated protobuf code is up to date.")
    return 0


def regenerate() -> int:
    with tempfile.TemporaryDirectory(prefix="granary-protos-") as tmp:
        fresh = Path(tmp) / "_proto"
        generate(fresh)
        if OUT_DIR.exists():
            shutil.rmtree(OUT_DIR)
        OUT_DIR.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(fresh, OUT_DIR)
    count = len(_tree_files(OUT_DIR))
    print(f"Wrote {count} files to {os.path.relpath(OUT_DIR, REPO_ROOT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="generate into a temporary directory and compare with src/granary/_proto",
    )
    args = parser.parse_args(argv)
    return check() if args.check else regenerate()


if __name__ == "__main__":
    sys.exit(main())
