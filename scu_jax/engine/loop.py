"""The one engine that every loop runs on: training, retraining, fine-tuning and unlearning.

A run is a sequence of `Phase`s (training: the receiver phase, then the codec phase; unlearning:
one phase). An epoch's batches are index arrays into data held on the device, so no pixels cross
from the host per step. A block of steps — a whole epoch unless `block_steps` says otherwise — is
one jitted `lax.scan` of the phase's step with the state donated, compiled ahead of time (timed
apart from the steps). Inside the scan an optional `batch_stop` skips the rest of the epoch's
steps once it holds (a `lax.cond`, so it costs no dispatch), and an optional `evaluate` runs on
device after the epoch's last step, in the same dispatch. On XLA's CPU backend convolutional
codecs run slower inside a loop (`per_step`, see `convolutions_slow_in_loops`): there every
block is one unrolled step.

Every block is checked on device: its losses, and every parameter and BatchNorm statistic after
it (a step can leave NaN parameters behind a finite loss). A non-finite value raises
`NonFiniteError` naming the run, the phase and the step; the state is not passed on. Results are
read one block late — the next block is dispatched before the host waits for this one's numbers —
so progress lines and summaries never hold up the device, except where an epoch's numbers decide
what comes next (a stopping rule, a checkpoint).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scu_jax.engine.hooks import BlockResult, EpochResult, Hook
from scu_jax.errors import NonFiniteError
from scu_jax.parallel import DataParallel

StepFn = Callable[[Any, Any, jax.Array], tuple[Any, Any]]


class Phase(NamedTuple):
    """A stretch of epochs run with one step function.

    Attributes:
      name: names the phase in errors, progress lines and summaries ("receiver", "codec", ...).
      step: `step(state, batch, key) -> (state, metrics)`, pure; `metrics` is a NamedTuple of
        scalars with a `loss` field (fields that are `None` are left out).
      epochs: the absolute numbers of the epochs to run (they seed each epoch's batches).
      batches: `batches(epoch)` → a pytree of host int32 index arrays, each (steps, batch).
      gather: `gather(data, indices)` → one step's batch from the device-resident data, given
        one row of each index array.
      start_epoch: optional `state → state` applied before each epoch (a fresh optimiser).
      batch_stop: optional `metrics → bool`: once true, the epoch's remaining steps are skipped.
      evaluate: optional `evaluate(state, eval_data) → scalar`, on device after each epoch.
      evaluation_name: the key of `evaluate`'s value in the epoch summary.
      stop: optional `summary → bool` read after each epoch: true ends the phase.
    """

    name: str
    step: StepFn
    epochs: range
    batches: Callable[[int], Any]
    gather: Callable[[Any, Any], Any]
    start_epoch: Callable[[Any], Any] | None = None
    batch_stop: Callable[[Any], jax.Array] | None = None
    evaluate: Callable[[Any, Any], jax.Array] | None = None
    evaluation_name: str = "evaluation"
    stop: Callable[[dict[str, Any]], bool] | None = None


@dataclasses.dataclass
class Report:
    """What one call of `run` measured.

    `seconds` is the wall time of the steps: compilation (timed apart in `compile_seconds`) and
    the hooks that ran while the device waited (checkpoints, an epoch's summaries) are not in it.
    `history` holds one summary per epoch of this call: its number, the steps done by its end
    (counting a resumed run's earlier ones), the mean of every metric over its steps and the
    evaluation, if any.
    """

    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    compile_seconds: float = 0.0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def all_finite(state: Any) -> jax.Array:
    """Whether every parameter and BatchNorm statistic of a state is finite (on device)."""
    leaves = jax.tree.leaves((state.params, state.batch_stats))
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def make_block(phase: Phase, parallel: DataParallel = DataParallel(), *, unroll: bool = False,
               with_evaluation: bool = False):
    """The jitted block: `(state, done, indices, data, key, eval_data) → (state, done, metrics,
    active, finite, evaluation)`.

    `indices` is the block's slice of `phase.batches(epoch)`; `done` carries the early stop
    across the blocks of an epoch; `active` marks the steps that ran; `evaluation` is NaN
    without `with_evaluation`. On a mesh the index arrays come sharded on their batch axis and the
    rest replicated.
    """

    def block(state, done, indices, data, key, eval_data):
        def run(current, row):
            return phase.step(current, parallel.constrain(phase.gather(data, row)), key)

        if phase.batch_stop is None:
            state, metrics = jax.lax.scan(run, state, indices, unroll=unroll)
            active = jnp.ones(jax.tree.leaves(indices)[0].shape[:1], bool)
        else:
            first_row = jax.tree.map(lambda a: a[0], indices)
            metrics_shape = jax.eval_shape(run, state, first_row)[1]

            def body(carry, row):
                current, stopped = carry
                skipped = (current, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                                 metrics_shape))
                new_state, metrics = jax.lax.cond(stopped, lambda: skipped,
                                                  lambda: run(current, row))
                stopped_after = jnp.logical_or(stopped, phase.batch_stop(metrics))
                return (new_state, stopped_after), (metrics, jnp.logical_not(stopped))

            (state, done), (metrics, active) = jax.lax.scan(body, (state, done), indices,
                                                            unroll=unroll)
        evaluation = (phase.evaluate(state, eval_data) if with_evaluation
                      else jnp.full((), jnp.nan, jnp.float32))
        return state, done, metrics, active, all_finite(state), evaluation

    return parallel.jit(block, donate_argnums=0)


class _Pending(NamedTuple):
    """A dispatched block whose numbers the host has not read yet."""

    phase: Phase
    epoch: int
    outputs: tuple  # (metrics, active, finite, evaluation), device arrays
    ends_epoch: bool


class _Epoch:
    """Running sums of an epoch's metrics over the steps that ran."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = 0

    def add(self, values: dict[str, np.ndarray]) -> None:
        for name, column in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(np.sum(column, dtype=np.float64))
        self.steps += len(next(iter(values.values()))) if values else 0

    def means(self) -> dict[str, float]:
        return {name: total / max(self.steps, 1) for name, total in self.sums.items()}


def _columns(metrics: Any, active: np.ndarray) -> dict[str, np.ndarray]:
    """A metrics NamedTuple of stacked per-step arrays → {field: values of the steps that ran}."""
    return {name: np.asarray(value)[active] for name, value in metrics._asdict().items()
            if value is not None}


def run(phases: Sequence[Phase], state: Any, data: Any, key: jax.Array, *, name: str,
        parallel: DataParallel = DataParallel(), block_steps: int = 0, per_step: bool = False,
        eval_data: Any = None, hooks: Sequence[Hook] = (), step_offset: int = 0,
        when_non_finite: str = "") -> tuple[Any, Report]:
    """Runs `phases` from `state`; returns the final state and a `Report`.

    Args:
      phases: run in order, each over its `epochs`.
      state: a pytree with `params` and `batch_stats` fields (checked for finiteness); donated
        to the first block without a mesh, so the caller's arrays are not to be used after.
      data: the arrays the phases' `gather` reads (placed on the device, or the mesh, once).
      key: passed to every step; steps derive their randomness with `fold_in(key, step)`.
      name: the run's name in errors and progress lines ("train", "scu", ...).
      parallel: the device mesh.
      block_steps: steps per dispatch; 0 is a whole epoch (or one step with `per_step`).
      per_step: blocks of one unrolled step (codecs that XLA runs slower inside loops).
      eval_data: the arrays `Phase.evaluate` reads.
      hooks: see `hooks.Hook`; `needs_state(epochs_done)` makes the engine wait for that
        epoch's state before dispatching the next one.
      step_offset: steps done before this call (a resumed run), for step numbers.
      when_non_finite: appended to the `NonFiniteError` message (what was kept).

    Raises:
      NonFiniteError: a loss, parameter or statistic became NaN or infinite.
    """
    if parallel.mesh is None:
        data, eval_data = jax.device_put((data, eval_data))
    else:
        state, data, key, eval_data = parallel.replicate((state, data, key, eval_data))
    report = Report()
    compiled: dict[tuple, Any] = {}
    pending: list[_Pending] = []
    epoch_numbers = _Epoch()
    excluded = 0.0  # compilation, and hooks run while the device had nothing to do
    started = time.perf_counter()
    # One unrolled step per dispatch: the epoch's evaluation is then a dispatch of its own, so the
    # (slow to compile) step is compiled once, not a second time fused with the evaluation.
    per_step_blocks = per_step and not block_steps

    def compile_once(cache_key, make, *args):
        nonlocal excluded
        if cache_key not in compiled:
            for block in pending:  # compile with nothing in flight, so its time is its own
                jax.block_until_ready(block.outputs)
            begun = time.perf_counter()
            compiled[cache_key] = make().lower(*args).compile()
            elapsed = time.perf_counter() - begun
            report.compile_seconds += elapsed
            excluded += elapsed
        return compiled[cache_key]

    def read(block: _Pending, state: Any | None, *, overlapped: bool) -> bool:
        """Checks and reports a dispatched block; returns whether its phase should stop.

        `overlapped`: the next block is running meanwhile, so the hooks' time is not taken out of
        the step time.
        """
        nonlocal epoch_numbers, excluded
        metrics, active, finite, evaluation = block.outputs
        active = np.asarray(active)
        losses = np.asarray(metrics.loss)[active]
        if not np.all(np.isfinite(losses)) or not bool(finite):
            loss_bad = not np.all(np.isfinite(losses))
            bad = int(np.argmin(np.isfinite(losses))) if loss_bad else len(losses) - 1
            what = "loss" if loss_bad else "parameters"
            raise NonFiniteError(
                f"{name}: {block.phase.name} {what} became non-finite at step "
                f"{step_offset + report.steps + bad} (epoch {block.epoch + 1}){when_non_finite}")
        columns = _columns(metrics, active)
        first_step = step_offset + report.steps
        report.steps += len(losses)
        epoch_numbers.add(columns)
        begun = time.perf_counter()
        result = BlockResult(name, block.phase.name, block.epoch, first_step, columns)
        for hook in hooks:
            hook.on_block(result)
        stop = False
        if block.ends_epoch:
            summary = {"epoch": block.epoch + 1, "steps": step_offset + report.steps,
                       **epoch_numbers.means()}
            if block.phase.evaluate is not None:
                summary[block.phase.evaluation_name] = float(evaluation)
            report.history.append(summary)
            report.epochs += 1
            report.seconds = begun - started - excluded
            epoch_numbers = _Epoch()
            for hook in hooks:
                hook.on_epoch(EpochResult(name, block.phase.name, block.epoch,
                                          step_offset + report.steps, summary, report), state)
            stop = block.phase.stop is not None and bool(block.phase.stop(summary))
        if not overlapped:
            excluded += time.perf_counter() - begun
        return stop

    for phase_index, phase in enumerate(phases):
        evaluate_apart = per_step_blocks and phase.evaluate is not None
        for epoch in phase.epochs:
            if phase.start_epoch is not None:
                state = phase.start_epoch(state)
            indices = phase.batches(epoch)
            steps = jax.tree.leaves(indices)[0].shape[0]
            block = block_steps or (1 if per_step else steps)
            done = jnp.zeros((), bool)
            for first in range(0, steps, block):
                ends_epoch = first + block >= steps
                fused = ends_epoch and phase.evaluate is not None and not evaluate_apart
                block_indices = jax.tree.map(
                    lambda a: parallel.shard_batches(a[first:first + block]), indices)
                length = jax.tree.leaves(block_indices)[0].shape[0]
                run_block = compile_once(
                    ("block", phase_index, length, fused),
                    lambda: make_block(phase, parallel, unroll=per_step_blocks,
                                       with_evaluation=fused),
                    state, done, block_indices, data, key, eval_data)
                state, done, *outputs = run_block(state, done, block_indices, data, key,
                                                  eval_data)
                if ends_epoch and evaluate_apart:
                    evaluate = compile_once(("evaluate", phase_index),
                                            lambda: parallel.jit(phase.evaluate), state, eval_data)
                    outputs[3] = evaluate(state, eval_data)
                pending.append(_Pending(phase, epoch, tuple(outputs), ends_epoch))
                while len(pending) > 1:  # one block late: the next one is already running
                    read(pending.pop(0), None, overlapped=True)
            epochs_done = epoch + 1
            wait = (phase.stop is not None or epoch == phase.epochs[-1]
                    or any(hook.needs_state(epochs_done) for hook in hooks))
            if wait:
                if read(pending.pop(), state, overlapped=False):
                    break
    for block in pending:
        read(block, None, overlapped=False)
    jax.block_until_ready(state)
    report.seconds = time.perf_counter() - started - excluded
    for hook in hooks:
        hook.on_end(name, report)
    return state, report
