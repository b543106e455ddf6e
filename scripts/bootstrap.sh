#!/usr/bin/env bash
# Creates .venv and installs scu-jax with the pinned dependency versions (requirements/constraints.txt)
# and the test fixtures' wheels (requirements/fixtures.txt, without their dependencies).
# Does nothing when .venv is already up to date with those files and pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
stamp=.venv/.scu-jax-installed
want=$(cat requirements/constraints.txt requirements/fixtures.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (pinned dependencies; a few minutes the first time)..." >&2
"$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
.venv/bin/python -m pip install --quiet --no-deps -r requirements/fixtures.txt
echo "$want" > "$stamp"
