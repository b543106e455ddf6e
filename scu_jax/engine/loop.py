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
      stop: optional `summary → bool` read after each epoch: true ends the phase. Run with
        `epochs_per_dispatch`, it reads `epoch_summary` on device (no step count; its values are
        arrays), so it must be written with comparisons that trace (`summary["x"] < 0.1`).
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
    stopped: list[str] = dataclasses.field(default_factory=list)  # phases their `stop` ended


def all_finite(state: Any) -> jax.Array:
    """Whether every parameter and BatchNorm statistic of a state is finite (on device)."""
    leaves = jax.tree.leaves((state.params, state.batch_stats))
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _steps(phase: Phase, parallel: DataParallel, state: Any, done: jax.Array, indices: Any,
           data: Any, key: jax.Array, unroll: bool):
    """A stretch of the phase's steps in one `lax.scan`: `(state, done, metrics, active)`."""
    def run(current, row):
        return phase.step(current, parallel.constrain(phase.gather(data, row)), key)

    if phase.batch_stop is None:
        state, metrics = jax.lax.scan(run, state, indices, unroll=unroll)
        return state, done, metrics, jnp.ones(jax.tree.leaves(indices)[0].shape[:1], bool)
    first_row = jax.tree.map(lambda a: a[0], indices)
    metrics_shape = jax.eval_shape(run, state, first_row)[1]

    def body(carry, row):
        current, stopped = carry
        skipped = (current, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape))
        new_state, metrics = jax.lax.cond(stopped, lambda: skipped, lambda: run(current, row))
        stopped_after = jnp.logical_or(stopped, phase.batch_stop(metrics))
        return (new_state, stopped_after), (metrics, jnp.logical_not(stopped))

    (state, done), (metrics, active) = jax.lax.scan(body, (state, done), indices, unroll=unroll)
    return state, done, metrics, active


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
        state, done, metrics, active = _steps(phase, parallel, state, done, indices, data, key,
                                              unroll)
        evaluation = (phase.evaluate(state, eval_data) if with_evaluation
                      else jnp.full((), jnp.nan, jnp.float32))
        return state, done, metrics, active, all_finite(state), evaluation

    return parallel.jit(block, donate_argnums=0)


def epoch_summary(phase: Phase, epoch: jax.Array, metrics: Any, active: jax.Array,
                  evaluation: jax.Array | None) -> dict[str, jax.Array]:
    """On device, what the host's epoch summary holds of an epoch's numbers but its step count:
    the epoch's number (from 1), the mean of every metric over the steps that ran, and the
    evaluation under `phase.evaluation_name`."""
    weights = active.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weights), 1.0)
    summary = {"epoch": epoch + 1}
    summary.update({name: jnp.sum(value.astype(jnp.float32) * weights) / count
                    for name, value in metrics._asdict().items() if value is not None})
    if evaluation is not None:
        summary[phase.evaluation_name] = evaluation
    return summary


class EpochsOutput(NamedTuple):
    """What a dispatch of several epochs returns besides the state (device arrays, one row per
    epoch slot: rows past `ran` are zeros)."""

    metrics: Any  # the step metrics, (epochs, steps) each
    active: jax.Array  # (epochs, steps): the steps that ran
    evaluation: jax.Array  # (epochs,): NaN without an evaluation
    stop: jax.Array  # (epochs,): `phase.stop` held after that epoch
    finite: jax.Array  # (epochs,): every parameter and statistic finite after that epoch
    ran: jax.Array  # how many epochs ran
    stopped: jax.Array  # the phase's stop rule has held (carried into the next dispatch)


def make_epochs(phase: Phase, parallel: DataParallel = DataParallel(), *,
                with_evaluation: bool = False):
    """`epochs_program`, jitted with the state donated."""
    return parallel.jit(epochs_program(phase, parallel, with_evaluation=with_evaluation),
                        donate_argnums=0)


def epochs_program(phase: Phase, parallel: DataParallel = DataParallel(), *,
                   with_evaluation: bool = False):
    """The multi-epoch dispatch, a pure function: `(state, stopped, indices, valid, epochs, data, key,
    eval_data) → (state, EpochsOutput)`.

    `indices` stacks the epochs' `phase.batches` (a leading epoch axis), `valid` marks the slots
    that hold an epoch to run and `epochs` holds their numbers. Epochs run in a `lax.while_loop`
    until the slots run out, a parameter turns non-finite, or `phase.stop`, read on device from
    `epoch_summary` after each epoch, holds; `stopped` comes in true once an earlier dispatch's
    stop held, and then nothing runs. So a run stops on device,
    with no host round trip per epoch, and under `jax.vmap` (many runs in one program) the loop
    runs until the last run has stopped while each run's state stays where its own rule stopped it.
    """

    def one_epoch(state, indices, epoch, data, key, eval_data):
        if phase.start_epoch is not None:
            state = phase.start_epoch(state)
        state, _, metrics, active = _steps(phase, parallel, state, jnp.zeros((), bool), indices,
                                           data, key, unroll=False)
        evaluation = phase.evaluate(state, eval_data) if with_evaluation else None
        stop = (phase.stop(epoch_summary(phase, epoch, metrics, active, evaluation))
                if phase.stop is not None else False)
        if evaluation is None:
            evaluation = jnp.full((), jnp.nan, jnp.float32)
        return state, (metrics, active, jnp.asarray(evaluation, jnp.float32),
                       jnp.asarray(stop, bool), all_finite(state))

    def run_epochs(state, stopped, indices, valid, epochs, data, key, eval_data):
        slots = valid.shape[0]
        first = jax.tree.map(lambda a: a[0], indices)
        shapes = jax.eval_shape(one_epoch, state, first, epochs[0], data, key, eval_data)[1]
        rows = jax.tree.map(lambda s: jnp.zeros((slots, *s.shape), s.dtype), shapes)

        def more(carry):
            slot, _, stopped, healthy, _ = carry
            return (slot < slots) & valid[jnp.minimum(slot, slots - 1)] & ~stopped & healthy

        def body(carry):
            slot, state, _, _, rows = carry
            state, out = one_epoch(state, jax.tree.map(lambda a: a[slot], indices), epochs[slot],
                                   data, key, eval_data)
            rows = jax.tree.map(lambda buffer, value: buffer.at[slot].set(value), rows, out)
            return slot + 1, state, out[3], out[4], rows

        ran, state, stopped, _, rows = jax.lax.while_loop(
            more, body, (jnp.zeros((), jnp.int32), state, stopped, jnp.ones((), bool), rows))
        return state, EpochsOutput(*rows, ran, stopped)

    return run_epochs


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
            batches = [phase.batches(epoch) for epoch in chunk]
            batches += batches[:1] * (slots - len(chunk))  # slots past `valid` do not run
            indices = jax.tree.map(
                lambda *arrays: parallel.shard_batches(np.stack(arrays), batch_axis=2), *batches)
            valid = np.arange(slots) < len(chunk)
            numbers = np.asarray(chunk + chunk[:1] * (slots - len(chunk)), np.int32)
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
        padded = chunk + chunk[:1] * (slots - len(chunk))
        indices = jax.tree.map(
            lambda *runs: np.stack(runs),
            *[jax.tree.map(lambda *rows: np.stack(rows), *[of_run(e) for e in padded])
              for of_run in batches])
        valid = np.arange(slots) < len(chunk)
        numbers = np.asarray(padded, np.int32)
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
        numbers = _Epoch()
        numbers.add(_columns(metrics, active))
        report.steps += len(losses)
        summary = {"epoch": chunk[slot] + 1, "steps": report.steps, **numbers.means()}
        if phase.evaluate is not None:
            summary[phase.evaluation_name] = float(out.evaluation[slot])
        report.history.append(summary)
        report.epochs += 1
        if bool(out.stop[slot]):
            report.stopped.append(phase.name)
