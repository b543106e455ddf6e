"""Index batching for datasets held in memory.

Batches are index arrays into the in-memory images, so the caller gathers
``images[idx]`` itself (on host or device) and nothing here copies pixels.
"""

from __future__ import annotations

import math

import numpy as np


def _seed_words(key_or_seed) -> list[int]:
    if isinstance(key_or_seed, (int, np.integer)):
        return [int(key_or_seed)]
    import jax

    key = key_or_seed
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key, np.uint32).ravel().tolist()


def epoch_permutation(key_or_seed, epoch: int, num_examples: int,
                      batch_size: int) -> np.ndarray:
    """Returns the shuffled training batches of one epoch.

    Args:
      key_or_seed: a non-negative int seed or a JAX PRNG key.
      epoch: epoch number; each epoch gets its own permutation.
      num_examples: dataset size.
      batch_size: examples per batch.

    Returns:
      int32 indices of shape ``(num_examples // batch_size, batch_size)``,
      all distinct; the remainder is dropped so every step has a full batch.
      Identical for identical ``(key_or_seed, epoch)``.
    """
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size must lie in [1, num_examples={num_examples}], "
                         f"got {batch_size}")
    rng = np.random.default_rng([*_seed_words(key_or_seed), int(epoch)])
    num_batches = num_examples // batch_size
    perm = rng.permutation(num_examples)[:num_batches * batch_size]
    return perm.reshape(num_batches, batch_size).astype(np.int32)


def paired_epoch_indices(seed: int, epoch: int, num_erased: int, num_remain: int,
                         batch_size: int, *, drop_partial: bool = False
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(steps, B) erased and remaining batch indices of one unlearning epoch, deterministic per
    `(seed, epoch)`.

    ⌈|D_e|/B⌉ steps, the last erased batch wrapping around the shuffled D_e; with `drop_partial`,
    ⌊|D_e|/B⌋ steps and the erased images that do not fill a batch sit the epoch out (the
    reference's CIFAR SCU/VBU loops). The remaining batches are drawn with replacement only
    where D_r is smaller than the epoch's draws.
    """
    # 7919 keeps this stream apart from `epoch_permutation`'s for the same (seed, epoch).
    rng = np.random.default_rng([seed, 7919, epoch])
    steps = num_erased // batch_size if drop_partial else math.ceil(num_erased / batch_size)
    erased = rng.permutation(num_erased)[np.arange(steps * batch_size) % num_erased]
    remain = rng.choice(num_remain, size=steps * batch_size, replace=steps * batch_size > num_remain)
    return (erased.reshape(steps, batch_size).astype(np.int32),
            remain.reshape(steps, batch_size).astype(np.int32))


def padded_batches(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns in-order evaluation batches that cover every example once.

    Args:
      num_examples: dataset size.
      batch_size: examples per batch.

    Returns:
      ``(indices, mask)``: int32 indices of shape ``(ceil(num_examples /
      batch_size), batch_size)``, the last batch padded with index 0, and a
      float32 mask of the same shape, 1 for real rows and 0 for padding. A
      fixed batch shape avoids recompiling for the last batch; weighting by
      the mask keeps padding out of the metrics.
    """
    if batch_size < 1 or num_examples < 0:
        raise ValueError(f"need batch_size >= 1 and num_examples >= 0, got "
                         f"batch_size={batch_size}, num_examples={num_examples}")
    num_batches = -(-num_examples // batch_size)
    flat = np.arange(num_batches * batch_size)
    real = flat < num_examples
    shape = (num_batches, batch_size)
    return (np.where(real, flat, 0).astype(np.int32).reshape(shape),
            real.astype(np.float32).reshape(shape))


def stacked_batches(images: np.ndarray, labels: np.ndarray, size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A set as (count, size, ...) batches in order, its partial last batch dropped (for a
    `lax.scan` over the batches)."""
    count = len(images) // size
    return (images[:count * size].reshape(count, size, *images.shape[1:]),
            labels[:count * size].reshape(count, size))
