"""The critics of the MI estimators: Flax Linen networks that score (input, latent) pairs.

`MineCritic` scores one pair per row (MINE's statistics network); `SeparableCritic` scores all
B×B pairs of a batch at once (InfoNCE). Both are built from `MLP`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class MLP(nn.Module):
    """Dense/ReLU stack with a linear last layer.

    Attributes:
      features: widths of every layer; the last one is the output width and has no ReLU.
    """

    features: Sequence[int]

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        hidden = inputs
        for width in self.features[:-1]:
            hidden = nn.relu(nn.Dense(width)(hidden))
        return nn.Dense(self.features[-1])(hidden)


class MineCritic(nn.Module):
    """The MINE statistics network `T(x, z) = MLP(concat(x, z))`, one score per pair.

    Attributes:
      hidden: widths of the hidden ReLU layers.
    """

    hidden: Sequence[int] = (128, 128)

    @nn.compact
    def __call__(self, x: Array, z: Array) -> Array:
        """Scores the pairs `(x_i, z_i)`.

        Args:
          x: inputs, (B, n_x).
          z: latents, (B, d).

        Returns:
          `T(x_i, z_i)`, shape (B,).
        """
        pairs = jnp.concatenate([x, z], axis=-1)
        return MLP((*self.hidden, 1))(pairs)[..., 0]


class SeparableCritic(nn.Module):
    """The separable critic `f(x, z) = g(x)ᵀ h(z)` of InfoNCE, scoring all B×B pairs at once.

    Separable critics cost two MLP passes for B² scores, where a concat critic would need B²
    passes; Poole et al. (2019) find them as tight as concat critics on Gaussian benchmarks.

    Attributes:
      hidden: widths of the hidden ReLU layers of both `g` and `h`.
      embedding_dim: the width of `g(x)` and `h(z)`.
    """

    hidden: Sequence[int] = (128, 128)
    embedding_dim: int = 32

    def setup(self):
        self.x_embedding = MLP((*self.hidden, self.embedding_dim))
        self.z_embedding = MLP((*self.hidden, self.embedding_dim))

    def embed(self, x: Array, z: Array) -> tuple[Array, Array]:
        """Returns `(g(x), h(z))`, shapes (B, embedding_dim) each."""
        return self.x_embedding(x), self.z_embedding(z)

    def __call__(self, x: Array, z: Array) -> Array:
        """Returns the score matrix `S[i, j] = g(x_i)ᵀ h(z_j)`, shape (B, B)."""
        x_embedded, z_embedded = self.embed(x, z)
        return x_embedded @ z_embedded.T
