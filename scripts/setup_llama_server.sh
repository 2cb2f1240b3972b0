#!/usr/bin/env bash
# The peer for the backend-invariance tests (idempotent): llama.cpp's OpenAI-compatible server
# from PyPI (llama-cpp-python[server], an sdist compiled here) in its own virtualenv,
# .venv-llama, so its pins never touch debatelab's. Prints how long the build took.
#
# Built for AVX2 and not -march=native: on an Intel Xeon with AMX, the native build of 0.3.36
# crashes in ggml_backend_amx_mul_mat on the embedded Q4_1 GGUF (segmentation fault on the first
# token), and an AVX2 build runs on both kinds of machine (AMD EPYC, Intel Xeon).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VERSION=0.3.36
if [ -x .venv-llama/bin/python ] && .venv-llama/bin/python -c "import llama_cpp.server, llama_cpp; assert llama_cpp.__version__ == '$VERSION'" 2>/dev/null; then
  echo "llama.cpp server ready: .venv-llama (llama-cpp-python $VERSION)"
  exit 0
fi
[ -x .venv-llama/bin/python ] || "$PYTHON" -m venv .venv-llama
start=$(date +%s)
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
  .venv-llama/bin/python -m pip --disable-pip-version-check -q install "llama-cpp-python[server]==$VERSION"
echo "llama.cpp server built in $(( $(date +%s) - start )) s: .venv-llama (llama-cpp-python $VERSION)"
