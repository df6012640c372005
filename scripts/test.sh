#!/usr/bin/env bash
# Set up, lint and type-check the package, then run the test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(bash "$ROOT/scripts/setup.sh" | tail -n 1)"
cd "$ROOT"
"$VENV/bin/ruff" check lightning_cnnviz tests benchmarks examples conftest.py
"$VENV/bin/mypy" lightning_cnnviz
"$VENV/bin/python" -m pytest -q --doctest-modules lightning_cnnviz tests "$@"
