"""SCU: the unlearning step of Wang et al. (spec §5), and its ablation without compensation.

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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from scu_jax import losses
from scu_jax.data.augment import random_crop
from scu_jax.models import System, to_unit_interval
from scu_jax.runs.train import make_optimizer
from scu_jax.methods.base import (Batch, StepMetrics, UnlearnState, UnlearningMethod, backdoor_rate,
                                  codec_forward, frozen_original, receiver_logits, trainable_params)


def forget_term(config: ml_collections.ConfigDict, x_hat: jax.Array, x: jax.Array,
                logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The erased-data term F_e that unlearning ascends (`unlearning.erased_objective`).

    `mse`: MSE(x̂_e, x_e) (MNIST); `ce`: CE(receiver(x̂_e), y_target)·ce_weight; `mse+ce`: their
    sum, `MSE + CE/30`, the reference's CIFAR term (spec §5). The CE forms need `ce_weight > 0`
    (the config refuses them otherwise: the term would be 0).
    """
    objective = config.unlearning.erased_objective
    term = jnp.zeros((), jnp.float32)
    if objective in ("mse", "mse+ce"):
        term = term + losses.reconstruction_mse(x_hat, x)
    if objective in ("ce", "mse+ce"):
        term = term + config.train.ce_weight * losses.cross_entropy(logits, targets)
    return term


def remain_inputs(config: ml_collections.ConfigDict, images: jax.Array, key: jax.Array) -> jax.Array:
    """A D_r batch in [0, 1]; with `unlearning.augment_remain`, freshly cropped (the reference's
    CIFAR D_r loader crops on every access)."""
    x = to_unit_interval(images)
    return random_crop(key, x) if config.unlearning.augment_remain else x


def make_gradient_method(config: ml_collections.ConfigDict, system: System, loss_fn) -> UnlearningMethod:
    """An Adam (grad-norm clipped) method whose loss is `loss_fn(params, batch_stats, θ_o, batch, key)`.

    `loss_fn` returns `(loss, (new_batch_stats, StepMetrics))`.
    """
    tx = make_optimizer(config.unlearning.learning_rate, config.unlearning.grad_clip)

    def init(params, batch_stats) -> UnlearnState:
        return UnlearnState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                            opt_state=tx.init(trainable_params(params, config)),
                            original=frozen_original(params, batch_stats))

    def step(state: UnlearnState, batch: Batch, key: jax.Array):
        def objective(trainable):
            params = {**state.params, **trainable}
            return loss_fn(params, state.batch_stats, state.original, batch,
                           jax.random.fold_in(key, state.step))

        trainable = trainable_params(state.params, config)
        (_, (batch_stats, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        params = {**state.params, **jax.tree.map(jnp.add, trainable, updates)}
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                             opt_state=opt_state), metrics

    return UnlearningMethod(init, step)


def scu(config: ml_collections.ConfigDict, system: System, *, compensation: bool = True) -> UnlearningMethod:
    """SCU (spec §5); `compensation=False` is the ablation `loss = L_unl`."""
    u, t = config.unlearning, config.train

    def loss_fn(params, batch_stats, original, batch: Batch, key):
        erased_key, remain_key, reencode_key, reencode_noise = jax.random.split(key, 4)
        x_e = to_unit_interval(batch.erased_images)
        out_e, batch_stats = codec_forward(system, params, batch_stats, x_e, erased_key)
        logits_e, batch_stats = receiver_logits(system, params, batch_stats, out_e.x_hat, config)
        mu_o, logvar_o = system.codec.apply(
            jax.lax.stop_gradient(original), x_e, train=False, method="encode")
        kl_eo = losses.gaussian_kl(out_e.mu, out_e.logvar, mu_o, logvar_o)
        forget = forget_term(config, out_e.x_hat, x_e, logits_e, batch.erased_targets)
        unlearn_loss = u.lambda_kl * kl_eo - u.beta_u * forget
        utility = jnp.zeros(())
        loss = unlearn_loss
        if compensation:
            x_r = remain_inputs(config, batch.remain_images, jax.random.fold_in(key, 5))
            out_r, batch_stats = codec_forward(system, params, batch_stats, x_r, remain_key)
            (mu_re, logvar_re), mutated = system.codec.apply(
                {"params": params["codec"], "batch_stats": batch_stats},
                jax.lax.stop_gradient(out_r.x_hat), train=True, method="encode",
                mutable=["batch_stats"], rngs={"latent": reencode_key})
            batch_stats = mutated.get("batch_stats", batch_stats)
            z_reencoded = mu_re + jnp.exp(0.5 * logvar_re) * jax.random.normal(
                reencode_noise, mu_re.shape, mu_re.dtype)
            compensation_term = losses.contrastive_compensation(out_e.z, out_r.z, z_reencoded)
            shared = t.beta * losses.kl_to_prior(out_r.mu, out_r.logvar) + compensation_term
            if t.ce_weight > 0:
                logits_r, batch_stats = receiver_logits(system, params, batch_stats, out_r.x_hat,
                                                        config)
                shared = shared + t.ce_weight * losses.cross_entropy(logits_r, batch.remain_labels)
            reconstruction = losses.reconstruction_mse(out_r.x_hat, x_r)
            utility = u.rho * (shared + t.mse_weight * reconstruction)
            weighed = u.rho * (shared + reconstruction) if u.unit_mse_in_weights else None
            loss = losses.scu_loss(unlearn_loss, utility, stop_weight_gradient=u.stop_weight_gradient,
                                   weight_utility_loss=weighed)
        metrics = StepMetrics(loss, backdoor_rate(logits_e, batch.erased_targets), forget, utility)
        return loss, (batch_stats, metrics)

    return make_gradient_method(config, system, loss_fn)


def scu_no_cc(config: ml_collections.ConfigDict, system: System) -> UnlearningMethod:
    """SCU without the contrastive compensation (ablation, spec §6): `loss = L_unl`."""
    return scu(config, system, compensation=False)
