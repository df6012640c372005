#!/usr/bin/env bash
# Set up, then train the demo CNN on scikit-learn's bundled digits with every monitor (`cnnviz demo`); prints the
# commands that open TensorBoard on the run and write the one-file HTML report of its checkpoint.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(bash "$ROOT/scripts/setup.sh" | tail -n 1)"
cd "$ROOT"
"$VENV/bin/cnnviz" demo "$@"
