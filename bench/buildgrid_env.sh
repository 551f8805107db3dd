#!/usr/bin/env bash
# Create (idempotently) a Python 3.13 venv with BuildGrid installed, for
# side-by-side benchmarks against Granary.
#
#   BG_VENV      venv location   (default /tmp/granary-bench/bg-venv)
#   BG_PYTHON    python >= 3.13  (default: pyenv 3.13.x, then python3.13 on PATH)
#   BG_VERSION   buildgrid pin   (default 0.9.1)
#
# Prints the venv path on stdout (last line). Safe to run repeatedly: it only
# (re)installs when the venv is missing or has a different buildgrid version.
set -euo pipefail

BG_VENV="${BG_VENV:-/tmp/granary-bench/bg-venv}"
BG_VERSION="${BG_VERSION:-0.9.1}"

find_python() {
    if [[ -n "${BG_PYTHON:-}" ]]; then echo "$BG_PYTHON"; return; fi
    local root
    root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-/root/.pyenv}")"
    local c
    for c in "$root"/versions/3.13*/bin/python3 "$root"/versions/3.1[4-9]*/bin/python3; do
        [[ -x "$c" ]] && { echo "$c"; return; }
    done
    for c in python3.13 python3.14; do
        command -v "$c" >/dev/null 2>&1 && { command -v "$c"; return; }
    done
    echo "buildgrid_env.sh: no Python >= 3.13 found (set BG_PYTHON)" >&2
    return 1
}

installed_version() {
    "$BG_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("buildgrid"))' 2>/dev/null || true
}

if [[ -x "$BG_VENV/bin/bgd" && "$(installed_version)" == "$BG_VERSION" ]]; then
    echo "$BG_VENV"
    exit 0
fi

PY="$(find_python)"
mkdir -p "$(dirname "$BG_VENV")"
if [[ ! -x "$BG_VENV/bin/python" ]]; then
    "$PY" -m venv "$BG_VENV" >&2
fi
"$BG_VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "buildgrid==$BG_VERSION" >&2
[[ -x "$BG_VENV/bin/bgd" ]] || { echo "buildgrid_env.sh: bgd missing after install" >&2; exit 1; }
echo "$BG_VENV"
