"""The engine's compiled programs: a `Phase`, its steps in one `lax.scan` (`make_block`), and
several epochs in one `lax.while_loop` with the stop rule read on device (`make_epochs`,
`epochs_program`, which `run_many` vmaps). `loop.run` dispatches them.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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

    Example:
      >>> method = scu_jax.vbu(system, objective, learning_rate=1e-4, grad_clip=5.0, beta_u=0.1)
      >>> phase = scu_jax.unlearning_phase(method, seed=0, num_erased=32, num_remain=64,
      ...                                  batch_size=16, max_epochs=3)
      >>> isinstance(phase, scu_jax.Phase), phase.epochs
      (True, range(0, 3))
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


def all_finite(state: Any) -> jax.Array:
    """Whether every parameter and BatchNorm statistic of a state is finite (on device)."""
    leaves = jax.tree.leaves((state.params, state.batch_stats))
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def scan_steps(phase: Phase, parallel: DataParallel, state: Any, done: jax.Array, indices: Any,
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
        state, done, metrics, active = scan_steps(phase, parallel, state, done, indices, data, key,
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
        state, _, metrics, active = scan_steps(phase, parallel, state, jnp.zeros((), bool), indices,
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


def epoch_slots(batches: Callable[[int], Any], chunk: list[int], slots: int):
    """A multi-epoch dispatch's host inputs: the epochs' batches stacked on a leading epoch axis,
    padded to `slots` with the first epoch's (the padding does not run), the `valid` mask and
    the slots' epoch numbers."""
    padded = chunk + chunk[:1] * (slots - len(chunk))
    indices = jax.tree.map(lambda *rows: np.stack(rows), *[batches(epoch) for epoch in padded])
    return indices, np.arange(slots) < len(chunk), np.asarray(padded, np.int32)
