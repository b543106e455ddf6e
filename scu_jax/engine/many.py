"""Many independent runs of the same phases as ONE compiled program per phase: `run_many`
vmaps `blocks.epochs_program` over a leading run axis."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scu_jax.engine.blocks import EpochsOutput, Phase, StepFn, epoch_slots, epochs_program
from scu_jax.engine.hooks import BlockResult, EpochResult, Hook
from scu_jax.engine.loop import EpochSums, Report, step_columns
from scu_jax.errors import NonFiniteError


def run_many(phases: Phase | Sequence[Phase], batches: Sequence[Any], states: Any, data: Any,
             keys: jax.Array, *, name: str, eval_data: Any = None, shared_data: bool = False,
             hyper: Any = None, step_for: Callable[[Any], StepFn] | None = None,
             epochs_per_dispatch: int = 0,
             hooks: Sequence[Sequence[Hook]] | None = None) -> tuple[Any, list[Report]]:
    """Runs independent runs of the same phases as ONE compiled program per phase: `make_epochs`
    under `jax.vmap`.

    Run `i` does what `run(phases with run i's batches, ...)` with `epochs_per_dispatch` does on
    its own (its own batches, key, data, stop and hooks), and each phase stops where its own rule
    holds: the program loops until the last run has stopped, the stopped runs' states held
    (`lax.cond` becomes a select under `vmap`, so a stopped run still costs its arithmetic, not
    its result).

    Args:
      phases: what every run runs, in order, but for its batches.
      batches: run `i`'s `Phase.batches` (each run's seed): one callable per phase (or the
        callable itself, with one phase); every run's have the same shapes.
      states: the runs' states stacked on a leading run axis (donated).
      data: the arrays `gather` reads, stacked on a leading run axis (one copy for every run
        with `shared_data`).
      keys: (runs, 2) step keys, one per run.
      name: names the runs in errors (`name` run `i`).
      eval_data: what `Phase.evaluate` reads, stacked on a leading run axis.
      hyper: optional pytree of arrays stacked on a leading run axis; run `i`'s step is then
        `step_for(hyper[i])`, built inside the program (hyper-parameters as arrays, so runs with
        different values share it).
      epochs_per_dispatch: epochs per dispatch (0: all of a phase's in one).
      hooks: run `i`'s hooks (`hooks[i]`), called as `run` calls them; a dispatch ends where
        any run's hook `needs_state`, which then gets that run's state (a device slice).

    Returns:
      The final states (stacked) and one `Report` per run; `seconds` and `compile_seconds` are
      those of the whole batch of runs.

    Raises:
      NonFiniteError: a run's loss or parameters became non-finite (naming the run).

    Example:
      >>> # Two VBU runs (two seeds) as one program; each stops where it would alone.
      >>> method = scu_jax.vbu(system, objective, learning_rate=1e-4, grad_clip=5.0, beta_u=0.1)
      >>> def phase_of(seed):
      ...     return scu_jax.unlearning_phase(method, seed=seed, num_erased=16, num_remain=16,
      ...                                     batch_size=16, max_epochs=2)
      >>> one = method.init(state.params, state.batch_stats)
      >>> states = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), one)
      >>> keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
      >>> batch = scu_jax.Batch(images, jnp.full((16,), 2), images, labels)
      >>> finals, reports = scu_jax.run_many(phase_of(0), [phase_of(s).batches for s in (0, 1)],
      ...                                    states, batch, keys, name="vbu", shared_data=True)
      >>> [r.steps for r in reports], finals.step.tolist()
      ([2, 2], [2, 2])
    """
    phases = [phases] if isinstance(phases, Phase) else list(phases)
    batches = [[of_run] if callable(of_run) else list(of_run) for of_run in batches]
    count = len(batches)
    hooks = [list(of_run) for of_run in hooks] if hooks is not None else [[] for _ in batches]
    data_axis = None if shared_data else 0
    data, eval_data, hyper = jax.device_put((data, eval_data, hyper))
    reports = [Report() for _ in range(count)]
    excluded = 0.0  # compilation
    started = time.perf_counter()

    def needs_state(epochs_done: int) -> bool:
        return any(hook.needs_state(epochs_done) for of_run in hooks for hook in of_run)

    for phase_index, template in enumerate(phases):
        fused = template.evaluate is not None

        def program(state, stopped, indices, valid, numbers, data, key, eval_data, hyper,
                    template=template, fused=fused):
            run = template if step_for is None else template._replace(step=step_for(hyper))
            return epochs_program(run, with_evaluation=fused)(state, stopped, indices, valid,
                                                              numbers, data, key, eval_data)

        batched = jax.jit(jax.vmap(program, in_axes=(0, 0, 0, None, None, data_axis, 0,
                                                     None if eval_data is None else 0,
                                                     None if hyper is None else 0)),
                          donate_argnums=0)
        epochs = list(template.epochs)
        slots = min(epochs_per_dispatch or len(epochs), len(epochs))
        stopped = jnp.zeros((count,), bool)
        compiled = None
        start = 0
        while start < len(epochs):
            chunk = epochs[start:start + slots]
            for slot, epoch in enumerate(chunk[:-1]):  # a hook reads the state after this one
                if needs_state(epoch + 1):
                    chunk = chunk[:slot + 1]
                    break
            start += len(chunk)
            per_run = [epoch_slots(of_run[phase_index], chunk, slots) for of_run in batches]
            indices = jax.tree.map(lambda *runs: np.stack(runs), *[run[0] for run in per_run])
            _, valid, numbers = per_run[0]
            arguments = (stopped, indices, valid, numbers, data, keys, eval_data, hyper)
            if compiled is None:
                begun = time.perf_counter()
                compiled = batched.lower(states, *arguments).compile()
                excluded += time.perf_counter() - begun
            states, out = compiled(states, *arguments)
            out = jax.device_get(out)
            stopped = out.stopped
            seconds = time.perf_counter() - started - excluded
            for run_index, report in enumerate(reports):
                report.seconds, report.compile_seconds = seconds, excluded
                state = (jax.tree.map(lambda a, i=run_index: a[i], states)
                         if needs_state(chunk[-1] + 1) else None)
                _read_run(report, template, chunk, jax.tree.map(lambda a: a[run_index], out),
                          f"{name} run {run_index}", name, hooks[run_index], state)
            if bool(np.all(out.stopped)):
                break
    jax.block_until_ready(states)
    seconds = time.perf_counter() - started - excluded
    for report, of_run in zip(reports, hooks):
        report.seconds, report.compile_seconds = seconds, excluded
        for hook in of_run:
            hook.on_end(name, report)
    return states, reports


def _read_run(report: Report, phase: Phase, chunk: Sequence[int], out: EpochsOutput,
              where: str, name: str, hooks: Sequence[Hook], state: Any | None) -> None:
    """One run's epochs of a `run_many` dispatch into its report and hooks (its non-finite
    values raise); `state` is its state after the dispatch, for the hooks of its last epoch."""
    for slot in range(int(out.ran)):
        active = np.asarray(out.active[slot])
        metrics = jax.tree.map(lambda a: a[slot], out.metrics)
        losses = np.asarray(metrics.loss)[active]
        if not np.all(np.isfinite(losses)) or not bool(out.finite[slot]):
            loss_bad = not np.all(np.isfinite(losses))
            bad = int(np.argmin(np.isfinite(losses))) if loss_bad else len(losses) - 1
            raise NonFiniteError(
                f"{where}: {phase.name} {'loss' if loss_bad else 'parameters'} became non-finite "
                f"at step {report.steps + bad} (epoch {chunk[slot] + 1})")
        columns = step_columns(metrics, active)
        numbers = EpochSums()
        numbers.add(columns)
        first_step = report.steps
        report.steps += len(losses)
        for hook in hooks:
            hook.on_block(BlockResult(name, phase.name, chunk[slot], first_step, columns))
        summary = {"epoch": chunk[slot] + 1, "steps": report.steps, **numbers.means()}
        if phase.evaluate is not None:
            summary[phase.evaluation_name] = float(out.evaluation[slot])
        report.history.append(summary)
        report.epochs += 1
        last = slot == int(out.ran) - 1
        for hook in hooks:
            hook.on_epoch(EpochResult(name, phase.name, chunk[slot], report.steps, summary,
                                      report), state if last else None)
        if bool(out.stop[slot]):
            report.stopped.append(phase.name)
