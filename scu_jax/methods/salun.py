"""Saliency unlearning (SalUn, Fan et al., ICLR 2024), adapted to the codec.

```
g     = mean over the batches of D_e of ∇_θ F_e          F_e: the codec's training objective on D_e
m     = 1 where |g| is in the top `fraction` of all trainable parameters' |g|, else 0
loss  = w·MSE(x̂(x_e), x_r') + (1 − w)·L(x_r)             one step's erased and remaining batch
θ    ← θ − Adam(clip(m ⊙ ∇ loss))                          updates are exactly 0 where m = 0
```
SalUn's forgetting for a classifier is random labelling: the forgotten images are trained
towards random labels while the rest keeps its own. The codec's analogue sends each erased image
towards another image: x̂(x_e) is trained to reconstruct x_r', the step's remaining batch rolled
by one (random D_r images, drawn afresh every epoch), while the remaining batch keeps the codec's
training objective L (β·KL + MSE, + CE with a joint receiver, which also learns x̂(x_e) as x_r''s
label). The saliency (the gradient of the forgetting loss, whose magnitude is that of its ascent)
is taken once, from the trained system, over all of D_e, with one threshold across every
parameter (the authors' hard thresholding); the authors' usual fraction is a half. SalUn draws
its batches from one loader over D_f ∪ D_r, so a forgotten image weighs what any other does; the
paired batches here carry as many erased images as remaining ones, hence the weight
w = |D_e| / (|D_e| + |D_r|) (`forget_weight`) that gives each erased image its share again.

Default fraction 0.5 (`unlearning.salun_fraction`, the paper's). Checked on the embedded MNIST's
main-job system (seed 0, EDR 6 %; `scu-unlearn --config=configs/mnist.py
--config.unlearning.method=salun --config.unlearning.salun_fraction=F`): 0.5 gives backdoor
10.1 % at 89.0 % D_clean accuracy, 0.1 gives 9.7 % at 90.2 %; without the weight w (w = ½) the
decoder is wrecked (accuracy 0.9 %). docs/results.md "Baselines from the field: their settings" has the
table and the other seeds.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from scu_jax import losses
from scu_jax.methods.base import (Batch, CodecObjective, Method, StepMetrics, backdoor_rate,
                                  codec_forward_parts, gradient_method, objective_loss,
                                  receiver_logits, trainable_params)
from scu_jax.models import System, to_unit_interval


def saliency(system: System, objective: CodecObjective, params: dict[str, Any],
             batch_stats: dict[str, Any], images: jax.Array, labels: jax.Array,
             key: jax.Array) -> Any:
    """|mean over the batches of `images` (batches, B, ...) of ∇ F_e|, per trainable parameter;
    F_e is the codec's training objective on each batch (`labels`: the labels it trained with).

    Args:
      system: the two modules.
      objective: the codec's training objective.
      params, batch_stats: the trained system's variables.
      images: D_e as batches, (batches, B, H, W, C).
      labels: their labels, (batches, B).
      key: PRNG key of the passes.

    Returns:
      |∇ F_e| per trainable parameter, the pytree of the trainable parameters.

    Example:
      >>> scores = scu_jax.saliency(system, objective, state.params, state.batch_stats,
      ...                           images.reshape(2, 8, 28, 28, 1), labels.reshape(2, 8), key)
      >>> sorted(scores)
      ['codec']
    """
    joint = objective.joint_receiver
    forget_loss = objective_loss(system, objective)

    trainable = trainable_params(params, joint)

    def add(total, batch):
        index, x, y = batch
        grads = jax.grad(forget_loss)(trainable, params, batch_stats, x, y,
                                      jax.random.fold_in(key, index))
        return jax.tree.map(jnp.add, total, grads), None

    count = images.shape[0]
    total, _ = jax.lax.scan(add, jax.tree.map(jnp.zeros_like, trainable),
                            (jnp.arange(count), images, labels))
    return jax.tree.map(lambda t: jnp.abs(t / count), total)


def saliency_mask(scores: Any, fraction: float) -> Any:
    """1 for the `fraction` of all parameters with the largest `scores`, one threshold across
    every leaf; 0 elsewhere (float32, the scores' pytree).

    Args:
      scores: `saliency`'s pytree.
      fraction: the share of parameters to update, in (0, 1].

    Returns:
      A 0/1 float32 pytree like `scores`.

    Example:
      >>> mask = scu_jax.saliency_mask({"w": jnp.arange(10.0)}, 0.3)
      >>> mask["w"].tolist()
      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    flat = jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(scores)])
    keep = max(1, int(round(fraction * flat.size)))
    threshold = jnp.sort(flat)[flat.size - keep]
    return jax.tree.map(lambda s: (s >= threshold).astype(jnp.float32), scores)


def salun(system: System, objective: CodecObjective, *, learning_rate: float, grad_clip: float,
          mask: Any, forget_weight: float = 0.5, sam_radius: float = 0.0) -> Method:
    """SalUn's masked forgetting step (see the module docstring); `mask` from `saliency_mask`,
    `forget_weight` the weight w of the erased images' term.

    Args:
      system: the two modules.
      objective: the codec's training objective, which D_r keeps.
      learning_rate, grad_clip: Adam's step size and the global grad-norm clip.
      mask: which parameters the step updates (`saliency_mask`).
      forget_weight: w, the erased term's weight (the default's ½ suits equal |D_e| and |D_r|).
      sam_radius: ρ_sam > 0: the sharpness-aware step (`base.gradient_method`).

    Returns:
      A `Method`.

    Example:
      >>> scores = scu_jax.saliency(system, objective, state.params, state.batch_stats,
      ...                           images.reshape(2, 8, 28, 28, 1), labels.reshape(2, 8), key)
      >>> method = scu_jax.salun(system, objective, learning_rate=3e-4, grad_clip=5.0,
      ...                        mask=scu_jax.saliency_mask(scores, 0.5))
      >>> batch = scu_jax.Batch(images, jnp.full((16,), 2), images, labels)
      >>> new, _ = jax.jit(method.step)(method.init(state.params, state.batch_stats), batch, key)
      >>> moved = jax.tree.map(lambda a, b: a != b, new.params["codec"], state.params["codec"])
      >>> kept = scu_jax.saliency_mask(scores, 0.5)["codec"]
      >>> all(bool(jnp.all(m <= k)) for m, k in zip(jax.tree.leaves(moved), jax.tree.leaves(kept)))
      True
    """
    joint = objective.joint_receiver

    def loss_fn(params, batch_stats, original, batch: Batch, key):
        del original
        latent_key, channel_key = jax.random.split(key)
        x_e = to_unit_interval(batch.erased_images)
        x_r = to_unit_interval(batch.remain_images)
        (out_e, out_r), batch_stats = codec_forward_parts(system, params, batch_stats, (x_e, x_r),
                                                          latent_key, channel_key)
        others = jnp.roll(x_r, 1, axis=0)[: x_e.shape[0]]
        relabelled = losses.reconstruction_mse(out_e.x_hat, others)
        logits_e, batch_stats = receiver_logits(system, params, batch_stats, out_e.x_hat, joint)
        logits_r, batch_stats = receiver_logits(system, params, batch_stats, out_r.x_hat, joint)
        keep = losses.codec_loss(out_r.mu, out_r.logvar, out_r.x_hat, x_r, beta=objective.beta,
                                 mse_weight=objective.mse_weight, receiver_logits=logits_r,
                                 labels=batch.remain_labels, ce_weight=objective.ce_weight)
        if joint:
            other_labels = jnp.roll(batch.remain_labels, 1)[: x_e.shape[0]]
            relabelled = relabelled + objective.ce_weight * losses.cross_entropy(logits_e,
                                                                                 other_labels)
        loss = forget_weight * relabelled + (1.0 - forget_weight) * keep
        metrics = StepMetrics(loss, backdoor_rate(logits_e, batch.erased_targets), relabelled,
                              keep)
        return loss, (batch_stats, metrics)

    return gradient_method(loss_fn, learning_rate=learning_rate, grad_clip=grad_clip,
                           joint_receiver=joint, mask=mask, sam_radius=sam_radius)
