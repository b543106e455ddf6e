"""SCU: the unlearning step of Wang et al. (the paper's method section), and its ablation without compensation.

```
z_e, x̂_e, μ_e, lv_e = system_θ(x_e)          z_r, x̂_r, μ_r, lv_r = system_θ(x_r)
z_r' = encoder_θ(stop_gradient(x̂_r))          μ_o, lv_o = encoder_θo(x_e)
KL_eo = KL(q_θ(z|x_e) ‖ q_θo(z|x_e))
L_unl = λ_kl · KL_eo − β_u · F_e                F_e = MSE(x̂_e, x_e)  (MNIST)
                                                F_e = MSE(x̂_e, x_e) + CE(receiver(x̂_e), y_target)/30  (CIFAR)
C     = Σ_i (1 − cos(z_r,i, z'_r,i)) / Σ_i (1 − cos(z_e,i, z_r,i))
L_ss  = ρ · (β · KL_prior(μ_r, lv_r) + C + MSE(x̂_r, x_r))   (CIFAR: 30·MSE and + CE(receiver(x̂_r), y_r)/30)
loss  = a · L_unl + b · L_ss,   a = |L_unl| / (|L_unl| + |L_ss|),  b = 1 − a
```
The reference's CIFAR weights a, b see L_ss with 1·MSE (`unlearning.unit_mse_in_weights`).

Sharpness-aware SCU (`sam_radius` ρ_sam > 0; SAM, Foret et al. 2021, applied to the forgetting
term as Fan et al. 2025 do against relearning attacks): L_unl is evaluated at
`θ + ρ_sam · ∇L_unl(θ) / ‖∇L_unl(θ)‖`, the neighbour to first order where forgetting is weakest,
i.e. one small step of relearning away, while L_ss stays at θ:
`loss = a · L_unl(θ + δ) + b · L_ss(θ)`, δ a constant of the step. A minimum of this keeps D_e
forgotten in a ball of radius ρ_sam around θ, so a few steps of training on D_e do not bring it
back. It costs a second pass and backward pass of the erased batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scu_jax import losses
from scu_jax.methods.base import (Batch, CodecObjective, Method, StepMetrics, backdoor_rate,
                                  codec_forward, codec_forward_parts, forget_term,
                                  gradient_method, receiver_logits, remain_inputs, sam_neighbour,
                                  trainable_params)
from scu_jax.models import System, to_unit_interval


def scu(system: System, objective: CodecObjective, *, learning_rate: float, grad_clip: float,
        lambda_kl: float, beta_u: float, rho: float, erased_objective: str = "mse",
        stop_weight_gradient: bool = False, unit_mse_in_weights: bool = False,
        augment_remain: bool = False, compensation: bool = True, sam_radius: float = 0.0
        ) -> Method:
    """SCU, Adam on `a·L_unl + b·L_ss` (see the module docstring).

    Args:
      system: the Linen modules.
      objective: the codec's training loss (β, the MSE and CE weights) that L_ss keeps.
      learning_rate, grad_clip: Adam's step size and the global grad-norm clip.
      lambda_kl, beta_u, rho: the weights of KL_eo, of F_e and of L_ss.
      erased_objective: F_e: "mse", "ce" or "mse+ce" (`forget_term`).
      stop_weight_gradient: no gradient through the adaptive weights a and b.
      unit_mse_in_weights: a and b see L_ss with 1·MSE (the reference's CIFAR scripts).
      augment_remain: D_r batches freshly cropped at every step (the reference's CIFAR loader).
      compensation: False is the ablation `loss = L_unl`.
      sam_radius: ρ_sam > 0: the sharpness-aware step: L_unl (the erased batch's pass) taken
        at the neighbour within ρ_sam that most undoes the forgetting, L_ss at θ (the module
        docstring); 0 is the plain step, bit for bit.

    Returns:
      A `Method`; its `step` takes a `Batch` and reports `StepMetrics` with SCU's weights `a`, `b`.

    Example:
      >>> method = scu_jax.scu(system, objective, learning_rate=3e-4, grad_clip=5.0, lambda_kl=1.0,
      ...                      beta_u=0.1, rho=1.0)
      >>> unlearn_state = method.init(state.params, state.batch_stats)
      >>> batch = scu_jax.Batch(images, jnp.full((16,), 2), images, labels)   # erased, remaining
      >>> unlearn_state, metrics = jax.jit(method.step)(unlearn_state, batch, key)
      >>> int(unlearn_state.step), round(float(metrics.a + metrics.b), 5)
      (1, 1.0)
    """
    joint = objective.joint_receiver

    def unlearn_term(params, batch_stats, original, batch: Batch, out_e, x_e):
        """L_unl of the erased batch's pass `out_e` (and the receiver's logits on it)."""
        logits_e, batch_stats = receiver_logits(system, params, batch_stats, out_e.x_hat, joint)
        mu_o, logvar_o = system.codec.apply(
            jax.lax.stop_gradient(original), x_e, train=False, method="encode")
        kl_eo = losses.gaussian_kl(out_e.mu, out_e.logvar, mu_o, logvar_o)
        forget = forget_term(erased_objective, objective.ce_weight, out_e.x_hat, x_e, logits_e,
                             batch.erased_targets)
        return lambda_kl * kl_eo - beta_u * forget, (logits_e, forget, batch_stats)

    def erased_pass_at_worst_neighbour(params, batch_stats, original, batch, x_e, keys):
        """The erased batch's pass and L_unl at `θ + ρ_sam·∇L_unl/‖∇L_unl‖`: the neighbour that
        most undoes the forgetting (to first order), where relearning would take θ."""
        def at(shifted):
            out_e, stats = codec_forward(system, shifted, batch_stats, x_e, *keys)
            loss, aux = unlearn_term(shifted, stats, original, batch, out_e, x_e)
            return loss, (out_e, *aux)

        trainable = trainable_params(params, joint)
        grads = jax.grad(lambda t: at({**params, **t})[0])(trainable)
        shifted = jax.lax.stop_gradient(sam_neighbour(trainable, grads, sam_radius))
        # The shift is a constant: the gradient of L_unl(θ + shift) w.r.t. θ is ∇L_unl there.
        moved = jax.tree.map(lambda p, q: p + (q - jax.lax.stop_gradient(p)), trainable, shifted)
        return at({**params, **moved})

    def loss_fn(params, batch_stats, original, batch: Batch, key):
        # One split for the step: the latent noise ε and the channel noise of both batches'
        # passes, the re-encoding's ε, the D_r crop.
        latent_key, channel_key, reencode_noise, crop_key = jax.random.split(key, 4)
        x_e = to_unit_interval(batch.erased_images)
        parts = (x_e,)
        if compensation:
            parts += (remain_inputs(batch.remain_images, crop_key, augment_remain),)
        if sam_radius:
            # The erased batch is read at its worst neighbour, D_r at θ: two passes.
            latent_keys, channel_keys = (jax.random.split(latent_key),
                                         jax.random.split(channel_key))
            unlearn_loss, (out_e, logits_e, forget, batch_stats) = erased_pass_at_worst_neighbour(
                params, batch_stats, original, batch, x_e, (latent_keys[0], channel_keys[0]))
            outs = (out_e,)
            if compensation:
                out_r, batch_stats = codec_forward(system, params, batch_stats, parts[1],
                                                   latent_keys[1], channel_keys[1])
                outs += (out_r,)
        else:
            # Without BatchNorm the erased and remaining batches go through the codec as one batch.
            outs, batch_stats = codec_forward_parts(system, params, batch_stats, parts,
                                                    latent_key, channel_key)
            unlearn_loss, (logits_e, forget, batch_stats) = unlearn_term(
                params, batch_stats, original, batch, outs[0], x_e)
        out_e = outs[0]
        if not compensation:
            metrics = StepMetrics(unlearn_loss, backdoor_rate(logits_e, batch.erased_targets),
                                  forget, jnp.zeros(()))
            return unlearn_loss, (batch_stats, metrics)
        x_r, out_r = parts[1], outs[1]
        (mu_re, logvar_re), mutated = system.codec.apply(
            {"params": params["codec"], "batch_stats": batch_stats},
            jax.lax.stop_gradient(out_r.x_hat), train=True, method="encode",
            mutable=["batch_stats"])
        batch_stats = mutated.get("batch_stats", batch_stats)
        z_reencoded = mu_re + jnp.exp(0.5 * logvar_re) * jax.random.normal(
            reencode_noise, mu_re.shape, mu_re.dtype)
        compensation_term = losses.contrastive_compensation(out_e.z, out_r.z, z_reencoded)
        shared = objective.beta * losses.kl_to_prior(out_r.mu, out_r.logvar) + compensation_term
        if joint:
            logits_r, batch_stats = receiver_logits(system, params, batch_stats, out_r.x_hat, joint)
            shared = shared + objective.ce_weight * losses.cross_entropy(logits_r,
                                                                          batch.remain_labels)
        reconstruction = losses.reconstruction_mse(out_r.x_hat, x_r)
        utility = rho * (shared + objective.mse_weight * reconstruction)
        weighed = rho * (shared + reconstruction) if unit_mse_in_weights else None
        loss, (a, b) = losses.scu_loss(unlearn_loss, utility,
                                       stop_weight_gradient=stop_weight_gradient,
                                       weight_utility_loss=weighed, with_weights=True)
        metrics = StepMetrics(loss, backdoor_rate(logits_e, batch.erased_targets), forget,
                              utility, a, b)
        return loss, (batch_stats, metrics)

    return gradient_method(loss_fn, learning_rate=learning_rate, grad_clip=grad_clip,
                           joint_receiver=joint)


def scu_no_cc(system: System, objective: CodecObjective, **hyperparameters) -> Method:
    """SCU without the contrastive compensation (the paper's ablation): `loss = L_unl`.

    Args:
      system, objective: as `scu`'s.
      **hyperparameters: `scu`'s keyword arguments.

    Returns:
      A `Method`.

    Example:
      >>> method = scu_jax.scu_no_cc(system, objective, learning_rate=3e-4, grad_clip=5.0,
      ...                            lambda_kl=1.0, beta_u=0.1, rho=1.0)
      >>> batch = scu_jax.Batch(images, jnp.full((16,), 2), images, labels)
      >>> _, metrics = jax.jit(method.step)(method.init(state.params, state.batch_stats), batch, key)
      >>> float(metrics.utility)   # no compensation: no remaining-data term
      0.0
    """
    return scu(system, objective, **hyperparameters, compensation=False)
