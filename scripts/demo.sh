#!/usr/bin/env bash
# Set up, then train the demo CNN on scikit-learn's bundled digits with every monitor; prints the TensorBoard line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(bash "$ROOT/scripts/setup.sh" | tail -n 1)"
cd "$ROOT"
"$VENV/bin/python" examples/train.py fit --config configs/digits.yaml "$@"
