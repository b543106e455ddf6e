"""The relearning attack: does what a method forgot come back after a little training?

From a saved system (unlearned, retrained or the original), the attacker trains on a small part
of D_e — `fraction` of it, a seeded draw, at least one batch — with the codec's training step
(the training recipe's objective, optimiser, learning rate and batch size, fresh Adam state), and
after each of `steps` steps the forgotten behaviour is read on the rest of D_e, which the attack
never saw: under the backdoor protocol the backdoor accuracy (the triggered images read as the
target class), otherwise the mean reconstruction SSE of those images. Both are read through the
evaluation channel by the receiver the results are read by (`evaluation.receiver`: the original
system's, stored with every unlearned result, by default), with one fixed key, so every system's
curve sees the same noise. A method that removed the information relearns it no faster than
retraining does; one that hid it gives it back within a few steps.
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from scu_jax.config import method_config, validate_config
from scu_jax.methods import training
from scu_jax.models import receiver_of, with_receiver
from scu_jax.passes import system_for_evaluation
from scu_jax.probes import attack_rows
from scu_jax.runs.build import build_for, protocol_of, recipe_of
from scu_jax.runs.saved import original_receiver, restore_saved
from scu_jax.stopping import draws_of, masked_mean_sse, stopping_key, target_rate


def relearning_curve(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                     fraction: float = 0.1, steps: Sequence[int] = (0, 10, 25, 50, 100),
                     seed: int = 0) -> list[dict[str, Any]]:
    """The attack on the system saved in `workdir` (see the module docstring).

    Args:
      config: the configuration the system was trained (and unlearned) under.
      workdir: a finished scu-train, scu-unlearn or retraining workdir (read only).
      fraction: the part of D_e the attacker trains on.
      steps: after how many attack steps to read (increasing, from 0).
      seed: draws the attack's part of D_e and its batches.

    Returns:
      One entry per element of `steps`: `{"steps", "attack_images", "heldout_images"}` and
      `backdoor_accuracy` (backdoor protocol) or `mse_erased` (other forget sets).
    """
    steps = [int(s) for s in steps]
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction}: must be in (0, 1), some of D_e stays unseen")
    if not steps or steps[0] < 0 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"steps={steps}: must be increasing and >= 0")
    validate_config(config)
    config = method_config(config)
    split, system, image_shape = build_for(config)
    restored, _ = restore_saved(workdir, system, config, image_shape)
    params, batch_stats = restored["params"], restored["batch_stats"]
    protocol = protocol_of(config)
    recipe = recipe_of(config)
    attack, heldout = attack_rows(len(split.erased_images), fraction, recipe.batch_size, seed)
    attack_size = len(attack)
    batch = min(recipe.batch_size, attack_size)
    attack_images = split.erased_images[attack]
    attack_labels = split.erased_labels[attack]

    reader = original_receiver(restored) if protocol.receiver == "original" else None
    eval_system = system_for_evaluation(system, protocol)
    draws, key = draws_of(split.erased_images[heldout], protocol), stopping_key(protocol)

    @jax.jit
    def read(params, batch_stats):
        if reader is not None:
            params, batch_stats = with_receiver(params, batch_stats, reader)
        if split.backdoor:
            return target_rate(eval_system, params, batch_stats, draws, split.target_class, key)
        return masked_mean_sse(eval_system, params, batch_stats, draws, key)

    step = jax.jit(training.codec_step(system, recipe))
    state = training.train_state_from(params, batch_stats, recipe)
    attack_key = jax.random.fold_in(jax.random.PRNGKey(seed), 7)
    rng = np.random.default_rng(seed + 1)
    name = "backdoor_accuracy" if split.backdoor else "mse_erased"
    curve, done, pending = [], 0, np.zeros(0, np.int64)
    for target in steps:
        while done < target:
            if len(pending) < batch:  # a fresh permutation of the attack's images
                pending = np.concatenate([pending, rng.permutation(attack_size)])
            rows, pending = pending[:batch], pending[batch:]
            state, _ = step(state, training.Examples(attack_images[rows], attack_labels[rows]),
                            attack_key)
            done += 1
        curve.append({"steps": target, name: float(read(state.params, state.batch_stats)),
                      "attack_images": int(attack_size), "heldout_images": int(len(heldout))})
    return curve


def sharded_relearning_curve(workdir: str | pathlib.Path, *, fraction: float = 0.1,
                             steps: Sequence[int] = (0, 10, 25, 50, 100), seed: int = 0,
                             original: str | pathlib.Path | None = None
                             ) -> list[dict[str, Any]]:
    """`relearning_curve` on a sharded system (`runs/sharded.py`, backdoor protocol): every
    shard's codec trained on the same attack batches, the backdoor read on the rest of D_e
    through the aggregated system (the sender's pick of shard), by the receivers of `original`
    (the sharded system before the deletion, as the protocol reads a single system with the
    original's receiver; `runs.sharded.original_readers`), or by its own without it."""
    import functools

    from scu_jax.config import config_from_json
    from scu_jax.passes import per_sample_metrics
    from scu_jax.runs import sharded
    from scu_jax.sharding import sharded_metrics

    steps = [int(s) for s in steps]
    if not 0.0 < fraction < 1.0 or not steps or steps[0] < 0 or any(
            b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"fraction={fraction}, steps={steps}: a fraction in (0, 1) and "
                         "increasing steps from 0")
    manifest = sharded.read_manifest(workdir)
    job = sharded.setup(config_from_json(manifest["config"]))
    split, config = job.split, job.config
    if not split.backdoor:
        raise ValueError("the sharded relearning attack reads the backdoor protocol's D_e")
    params, batch_stats = sharded.load_shards(job, pathlib.Path(workdir), manifest["shards"])
    recipe, protocol = recipe_of(config), protocol_of(config)
    attack, heldout = attack_rows(len(split.erased_images), fraction, recipe.batch_size, seed)
    batch = min(recipe.batch_size, len(attack))
    shards = len(jax.tree.leaves(params)[0])
    state = jax.tree.map(lambda *leaves: np.stack(leaves), *[training.train_state_from(
        jax.tree.map(lambda a, k=k: a[k], params), jax.tree.map(lambda a, k=k: a[k], batch_stats),
        recipe) for k in range(shards)])
    step = jax.jit(jax.vmap(training.codec_step(job.system, recipe), in_axes=(0, None, None)))
    images = np.tile(split.erased_images[heldout], (protocol.draws, 1, 1, 1))
    forward = functools.partial(sharded_metrics, aggregation=config.shards.aggregation)
    readers = sharded.original_readers(job, params, batch_stats, original)  # read once
    reader = receiver_of(*readers) if readers[0] is not params else None

    def read(state) -> float:
        params, batch_stats = state.params, state.batch_stats
        if reader is not None:
            params, batch_stats = with_receiver(params, batch_stats, reader)
        rows = per_sample_metrics(system_for_evaluation(job.system, protocol), params,
                                  batch_stats, images, batch_size=protocol.batch_size,
                                  key=stopping_key(protocol), forward=forward)
        return float(np.mean(rows["prediction"] == split.target_class))

    attack_key = jax.random.fold_in(jax.random.PRNGKey(seed), 7)
    rng = np.random.default_rng(seed + 1)
    curve, done, pending = [], 0, np.zeros(0, np.int64)
    for target in steps:
        while done < target:
            if len(pending) < batch:
                pending = np.concatenate([pending, rng.permutation(len(attack))])
            rows, pending = attack[pending[:batch]], pending[batch:]
            state, _ = step(state, training.Examples(split.erased_images[rows],
                                                     split.erased_labels[rows]), attack_key)
            done += 1
        curve.append({"steps": target, "backdoor_accuracy": read(state),
                      "attack_images": int(len(attack)), "heldout_images": int(len(heldout))})
    return curve
