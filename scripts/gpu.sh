#!/usr/bin/env bash
# The GPU checks in one command, for a lent GPU machine (docs/gpu.md "GPU"):
#   bash scripts/gpu.sh [BENCH_BUDGET_S] [TESTS_S]       (defaults 300 and 100; files go to $OUT,
#                                                        which the device tool sets, else runs/gpu)
# (a trial on a CPU: JAX_PLATFORMS=cpu BENCH_ARGS="--tiny --sections=peaks" bash scripts/gpu.sh 60 30)
# 1. the environment: versions, the GPU (env.txt);
# 2. a smoke scu-train + scu-unlearn (SCU) on the GPU (smoke.log);
# 3. the unit tests that start no binary and need no multi-device CPU, under
#    JAX_PLATFORMS=cuda with float32 products in full precision (the tests compare against
#    float32 CPU references; TF32, JAX's GPU default, is the benchmark's business), stopped after
#    TESTS_S seconds with pytest's summary (tests.log);
# 4. python -m benchmarks.gpu within BENCH_BUDGET_S (bench.log, results.json, tables.md, which it
#    rewrites after every measurement; stopped 45 s past its budget, it prints what it has).
# Under the device tool's 10-minute limit with the defaults: ~15 + ≤100 + ≤115 + ≤365 s.
# Python packages the machine lacks travel as wheels in .whl/, fetched here beforehand with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     ml_collections==1.1.0 dm_pix==0.4.5 mlxtend==0.25.0 tensorboardX==2.6.5 \
#     tensorflow_datasets==4.9.10 array_record==0.8.6 dm-tree==0.1.10 immutabledict==4.3.1 \
#     simple_parsing==0.1.9 docstring_parser termcolor==3.3.0 toml==0.10.2 \
#     tensorflow_metadata==1.21.0 googleapis-common-protos
#   pip wheel --no-deps -w .whl promise==2.3        # an sdist only: built here, pure Python
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
BENCH_BUDGET_S=${1:-300}
TESTS_S=${2:-100}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "gpu.sh: the wheels in .whl/ did not install"; exit 1; }
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}

echo "== environment"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 - <<'PYEOF'
import importlib
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "chex", "torch", "numpy",
             "ml_collections", "tensorflow_datasets"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as error:  # report, do not stop: later steps say what breaks
        print(name, "FAILED", repr(error))
import jax
print("devices", jax.devices(), "backend", jax.default_backend())
PYEOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== smoke scu-train + scu-unlearn on the GPU"
SMOKE=$(mktemp -d)
started=$SECONDS
timeout 60 python3 -m scu_jax.binaries.train --config=configs/mnist.py:smoke \
  --workdir="$SMOKE/train" > "$OUT/smoke.log" 2>&1 \
  && timeout 40 python3 -m scu_jax.binaries.unlearn --config=configs/mnist.py:smoke \
       --config.unlearning.method=scu --init_workdir="$SMOKE/train" --workdir="$SMOKE/scu" \
       >> "$OUT/smoke.log" 2>&1
echo "smoke: exit $? in $((SECONDS - started)) s"
grep -E "accuracy|backdoor|error|Error" "$OUT/smoke.log" | tail -8

echo "== unit tests under JAX_PLATFORMS=$JAX_PLATFORMS (at most $TESTS_S s)"
# No test here starts a binary or needs tfds' datasets beyond its mock; xdist workers share the
# GPU, so none of them takes most of its memory up front.
PER_TEST=$(python3 -c "import pytest_timeout" 2> /dev/null && echo --timeout=90)
XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest \
  timeout -k 15 -s INT "$TESTS_S" python3 -m pytest -q -n 8 \
  -p no:cacheprovider ${PER_TEST:-} \
  tests/channels_test.py tests/losses_test.py tests/models_test.py tests/mi_test.py \
  tests/engine_test.py tests/baselines_test.py tests/unlearning_test.py tests/train_test.py \
  tests/evaluation_test.py tests/checkpointing_test.py tests/api_test.py tests/data_test.py \
  tests/benchmarks_test.py tests/pipeline_test.py tests/config_test.py \
  > "$OUT/tests.log" 2>&1
echo "tests: exit $?"
grep -E "passed|failed|error" "$OUT/tests.log" | tail -25

echo "== benchmarks.gpu (budget $BENCH_BUDGET_S s)"
timeout -k 20 -s INT $((BENCH_BUDGET_S + 45)) python3 -m benchmarks.gpu --gpu_out="$OUT" \
  --budget_s="$BENCH_BUDGET_S" ${BENCH_ARGS:-} 2> "$OUT/bench.log"
echo "benchmarks.gpu: exit $?"
grep -E "failed|Error" "$OUT/bench.log" | tail -10
