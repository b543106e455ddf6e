"""What ends an unlearning run, evaluated on device inside the run's jitted dispatch.

The backdoor rule reads the fraction of D_e that the receiver labels as the target
(`target_rate`); the gap rule of a forget set without a backdoor reads how far D_e's
reconstruction error has risen (`gap_closed`, from `gap_stop_data` measured once on the original
system); the class rule reads the class's recognition rate, `target_rate` with the class as the
target. Each reads images sent `Protocol.draws` times in padded batches (`draw_batches`) with a
key of its own (`stopping_key`).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from scu_jax.data import ErasureSplit
from scu_jax.data.batching import padded_batches
from scu_jax.passes import (Protocol, evaluation_pass, heldout_set, remain_subsample,
                            system_for_evaluation)
from scu_jax.losses import per_image_sse
from scu_jax.models import System, to_unit_interval


def draw_batches(images: np.ndarray, protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """`images` sent `protocol.draws` times, in padded batches for `target_rate`: (num_batches,
    B, ...) images and their (num_batches, B) mask (B = `protocol.batch_size`, at most the set)."""
    images = np.tile(images, (protocol.draws,) + (1,) * (images.ndim - 1))
    indices, mask = padded_batches(len(images), min(protocol.batch_size, len(images)))
    return images[indices], mask


def stopping_key(protocol: Protocol) -> jax.Array:
    """The key of the D_e evaluations that may stop an unlearning run. Not the final evaluation's
    (`protocol.seed`): stopping on the very noise draws that are then reported would bias the
    reported backdoor accuracy low."""
    return jax.random.fold_in(jax.random.PRNGKey(protocol.seed), 99)


def target_rate(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                batches: jax.Array, mask: jax.Array, target: int, key: jax.Array) -> jax.Array:
    """Fraction of the masked images that the receiver labels `target`, traceable inside a jit.

    `batches` (num_batches, B, ...) and `mask` come from `padded_batches`; batch `i` uses
    `fold_in(key, i)`, so this equals the backdoor accuracy that `evaluate_system`-style loops
    compute with the same key and batch size.
    """
    def hits(index_and_batch):
        index, images = index_and_batch
        _, logits = evaluation_pass(system, params, batch_stats, to_unit_interval(images),
                                    jax.random.fold_in(key, index))
        return jnp.argmax(logits, axis=-1) == target

    per_image = jax.lax.map(hits, (jnp.arange(batches.shape[0]), batches))
    return jnp.sum(per_image * mask) / jnp.sum(mask)


def masked_mean_sse(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                    batches: jax.Array, mask: jax.Array, key: jax.Array) -> jax.Array:
    """Mean per-image reconstruction SSE of the masked images, traceable inside a jit (batches,
    mask and keys as in `target_rate`)."""
    def errors(index_and_batch):
        index, images = index_and_batch
        x = to_unit_interval(images)
        out, _ = evaluation_pass(system, params, batch_stats, x, jax.random.fold_in(key, index))
        return per_image_sse(out.x_hat, x)

    per_image = jax.lax.map(errors, (jnp.arange(batches.shape[0]), batches))
    return jnp.sum(per_image * mask) / jnp.sum(mask)


# The smallest generalisation gap the gap rule divides by: an original system that reconstructs
# unseen images as well as its training images leaves nothing measurable to close.
MIN_GAP = 0.01
# Held-out images the gap rule reads each epoch: they only measure drift, which the shared noise
# draws of the two systems measure precisely on a hundred images; more would cost a small D_e's
# epoch many times its steps.
GAP_HELDOUT_IMAGES = 128


def gap_stop_data(system: System, params, batch_stats, split: ErasureSplit, protocol: Protocol,
                  key: jax.Array):
    """What `gap_closed` reads, measured once on the system before unlearning (the original).

    Returns `((erased batches, mask), (held-out batches, mask), key, (e_o, h_o, gap))`: D_e and
    at most `GAP_HELDOUT_IMAGES` held-out images (`heldout_set`) sent `protocol.draws` times in
    padded batches, the key
    of their draws, the original's mean SSE on each, and its generalisation gap: its mean SSE on
    all the held-out images over that on the D_r subsample (`remain_subsample`) of D_e's classes,
    at least 1 + MIN_GAP.
    """
    system = system_for_evaluation(system, protocol)
    erased = draw_batches(split.erased_images, protocol)
    heldout = heldout_set(split)[0]
    # Evenly spaced, so a test split stored class by class keeps all its classes.
    rows = np.unique(np.linspace(0, len(heldout) - 1, min(len(heldout), GAP_HELDOUT_IMAGES)
                                 ).astype(int))
    heldout = draw_batches(heldout[rows], protocol)
    error = jax.jit(masked_mean_sse, static_argnums=0)
    e_o = error(system, params, batch_stats, *erased, key)
    h_o = error(system, params, batch_stats, *heldout, jax.random.fold_in(key, 1))
    unseen_images, _ = heldout_set(split)
    seen_images, seen_labels = remain_subsample(split, protocol)
    same_classes = np.isin(seen_labels, np.unique(split.erased_labels))
    if same_classes.any():  # class-matched, as the held-out images are
        seen_images = seen_images[same_classes]
    unseen = error(system, params, batch_stats, *draw_batches(unseen_images, protocol),
                   jax.random.fold_in(key, 2))
    seen = error(system, params, batch_stats, *draw_batches(seen_images, protocol),
                 jax.random.fold_in(key, 3))
    gap = jnp.maximum(unseen / seen, 1.0 + MIN_GAP)
    return erased, heldout, key, (e_o, h_o, gap)


def gap_closed(system: System, params, batch_stats, stop_data) -> jax.Array:
    """The fraction of the original's generalisation gap by which D_e's reconstruction error has
    risen, traceable inside a jit (`stop_data` from `gap_stop_data`, `system` as evaluated).

    rise = (SSE(D_e) / SSE_o(D_e)) / (SSE(held-out) / SSE_o(held-out)): D_e's error relative to
    the original's on the same images (so each image's difficulty cancels) and to the drift of
    unseen images' error (so a system that merely got worse everywhere does not count as having
    forgotten); `(rise − 1) / (gap − 1)`. A system that never saw D_e reconstructs it as the
    original reconstructs unseen images, about `gap` times worse than the original does: 1.
    """
    (erased, erased_mask), (heldout, heldout_mask), key, (e_o, h_o, gap) = stop_data
    e = masked_mean_sse(system, params, batch_stats, erased, erased_mask, key)
    h = masked_mean_sse(system, params, batch_stats, heldout, heldout_mask,
                        jax.random.fold_in(key, 1))
    return ((e / e_o) / (h / h_o) - 1.0) / (gap - 1.0)
