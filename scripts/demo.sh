#!/usr/bin/env bash
# The main job on the embedded 5,000-image MNIST: sets up .venv, then trains the original system.
#   scripts/demo.sh [WORKDIR]   (default runs/mnist; rerunning resumes / re-reports)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
workdir=${1:-runs/mnist}
.venv/bin/scu-train --config=configs/mnist.py --workdir="$workdir"
.venv/bin/python -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({k: r[k] for k in ('accuracy_clean','backdoor_accuracy','mse_clean','mse_erased','psnr_clean','ssim_clean','accuracy_test','train_seconds')}, indent=2))" "$workdir/results.json"
