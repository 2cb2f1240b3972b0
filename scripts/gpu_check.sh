#!/usr/bin/env bash
# GPU checks, for a machine with CUDA and torch + transformers already installed (never in CI).
# Runs the transformers-backend tests (CPU and CUDA variants) and the vLLM-backend tests (which skip
# without vllm) on the GPU machine; where vllm imports, also a short `debatelab bench` on vLLM.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/llm/test_hf.py tests/llm/test_hf_cuda.py tests/finetune/test_training_cuda.py tests/test_debate.py tests/test_survey.py tests/llm/test_vllm.py "$@"
status=$?  # the script's result is the tests'; the bench below only reports

if python3 -c "import vllm" 2>/dev/null; then
  OUT="${OUT:-$(mktemp -d)}"
  model="${VLLM_BENCH_MODEL:-}"  # a hub id or local dir; default: the tests' tiny Llama, built here
  if [ -z "$model" ]; then
    model="$(mktemp -d)/vllm-tiny"
    PYTHONPATH="$PYTHONPATH:$PWD/tests:$PWD/tests/llm" python3 -c \
      "import sys; from pathlib import Path; from test_vllm import build_vllm_tiny_model; build_vllm_tiny_model(Path(sys.argv[1]))" \
      "$model" >/dev/null 2>&1 || model=""
  fi
  if [ -n "$model" ]; then
    timeout "${VLLM_BENCH_TIMEOUT:-300}" python3 -m debatelab.cli bench --model "vllm:$model" --json "$OUT/bench_vllm.json" \
      || echo "bench unavailable"
  else
    echo "bench unavailable (could not build the tiny model)"
  fi
fi
exit $status
