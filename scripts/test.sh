#!/usr/bin/env bash
# The test suite: sets up .venv, then runs pytest on two worker processes.
#   scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
