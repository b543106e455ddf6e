"""What the checkpoints' digests cost: the digest alone, and a whole smoke training with and
without it, side by side in one process.

```
python -m benchmarks.digests [--repeats=3]
```
- **digest alone**: `tree_digest` of a whole training state (parameters, BatchNorm statistics,
  both phases' Adam state), the arrays already on the host: the MNIST system of the main job,
  and the CIFAR-10 ResNet at the paper's widths. Best of `--repeats`.
- **smoke training**: `train_and_evaluate` on `configs/mnist.py:smoke` (7 epochs, 7 checkpoints,
  evaluation) in a fresh workdir, once with the digests and once with `tree_digest` replaced by
  a constant, alternating, `--repeats` times each; its share is (with − without) / with, and
  the digest calls' own time over the run's.
"""

from __future__ import annotations

import tempfile
import time
from unittest import mock

from absl import app, flags

_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs of each variant (alternating).")


def _state(dataset: str):
    import jax

    from scu_jax import presets
    from scu_jax.methods import training
    from scu_jax.runs.build import build_system, recipe_of

    config = presets.preset(dataset)
    shape = (28, 28, 1) if dataset == "mnist5k" else (32, 32, 3)
    system = build_system(config, shape, 10)
    state = training.initial_state(system, recipe_of(config), 0, shape)
    return jax.device_get(state)


def main(argv) -> None:
    del argv
    import jax

    from scu_jax import presets
    from scu_jax.runs import checkpointing, train

    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}\n")
    print("| state | arrays | MB | digest s | MB/s |\n|---|---|---|---|---|")
    for dataset in ("mnist5k", "cifar10"):
        state = _state(dataset)
        leaves = jax.tree.leaves(state)
        megabytes = sum(leaf.nbytes for leaf in leaves) / 1e6
        best = min(_timed(lambda: checkpointing.tree_digest(state)) for _ in range(_REPEATS.value))
        print(f"| {dataset} training state | {len(leaves)} | {megabytes:.1f} | {best:.4f} | "
              f"{megabytes / best:.0f} |")

    real = checkpointing.tree_digest
    spent = []

    def counted(tree):
        begun = time.perf_counter()
        try:
            return real(tree)
        finally:
            spent[-1] += time.perf_counter() - begun

    config = presets.apply_variant(presets.preset("mnist5k"), "smoke")
    config.evaluation.mi_steps = 0
    rows = {"with digests": [], "without": []}
    for _ in range(_REPEATS.value):
        for variant in rows:
            stub = counted if variant == "with digests" else (lambda tree: "0" * 64)
            spent.append(0.0)
            with tempfile.TemporaryDirectory() as workdir, \
                    mock.patch.object(checkpointing, "tree_digest", stub):
                rows[variant].append((_timed(lambda: train.train_and_evaluate(config, workdir)),
                                      spent[-1]))
    with_s = [seconds for seconds, _ in rows["with digests"]]
    without_s = [seconds for seconds, _ in rows["without"]]
    digest_s = [digest for _, digest in rows["with digests"]]
    print("\n| smoke training (7 checkpoints) | wall s (each run) |\n|---|---|")
    for variant, runs in rows.items():
        print(f"| {variant} | {', '.join(f'{seconds:.2f}' for seconds, _ in runs)} |")
    share = [d / w for d, w in zip(digest_s, with_s)]
    print(f"\ndigest calls: {min(digest_s):.3f}–{max(digest_s):.3f} s a run, "
          f"{100 * min(share):.2f}–{100 * max(share):.2f} % of the run's wall time; "
          f"median with/without: {sorted(with_s)[len(with_s) // 2]:.2f} / "
          f"{sorted(without_s)[len(without_s) // 2]:.2f} s")


def _timed(work) -> float:
    begun = time.perf_counter()
    work()
    return time.perf_counter() - begun


if __name__ == "__main__":
    app.run(main)
