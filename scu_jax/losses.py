"""Loss functions of the semantic codec and of SCU, usable on their own.

SCU: Wang et al., "SCU: An Efficient Machine Unlearning Scheme for Deep Learning Enabled Semantic
Communications", IEEE TIFS 2025 (arXiv:2502.19785); "the reference" is the authors' PyTorch code.

Every loss is a pure function of arrays and returns a scalar; none holds state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def kl_to_prior(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(q(z|x) ‖ N(0, I)) averaged over the batch AND the latent elements.

    `KL_prior(μ, logvar) = −½ · mean(1 + logvar − μ² − exp(logvar))` (the VAE's prior term; note
    the mean, not the sum, over latent elements, as in the reference).

    Args:
      mu: posterior means, (B, d).
      logvar: posterior log-variances log σ², (B, d).

    Returns:
      A scalar.

    Example:
      >>> float(scu_jax.kl_to_prior(jnp.ones((4, 20)), jnp.zeros((4, 20))))   # ½·μ² per element
      0.5
    """
    return -0.5 * jnp.mean(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar))


def gaussian_kl(mu_q: jax.Array, logvar_q: jax.Array, mu_p: jax.Array,
                logvar_p: jax.Array) -> jax.Array:
    """KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) of diagonal Gaussians, averaged over batch and elements.

    `½ · mean(logvar_p − logvar_q + (exp(logvar_q) + (μ_q − μ_p)²) / exp(logvar_p) − 1)`.
    Zero when the two posteriors are equal (SCU's `KL_eo`, KL(q_θ(z|x_e) ‖ q_θo(z|x_e))).

    Args:
      mu_q, logvar_q: the first posterior's means and log-variances, (B, d).
      mu_p, logvar_p: the second's, (B, d).

    Returns:
      A scalar.

    Example:
      >>> mu, logvar = z[:4], jnp.zeros((4, 20))
      >>> float(scu_jax.gaussian_kl(mu, logvar, mu, logvar)), float(scu_jax.gaussian_kl(mu, logvar, mu + 1, logvar))
      (0.0, 0.5)
    """
    return 0.5 * jnp.mean(
        logvar_p - logvar_q + (jnp.exp(logvar_q) + jnp.square(mu_q - mu_p)) / jnp.exp(logvar_p)
        - 1.0
    )


def reconstruction_mse(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    """`MSE = mean((x̂ − x)²)` over the batch and every pixel (the codec's training loss).

    Args:
      x_hat: reconstructions, (B, H, W, C).
      x: the images, the same shape.

    Returns:
      A scalar.

    Example:
      >>> float(scu_jax.reconstruction_mse(jnp.ones((2, 28, 28, 1)), jnp.zeros((2, 28, 28, 1))))
      1.0
    """
    return jnp.mean(jnp.square(x_hat.astype(jnp.float32) - x.astype(jnp.float32)))


def per_image_sse(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    """Per-image SUM of squared errors, shape (B,): the paper's "MSE" metric (the reference's).

    Args:
      x_hat: reconstructions, (B, H, W, C).
      x: the images, the same shape.

    Returns:
      The sum over each image's pixels, (B,).

    Example:
      >>> scu_jax.per_image_sse(jnp.ones((2, 28, 28, 1)), jnp.zeros((2, 28, 28, 1))).tolist()
      [784.0, 784.0]
    """
    diff = x_hat.astype(jnp.float32) - x.astype(jnp.float32)
    return jnp.sum(jnp.square(diff).reshape((diff.shape[0], -1)), axis=1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer labels.

    Args:
      logits: (B, classes).
      labels: int (B,).

    Returns:
      A scalar, in nats.

    Example:
      >>> round(float(scu_jax.cross_entropy(jnp.zeros((16, 10)), labels)), 4)   # log 10
      2.3026
    """
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def codec_loss(mu: jax.Array, logvar: jax.Array, x_hat: jax.Array, x: jax.Array, *,
               beta: float, mse_weight: float = 1.0, receiver_logits: jax.Array | None = None,
               labels: jax.Array | None = None, ce_weight: float = 0.0) -> jax.Array:
    """The codec's training loss, with the weights of the reference's training scripts.

    MNIST: `β·KL_prior + MSE`. CIFAR: `β·KL_prior + 30·MSE + CE(receiver(x̂), y)/30`, i.e.
    `mse_weight=30, ce_weight=1/30` with the receiver's logits on x̂.

    Args:
      mu, logvar: the posterior, (B, d).
      x_hat, x: the reconstructions and the images in [0, 1], (B, H, W, C).
      beta: the KL weight β.
      mse_weight: the MSE weight.
      receiver_logits, labels: the receiver's logits on x̂ and the labels, for the CE term.
      ce_weight: the CE weight (0: no CE term, and the two arguments above are not needed).

    Returns:
      A scalar.

    Example:
      >>> x = images / 255.0
      >>> float(scu_jax.codec_loss(jnp.zeros((16, 20)), jnp.zeros((16, 20)), x, x, beta=1e-4))
      0.0
    """
    loss = beta * kl_to_prior(mu, logvar) + mse_weight * reconstruction_mse(x_hat, x)
    if ce_weight:
        loss = loss + ce_weight * cross_entropy(receiver_logits, labels)
    return loss


# --- Unlearning: SCU and its baselines ------------------------------------------------------------


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Row-wise cosine similarity `a·b / (max(‖a‖, ε)·max(‖b‖, ε))` of (B, ...) arrays, shape (B,).

    The ε clamps each norm separately, as `torch.nn.functional.cosine_similarity` does.

    Args:
      a, b: (B, ...) arrays, compared row by row.
      eps: the norm clamp.

    Returns:
      (B,) similarities in [−1, 1].

    Example:
      >>> scu_jax.cosine_similarity(z[:3], -2.0 * z[:3]).round(4).tolist()
      [-1.0, -1.0, -1.0]
    """
    a = a.reshape((a.shape[0], -1)).astype(jnp.float32)
    b = b.reshape((b.shape[0], -1)).astype(jnp.float32)
    norms = (jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
             * jnp.maximum(jnp.linalg.norm(b, axis=-1), eps))
    return jnp.sum(a * b, axis=-1) / norms


def contrastive_compensation(z_erased: jax.Array, z_remain: jax.Array,
                             z_remain_reencoded: jax.Array, eps: float = 1e-6) -> jax.Array:
    """SCU's contrastive compensation term, which keeps the remaining data's utility.

    `C = Σ_i (1 − cos(z_r,i, z'_r,i)) / Σ_i (1 − cos(z_e,i, z_r,i))`

    Positives: a remaining sample's latent z_r and the re-encoding z'_r of its own reconstruction
    (pulled together: the numerator falls). Negatives: index-aligned (erased, remaining) pairs
    (pushed apart: the denominator grows). No temperature, as in the reference.

    Args:
      z_erased: latents of the erased batch, (B, d).
      z_remain: latents of the remaining batch, (B, d).
      z_remain_reencoded: `encoder(stop_gradient(x̂_r))`, (B, d).
      eps: the cosine's norm clamp; also keeps the ratio finite when every negative pair is
        perfectly aligned.

    Returns:
      A non-negative scalar.

    Example:
      >>> # Re-encodings equal to the latents: nothing to compensate.
      >>> round(float(scu_jax.contrastive_compensation(z[:16], z[16:32], z[16:32])), 4)
      0.0
      >>> bool(scu_jax.contrastive_compensation(z[:16], z[16:32], z[16:32] + 0.5 * z[32:48]) > 0)
      True
    """
    positives = jnp.sum(1.0 - cosine_similarity(z_remain, z_remain_reencoded, eps))
    negatives = jnp.sum(1.0 - cosine_similarity(z_erased, z_remain, eps))
    return positives / (negatives + eps)


def adaptive_weights(unlearn_loss: jax.Array, utility_loss: jax.Array, *,
                     stop_gradient: bool = False) -> tuple[jax.Array, jax.Array]:
    """SCU's adaptive weights `a = |L_unl| / (|L_unl| + |L_ss|)`, `b = |L_ss| / (|L_unl| + |L_ss|)`.

    The reference does not detach them, so gradients flow through a and b too (the default here);
    `stop_gradient=True` treats them as constants.

    Args:
      unlearn_loss: L_unl, a scalar.
      utility_loss: L_ss, a scalar.
      stop_gradient: treat a and b as constants.

    Returns:
      `(a, b)`, scalars that sum to 1.

    Example:
      >>> a, b = scu_jax.adaptive_weights(jnp.array(-3.0), jnp.array(1.0))
      >>> float(a), float(b)
      (0.75, 0.25)
    """
    magnitude_unlearn, magnitude_utility = jnp.abs(unlearn_loss), jnp.abs(utility_loss)
    if stop_gradient:
        magnitude_unlearn = jax.lax.stop_gradient(magnitude_unlearn)
        magnitude_utility = jax.lax.stop_gradient(magnitude_utility)
    total = magnitude_unlearn + magnitude_utility + 1e-12
    return magnitude_unlearn / total, magnitude_utility / total


def scu_loss(unlearn_loss: jax.Array, utility_loss: jax.Array, *,
             stop_weight_gradient: bool = False,
             weight_utility_loss: jax.Array | None = None, with_weights: bool = False):
    """SCU's total loss `a·L_unl + b·L_ss` with the adaptive weights of `adaptive_weights`.

    `weight_utility_loss`, when given, is the |L_ss| the weights see in place of `utility_loss`:
    the reference's CIFAR scripts weigh with 1·MSE in L_ss while the loss carries 30·MSE (a quirk
    of those scripts).
    Returns the loss, or with `with_weights` `(loss, (a, b))`.

    Args:
      unlearn_loss: L_unl, a scalar.
      utility_loss: L_ss, a scalar.
      stop_weight_gradient: no gradient through the weights (`adaptive_weights`' `stop_gradient`).
      weight_utility_loss: the |L_ss| the weights see, if not `utility_loss`.
      with_weights: also return `(a, b)`.

    Returns:
      A scalar, or `(loss, (a, b))`.

    Example:
      >>> float(scu_jax.scu_loss(jnp.array(-3.0), jnp.array(1.0)))   # 0.75·(−3) + 0.25·1
      -2.0
    """
    seen = utility_loss if weight_utility_loss is None else weight_utility_loss
    a, b = adaptive_weights(unlearn_loss, seen, stop_gradient=stop_weight_gradient)
    loss = a * unlearn_loss + b * utility_loss
    return (loss, (a, b)) if with_weights else loss
