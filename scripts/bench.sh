#!/usr/bin/env bash
# The main job: builds pydl, then races its kernels against torch's.
# Default: quick CPU run. Arguments go to `python -m benchmarks`
# (e.g. --device cuda, --only conv, or no --quick for the full sizes:
#  bash scripts/bench.sh --full).
cd "$(dirname "$0")/.."
source scripts/env.sh
build_pydl
if [ "${1:-}" = "--full" ]; then
  shift
  exec "$PYTHON" -m benchmarks "$@"
fi
exec "$PYTHON" -m benchmarks --quick "$@"
