"""Independent unlearning (and training) runs per second: N runs vmapped in ONE compiled program
(`engine.run_many`) against the same N runs one by one (`engine.run`), side by side in one
process; `python -m benchmarks.run` prints the curves (`--many_runs=1,2,4,8,16`,
`--many_train_runs=1,2,4`; `measure_training` says what a training run is).

Each run is the main job's SCU run at EDR 6 % (the MNIST codec, D_e 240 and D_r 3,760 images,
batch 16, 15 steps an epoch, the stopping evaluation of all of D_e after every epoch) with its
own seed (own batches and keys), on synthetic uint8 images (throughput does not depend on pixel
values), for a fixed number of epochs (its stop threshold unreachable, so every run does the
same work and the rates compare). Rates are the best of `repeats`, compilation apart; the compile time of
each way is reported too (one by one compiles once per run; vmapped, once for all).
"""

from __future__ import annotations

import sys
from typing import Any, Callable


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


def _compare(counts: list[int], repeats: int, alone: bool, one: Callable[[int], Any],
             together: Callable[[int], list[Any]], label: str) -> list[dict[str, Any]]:
    """The curve: `one(seed)` runs a run alone and `together(count)` runs `count` runs as one
    program (both return engine `Report`s); rates are the best of `repeats`."""
    alone_rate = alone_compile = None
    if alone:  # a run alone takes as long whatever N is: timed on a few, each compiled afresh
        runs = min(max(counts), ALONE_RUNS)
        best, compiles = float("inf"), 0.0
        for _ in range(repeats):
            reports = [one(seed) for seed in range(runs)]
            best = min(best, sum(report.seconds for report in reports))
            compiles = sum(report.compile_seconds for report in reports)
        alone_rate, alone_compile = runs / best, compiles / runs
    rows = []
    for count in counts:
        best, compile_seconds = float("inf"), 0.0
        for _ in range(repeats):
            reports = together(count)
            best, compile_seconds = min(best, reports[0].seconds), reports[0].compile_seconds
        row = {"runs": count, "steps_per_run": reports[0].steps,
               "vmapped_runs_per_s": count / best, "vmapped_seconds": best,
               "vmapped_compile_s": compile_seconds}
        if alone:
            row.update(against_alone(row, alone_rate, alone_compile))
        rows.append(row)
        print(f"{label} N={count}: vmapped {row['vmapped_runs_per_s']:.2f} runs/s"
              + (f", one by one {alone_rate:.2f} runs/s" if alone else ""),
              file=sys.stderr, flush=True)
    return rows


def against_alone(row: dict[str, Any], alone_rate: float, alone_compile: float
                  ) -> dict[str, float]:
    """A curve row's fields against runs one by one at `alone_rate` runs/s, each compiling for
    `alone_compile` s: the speed-up, without and with compilation."""
    count = row["runs"]
    return {"alone_runs_per_s": alone_rate, "alone_compile_s_per_run": alone_compile,
            "speedup": row["vmapped_runs_per_s"] / alone_rate,
            "speedup_with_compile": (count / alone_rate + count * alone_compile)
            / (row["vmapped_seconds"] + row["vmapped_compile_s"])}


def _stack(*trees):
    import jax
    import numpy as np

    return jax.tree.map(lambda *a: np.stack(a), *trees)


def measure(counts: list[int], epochs: int, repeats: int, alone: bool = True
            ) -> list[dict[str, Any]]:
    """The SCU runs' curve (see the module's docstring)."""
    import jax
    import jax.numpy as jnp

    from scu_jax import engine
    from scu_jax.runs.erasing import EPOCHS_PER_DISPATCH

    phase, state, data, eval_data = _setup(epochs)
    keys = jnp.stack([jax.random.PRNGKey(seed) for seed in range(max(counts))])

    def one(seed):
        _, report = engine.run([phase(seed)], state(), data, keys[seed], name="alone",
                               eval_data=eval_data, epochs_per_dispatch=EPOCHS_PER_DISPATCH)
        assert report.epochs == epochs
        return report

    def together(count):
        phases = [phase(seed) for seed in range(count)]
        _, reports = engine.run_many(
            phases[0], [p.batches for p in phases], _stack(*[state() for _ in phases]), data,
            keys[:count], name="many", shared_data=True,
            eval_data=_stack(*[eval_data] * count), epochs_per_dispatch=EPOCHS_PER_DISPATCH)
        assert all(r.epochs == epochs for r in reports)
        return reports

    return _compare(counts, repeats, alone, one, together, "SCU")


def measure_training(counts: list[int], epochs: int, repeats: int, alone: bool = True
                     ) -> list[dict[str, Any]]:
    """Training runs per second: the main job's training recipe (its receiver phase for one
    epoch, then its codec phase for `epochs`) on synthetic images of the main job's training set
    (4,000 MNIST-shaped images, batch 16), each run with its own seed (initial parameters,
    batches, keys); vmapped in one program (`engine.run_many`, as `scu-pipeline` trains its
    seeds) against `engine.run` one by one."""
    import dataclasses

    import jax
    import numpy as np

    from scu_jax import config as config_lib
    from scu_jax import engine
    from scu_jax.methods import training
    from scu_jax.methods.training import Examples
    from scu_jax.runs.build import build_system, recipe_of

    config = config_lib.default_config()
    shape, size = (28, 28, 1), 4000
    system = build_system(config, shape, 10)
    recipe = dataclasses.replace(recipe_of(config), receiver_epochs=1, epochs=epochs)
    rng = np.random.default_rng(0)
    data = Examples(rng.integers(0, 256, (size, *shape), dtype=np.uint8),
                    rng.integers(0, 10, size).astype(np.int32))

    def phases(seed):
        return training.phases(system, recipe, seed=seed, num_examples=size)

    def state(seed):
        return jax.device_get(training.initial_state(system, recipe, seed, shape))

    def key(seed):
        return jax.random.fold_in(jax.random.PRNGKey(seed), 1)

    def one(seed):
        _, report = engine.run(phases(seed), state(seed), data, key(seed), name="alone")
        assert report.epochs == 1 + epochs
        return report

    def together(count):
        runs = [phases(seed) for seed in range(count)]
        _, reports = engine.run_many(
            runs[0], [[phase.batches for phase in run] for run in runs],
            _stack(*[state(seed) for seed in range(count)]), data,
            np.stack([key(seed) for seed in range(count)]), name="many", shared_data=True)
        assert all(r.epochs == 1 + epochs for r in reports)
        return reports

    return _compare(counts, repeats, alone, one, together, "training")


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
