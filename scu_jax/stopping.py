"""What ends an unlearning run, evaluated on device inside the run's jitted dispatch.

The backdoor rule reads the fraction of D_e that the receiver labels as the target
(`target_rate`); the gap rule of a forget set without a backdoor reads how far D_e's
reconstruction error has risen (`gap_closed`, from `gap_stop_data` measured once on the original
system); the class rule reads the class's recognition rate, `target_rate` with the class as the
target. Each reads images sent `Protocol.draws` times in padded batches (`draws_of`) with a
key of its own (`stopping_key`).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scu_jax.data import ErasureSplit
from scu_jax.data.batching import padded_batches
from scu_jax.passes import (Protocol, heldout_set, posterior_pass, remain_subsample,
                            system_for_evaluation)
from scu_jax.losses import per_image_sse
from scu_jax.models import System, to_unit_interval


class Draws(NamedTuple):
    """An image set sent `Protocol.draws` times in padded batches of fixed size: `images` (n, ...)
    held once, `rows` (num_batches, B) the rows of `images` each batch sends (the set repeated
    `draws` times, in order, then padded) and `mask` (num_batches, B), 1 for real rows.

    Example:
      >>> from scu_jax.passes import Protocol
      >>> draws = scu_jax.draws_of(np.asarray(images), Protocol(draws=3, batch_size=32))
      >>> draws.rows.shape, int(draws.mask.sum())   # 48 sends in 2 batches of 32
      ((2, 32), 48)
    """

    images: Any
    rows: Any
    mask: Any


def draws_of(images: np.ndarray, protocol: Protocol) -> Draws:
    """`images` sent `protocol.draws` times in batches of `protocol.batch_size` (at most the
    number of sends), for `target_rate` and `masked_mean_sse`.

    Args:
      images: the set, uint8 (n, H, W, C).
      protocol: its `draws` and `batch_size`.

    Returns:
      `Draws`.

    Example:
      >>> from scu_jax.passes import Protocol
      >>> draws = scu_jax.draws_of(np.asarray(images), Protocol(draws=8, batch_size=500))
      >>> draws.rows.shape, draws.rows[0, :3].tolist(), draws.rows[0, 16:19].tolist()
      ((1, 128), [0, 1, 2], [0, 1, 2])
    """
    sends = len(images) * protocol.draws
    indices, mask = padded_batches(sends, min(protocol.batch_size, sends))
    return Draws(images, (indices % len(images)).astype(np.int32), mask)


def stopping_key(protocol: Protocol) -> jax.Array:
    """The key of the D_e evaluations that may stop an unlearning run. Not the final evaluation's
    (`protocol.seed`): stopping on the very noise draws that are then reported would bias the
    reported backdoor accuracy low."""
    return jax.random.fold_in(jax.random.PRNGKey(protocol.seed), 99)


# Images (times pixels) the batches of one `_per_send` call hold at once: the batches are mapped
# several at a time (larger matrix products than one batch's), without holding a large set's
# every send in memory.
_MAPPED_PIXELS = 1 << 22


def _per_send(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
              draws: Draws, key: jax.Array, read) -> jax.Array:
    """The mask-weighted mean over every send of `read(out, logits, x)` (one value per image).

    The encoder reads each image once (its posterior does not depend on the draw); batch `i` then
    samples, sends and decodes with `fold_in(key, i)` as `evaluation_pass` would on the same
    images, so the draws are those of a pass over the images repeated.
    """
    x = to_unit_interval(jnp.asarray(draws.images))
    mu, logvar = system.codec.apply({"params": params["codec"], "batch_stats": batch_stats}, x,
                                    train=False, method="encode")

    def one(index_and_rows):
        index, rows = index_and_rows
        out, logits = posterior_pass(system, params, batch_stats, mu[rows], logvar[rows],
                                     jax.random.fold_in(key, index))
        return read(out, logits, x[rows])

    batches, size = draws.rows.shape
    per_batch = max(1, _MAPPED_PIXELS // (size * int(np.prod(x.shape[1:]))))
    per_image = jax.lax.map(one, (jnp.arange(batches), draws.rows),
                            batch_size=min(per_batch, batches))
    return jnp.sum(per_image * draws.mask) / jnp.sum(draws.mask)


def target_rate(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                draws: Draws, target: int, key: jax.Array,
                threshold: float | None = None) -> jax.Array:
    """Fraction of the sends that the receiver labels `target`, traceable inside a jit.

    `draws` comes from `draws_of`; batch `i` uses `fold_in(key, i)`, so this equals the backdoor
    accuracy that `evaluate_system`-style loops compute with the same key and batch size.

    With `threshold` (a stopping rule `rate < threshold`), the batches are read in order only
    until their hits reach `threshold` of all the sends: the rate is then at least `threshold`
    whatever the other batches hold, so the rule's answer is already known, and the rate of the
    batches read (itself at least `threshold`) is returned. Below the threshold every batch is
    read and the rate is exact; either way `rate < threshold` is what a full read decides.

    Args:
      system: the two modules.
      params, batch_stats: the system's variables.
      draws: the set and its sends (`draws_of`).
      target: the label counted.
      key: PRNG key of the sends.
      threshold: the stopping rule's threshold, or None for the exact rate.

    Returns:
      A scalar in [0, 1].

    Example:
      >>> from scu_jax.passes import Protocol
      >>> draws = scu_jax.draws_of(np.asarray(images), Protocol(draws=2, batch_size=32))
      >>> rate = scu_jax.target_rate(system, state.params, state.batch_stats, draws, 2, key)
      >>> 0.0 <= float(rate) <= 1.0
      True
    """
    def hits(out, logits, x):
        return jnp.argmax(logits, axis=-1) == target

    if threshold is None:
        return _per_send(system, params, batch_stats, draws, key, hits)
    x = to_unit_interval(jnp.asarray(draws.images))
    mu, logvar = system.codec.apply({"params": params["codec"], "batch_stats": batch_stats}, x,
                                    train=False, method="encode")
    mask = jnp.asarray(draws.mask, jnp.float32)
    enough = threshold * jnp.sum(mask)

    def more(carry):
        index, found, _ = carry
        return (index < mask.shape[0]) & (found < enough)

    def read(carry):
        index, found, sent = carry
        rows = jnp.asarray(draws.rows)[index]
        out, logits = posterior_pass(system, params, batch_stats, mu[rows], logvar[rows],
                                     jax.random.fold_in(key, index))
        return (index + 1, found + jnp.sum(hits(out, logits, x[rows]) * mask[index]),
                sent + jnp.sum(mask[index]))

    _, found, sent = jax.lax.while_loop(
        more, read, (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32),
                     jnp.zeros((), jnp.float32)))
    return found / sent


def masked_mean_sse(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                    draws: Draws, key: jax.Array) -> jax.Array:
    """Mean per-image reconstruction SSE over the sends, traceable inside a jit (draws and keys
    as in `target_rate`)."""
    return _per_send(system, params, batch_stats, draws, key,
                     lambda out, logits, x: per_image_sse(out.x_hat, x))


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

    Returns `(erased draws, held-out draws, key, (e_o, h_o, gap))`: D_e and at most
    `GAP_HELDOUT_IMAGES` held-out images (`heldout_set`) as `draws_of` sends them, the key of
    their draws, the original's mean SSE on each, and its generalisation gap: its mean SSE on
    all the held-out images over that on the D_r subsample (`remain_subsample`) of D_e's classes,
    at least 1 + MIN_GAP.
    """
    system = system_for_evaluation(system, protocol)
    erased = draws_of(split.erased_images, protocol)
    heldout = heldout_set(split)[0]
    # Evenly spaced, so a test split stored class by class keeps all its classes.
    rows = np.unique(np.linspace(0, len(heldout) - 1, min(len(heldout), GAP_HELDOUT_IMAGES)
                                 ).astype(int))
    heldout = draws_of(heldout[rows], protocol)
    error = jax.jit(masked_mean_sse, static_argnums=0)
    e_o = error(system, params, batch_stats, erased, key)
    h_o = error(system, params, batch_stats, heldout, jax.random.fold_in(key, 1))
    unseen_images, _ = heldout_set(split)
    seen_images, seen_labels = remain_subsample(split, protocol)
    same_classes = np.isin(seen_labels, np.unique(split.erased_labels))
    if same_classes.any():  # class-matched, as the held-out images are
        seen_images = seen_images[same_classes]
    unseen = error(system, params, batch_stats, draws_of(unseen_images, protocol),
                   jax.random.fold_in(key, 2))
    seen = error(system, params, batch_stats, draws_of(seen_images, protocol),
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
    erased, heldout, key, (e_o, h_o, gap) = stop_data
    e = masked_mean_sse(system, params, batch_stats, erased, key)
    h = masked_mean_sse(system, params, batch_stats, heldout, jax.random.fold_in(key, 1))
    return ((e / e_o) / (h / h_o) - 1.0) / (gap - 1.0)
