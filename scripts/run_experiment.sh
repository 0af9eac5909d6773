#!/usr/bin/env bash
# Run a CMAAM experiment: prepare data -> fine-tune -> CMAAM merges -> linear baselines -> evaluate -> compare.
#   scripts/run_experiment.sh demo                      # built-in CPU demo, no data or download needed
#   scripts/run_experiment.sh full --set data.korean_source=/data/korean_vqa
# Rerunning resumes: finished steps are skipped. Logs: <output_dir>/logs/<step>.log
set -euo pipefail
exec "${PYTHON:-python}" -m cmaam.experiment "$@"
