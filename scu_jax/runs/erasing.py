"""An erased-data method's run (scu, scu_no_cc, vbu, hbu) through the engine: the phase with the
stopping rule the forget set's kind asks for, what the rule reads, and several runs of one
method as one vmapped program (`erased_loops_together`). `unlearn.py` saves and evaluates them.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from scu_jax import engine
from scu_jax.data import ErasureSplit
from scu_jax.data.batching import stacked_batches
from scu_jax.errors import ConfigError, NonFiniteError
from scu_jax.evaluation import system_for_evaluation
from scu_jax.methods import Batch, ssd, unlearning_phase
from scu_jax.models import System, receiver_of, with_receiver
from scu_jax.parallel import DataParallel
from scu_jax.runs.build import (convolutions_slow_in_loops, method_of, objective_of, protocol_of,
                                salun_mask)
from scu_jax.runs import signals
from scu_jax.runs.train import progress_and_summaries
from scu_jax.stopping import draws_of, gap_closed, gap_stop_data, stopping_key, target_rate

# Epochs of an erased-data method per dispatch, its stopping rule read on device: the host then
# waits once per dispatch, not after every epoch of a small D_e (a few steps each), and prepares
# the next dispatch's batches while the device runs this one. A run that stops early wastes one
# dispatch that runs nothing; more epochs per dispatch cost the host more batches to prepare up
# front.
EPOCHS_PER_DISPATCH = 8


def run_info(report: engine.Report, epochs: int) -> dict[str, Any]:
    """What results.json and the checkpoint keep of a method's run (`epochs`: all of a resumed
    retraining's, not this call's)."""
    return {"unlearn_seconds": report.seconds, "compile_seconds": report.compile_seconds,
            "steps": report.steps, "epochs": epochs, "history": report.history}



class ErasedRun(NamedTuple):
    """An erased-data method's run, set up: what `engine.run` (or `run_many`) takes."""

    method: Any
    phase: engine.Phase
    rule: str
    target: int | None  # the label the rule counts (None: the gap rule)
    state: Any
    data: Batch
    key: jax.Array
    eval_data: Any


def erased_setup(config: ml_collections.ConfigDict, system: System, split: ErasureSplit,
                  params, batch_stats, parallel: DataParallel,
                  method: Any = None) -> ErasedRun:
    """The method (or `method`, one built for another run of the same settings), its phase with
    the stopping rule the forget set's kind asks for, and what that rule reads."""
    u, name = config.unlearning, config.unlearning.method
    batch_size = min(u.batch_size, len(split.erased_images))
    if batch_size % parallel.size:
        raise ConfigError(f"{name}: the {batch_size}-image erased batch (D_e has "
                          f"{len(split.erased_images)} images) does not split evenly over the "
                          f"{parallel.size} devices of config.parallel.devices")
    if method is None:
        mask = (salun_mask(config, system, params, batch_stats, split.erased_images,
                           split.erased_labels) if name == "salun" else None)
        erased, remain = len(split.erased_images), len(split.remain_images)
        method = method_of(config, system, mask, forget_weight=erased / (erased + remain))
    protocol = protocol_of(config)
    eval_system, target = system_for_evaluation(system, protocol), split.target_class
    rule = {"backdoor": "backdoor", "class": "class"}.get(split.kind, "gap")
    if rule == "class":
        target = int(split.erased_labels[0])  # the class being forgotten
    # The rate the rule stops below: `target_rate` reads D_e's draws only until the answer is
    # known (the history then holds the rate of the batches read, itself above the threshold).
    threshold = u.class_stop if rule == "class" else u.epoch_stop if u.epoch_stop > 0 else None

    def evaluate(state, eval_data):
        if rule == "gap":
            return gap_closed(eval_system, state.params, state.batch_stats, eval_data)
        if rule == "class":  # read by the receiver that reads the results (a frozen original)
            draws, key, receiver = eval_data
            params, batch_stats = (state.params, state.batch_stats) if receiver is None else (
                with_receiver(state.params, state.batch_stats, receiver))
            return target_rate(eval_system, params, batch_stats, draws, target, key, threshold)
        draws, key = eval_data
        return target_rate(eval_system, state.params, state.batch_stats, draws, target, key,
                           threshold)

    phase = unlearning_phase(
        method, seed=config.seed, num_erased=len(split.erased_images),
        num_remain=len(split.remain_images), batch_size=batch_size, max_epochs=u.max_epochs,
        drop_partial=u.partial_batch == "drop", early_stop=u.early_stop, batch_stop=u.batch_stop,
        epoch_stop=u.epoch_stop, stop_on=u.stop_on, evaluate=evaluate, rule=rule,
        gap_tolerance=u.gap_tolerance, class_stop=u.class_stop)
    # The D_e re-evaluation (eval_draws passes of all of D_e) is only made where it can stop the
    # run; the reference's MNIST SCU and its CIFAR-10 loops have no such stop.
    eval_data = None
    if phase.evaluate is not None:
        key = stopping_key(protocol)
        if rule == "gap":
            eval_data = gap_stop_data(system, params, batch_stats, split, protocol, key)
        elif rule == "class":
            # A host copy: the state's own receiver buffers are donated to the steps.
            original = (jax.tree.map(np.array, receiver_of(params, batch_stats))
                        if protocol.receiver == "original" else None)
            eval_data = (draws_of(split.erased_images, protocol), key, original)
        else:
            # The known D_e alone: flagged samples (`forget.expand`) may be clean images of the
            # target class, which no forgetting should turn away from it.
            eval_data = (draws_of(split.erased_images[:split.num_known], protocol), key)
    data = Batch(split.erased_images, split.erased_labels, split.remain_images, split.remain_labels)
    return ErasedRun(method, phase, rule, None if rule == "gap" else target,
                      method.init(params, batch_stats), data,
                      jax.random.fold_in(jax.random.PRNGKey(config.seed), 2), eval_data)


def erased_info(config: ml_collections.ConfigDict, run: ErasedRun,
                 report: engine.Report) -> dict[str, Any]:
    info = run_info(report, report.epochs)
    info["stop_rule"] = stop_rule_description(config, run.rule)
    info["stopped_by"] = run.rule if run.phase.name in report.stopped else "max_epochs"
    return info


def erased_loop(config: ml_collections.ConfigDict, system: System, split: ErasureSplit,
                 params, batch_stats, workdir: pathlib.Path | None, image_shape,
                 parallel: DataParallel) -> tuple[dict, dict, dict]:
    """An erased-data method (scu, scu_no_cc, vbu, hbu, salun) through the engine, with its stopping
    rules; its curves go to `workdir/summaries/<method>`."""
    del image_shape
    u, name = config.unlearning, config.unlearning.method
    run = erased_setup(config, system, split, params, batch_stats, parallel)
    steps_per_epoch = run.phase.batches(0)[0].shape[0]
    hooks, writer = progress_and_summaries(config, workdir, u.max_epochs * steps_per_epoch,
                                           (u.max_epochs - 1,), name)
    stop = signals.StopOnSignal(u.max_epochs, saved=False, what=name)
    try:
        with signals.stops_at_boundaries():
            state, report = engine.run(
                [run.phase], run.state, run.data, run.key, name=name, parallel=parallel,
                per_step=convolutions_slow_in_loops(config), eval_data=run.eval_data,
                hooks=[*hooks, stop], when_non_finite="; no state was saved",
                epochs_per_dispatch=EPOCHS_PER_DISPATCH)
    finally:
        if writer is not None:
            writer.close()
    return state.params, state.batch_stats, erased_info(config, run, report)


def _shapes(tree: Any) -> Any:
    return jax.tree.map(np.shape, tree)


def erased_loops_together(configs: Sequence[ml_collections.ConfigDict], system: System,
                          splits: Sequence[ErasureSplit], trained: Sequence[tuple[Any, Any]]
                          ) -> list[tuple[dict, dict, dict]] | None:
    """Several runs of one erased-data method with the same settings (seeds, forget requests)
    as ONE compiled program (`engine.run_many`); each run's result equals its run alone.

    Returns `[(params, batch_stats, info)]` per run, or None where the runs cannot share a
    program: other hyper-parameters, D_e, D_r or stopping data of other shapes, another stop
    target, a mesh, or a codec the engine steps one dispatch at a time.

    Raises:
      NonFiniteError: one run's loss or parameters became non-finite (naming the run).
    """
    first = configs[0]
    unlearning = [{k: v for k, v in c.unlearning.to_dict().items() if k != "per_method"}
                  for c in configs]
    if (len(configs) < 2 or any(u != unlearning[0] for u in unlearning)
            or first.parallel.devices != 1 or convolutions_slow_in_loops(first)):
        return None
    parallel = DataParallel()
    # SalUn's mask is each run's own (its D_e, its system): built per run, kept in each run's
    # state; the step itself is the same for every run.
    method = None if first.unlearning.method == "salun" else method_of(first, system)
    runs = [erased_setup(config, system, split, *variables, parallel, method=method)
            for config, split, variables in zip(configs, splits, trained)]
    # Run 0's phase is every run's: its stopping rule reads its target.
    alike = {(r.rule, r.target, str(_shapes((r.state, r.data, r.eval_data, r.phase.batches(0)))))
             for r in runs}
    if len(alike) > 1:
        return None
    stack = lambda *trees: jax.tree.map(lambda *a: np.stack(a), *trees)  # noqa: E731
    stop = signals.StopOnSignal(first.unlearning.max_epochs, saved=False,
                                what=f"{len(runs)} {first.unlearning.method} runs as one program")
    with signals.stops_at_boundaries():
        states, reports = engine.run_many(
            runs[0].phase, [r.phase.batches for r in runs],
            stack(*[jax.device_get(r.state) for r in runs]), stack(*[r.data for r in runs]),
            jnp.stack([r.key for r in runs]), name=first.unlearning.method,
            eval_data=None if runs[0].eval_data is None else stack(*[r.eval_data for r in runs]),
            epochs_per_dispatch=EPOCHS_PER_DISPATCH,
            hooks=[[]] * (len(runs) - 1) + [[stop]])
    states = jax.device_get(states)
    # Each run's `unlearn_seconds` is the whole program's: its result was ready no sooner.
    return [(jax.tree.map(lambda a, i=i: a[i], states.params),
             jax.tree.map(lambda a, i=i: a[i], states.batch_stats),
             {**erased_info(config, run, report), "runs_together": len(runs)})
            for i, (config, run, report) in enumerate(zip(configs, runs, reports))]


def stop_rule_description(config: ml_collections.ConfigDict, rule: str) -> str:
    """One line saying what may end an erased-data method's run (results and the ledger)."""
    u = config.unlearning
    cap = f"at most {u.max_epochs} epochs"
    if not u.early_stop:
        return f"no early stop; {cap}"
    if rule == "class":
        return (f"class: the receiver recognises the class on x̂(D_e) less often than "
                f"{u.class_stop:g}; {cap}")
    if rule == "gap":
        return (f"gap: D_e's reconstruction error has risen by {1 - u.gap_tolerance:g} of the "
                f"original's generalisation gap (held-out drift removed); {cap}")
    stops = []
    if u.batch_stop > 0:
        stops.append(f"an epoch ends once a batch's backdoor accuracy is below {u.batch_stop:g}")
    if u.epoch_stop > 0:
        seen = "all of D_e re-evaluated" if u.stop_on == "eval" else "the epoch's erased batches"
        stops.append(f"the run stops once the backdoor accuracy ({seen}) is below "
                     f"{u.epoch_stop:g}")
    return f"backdoor: {'; '.join(stops) or 'no threshold'}; {cap}"


def ssd_pass(config: ml_collections.ConfigDict, system: System, split: ErasureSplit, params,
             batch_stats, workdir: pathlib.Path | None, image_shape,
             parallel: DataParallel) -> tuple[dict, dict, dict]:
    """SSD (`methods/ssd.py`): the importances over what the system learnt from (D_e ∪ D_r,
    with the labels it trained with) and over D_e, in batches of `unlearning.batch_size`, then
    one dampening. No steps and no stop: timed as the other methods are, compilation apart."""
    del workdir, image_shape, parallel  # one pass on the default device
    u = config.unlearning
    method = ssd(system, objective_of(config), alpha=u.ssd_alpha, dampening=u.ssd_lambda)
    size = min(u.batch_size, len(split.erased_images))
    erased = stacked_batches(split.erased_images, split.erased_labels, size)
    every = stacked_batches(np.concatenate([split.erased_images, split.remain_images]),
                     np.concatenate([split.erased_labels, split.remain_labels]), size)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    params, batch_stats, erased, every = jax.device_put((params, batch_stats, erased, every))
    begun = time.perf_counter()
    importance = {name: method.importance.lower(params, batch_stats, *data, key).compile()
                  for name, data in (("every", every), ("erased", erased))}
    shapes = jax.eval_shape(method.importance, params, batch_stats, *erased, key)
    dampen = method.dampen.lower(params, shapes, shapes).compile()
    compile_seconds = time.perf_counter() - begun
    begun = time.perf_counter()
    dampened, count = dampen(params, importance["every"](params, batch_stats, *every, key),
                             importance["erased"](params, batch_stats, *erased, key))
    jax.block_until_ready(dampened)
    seconds = time.perf_counter() - begun
    if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(dampened)):
        raise NonFiniteError("ssd: the dampened parameters are non-finite; no state was saved")
    info = {"unlearn_seconds": seconds, "compile_seconds": compile_seconds,
            "steps": int(erased[0].shape[0] + every[0].shape[0]), "epochs": 1, "history": [],
            "stop_rule": f"one pass: SSD, α = {u.ssd_alpha:g}, λ = {u.ssd_lambda:g}",
            "stopped_by": "one_pass", "ssd_dampened": int(count)}
    logging.info("ssd: %d parameters dampened, %.3f s (+%.2f s compile)", int(count), seconds,
                 compile_seconds)
    return dampened, batch_stats, info
