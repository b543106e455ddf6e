"""The one engine that every loop runs on: training, retraining, fine-tuning and unlearning.

A run is a sequence of `Phase`s (training: the receiver phase, then the codec phase; unlearning:
one phase). An epoch's batches are index arrays into data held on the device, so no pixels cross
from the host per step. A block of steps — a whole epoch unless `block_steps` says otherwise — is
one jitted `lax.scan` of the phase's step with the state donated, compiled ahead of time (timed
apart from the steps). Inside the scan an optional `batch_stop` skips the rest of the epoch's
steps once it holds (a `lax.cond`, so it costs no dispatch), and an optional `evaluate` runs on
device after the epoch's last step, in the same dispatch. With `epochs_per_dispatch`, several
epochs go in one dispatch (`make_epochs`: a `lax.while_loop` over them), the stop rule read on
device after each, so a run of short epochs does not wait on the host after every one; the
same program vmapped runs many independent runs at once. On XLA's CPU backend convolutional
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
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scu_jax.engine.blocks import Phase, epoch_slots, make_block, make_epochs
from scu_jax.engine.hooks import BlockResult, EpochResult, Hook
from scu_jax.errors import NonFiniteError
from scu_jax.parallel import DataParallel


@dataclasses.dataclass
class Report:
    """What one call of `run` measured.

    `seconds` is the wall time of the steps: compilation (timed apart in `compile_seconds`) and
    the hooks that ran while the device waited (checkpoints, an epoch's summaries) are not in it.
    `history` holds one summary per epoch of this call: its number, the steps done by its end
    (counting a resumed run's earlier ones), the mean of every metric over its steps and the
    evaluation, if any.

    Attributes:
      steps: steps done by the end (a resumed run's earlier ones included).
      epochs: epochs run by this call.
      seconds: the steps' wall time, compilation apart.
      compile_seconds: XLA's compilation time.
      history: one summary per epoch.
      stopped: why each phase ended early, if it did (its stop rule's name).

    Example:
      >>> report = scu_jax.Report(steps=12, epochs=3)   # what `run` returns, filled in
      >>> report.seconds, report.history, report.stopped
      (0.0, [], [])
    """

    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    compile_seconds: float = 0.0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stopped: list[str] = dataclasses.field(default_factory=list)  # phases their `stop` ended


class _Pending(NamedTuple):
    """A dispatched block whose numbers the host has not read yet."""

    phase: Phase
    epoch: int
    outputs: tuple  # (metrics, active, finite, evaluation), device arrays
    ends_epoch: bool


class EpochSums:
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


def step_columns(metrics: Any, active: np.ndarray) -> dict[str, np.ndarray]:
    """A metrics NamedTuple of stacked per-step arrays → {field: values of the steps that ran}."""
    return {name: np.asarray(value)[active] for name, value in metrics._asdict().items()
            if value is not None}


def run(phases: Sequence[Phase], state: Any, data: Any, key: jax.Array, *, name: str,
        parallel: DataParallel = DataParallel(), block_steps: int = 0, per_step: bool = False,
        eval_data: Any = None, hooks: Sequence[Hook] = (), step_offset: int = 0,
        when_non_finite: str = "", epochs_per_dispatch: int = 1) -> tuple[Any, Report]:
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
      epochs_per_dispatch: epochs per dispatch (`make_epochs`; 0: every epoch of a phase), the
        stop rule read on device, so that a run of short epochs (an unlearning run over a small
        D_e) does not wait on the host after each; a dispatch also ends where a hook
        `needs_state`. `Phase.stop` must then be traceable (comparisons of the summary's values),
        and its device reading decides. 1 (and `per_step`, `block_steps`) keep one epoch (or
        block) per dispatch and the stop read on the host.

    Raises:
      NonFiniteError: a loss, parameter or statistic became NaN or infinite.

    Returns:
      The final state and the `Report`.

    Example:
      >>> # The training recipe: 1 receiver epoch, then 2 codec epochs, of 4 steps each.
      >>> from scu_jax.methods import training
      >>> data = scu_jax.Examples(jnp.tile(images, (4, 1, 1, 1)), jnp.tile(labels, 4))
      >>> phases = training.phases(system, recipe, seed=0, num_examples=64)
      >>> fresh = scu_jax.initial_state(system, recipe, seed=0, image_shape=(28, 28, 1))
      >>> trained, report = scu_jax.run(phases, fresh, data, key, name="train")
      >>> int(trained.step), [epoch["epoch"] for epoch in report.history]
      (12, [1, 2, 3])
    """
    if parallel.mesh is None:
        data, eval_data = jax.device_put((data, eval_data))
    else:
        state, data, key, eval_data = parallel.replicate((state, data, key, eval_data))
    report = Report()
    compiled: dict[tuple, Any] = {}
    pending: list[_Pending] = []
    epoch_numbers = EpochSums()
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

    def read(block: _Pending, state: Any | None, *, overlapped: bool,
             decided: bool = False) -> bool:
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
        columns = step_columns(metrics, active)
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
            epoch_numbers = EpochSums()
            for hook in hooks:
                hook.on_epoch(EpochResult(name, block.phase.name, block.epoch,
                                          step_offset + report.steps, summary, report), state)
            # `decided`: the device read the stop rule (`make_epochs`).
            stop = (not decided and block.phase.stop is not None
                    and bool(block.phase.stop(summary)))
        if not overlapped:
            excluded += time.perf_counter() - begun
        return stop

    def run_chunked(phase_index: int, phase: Phase, state: Any) -> Any:
        """A phase in dispatches of `epochs_per_dispatch` epochs (`make_epochs`), each dispatched
        before the previous one is read; the device carries the stop across them."""
        epochs = list(phase.epochs)
        slots = min(epochs_per_dispatch or len(epochs), len(epochs))
        fused = phase.evaluate is not None
        stopped = jnp.zeros((), bool)
        start = 0
        while start < len(epochs):
            chunk = epochs[start:start + slots]
            for slot, epoch in enumerate(chunk[:-1]):  # a hook reads the state after this one
                if any(hook.needs_state(epoch + 1) for hook in hooks):
                    chunk = chunk[:slot + 1]
                    break
            start += len(chunk)
            indices, valid, numbers = epoch_slots(phase.batches, chunk, slots)
            indices = jax.tree.map(lambda a: parallel.shard_batches(a, batch_axis=2), indices)
            run_epochs = compile_once(
                ("epochs", phase_index, slots, fused),
                lambda: make_epochs(phase, parallel, with_evaluation=fused),
                state, stopped, indices, valid, numbers, data, key, eval_data)
            state, outputs = run_epochs(state, stopped, indices, valid, numbers, data, key,
                                        eval_data)
            stopped = outputs.stopped
            pending.append(_Pending(phase, chunk[0], outputs, True))
            wait = start >= len(epochs) or any(hook.needs_state(chunk[-1] + 1) for hook in hooks)
            while len(pending) > (0 if wait else 1):  # one dispatch late, as blocks are
                if read_epochs(pending.pop(0), state, wait and not pending, overlapped=not wait):
                    pending.clear()  # dispatched after the stop: it ran nothing
                    return state
        return state

    def read_epochs(chunk: _Pending, state: Any, ends_here: bool, *, overlapped: bool) -> bool:
        """Reports each epoch a multi-epoch dispatch ran; returns whether its phase stopped.

        `state` is the newest dispatch's; the hooks get it after the last epoch where that is this
        dispatch's (`ends_here`), or where this dispatch's stop held (a later one then ran
        nothing)."""
        out = jax.device_get(chunk.outputs)
        ran = int(out.ran)
        stops = ran > 0 and bool(out.stop[ran - 1])
        state = state if ends_here or stops else None
        for slot in range(ran):
            last = slot == ran - 1
            rows = jax.tree.map(lambda a: a[slot],
                                (out.metrics, out.active, out.finite, out.evaluation))
            read(_Pending(chunk.phase, chunk.epoch + slot, rows, True),
                 state if last else None, overlapped=overlapped, decided=True)
        if stops:
            report.stopped.append(chunk.phase.name)
        return stops or bool(out.stopped)

    for phase_index, phase in enumerate(phases):
        evaluate_apart = per_step_blocks and phase.evaluate is not None
        if epochs_per_dispatch != 1 and not per_step and not block_steps:
            state = run_chunked(phase_index, phase, state)
            continue
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
                    report.stopped.append(phase.name)
                    break
    for block in pending:
        read(block, None, overlapped=False)
    jax.block_until_ready(state)
    report.seconds = time.perf_counter() - started - excluded
    for hook in hooks:
        hook.on_end(name, report)
    return state, report
