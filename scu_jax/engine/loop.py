"""The loop every erased-data method shares (spec §5): paired batches, early stopping, timing.

An epoch is ⌈|D_e|/B⌉ steps (⌊|D_e|/B⌋ with `partial_batch="drop"`); each takes one erased batch
and one remaining batch of the same size (D_e is reshuffled and, for the last batch, wrapped
around; the D_r batches are redrawn every epoch). The whole epoch is one jitted `lax.scan` with
the state donated. Early stop: once a batch's backdoor accuracy falls below `batch_stop`, the rest
of that epoch's steps are skipped (a `lax.cond` inside the scan, so it costs no dispatch); the
loop stops once the epoch's backdoor accuracy on D_e is below `epoch_stop` (a threshold of 0
switches its rule off). "The epoch's backdoor accuracy" is, as in the reference, the mean over
the epoch's erased batches as each step saw them (`stop_on="epoch_batches"`), or
(`stop_on="eval"`) all of D_e re-evaluated in evaluation mode after the epoch, read as the final
evaluation reads it (`evaluation.channel`). The latter is measured in the same dispatch either
way and kept in the history.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from scu_jax.errors import ConfigError
from scu_jax.data import ErasureSplit
from scu_jax.data.batching import padded_batches
from scu_jax.evaluation import system_for_evaluation, target_rate
from scu_jax.models import System
from scu_jax.parallel import DataParallel, data_parallel
from scu_jax.errors import NonFiniteError
from scu_jax.runs.train import convolutions_slow_in_loops
from scu_jax.methods.base import Batch, UnlearnState, UnlearningMethod


@dataclasses.dataclass
class LoopReport:
    """What a run of the loop measured."""

    steps: int = 0
    epochs: int = 0
    unlearn_seconds: float = 0.0  # wall time of the epochs, compilation excluded
    compile_seconds: float = 0.0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


def epoch_indices(seed: int, epoch: int, num_erased: int, num_remain: int,
                  batch_size: int, *, drop_partial: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(steps, B) erased and remaining batch indices of one epoch, deterministic per (seed, epoch).

    ⌈|D_e|/B⌉ steps, the last erased batch wrapping around the shuffled D_e; with `drop_partial`,
    ⌊|D_e|/B⌋ steps and the erased images that do not fill a batch sit the epoch out (the
    reference's CIFAR SCU/VBU loops).
    """
    rng = np.random.default_rng([seed, 7919, epoch])
    steps = num_erased // batch_size if drop_partial else math.ceil(num_erased / batch_size)
    erased = rng.permutation(num_erased)[np.arange(steps * batch_size) % num_erased]
    remain = rng.choice(num_remain, size=steps * batch_size, replace=steps * batch_size > num_remain)
    return (erased.reshape(steps, batch_size).astype(np.int32),
            remain.reshape(steps, batch_size).astype(np.int32))


def _epoch_parts(method: UnlearningMethod, system: System, *, early_stop: bool,
                 batch_stop: float, target: int, parallel: DataParallel, eval_system: System):
    """The two pure halves of an epoch: `run_steps` (a `lax.scan` of `method.step` that skips the
    steps after an early stop) and `evaluate` (the backdoor accuracy on all of D_e)."""

    def run_steps(state: UnlearnState, done, erased_idx, remain_idx, data: Batch, key: jax.Array,
                  unroll: bool = False):
        def run(current, indices):
            e, r = indices
            batch = parallel.constrain(Batch(data.erased_images[e], data.erased_targets[e],
                                             data.remain_images[r], data.remain_labels[r]))
            return method.step(current, batch, key)

        metrics_shape = jax.eval_shape(run, state, (erased_idx[0], remain_idx[0]))[1]

        def body(carry, indices):
            current, done = carry
            skipped = (current, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape))
            new_state, metrics = jax.lax.cond(done, lambda: skipped, lambda: run(current, indices))
            active = jnp.logical_not(done)
            if early_stop:
                done = jnp.logical_or(done, metrics.backdoor < batch_stop)
            return (new_state, done), (metrics, active)

        (state, done), (metrics, active) = jax.lax.scan(body, (state, done),
                                                        (erased_idx, remain_idx), unroll=unroll)
        return state, done, metrics, active

    def evaluate(state: UnlearnState, eval_batches, eval_mask, eval_key):
        return target_rate(eval_system, state.params, state.batch_stats, eval_batches, eval_mask,
                           target, eval_key)

    return run_steps, evaluate


def make_epoch(method: UnlearningMethod, system: System, *, early_stop: bool, batch_stop: float,
               target: int, parallel: DataParallel = DataParallel(), per_step: bool = False,
               eval_system: System | None = None, evaluate_each_epoch: bool = True):
    """The jitted epoch: a `lax.scan` of `method.step` that skips the steps after an early stop,
    followed by the backdoor accuracy on all of D_e in evaluation mode, in the same dispatch.

    The returned function takes `(state, erased_idx, remain_idx, data, key, eval_batches,
    eval_mask, eval_key)` and returns `(state, step_metrics, active, erased_backdoor)`; the
    backdoor accuracy is read through `eval_system` (default `system`: see
    `evaluation.system_for_evaluation`); without `evaluate_each_epoch` it is not computed (NaN),
    for runs that no D_e evaluation can stop. On a mesh (`parallel`), the index arrays come
    sharded on their batch axis and the rest replicated.
    `per_step` dispatches each step on its own instead (the same computation, for codecs that XLA
    runs slower inside loops: `train.convolutions_slow_in_loops`); it has the same `lower(...)
    .compile()` interface.
    """
    run_steps, evaluate = _epoch_parts(method, system, early_stop=early_stop,
                                       batch_stop=batch_stop, target=target, parallel=parallel,
                                       eval_system=eval_system or system)
    if not evaluate_each_epoch:
        evaluate = _not_evaluated
    if per_step:
        return _SteppedEpoch(parallel.jit(functools.partial(run_steps, unroll=True),
                                          donate_argnums=0), parallel.jit(evaluate))

    def epoch(state: UnlearnState, erased_idx, remain_idx, data: Batch, key: jax.Array,
              eval_batches, eval_mask, eval_key):
        state, _, metrics, active = run_steps(state, jnp.zeros((), bool), erased_idx, remain_idx,
                                              data, key)
        return state, metrics, active, evaluate(state, eval_batches, eval_mask, eval_key)

    return parallel.jit(epoch, donate_argnums=0)


def _not_evaluated(state, eval_batches, eval_mask, eval_key):
    del state, eval_batches, eval_mask, eval_key
    return jnp.full((), jnp.nan, jnp.float32)


class _SteppedEpoch:
    """An epoch as one dispatch per step plus one for the evaluation (see `make_epoch`)."""

    def __init__(self, step, evaluate):
        self._step, self._evaluate = step, evaluate
        self._compiled = None

    def lower(self, state, erased_idx, remain_idx, data, key, eval_batches, eval_mask, eval_key):
        done = jnp.zeros((), bool)
        self._compiled = (
            self._step.lower(state, done, erased_idx[:1], remain_idx[:1], data, key).compile(),
            self._evaluate.lower(state, eval_batches, eval_mask, eval_key).compile())
        return self

    def compile(self):
        return self

    def __call__(self, state, erased_idx, remain_idx, data, key, eval_batches, eval_mask, eval_key):
        step, evaluate = self._compiled
        done, metrics, active = jnp.zeros((), bool), [], []
        for t in range(erased_idx.shape[0]):
            state, done, step_metrics, step_active = step(
                state, done, erased_idx[t:t + 1], remain_idx[t:t + 1], data, key)
            metrics.append(step_metrics)
            active.append(step_active)
        stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *metrics)
        return (state, stacked, jnp.concatenate(active),
                evaluate(state, eval_batches, eval_mask, eval_key))


def _erased_eval_batches(split: ErasureSplit, config: ml_collections.ConfigDict):
    images = np.tile(split.erased_images, (config.eval_draws, 1, 1, 1))  # as evaluate_system
    indices, mask = padded_batches(len(images), min(config.eval_batch_size, len(images)))
    return jax.device_put(images[indices]), jax.device_put(mask)


def erased_backdoor_accuracy(system: System, state: UnlearnState, split: ErasureSplit,
                             config: ml_collections.ConfigDict) -> float:
    """Receiver backdoor accuracy on all of D_e, in evaluation mode, with the stopping key."""
    batches, mask = _erased_eval_batches(split, config)
    return float(_target_rate(system_for_evaluation(system, config), state.params,
                              state.batch_stats, batches, mask, split.target_class,
                              _stopping_key(config)))


_target_rate = jax.jit(target_rate, static_argnums=(0, 5))


def _stopping_key(config: ml_collections.ConfigDict) -> jax.Array:
    # Not the key of the final evaluation: stopping on the very noise draws that are then reported
    # would bias the reported backdoor accuracy low.
    return jax.random.fold_in(jax.random.PRNGKey(config.eval_seed), 99)


def run_erased_loop(method: UnlearningMethod, name: str, system: System, state: UnlearnState,
                    split: ErasureSplit, config: ml_collections.ConfigDict) -> tuple[UnlearnState, LoopReport]:
    """Runs `method` for up to `max_epochs` epochs with the spec's stopping rules.

    Raises:
      NonFiniteError: a loss became NaN or infinite; names the method and the step. The state
        returned by the last finite epoch is not passed on.
    """
    u = config.unlearning
    batch_size = min(u.batch_size, len(split.erased_images))
    parallel = data_parallel(config)
    if batch_size % parallel.size:
        raise ConfigError(f"{name}: the {batch_size}-image erased batch (D_e has "
                          f"{len(split.erased_images)} images) does not split evenly over the "
                          f"{parallel.size} devices of config.parallel.devices")
    data = Batch(split.erased_images, split.erased_labels, split.remain_images, split.remain_labels)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    # The D_e re-evaluation (eval_draws passes of all of D_e) is only made where it can stop the
    # run; the reference's MNIST SCU and its CIFAR-10 loops have no such stop.
    stops_on_eval = u.early_stop and u.epoch_stop > 0 and u.stop_on == "eval"
    epoch_fn = make_epoch(method, system, early_stop=u.early_stop, batch_stop=u.batch_stop,
                          target=split.target_class, parallel=parallel,
                          per_step=convolutions_slow_in_loops(config),
                          eval_system=system_for_evaluation(system, config),
                          evaluate_each_epoch=stops_on_eval)
    eval_batches, eval_mask = _erased_eval_batches(split, config)
    eval_key = _stopping_key(config)
    if parallel.mesh is None:
        data = jax.device_put(data)
    else:
        state, data, key, eval_batches, eval_mask, eval_key = parallel.replicate(
            (state, data, key, eval_batches, eval_mask, eval_key))
    report = LoopReport()

    def indices_of(epoch: int):
        erased_idx, remain_idx = epoch_indices(config.seed, epoch, len(split.erased_images),
                                               len(split.remain_images), batch_size,
                                               drop_partial=u.partial_batch == "drop")
        return parallel.shard_batches(erased_idx), parallel.shard_batches(remain_idx)

    started = time.perf_counter()
    erased_idx, remain_idx = indices_of(0)
    compiled = epoch_fn.lower(state, erased_idx, remain_idx, data, key, eval_batches, eval_mask,
                              eval_key).compile()
    report.compile_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for epoch in range(u.max_epochs):
        erased_idx, remain_idx = indices_of(epoch)
        state, metrics, active, backdoor = compiled(state, erased_idx, remain_idx, data, key,
                                                    eval_batches, eval_mask, eval_key)
        active = np.asarray(active)
        losses = np.asarray(metrics.loss)[active]
        if not np.all(np.isfinite(losses)):
            bad = report.steps + int(np.argmin(np.isfinite(losses)))
            raise NonFiniteError(f"{name}: loss became non-finite at unlearning step {bad} "
                                 f"(epoch {epoch + 1}); no state was saved")
        report.steps += int(active.sum())
        report.epochs = epoch + 1
        batch_backdoor = float(np.asarray(metrics.backdoor)[active].mean())
        backdoor = float(backdoor) if stops_on_eval else None
        report.history.append({
            "epoch": epoch + 1, "steps": report.steps, "loss": float(losses.mean()),
            "batch_backdoor": batch_backdoor, "erased_backdoor": backdoor,
        })
        logging.info("%s epoch %d: %d steps, loss %.4f, backdoor %.3f over the epoch's batches%s",
                     name, epoch + 1, report.steps, losses.mean(), batch_backdoor,
                     "" if backdoor is None else f", {backdoor:.3f} on D_e after it")
        stop_value = batch_backdoor if u.stop_on == "epoch_batches" else backdoor
        if u.early_stop and stop_value is not None and stop_value < u.epoch_stop:
            break
    jax.block_until_ready(state)
    report.unlearn_seconds = time.perf_counter() - started
    return state, report
