#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and print its path on the last line.
# The environment is cached outside the clone, keyed by a hash of pyproject.toml and this script, so repeated
# runs on one machine skip the install. Override the location with CNNVIZ_VENV=/path/to/venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
KEY="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)"
VENV="${CNNVIZ_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/lightning_cnnviz/venv-$KEY}"

if [ ! -f "$VENV/.complete" ]; then
  echo "setting up $VENV (first run on this machine: a few minutes)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
  # torch and torchvision first, pinned: on x86_64 with Python 3.11 these come from the machine's disk.
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$ROOT[demo,dev]" >&2
  touch "$VENV/.complete"
fi
# Point the cached environment at this checkout (cheap; the clone may live elsewhere than last time).
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT" >&2
echo "$VENV"
