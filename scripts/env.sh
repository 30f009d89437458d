# Sourced by the other scripts: puts in place what building pydl needs.
# Idempotent and quick when everything is already installed.
set -euo pipefail

# torch guesses CUDA_HOME from the nvcc on PATH; on these machines a wrapper in
# /usr/local/bin makes it guess /usr/local, which breaks linking.
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then
  export CUDA_HOME=/usr/local/cuda
fi

PYTHON=${PYTHON:-python3}
if [ "${PYDL_SKIP_PIP:-0}" != "1" ]; then
  # torch first: the extension is compiled against the torch that imports it.
  "$PYTHON" -m pip install -q --disable-pip-version-check "torch>=2.11" numpy ninja pybind11 \
    pytest expecttest tqdm matplotlib scikit-learn nvidia-cutlass 2>&1 | grep -v "Running pip as the 'root'" || true
fi

# Builds pydl/_C in place (incremental: ninja keeps build/ between runs).
build_pydl() {
  local start=$SECONDS
  "$PYTHON" setup.py -q build_ext --inplace 2>&1 | grep -vE "^(copying|running|creating)" | tail -n 30
  echo "pydl build: $((SECONDS - start)) s (PYDL_CUDA=${PYDL_CUDA:-auto})"
}
