#!/usr/bin/env bash
# GPU checks, for a machine with CUDA and torch + transformers already installed (never in CI).
# Runs the transformers-backend tests (CPU and CUDA variants) on the GPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/llm/test_hf.py tests/llm/test_hf_cuda.py tests/finetune/test_training_cuda.py tests/test_debate.py tests/test_survey.py "$@"
