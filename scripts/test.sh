#!/usr/bin/env bash
# The test command: builds pydl, then runs the suite twice —
#   1. with pydl's kernels, PYDL_STRICT=1 (a kernel that falls back fails);
#   2. with the extension disabled (the fallback against the reference/torch).
# Extra arguments go to pytest (e.g. -k conv2d, -x).
cd "$(dirname "$0")/.."
source scripts/env.sh
build_pydl
"$PYTHON" -c "import pydl; print(pydl.info())"
status=0
echo "== tests with pydl's kernels (PYDL_STRICT=1) =="
PYDL_STRICT=1 "$PYTHON" -m pytest tests -q "$@" || status=1
echo "== tests with the extension disabled (fallback to torch) =="
PYDL_DISABLE_EXTENSION=1 "$PYTHON" -m pytest tests -q "$@" || status=1
exit $status
