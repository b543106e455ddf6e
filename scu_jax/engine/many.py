"""Many independent runs of one phase as ONE compiled program: `run_many` vmaps
`blocks.epochs_program` over a leading run axis."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scu_jax.engine.blocks import EpochsOutput, Phase, StepFn, epoch_slots, epochs_program
from scu_jax.engine.loop import EpochSums, Report, step_columns
from scu_jax.errors import NonFiniteError


def run_many(phase: Phase, batches: Sequence[Callable[[int], Any]], states: Any, data: Any,
             keys: jax.Array, *, name: str, eval_data: Any = None, shared_data: bool = False,
             hyper: Any = None,
             step_for: Callable[[Any], StepFn] | None = None,
             epochs_per_dispatch: int = 0) -> tuple[Any, list[Report]]:
    """Runs independent runs of one phase as ONE compiled program: `make_epochs` under `jax.vmap`.

    Run `i` does what `run([phase._replace(batches=batches[i])], ...)` with `epochs_per_dispatch`
    does on its own (its own batches, key, data and stop), and stops where its own rule holds: the program loops until
    the last run has stopped, the stopped runs' states held (`lax.cond` becomes a select under
    `vmap`, so a stopped run still costs its arithmetic, not its result).

    Args:
      phase: what every run runs, but for its batches.
      batches: run `i`'s `Phase.batches` (each run's seed); every run's have the same shapes.
      states: the runs' states stacked on a leading run axis (donated).
      data: the arrays `gather` reads, stacked on a leading run axis (one copy for every run
        with `shared_data`).
      keys: (runs, 2) step keys, one per run.
      name: names the runs in errors (`name` run `i`).
      eval_data: what `Phase.evaluate` reads, stacked on a leading run axis.
      hyper: optional pytree of arrays stacked on a leading run axis; run `i`'s step is then
        `step_for(hyper[i])`, built inside the program (hyper-parameters as arrays, so runs with
        different values share it).
      epochs_per_dispatch: epochs per dispatch (0: all of them in one).

    Returns:
      The final states (stacked) and one `Report` per run; `seconds` and `compile_seconds` are
      those of the whole batch of runs.

    Raises:
      NonFiniteError: a run's loss or parameters became non-finite (naming the run).
    """
    template, count, epochs = phase, len(batches), list(phase.epochs)
    fused = template.evaluate is not None

    def program(state, stopped, indices, valid, numbers, data, key, eval_data, hyper):
        run = template if step_for is None else template._replace(step=step_for(hyper))
        return epochs_program(run, with_evaluation=fused)(state, stopped, indices, valid,
                                                          numbers, data, key, eval_data)

    data_axis = None if shared_data else 0
    batched = jax.jit(jax.vmap(program, in_axes=(0, 0, 0, None, None, data_axis, 0,
                                                 None if eval_data is None else 0,
                                                 None if hyper is None else 0)),
                      donate_argnums=0)
    data, eval_data, hyper = jax.device_put((data, eval_data, hyper))
    reports = [Report() for _ in range(count)]
    slots = min(epochs_per_dispatch or len(epochs), len(epochs))
    stopped = jnp.zeros((count,), bool)
    compiled = None
    compile_seconds = 0.0
    started = time.perf_counter()
    for start in range(0, len(epochs), slots):
        chunk = epochs[start:start + slots]
        per_run = [epoch_slots(of_run, chunk, slots) for of_run in batches]
        indices = jax.tree.map(lambda *runs: np.stack(runs), *[run[0] for run in per_run])
        _, valid, numbers = per_run[0]
        arguments = (stopped, indices, valid, numbers, data, keys, eval_data, hyper)
        if compiled is None:
            begun = time.perf_counter()
            compiled = batched.lower(states, *arguments).compile()
            compile_seconds = time.perf_counter() - begun
        states, out = compiled(states, *arguments)
        out = jax.device_get(out)
        stopped = out.stopped
        for run_index, report in enumerate(reports):
            _read_run(report, template, chunk, jax.tree.map(lambda a: a[run_index], out),
                      f"{name} run {run_index}")
        if bool(np.all(out.stopped)):
            break
    jax.block_until_ready(states)
    seconds = time.perf_counter() - started - compile_seconds
    for report in reports:
        report.seconds, report.compile_seconds = seconds, compile_seconds
    return states, reports


def _read_run(report: Report, phase: Phase, chunk: Sequence[int], out: EpochsOutput,
              name: str) -> None:
    """One run's epochs of a `run_many` dispatch into its report (its non-finite values raise)."""
    for slot in range(int(out.ran)):
        active = np.asarray(out.active[slot])
        metrics = jax.tree.map(lambda a: a[slot], out.metrics)
        losses = np.asarray(metrics.loss)[active]
        if not np.all(np.isfinite(losses)) or not bool(out.finite[slot]):
            loss_bad = not np.all(np.isfinite(losses))
            bad = int(np.argmin(np.isfinite(losses))) if loss_bad else len(losses) - 1
            raise NonFiniteError(
                f"{name}: {phase.name} {'loss' if loss_bad else 'parameters'} became non-finite "
                f"at step {report.steps + bad} (epoch {chunk[slot] + 1})")
        numbers = EpochSums()
        numbers.add(step_columns(metrics, active))
        report.steps += len(losses)
        summary = {"epoch": chunk[slot] + 1, "steps": report.steps, **numbers.means()}
        if phase.evaluate is not None:
            summary[phase.evaluation_name] = float(out.evaluation[slot])
        report.history.append(summary)
        report.epochs += 1
        if bool(out.stop[slot]):
            report.stopped.append(phase.name)
