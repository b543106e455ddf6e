"""The MNIST semantic codec of the reference: every block is a two-layer MLP.

As in the authors' reference code (On_MNIST/Unlearning_Semantic_VAE_on_Backdoor.py):
`MLP(n_in, n_out) = Dense(96) → ReLU → Dense(n_out)`; encoder `MLP(784, 2·20)`,
decoder `MLP(20, 784)` + sigmoid, receiver classifier `MLP(784, 10)` on the reconstruction.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from scu_jax.models.initializers import layer_inits


class MLP(nn.Module):
    """`Dense(hidden) → ReLU → Dense(features)` on the flattened input."""

    features: int
    hidden: int = 96
    initializer: str = "flax"  # "flax" or "torch" (scu_jax.models.initializers)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # Same signature as the convolutional blocks; an MLP has no BatchNorm.
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden, name="hidden", **layer_inits(self.initializer, x.shape[-1]))(x))
        return nn.Dense(self.features, name="out", **layer_inits(self.initializer, self.hidden))(x)


class MLPDecoder(nn.Module):
    """Maps a (noisy) latent to an image in [0, 1]: `sigmoid(MLP(d, H·W·C))`."""

    image_shape: Sequence[int]
    hidden: int = 96
    initializer: str = "flax"

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        size = math.prod(self.image_shape)
        logits = MLP(size, self.hidden, self.initializer, name="mlp")(z, train)
        return jax.nn.sigmoid(logits).reshape((z.shape[0], *self.image_shape))


class Receiver(nn.Module):
    """Receiver-side classifier reading the reconstruction x̂: `MLP(H·W·C, num_classes)`."""

    num_classes: int
    hidden: int = 96
    initializer: str = "flax"

    @nn.compact
    def __call__(self, x_hat: jax.Array, train: bool = False) -> jax.Array:
        return MLP(self.num_classes, self.hidden, self.initializer, name="mlp")(
            x_hat.astype(jnp.float32), train)
