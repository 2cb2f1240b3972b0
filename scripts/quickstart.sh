#!/usr/bin/env bash
# Fresh machine -> set up -> run the quickstart experiment on the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/debatelab run experiments/quickstart.yaml --out runs/quickstart "$@"
