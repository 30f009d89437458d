#!/usr/bin/env bash
# One command for the lent GPU machine: build pydl from source there, run the
# `gpu` tests (and the CPU suite), run the quick GPU benchmarks, and write a
# report under $OUT (default ./gpu_check_out). That machine reaches no package
# registry: it uses its own torch, nvcc, ninja, pytest (PYDL_SKIP_PIP=1).
# $OUT gets at most 8 files: report.md, build.log, gpu_tests.log, bench.log
# and the benchmark's CSV/PNG files under bench/.
#
#   bash scripts/gpu_check.sh            # everything
#   STEPS="tests" bash scripts/gpu_check.sh   # a subset of: build tests cputests bench
#   BENCH_ARGS="--quick --only /b32/" ...     # what `python -m benchmarks --device cuda` gets
#   BENCH_ARGS="--quick --only attention/" ...  # one family (attention: ~46 SDPA rows + MHA rows)
# The gpu tests include tests/test_attention_cuda.py (~160 tests); the quick
# benchmarks include attention's GPU rows (46 SDPA rows + the module rows).
# The device tool allows 10 minutes per command: run it as two calls,
# STEPS="build tests" then STEPS="bench". Every step's timeout is capped so the
# script ends (and writes its report) within BUDGET seconds (default 570), and
# a step that needs the extension builds it first when the machine is bare.
cd "$(dirname "$0")/.."
export PYDL_SKIP_PIP=1 PYDL_CUDA=1 PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
STEPS=${STEPS:-"build tests bench"}
BUDGET=${BUDGET:-570}
# A step's timeout: its own default, but never past the script's budget.
capped() { local left=$((BUDGET - SECONDS - 15)); echo $(( $1 < left ? $1 : (left > 10 ? left : 10) )); }
# The later steps need pydl._C: build it when this machine has none yet.
if [[ $STEPS != *build* ]] && ! ls pydl/_C*.so > /dev/null 2>&1; then STEPS="build $STEPS"; fi
if [ -z "${CUDA_HOME:-}" ]; then
  nvcc_path=$(command -v nvcc || true)
  [ -n "$nvcc_path" ] && export CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")
fi
source scripts/env.sh
set +e
# The GPU image's Python names /opt/gcc/bin/g++ as its compiler, and that
# toolchain put a static copy of libstdc++ into _C.so: a second libstdc++ in
# the process, whose locale facets crash on the first formatted integer (seen
# 2026-11-26 on an H200: every TORCH_CHECK message with a number segfaulted).
# Build with the system compiler, which links the process's own libstdc++.
if [ -x /usr/bin/g++ ] && [ -z "${CXX:-}" ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -shared"
fi
report="$OUT/report.md"
{
  echo "# pydl gpu_check $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} | tee "$report"

if [[ $STEPS == *build* ]]; then
  start=$SECONDS
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
    "$PYTHON" setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  echo "build: exit $? in $((SECONDS - start)) s" | tee -a "$report"
  tail -n 5 "$OUT/build.log"
fi
"$PYTHON" -c "import pydl; print(pydl.info())" 2>&1 | tee -a "$report"
"${CXX:-g++}" --version | head -n 1 | tee -a "$report"
nm -C pydl/_C*.so 2>/dev/null | grep -q " [TtWw] .*std::locale::" \
  && echo "WARNING: _C.so carries its own libstdc++ (static link)" | tee -a "$report"

# Bad input must raise, never crash; if it crashes, keep a backtrace.
bad_input='import torch, pydl
x, w = torch.randn(1, 8, 5, 5), torch.randn(6, 8, 3, 3)
try:
    torch.ops.pydl.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 4, "none", None)
except RuntimeError as e:
    print("bad input raised:", str(e).splitlines()[0])'
"$PYTHON" -c "$bad_input" 2>&1 | tee -a "$report"
if [ "${PIPESTATUS[0]}" -ne 0 ] && command -v cuda-gdb > /dev/null; then
  echo "bad input crashed; backtrace:" | tee -a "$report"
  timeout 120 cuda-gdb -batch -ex run -ex bt --args "$PYTHON" -c "$bad_input" 2>&1 \
    | grep -E "^#|signal" | head -n 25 | tee -a "$report"
fi

if [[ $STEPS == *" tests"* || $STEPS == "tests"* ]]; then
  # Attention: one line of errors per CUDA kernel path, before the full tests.
  timeout "$(capped 120)" "$PYTHON" scripts/attention_smoke.py 2>&1 | tail -n 20 | tee -a "$report"
  start=$SECONDS
  # 420 s: the attention file added ~160 tests (estimated 1-2 min on an H100);
  # --durations names the slow ones if the budget ever runs out.
  PYDL_EXPERIMENTAL_CUDA=1 timeout "$(capped "${TEST_TIMEOUT:-420}")" "$PYTHON" -m pytest tests -m gpu -q -p no:cacheprovider \
    --durations=10 > "$OUT/gpu_tests.log" 2>&1
  echo "gpu tests: exit $? in $((SECONDS - start)) s — $(tail -n 1 "$OUT/gpu_tests.log")" | tee -a "$report"
  grep -E "^(FAILED|ERROR)" "$OUT/gpu_tests.log" | head -n 20 | tee -a "$report"
fi

if [[ $STEPS == *cputests* ]]; then
  PYDL_STRICT=1 timeout "$(capped 300)" "$PYTHON" -m pytest tests -m "not gpu" -q -p no:cacheprovider \
    > /tmp/pydl_cpu_tests.log 2>&1
  echo "cpu tests: exit $? — $(tail -n 1 /tmp/pydl_cpu_tests.log)" | tee -a "$report"
  grep -E "^(FAILED|ERROR)" /tmp/pydl_cpu_tests.log | head -n 20 | tee -a "$report"
fi

if [[ $STEPS == *bench* ]]; then
  start=$SECONDS
  # shellcheck disable=SC2086
  PYDL_EXPERIMENTAL_CUDA=1 timeout "$(capped "${BENCH_TIMEOUT:-400}")" "$PYTHON" -m benchmarks --device cuda \
    ${BENCH_ARGS:---quick} --out "$OUT/bench" > "$OUT/bench.log" 2>&1
  echo "bench: exit $? in $((SECONDS - start)) s" | tee -a "$report"
  tail -n 60 "$OUT/bench.log" | tee -a "$report"
fi
