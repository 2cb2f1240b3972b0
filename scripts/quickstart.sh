#!/usr/bin/env bash
# Fresh machine -> set up -> run the quickstart experiment on the embedded model -> results table
# (mean ± SE per topic, role and iteration; invalid answers) and an HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=runs/quickstart
status=0
# A run in which some debates failed exits 1; its complete debates are still shown and reported.
.venv/bin/debatelab run experiments/quickstart.yaml --out "$OUT" "$@" || status=$?
if [ -f "$OUT/run.sqlite" ]; then
  .venv/bin/debatelab report "$OUT" --out "$OUT/report"
  echo
  .venv/bin/debatelab show "$OUT"
  echo
  echo "report: $(pwd)/$OUT/report/report.html"
fi
exit "$status"
