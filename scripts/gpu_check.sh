#!/usr/bin/env bash
# One command for the lent GPU machine: build pydl from source there, run the
# `gpu` tests, run the quick GPU benchmarks, and write a report under $OUT
# (default ./gpu_check_out). That machine reaches no package registry: it
# uses its own torch, nvcc, ninja, pytest (PYDL_SKIP_PIP=1).
# A session has ~15 minutes of device time in all (the machine's start, 1-2
# minutes, included) and 10 minutes per command, so the default is ONE call
# that ends within BUDGET (540) seconds, tests before benchmarks (a step gets
# what is left of the budget, so the benchmarks are what a slow build cuts;
# a step that would start with under MIN_STEP_S (30) s left is skipped):
#   device run: PYDL_COMMIT=<hash> bash scripts/gpu_check.sh    (timeout_s 580)
# The copy on the device has no .git, so substitute the hash HERE before
# calling the run tool (it runs the command as given, in the repo root there):
# take `git rev-parse --short HEAD` here and pass e.g.
#   PYDL_COMMIT=729b4ea bash scripts/gpu_check.sh
# then, only if status still shows > 240 s and at once (a machine idle for
# 30 s is given back): PYDL_COMMIT=<hash> STEPS=bench BUDGET=200 bash scripts/gpu_check.sh
#   STEPS="tests" bash scripts/gpu_check.sh      # a subset of: build tests cputests bench
#   BENCH_ONLY="attention/ lstm/"                # families benchmarked, one process each
#   FAMILIES="attention other"                   # families tested (of: lstm attention other)
#   LSTM_DTYPES="float32 float16"                # extra LSTM benchmark dtypes ("" for none)
#   LSTM_QUICK=0                                 # skip the LSTM's quick tests (the full run stays)
#   NCU=1                                        # Nsight Compute counters of the attention and LSTM kernels (ncu.txt)
# $OUT gets at most 8 files (the device tool's limit): report.md, build.log,
# gpu_tests.log, bench.log, bench.tar.gz (the CSV/PNG files) and, with
# cputests, cpu_tests.log; with NCU=1, ncu.txt. The tests run one process per family (attention,
# LSTM, the rest), so a device fault in one family cannot fail the others,
# each capped so that the script always writes its report. report.md is
# appended line by line (a kill keeps what came before) and says, per step,
# PASS / FAIL / TIMEOUT / SKIPPED with its elapsed seconds.
cd "$(dirname "$0")/.."
export PYDL_SKIP_PIP=1 PYDL_CUDA=1 PYTHONUNBUFFERED=1
# pydl is not installed there: scripts/*.py import it from the repo root.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
STEPS=${STEPS:-"build tests bench"}
FAMILIES=${FAMILIES:-"lstm attention other"}  # whose gpu tests the tests step runs
BUDGET=${BUDGET:-540}
MIN_STEP_S=${MIN_STEP_S:-30}
report="$OUT/report.md"
summary=""
# A step's timeout: its own default ($1), but ending, its kill grace ($2)
# included, 5 s before the budget does, so the report is always written.
# (At least 1: `timeout 0` would mean no limit at all.)
capped() { local room=$((BUDGET - SECONDS - ${2:-0} - 5)); (( room < 1 )) && room=1; echo $(( $1 < room ? $1 : room )); }
# One line per step, in the report at once and in the summary at the end.
step_line() { echo "$1" | tee -a "$report"; summary+="- $1"$'\n'; }
# $1 label, $2 exit status, $3 start (SECONDS), $4 note. 124/137: timeout's.
step_result() {
  local verdict
  case $2 in
    0) verdict=PASS ;;
    124|137) verdict="TIMEOUT (exit $2)" ;;
    5) verdict="FAIL (exit 5: no tests collected)" ;;
    *) verdict="FAIL (exit $2)" ;;
  esac
  step_line "$1: $verdict in $((SECONDS - $3)) s${4:+ — $4}"
}
# Under MIN_STEP_S left, skip the step rather than start it to be killed: a
# kill past the tool's timeout would lose the whole of $OUT.
has_budget() {
  (( BUDGET - SECONDS >= MIN_STEP_S )) && return 0
  step_line "$1: SKIPPED (budget) at $SECONDS s of $BUDGET"
  return 1
}
# The tool's kill (TERM) still leaves a last line saying where it happened.
trap 'echo "gpu_check: killed (signal) at $SECONDS s" >> "$report"; exit 143' TERM INT
# The later steps need pydl._C: build it when this machine has none yet.
if [[ $STEPS != *build* ]] && ! ls pydl/_C*.so > /dev/null 2>&1; then STEPS="build $STEPS"; fi
# CUDA_HOME: /usr/local/cuda when it holds nvcc (a wrapper script on PATH
# would make the guess below /usr/local, which breaks linking), else where
# the nvcc on PATH really lives.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
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
# (Never tried on that image: the build falls back to the default once.)
# The script sets no CFLAGS (setup.py adds -fopenmp/-std itself), so these
# three are all it overrides.
# The image exports CXX=/opt/gcc/bin/g++ itself (seen 2026-11-27: the build
# took it, and the crash came back), so a preset CXX is overridden too, unless
# PYDL_KEEP_CXX=1.
overrides=""
image_cxx=${CXX:-}
if [ -x /usr/bin/g++ ] && [ -z "${PYDL_KEEP_CXX:-}" ] && [ "${CXX:-}" != /usr/bin/g++ ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -shared"
  overrides="CC CXX LDSHARED"
fi
{
  echo "# pydl gpu_check $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: ${PYDL_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 \
    || echo "nvidia-smi failed"
  # The toolchain, before building: what a failed build is read against.
  echo "g++: $(g++ --version 2>&1 | head -n 1)"
  [ -n "$image_cxx" ] && echo "image's CXX=$image_cxx: $("$image_cxx" --version 2>&1 | head -n 1)"
  [ -n "${CXX:-}" ] && echo "CXX=$CXX: $("$CXX" --version 2>&1 | head -n 1)"
  echo "nvcc: $(nvcc --version 2>&1 | tail -n 1)"
  echo "CUDA_HOME=${CUDA_HOME:-unset}"
  echo "python: $("$PYTHON" --version 2>&1) ($(command -v "$PYTHON"))"
  timeout 60 "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tail -n 3
} | tee -a "$report"

# One build; a failure is a non-zero exit or no pydl/_C*.so afterwards.
build_once() {
  local start=$SECONDS rc
  echo "== build attempt $1 (CC=${CC:-default} CXX=${CXX:-default})" >> "$OUT/build.log"
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
    timeout -k 10 "$(capped 400 10)" "$PYTHON" setup.py build_ext --inplace >> "$OUT/build.log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ] && ! ls pydl/_C*.so > /dev/null 2>&1; then rc=1; fi
  step_result "build attempt $1 (${2})" "$rc" "$start"
  tail -n 5 "$OUT/build.log"
  return "$rc"
}
if [[ $STEPS == *build* ]]; then
  : > "$OUT/build.log"
  if has_budget "build attempt 1"; then
    build_once 1 "${CXX:-default compiler}"; rc=$?
    # Retry with the image's own compiler (the static-libstdc++ risk above
    # beats no build at all; the nm check below flags it).
    if [ "$rc" -ne 0 ] && [ -n "$overrides" ] && has_budget "build attempt 2"; then
      unset CC CXX LDSHARED $overrides
      [ -n "$image_cxx" ] && export CXX=$image_cxx
      build_once 2 "default compiler, overrides unset" \
        && step_line "build: attempt 2 (default compiler) succeeded"
    elif [ "$rc" -eq 0 ]; then
      step_line "build: attempt 1 (${CXX:-default compiler}) succeeded"
    fi
  fi
fi
start=$SECONDS
PYDL_EXPERIMENTAL_CUDA=1 timeout -k 5 "$(capped 60 5)" "$PYTHON" -c "import pydl; print(pydl.info())" 2>&1 | tee -a "$report"
# Without a CUDA build every gpu test would skip and every "pydl" bench row be
# torch's, and likewise without a visible GPU: stop here and say why.
timeout -k 5 "$(capped 60 5)" "$PYTHON" -c "import sys, torch; from pydl import _ext
sys.exit(0 if _ext.loaded() and _ext.built_with_cuda() and torch.cuda.is_available() else 1)"
rc=$?
step_result "smoke (pydl._C loaded with CUDA kernels, GPU visible)" "$rc" "$start"
if [ "$rc" -ne 0 ]; then
  echo "STOP: pydl._C is not loaded, has no CUDA kernels, or torch sees no GPU; the end of build.log:" | tee -a "$report"
  tail -n 40 "$OUT/build.log" 2>/dev/null | tee -a "$report"
  printf '## summary\n%s' "$summary" >> "$report"
  echo "gpu_check: stopped in $SECONDS s" | tee -a "$report"
  exit 1
fi
# (grep reads nm's output from a file: under pipefail, grep -q quitting early
# would make nm's SIGPIPE fail the test exactly when it matched.)
nm -C pydl/_C*.so > /tmp/pydl_nm.txt 2>/dev/null
grep -q " [TtWw] .*std::locale::" /tmp/pydl_nm.txt \
  && echo "WARNING: _C.so carries its own libstdc++ (static link)" | tee -a "$report"

# Bad input must raise, never crash; if it crashes, keep a backtrace.
bad_input='import torch, pydl
x, w = torch.randn(1, 8, 5, 5), torch.randn(6, 8, 3, 3)
try:
    torch.ops.pydl.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 4, "none", None)
except RuntimeError as e:
    print("bad input raised:", str(e).splitlines()[0])'
rc=0
if has_budget "bad input raises"; then
  start=$SECONDS
  timeout -k 5 "$(capped 60 5)" "$PYTHON" -c "$bad_input" 2>&1 | tee -a "$report"
  rc=${PIPESTATUS[0]}
  step_result "bad input raises" "$rc" "$start"
fi
# (BACKTRACE=0 skips it: up to 120 s of a short rerun's budget.)
if [ "$rc" -ne 0 ] && [ "${BACKTRACE:-1}" != 0 ] && command -v cuda-gdb > /dev/null \
    && has_budget "bad input backtrace"; then
  echo "bad input crashed; backtrace:" | tee -a "$report"
  timeout -k 5 "$(capped 120 5)" cuda-gdb -batch -ex run -ex bt --args "$PYTHON" -c "$bad_input" 2>&1 \
    | grep -E "^#|signal" | head -n 25 | tee -a "$report"
fi

# pytest under a cap: SIGINT first (pytest then still prints its summary of
# failures), KILL 15 s later. -v prints each test's name as it starts, so a
# hang names its test; faulthandler_timeout (30 s, shorter than the cap)
# dumps every thread's stack from a watchdog thread, which works even while
# the main thread is stuck in a grid.sync or CUDA sync that SIGINT can't reach.
capped_pytest() {
  local cap=$1 label=$2; shift 2
  local start=$SECONDS ft=$(( cap >= 45 ? 30 : (cap * 2 / 3 > 3 ? cap * 2 / 3 : 3) ))
  echo "== $label (cap $cap s, faulthandler $ft s)" >> "$OUT/gpu_tests.log"
  PYDL_EXPERIMENTAL_CUDA=1 timeout -s INT -k 15 "$cap" "$PYTHON" -m pytest -v -p no:cacheprovider \
    -rfE -o faulthandler_timeout="$ft" --durations=5 "$@" >> "$OUT/gpu_tests.log" 2>&1
  step_result "$label" $? "$start" "$(tail -n 1 "$OUT/gpu_tests.log")"
}

if [[ $STEPS == *" tests"* || $STEPS == "tests"* ]]; then
  : > "$OUT/gpu_tests.log"
  # The LSTM family runs last and a slow build starves it: its persistent,
  # stream and graph tests first, briefly (the full run below stays).
  [[ $FAMILIES == *lstm* && ${LSTM_QUICK:-1} != 0 ]] && has_budget "lstm quick gpu tests" && capped_pytest "$(capped 45 15)" "lstm quick gpu tests" \
    tests/test_lstm_cuda.py -m gpu -k "persistent or stream or graph"
  # Attention: one line of errors per CUDA kernel path, before the full tests.
  if [[ $FAMILIES == *attention* ]] && has_budget "attention smoke"; then
    start=$SECONDS
    timeout -k 5 "$(capped 60 5)" "$PYTHON" scripts/attention_smoke.py 2>&1 | tail -n 20 | tee -a "$report"
    step_result "attention smoke" "${PIPESTATUS[0]}" "$start"
  fi
  # One process per family (a device fault poisons its process's CUDA context).
  # Attention has ~160 tests, LSTM ~65; conv2d was verified on an H200.
  # Every half case of this test failed on an H200 (2026-11-27) and a later
  # crash lost the messages: first on its own, its tracebacks short.
  [[ $FAMILIES == *attention* ]] && has_budget "attention forward tests" && capped_pytest \
    "$(capped 40 15)" "attention forward tests" tests/test_attention_cuda.py -m gpu --tb=short \
    -k "forward_matches_reference and (float16 or bfloat16)"
  [[ $FAMILIES == *attention* ]] && has_budget "attention gpu tests" && capped_pytest "$(capped "${ATTENTION_TEST_TIMEOUT:-150}" 15)" \
    "attention gpu tests" tests/test_attention_cuda.py -m gpu \
    -k "not (forward_matches_reference and (float16 or bfloat16))"
  [[ $FAMILIES == *lstm* ]] && has_budget "lstm gpu tests" && capped_pytest "$(capped "${LSTM_TEST_TIMEOUT:-100}" 15)" \
    "lstm gpu tests" tests/test_lstm_cuda.py -m gpu
  # The tensor-core kernels' variants (m-tile layouts, whole-tile softmax)
  # beside torch's flash backend: decides the defaults. After the tests: it
  # informs, they verify.
  if [[ $FAMILIES == *attention* ]] && has_budget "attention tc A/B"; then
    start=$SECONDS
    timeout -k 5 "$(capped 90 5)" "$PYTHON" scripts/attention_tc_ab.py 2>&1 | tail -n 16 | tee -a "$report"
    step_result "attention tc A/B" "${PIPESTATUS[0]}" "$start"
  fi
  # NCU=1: Nsight Compute's counters of the attention kernels, pydl's and
  # flash's, at one case (scripts/attention_ncu.py) into ncu.txt: what the
  # A/B's timings cannot say (stall reasons, pipe use). --clock-control none:
  # the device notes say to leave the clocks alone. Charts too (the stall
  # breakdown) where this ncu knows --print-details all.
  ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
  if [[ ${NCU:-0} == 1 && $FAMILIES == *attention* && -n $ncu_bin ]] && has_budget "attention ncu"; then
    start=$SECONDS
    ncu_args=(--clock-control none -k "regex:dkdv_kernel|dq_kernel|forward_kernel|flash_" -c 10
              --section SpeedOfLight --section Occupancy --section LaunchStats
              --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis
              --section MemoryWorkloadAnalysis_Tables --section InstructionStats)
    timeout -k 5 "$(capped 120 5)" "$ncu_bin" "${ncu_args[@]}" --print-details all \
      "$PYTHON" scripts/attention_ncu.py > "$OUT/ncu.txt" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ] && grep -q "print-details" "$OUT/ncu.txt" && has_budget "attention ncu (plain)"; then
      timeout -k 5 "$(capped 120 5)" "$ncu_bin" "${ncu_args[@]}" "$PYTHON" scripts/attention_ncu.py \
        > "$OUT/ncu.txt" 2>&1
      rc=$?
    fi
    step_result "attention ncu ($ncu_bin)" "$rc" "$start" "$(grep -m1 "max|grad" "$OUT/ncu.txt")"
  elif [[ ${NCU:-0} == 1 && -z $ncu_bin ]]; then
    step_line "attention ncu: SKIPPED (no ncu on this machine)"
  fi
  # NCU=1, LSTM: the persistent forward's counters, grid barrier and tagged
  # exchange (scripts/lstm_ncu.py), appended to ncu.txt (the file limit).
  if [[ ${NCU:-0} == 1 && $FAMILIES == *lstm* && -n $ncu_bin ]] && has_budget "lstm ncu"; then
    start=$SECONDS
    echo "==== lstm (scripts/lstm_ncu.py) ====" >> "$OUT/ncu.txt"
    timeout -k 5 "$(capped 90 5)" "$ncu_bin" --clock-control none -k "regex:persistent_forward_kernel" \
      -c 4 --section SpeedOfLight --section Occupancy --section WarpStateStats \
      --section SchedulerStats --section MemoryWorkloadAnalysis_Tables --section InstructionStats \
      "$PYTHON" scripts/lstm_ncu.py >> "$OUT/ncu.txt" 2>&1
    step_result "lstm ncu" "$?" "$start" "$(grep "max|tagged" "$OUT/ncu.txt" | tr '\n' ' ')"
  fi
  # The persistent LSTM kernel's grid (hidden units per block) beside cuDNN.
  if [[ $FAMILIES == *lstm* ]] && has_budget "lstm persistent A/B"; then
    start=$SECONDS
    timeout -k 5 "$(capped 90 5)" "$PYTHON" scripts/lstm_persistent_ab.py 2>&1 | tail -n 24 | tee -a "$report"
    step_result "lstm persistent A/B" "${PIPESTATUS[0]}" "$start"
  fi
  # conv2d passed on an H200 (2026-11-26) except its bad-argument tests (the
  # crash fixed by building with the system g++): those, plus the models'.
  [[ $FAMILIES == *other* ]] && has_budget "conv bad-argument + model gpu tests" && capped_pytest "$(capped "${OTHER_TEST_TIMEOUT:-45}" 15)" \
    "conv bad-argument + model gpu tests" \
    tests/test_conv2d_cuda.py tests/test_models.py -m gpu -k "bad_arguments or registered or models"
  grep -E "^(FAILED|ERROR)" "$OUT/gpu_tests.log" | head -n 25 | tee -a "$report"
fi

if [[ $STEPS == *cputests* ]] && has_budget "cpu tests"; then
  # (Not the CUDA-emulation tests: the real GPU is here.)
  start=$SECONDS
  PYDL_STRICT=1 timeout -s INT -k 15 "$(capped 300 15)" "$PYTHON" -m pytest tests -m "not gpu" -q \
    -p no:cacheprovider -rfE --ignore-glob='tests/test_cuda_emulation_*' \
    > "$OUT/cpu_tests.log" 2>&1
  step_result "cpu tests" $? "$start" "$(tail -n 1 "$OUT/cpu_tests.log")"
  grep -E "^(FAILED|ERROR)" "$OUT/cpu_tests.log" | head -n 20 | tee -a "$report"
fi

if [[ $STEPS == *bench* ]]; then
  # One process per family: each writes its CSV/PNG when it ends, so a later
  # family running out of time loses only its own rows.
  : > "$OUT/bench.log"
  for family in ${BENCH_ONLY:-attention/ lstm/}; do
    has_budget "bench $family" || continue
    start=$SECONDS
    PYDL_EXPERIMENTAL_CUDA=1 timeout -s INT -k 10 "$(capped "${BENCH_TIMEOUT:-100}" 10)" "$PYTHON" \
      -m benchmarks --device cuda --quick --only "$family" --out /tmp/pydl_bench >> "$OUT/bench.log" 2>&1
    step_result "bench $family" $? "$start"
  done
  grep -E "geomean|^(attention|lstm)/" "$OUT/bench.log" | head -n 80 >> "$report"
  # The LSTM's path A/B rows (indented provider lines under their case):
  # "pydl loop" (cuBLAS loop at batch <= 32), "pydl persistent" (the
  # persistent kernels past 32 rows, PYDL_LSTM_PERSISTENT_MAX_BATCH).
  awk '/^lstm\//{case=$1} /^ +pydl (loop|persistent) /{print case, $0}' "$OUT/bench.log" \
    | head -n 20 >> "$report"
  # Issue 4 asks for the LSTM's float32 and fp16 rows beside bf16's (LSTM_DTYPES="" skips).
  for dtype in ${LSTM_DTYPES-float32 float16}; do
    has_budget "bench lstm/ $dtype" || continue
    start=$SECONDS
    echo "== lstm/ $dtype" >> "$OUT/bench.log"
    PYDL_EXPERIMENTAL_CUDA=1 timeout -s INT -k 10 "$(capped "${BENCH_TIMEOUT:-100}" 10)" "$PYTHON" \
      -m benchmarks --device cuda --quick --only lstm/ --dtype "$dtype" \
      --out "/tmp/pydl_bench/$dtype" > "$OUT/bench_lstm_$dtype.log" 2>&1
    step_result "bench lstm/ $dtype" $? "$start"
    { echo "### lstm/ $dtype"; grep -E "geomean|^lstm/" "$OUT/bench_lstm_$dtype.log"; } >> "$report"
    cat "$OUT/bench_lstm_$dtype.log" >> "$OUT/bench.log" && rm -f "$OUT/bench_lstm_$dtype.log"
  done
  tar -czf "$OUT/bench.tar.gz" -C /tmp pydl_bench 2>/dev/null
fi
printf '## summary\n%s' "$summary" >> "$report"
echo "gpu_check: done in $SECONDS s" | tee -a "$report"
