"""Loss functions of the semantic codec (spec §3), usable on their own.

Every loss is a pure function of arrays and returns a scalar; none holds state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def kl_to_prior(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(q(z|x) ‖ N(0, I)) averaged over the batch AND the latent elements.

    `KL_prior(μ, logvar) = −½ · mean(1 + logvar − μ² − exp(logvar))` (spec §2; note the mean, not
    the sum, over latent elements, as in the reference).

    Args:
      mu: posterior means, (B, d).
      logvar: posterior log-variances log σ², (B, d).

    Returns:
      A scalar.
    """
    return -0.5 * jnp.mean(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar))


def gaussian_kl(mu_q: jax.Array, logvar_q: jax.Array, mu_p: jax.Array,
                logvar_p: jax.Array) -> jax.Array:
    """KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) of diagonal Gaussians, averaged over batch and elements.

    `½ · mean(logvar_p − logvar_q + (exp(logvar_q) + (μ_q − μ_p)²) / exp(logvar_p) − 1)`.
    Zero when the two posteriors are equal (spec §5, `KL_eo`).
    """
    return 0.5 * jnp.mean(
        logvar_p - logvar_q + (jnp.exp(logvar_q) + jnp.square(mu_q - mu_p)) / jnp.exp(logvar_p)
        - 1.0
    )


def reconstruction_mse(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    """`MSE = mean((x̂ − x)²)` over the batch and every pixel (the training loss of spec §3)."""
    return jnp.mean(jnp.square(x_hat.astype(jnp.float32) - x.astype(jnp.float32)))


def per_image_sse(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    """Per-image SUM of squared errors, shape (B,): the reference's "MSE" metric (spec §4)."""
    diff = x_hat.astype(jnp.float32) - x.astype(jnp.float32)
    return jnp.sum(jnp.square(diff).reshape((diff.shape[0], -1)), axis=1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def codec_loss(mu: jax.Array, logvar: jax.Array, x_hat: jax.Array, x: jax.Array, *,
               beta: float, mse_weight: float = 1.0, receiver_logits: jax.Array | None = None,
               labels: jax.Array | None = None, ce_weight: float = 0.0) -> jax.Array:
    """The codec's training loss (spec §3).

    MNIST: `β·KL_prior + MSE`. CIFAR: `β·KL_prior + 30·MSE + CE(receiver(x̂), y)/30`, i.e.
    `mse_weight=30, ce_weight=1/30` with the receiver's logits on x̂.
    """
    loss = beta * kl_to_prior(mu, logvar) + mse_weight * reconstruction_mse(x_hat, x)
    if ce_weight:
        loss = loss + ce_weight * cross_entropy(receiver_logits, labels)
    return loss
