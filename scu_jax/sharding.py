"""Exact unlearning by sharding and slicing (SISA, Bourtoule et al., IEEE S&P 2021) for a codec.

The training set is split into S disjoint shards (seeded, stratified by class) and each shard into
R slices (`assign_shards`). Shard k's system (encoder, channel, decoder, receiver) trains in R
stages: stage r on slices 1..r, `stage_epochs` epochs of the recipe's receiver phase then of its
codec phase, with a checkpoint after each stage. A deletion retrains only the shards that held an
erased sample, from the checkpoint of the stage before the earliest slice that held one: what it
restores never saw the sample, so the result is what training without it gives.

`shards_program` trains any set of shards through any stage as ONE compiled program: a `lax.map`
over the shards of the stage's epochs. Not `vmap`: XLA's kernels for a batch of runs round
differently with the batch's width (measured on the MNIST codec: 3e-8 after 40 steps at 3 or 8
runs against 1), while a `lax.map` step is the same computation whatever the other shards are,
so a shard retrained beside k − 1 others is bit-identical to that shard trained alone from
scratch on its data less the erased samples (tested). Each epoch's order is drawn on device from
the samples' ids (`fold_in(epoch key, id)`), so it depends on the shard's samples only, not on the
padding a program of several shards needs; a padded step is skipped (`lax.cond`, a real branch
under `lax.map`).

Aggregation (`sharded_forward`): the sender knows x, encodes it with every shard, decodes each
latent without the channel and sends the latent of the shard k* with the best reconstruction,
plus k* (⌈log₂ S⌉ bits); the receiver decodes with shard k*'s decoder, and either k*'s receiver
reads x̂ ("best") or all S receivers vote on it ("vote": S − 1 extra receiver passes).
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any, Mapping, Sequence

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from scu_jax.losses import per_image_sse
from scu_jax.methods import training
from scu_jax.methods.training import Examples, Recipe
from scu_jax.models import System, apply_receiver, to_unit_interval, without_channel
from scu_jax.passes import evaluation_pass

AGGREGATIONS = ("best", "vote")


def assign_shards(labels: np.ndarray, count: int, slices: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The shard and the slice of every training sample: each class's samples in a seeded order
    dealt round the shards, and each shard's dealt round its slices, so every shard and slice
    holds every class in proportion and the sizes differ by at most one per class.

    Example:
      >>> shard, slice_ = scu_jax.assign_shards(np.arange(40) % 4, count=4, slices=2, seed=0)
      >>> np.bincount(shard).tolist(), np.bincount(slice_[shard == 0]).tolist()
      ([10, 10, 10, 10], [5, 5])
    """
    if count < 1 or slices < 1:
        raise ValueError(f"shards and slices must be at least 1, got {count} and {slices}")
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 5113])
    shard = np.empty(len(labels), np.int32)
    slice_ = np.empty(len(labels), np.int32)
    offset = 0
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        positions = offset + np.arange(len(rows))
        shard[rows] = positions % count
        slice_[rows] = (positions // count) % slices
        offset += len(rows)
    return shard, slice_


def stage_epochs(epochs: int, slices: int) -> int:
    """Epochs of each of the R stages: stage r reads r/R of the shard, so 2E/(R + 1) epochs a
    stage give the shard the sample passes of E epochs on all of it (E itself at R = 1)."""
    return 0 if epochs == 0 else max(1, round(2 * epochs / (slices + 1)))


def stage_rows(shard: np.ndarray, slice_: np.ndarray, index: int, stage: int,
               excluded: Sequence[int] = ()) -> np.ndarray:
    """The sorted training rows shard `index` trains on in stage `stage` (1-based): its slices
    1..stage, less the `excluded` (erased) samples."""
    rows = np.flatnonzero((shard == index) & (slice_ < stage))
    return np.setdiff1d(rows, np.asarray(excluded, np.int64))


def chain_digest(parent: str, rows: np.ndarray) -> str:
    """A stage checkpoint's name: sha256 of its parent's name and the rows the stage trained on
    (its parent names the shard, the configuration and the earlier stages)."""
    text = parent + "\n" + "".join(f"{int(i)}\n" for i in np.sort(rows))
    return hashlib.sha256(text.encode()).hexdigest()


def index_bits(count: int) -> int:
    """The side information "best" sends with every latent: ⌈log₂ S⌉ bits."""
    return math.ceil(math.log2(count)) if count > 1 else 0


def shards_program(system: System, recipe: Recipe, receiver_epochs: int, codec_epochs: int):
    """One stage of any number of shards as one jitted program (module docstring):
    `(states, images, labels, ids, counts, keys, stage) → (states, finite, losses)`.

    `states` are the shards' `TrainState`s stacked on a leading axis (donated); `images`,
    `labels` and `ids` (the samples' training-set rows) are each shard's stage data padded to a
    common length, of which the first `counts[k]` rows are real; `keys` one key per shard;
    `stage` the stage's number (it seeds the epochs' orders). Each shard runs `receiver_epochs`
    epochs of the recipe's receiver step, then `codec_epochs` of its codec step, in batches of
    `recipe.batch_size` (the remainder of an epoch dropped). `finite[k]`: shard k's parameters
    are finite after the stage; `losses[k]`: the mean codec loss of its last epoch.

    Example:
      >>> program = scu_jax.shards_program(system, recipe, receiver_epochs=0, codec_epochs=1)
      >>> two = lambda tree: jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), tree)
      >>> ids = jnp.arange(len(labels))
      >>> finals, finite, losses = program(two(state), two(images), two(labels), two(ids),
      ...                                  jnp.array([16, 8]), two(key), 1)
      >>> (finals.step - state.step).tolist(), finite.tolist()  # a 16-row shard and an 8-row one
      ([1, 0], [True, True])
    """
    steps = {training.RECEIVER: training.receiver_step(system, recipe),
             training.CODEC: training.codec_step(system, recipe)}
    batch = recipe.batch_size

    def one_shard(arguments):
        state, images, labels, ids, count, key, stage = arguments
        slots = images.shape[0] // batch
        stage_key = jax.random.fold_in(key, stage)

        def epoch(phase, offset):
            step = steps[phase]

            def run(number, carry):
                state, _ = carry
                if recipe.reset_optimizer_each_epoch:
                    state = training.with_fresh_optimizer(state, recipe, phase)
                epoch_key = jax.random.fold_in(stage_key, offset + number)
                scores = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(epoch_key, i)))(
                    ids)
                scores = jnp.where(jnp.arange(ids.shape[0]) < count, scores, jnp.inf)
                order = jnp.argsort(scores)[:slots * batch].reshape(slots, batch)
                valid = jnp.arange(slots) < count // batch

                def body(current, row_and_valid):
                    row, ok = row_and_valid

                    def go(s):
                        new, metrics = step(s, Examples(images[row], labels[row]), key)
                        return new, metrics.loss

                    return jax.lax.cond(ok, go, lambda s: (s, jnp.zeros((), jnp.float32)),
                                        current)

                state, step_losses = jax.lax.scan(body, state, (order, valid))
                mean = jnp.sum(step_losses) / jnp.maximum(jnp.sum(valid), 1)
                return state, mean

            return run

        loss = jnp.zeros((), jnp.float32)
        state, loss = jax.lax.fori_loop(0, receiver_epochs, epoch(training.RECEIVER, 0),
                                        (state, loss))
        state, loss = jax.lax.fori_loop(0, codec_epochs, epoch(training.CODEC, receiver_epochs),
                                        (state, loss))
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in
                                      jax.tree.leaves((state.params, state.batch_stats))]))
        return state, finite, loss

    def program(states, images, labels, ids, counts, keys, stage):
        stages = jnp.full(counts.shape, stage, jnp.int32)
        return jax.lax.map(one_shard, (states, images, labels, ids, counts, keys, stages))

    return jax.jit(program, donate_argnums=0)


def sharded_forward(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                    images: jax.Array, key: jax.Array, *, aggregation: str = "best"
                    ) -> dict[str, jax.Array]:
    """A batch through the sharded system, per image (module docstring): the SSE, PSNR-ready x̂
    and the prediction of the aggregated receiver(s), on x̂ and on x, and the shard each image
    was sent through. `params`/`batch_stats` are the S shards' stacked on a leading axis; every
    shard sees the same latent and channel draws (`key`), as two systems do in the evaluation.

    Example:
      >>> two = lambda tree: jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), tree)
      >>> out = scu_jax.sharded_forward(system, two(state.params), two(state.batch_stats),
      ...                               images, key)
      >>> out["x_hat"].shape == images.shape, set(out["shard"].tolist()) <= {0, 1}
      (True, True)
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got "
                         f"{aggregation!r}")
    x = to_unit_interval(images)
    sender = without_channel(system)

    def per_shard(p, s):
        out, logits = evaluation_pass(system, p, s, x, key)
        guess, _ = evaluation_pass(sender, p, s, x, jax.random.fold_in(key, 7919))
        return out.x_hat, logits, per_image_sse(guess.x_hat, x)

    x_hats, logits, guessed = jax.vmap(per_shard)(params, batch_stats)  # (S, B, ...)
    chosen = jnp.argmin(guessed, axis=0)  # the sender's pick k* per image
    rows = jnp.arange(x.shape[0])
    x_hat = x_hats[chosen, rows]

    def receivers(inputs):
        return jax.vmap(lambda p, s: apply_receiver(system, p, s, inputs)[0])(params, batch_stats)

    if aggregation == "best":
        prediction = jnp.argmax(logits[chosen, rows], axis=-1)
        input_prediction = jnp.argmax(receivers(x)[chosen, rows], axis=-1)
    else:
        def vote(all_logits):  # the class most receivers pick (ties: the lowest)
            picks = jax.nn.one_hot(jnp.argmax(all_logits, -1), all_logits.shape[-1])
            return jnp.argmax(jnp.sum(picks, axis=0), axis=-1)

        prediction, input_prediction = vote(receivers(x_hat)), vote(receivers(x))
    return {"sse": per_image_sse(x_hat, x), "x_hat": x_hat, "prediction": prediction,
            "input_prediction": input_prediction, "shard": chosen}


@functools.partial(jax.jit, static_argnums=0, static_argnames=("aggregation",))
def sharded_metrics(system: System, params, batch_stats, images, key, aggregation: str = "best"
                    ) -> dict[str, jax.Array]:
    """`sharded_forward` as the evaluation's per-image rows (`passes.per_sample_metrics`' keys,
    and `shard`), jitted."""
    out = sharded_forward(system, params, batch_stats, images, key, aggregation=aggregation)
    x = to_unit_interval(images)
    x_hat = jnp.clip(out.pop("x_hat"), 0.0, 1.0)
    return {**out, "psnr": pix.psnr(x_hat, x), "ssim": pix.ssim(x_hat, x)}
