"""Random-crop augmentation on device (CIFAR), with the backdoor trigger held in place.

Pure JAX functions of a key and a (B, H, W, C) float batch, jit- and vmap-safe. (The reference's
crop taken once when the data set is built is `erasure.random_crops`, on the host.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scu_jax.data.erasure import trigger_mask


def random_crop(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Per-image random crop of a zero-padded image (CIFAR augmentation), same shape out."""
    height, width = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def crop_keeping_trigger(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """`random_crop` that leaves the backdoor trigger where the erasure protocol puts it.

    Cropping a triggered image moves the 2×2 trigger, or cuts it off (in about a fifth of the
    crops); the erased samples would then not be the samples the protocol defines. An image whose
    trigger block is saturated (every pixel and channel at 1.0) is a triggered image: after the
    crop its trigger block is stamped again. A clean image saturated there gets the same block it
    had before the crop.

    Args:
      key: PRNG key of the crop offsets.
      images: (B, H, W, C) floats in [0, 1].
      padding: zero padding on each side before the crop.

    Returns:
      The cropped images, (B, H, W, C), the trigger where it was.

    Example:
      >>> from scu_jax.data import add_trigger, trigger_mask
      >>> stamped = jnp.asarray(add_trigger(np.asarray(images) / 255.0))
      >>> cropped = scu_jax.crop_keeping_trigger(key, stamped)
      >>> bool(jnp.all(cropped[:, trigger_mask((28, 28, 1))] == 1.0))
      True
    """
    mask = jnp.asarray(trigger_mask(images.shape[1:]))
    triggered = jnp.all(jnp.where(mask, images >= 1.0, True), axis=(1, 2, 3))
    cropped = random_crop(key, images, padding)
    return jnp.where(triggered[:, None, None, None] & mask, jnp.ones_like(cropped), cropped)
