#!/usr/bin/env bash
# The main job on the embedded 5,000-image MNIST: sets up .venv, trains the original system,
# unlearns the erased set with every method (retrain, scu, scu_no_cc, vbu, hbu, finetune, and
# the field's ssd, l1_sparse, salun),
# evaluates them and prints one comparison table.
#   scripts/demo.sh [WORKDIR] [SEEDS]      (defaults: runs/demo and 0; e.g. SEEDS=0,1,2)
# Rerunning resumes: finished stages are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/scu-pipeline --config=configs/mnist.py --workdir="${1:-runs/demo}" --seeds="${2:-0}"
