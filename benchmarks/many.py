"""Independent unlearning runs per second: N runs vmapped in ONE compiled program
(`engine.run_many`) against the same N runs one by one (`engine.run`), side by side in one
process; `python -m benchmarks.run` prints the curve (`--many_runs=1,2,4,8,16`).

Each run is the main job's SCU run at EDR 6 % (the MNIST codec, D_e 240 and D_r 3,760 images,
batch 16, 15 steps an epoch, the stopping evaluation of all of D_e after every epoch) with its
own seed (own batches and keys), on synthetic uint8 images (throughput does not depend on pixel
values), for a fixed number of epochs (its stop threshold unreachable, so every run does the
same work and the rates compare). Rates are the best of `repeats`, compilation apart; the compile time of
each way is reported too (one by one compiles once per run; vmapped, once for all).
"""

from __future__ import annotations

import sys
from typing import Any


# Runs timed one by one (each compiled afresh, as separate `engine.run` calls are).
ALONE_RUNS = 4


def _setup(epochs: int):
    """The method, one phase per seed, the stacked data and the evaluation data."""
    import jax
    import numpy as np

    from scu_jax import config as config_lib
    from scu_jax.methods import Batch, training, unlearning_phase
    from scu_jax.passes import system_for_evaluation
    from scu_jax.runs.build import build_system, method_of, protocol_of, recipe_of
    from scu_jax.stopping import draws_of, stopping_key, target_rate

    config = config_lib.default_config()
    shape, erased, remain = (28, 28, 1), 240, 3760
    system = build_system(config, shape, 10)
    trained = training.initial_state(system, recipe_of(config), 0, shape)
    method = method_of(config, system)
    protocol = protocol_of(config)
    eval_system = system_for_evaluation(system, protocol)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (erased + remain, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, erased + remain).astype(np.int32)
    data = Batch(images[:erased], labels[:erased], images[erased:], labels[erased:])
    eval_data = (draws_of(images[:erased], protocol), stopping_key(protocol))

    def evaluate(state, eval_data):
        draws, key = eval_data
        return target_rate(eval_system, state.params, state.batch_stats, draws, 2, key)

    def phase(seed):  # an unreachable threshold: every run does `epochs` epochs
        return unlearning_phase(method, seed=seed, num_erased=erased, num_remain=remain,
                                batch_size=16, max_epochs=epochs, batch_stop=-1.0,
                                epoch_stop=1e-9, stop_on="eval", evaluate=evaluate)

    def state():
        return method.init(*jax.tree.map(np.array, (trained.params, trained.batch_stats)))

    return phase, state, data, eval_data


def measure(counts: list[int], epochs: int, repeats: int, alone: bool = True
            ) -> list[dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scu_jax import engine
    from scu_jax.runs.erasing import EPOCHS_PER_DISPATCH

    phase, state, data, eval_data = _setup(epochs)
    stack = lambda *trees: jax.tree.map(lambda *a: np.stack(a), *trees)  # noqa: E731
    keys = jnp.stack([jax.random.PRNGKey(seed) for seed in range(max(counts))])
    alone_rate = alone_compile = None
    if alone:  # a run alone takes as long whatever N is: timed on a few, each compiled afresh
        phases = [phase(seed) for seed in range(min(max(counts), ALONE_RUNS))]
        best, compiles = float("inf"), 0.0
        for _ in range(repeats):
            seconds, compiles = 0.0, 0.0
            for index, one in enumerate(phases):
                _, report = engine.run([one], state(), data, keys[index], name="alone",
                                       eval_data=eval_data,
                                       epochs_per_dispatch=EPOCHS_PER_DISPATCH)
                assert report.epochs == epochs
                seconds += report.seconds
                compiles += report.compile_seconds
            best = min(best, seconds)
        alone_rate, alone_compile = len(phases) / best, compiles / len(phases)
    rows = []
    for count in counts:
        phases = [phase(seed) for seed in range(count)]
        best, compile_seconds = float("inf"), 0.0
        for _ in range(repeats):
            _, reports = engine.run_many(
                phases[0], [p.batches for p in phases], stack(*[state() for _ in phases]), data,
                keys[:count], name="many", shared_data=True,
                eval_data=stack(*[eval_data] * count), epochs_per_dispatch=EPOCHS_PER_DISPATCH)
            assert all(r.epochs == epochs for r in reports)
            best, compile_seconds = min(best, reports[0].seconds), reports[0].compile_seconds
        row = {"runs": count, "steps_per_run": reports[0].steps,
               "vmapped_runs_per_s": count / best, "vmapped_seconds": best,
               "vmapped_compile_s": compile_seconds}
        if alone:
            row.update(alone_runs_per_s=alone_rate, alone_compile_s_per_run=alone_compile,
                       speedup=count / best / alone_rate,
                       speedup_with_compile=(count / alone_rate + count * alone_compile)
                       / (best + compile_seconds))
        rows.append(row)
        print(f"N={count}: vmapped {row['vmapped_runs_per_s']:.2f} runs/s"
              + (f", one by one {alone_rate:.2f} runs/s" if alone else ""),
              file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    alone = "alone_runs_per_s" in rows[0]
    lines = ["| N runs | vmapped runs/s | vmapped compile s |"
             + (" one by one runs/s | one by one compile s a run | vmapped / one by one | "
                "with compilation |" if alone else ""),
             "|---|---|---|" + ("---|---|---|---|" if alone else "")]
    for r in rows:
        line = f"| {r['runs']} | {r['vmapped_runs_per_s']:.2f} | {r['vmapped_compile_s']:.1f} |"
        if alone:
            line += (f" {r['alone_runs_per_s']:.2f} | {r['alone_compile_s_per_run']:.1f} | "
                     f"{r['speedup']:.2f}× | {r['speedup_with_compile']:.2f}× |")
        lines.append(line)
    return "\n".join(lines)
