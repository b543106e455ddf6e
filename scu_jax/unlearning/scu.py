"""SCU: the unlearning step of Wang et al. (spec §5), and its ablation without compensation.

```
z_e, x̂_e, μ_e, lv_e = system_θ(x_e)          z_r, x̂_r, μ_r, lv_r = system_θ(x_r)
z_r' = encoder_θ(stop_gradient(x̂_r))          μ_o, lv_o = encoder_θo(x_e)
KL_eo = KL(q_θ(z|x_e) ‖ q_θo(z|x_e))
L_unl = λ_kl · KL_eo − β_u · MSE(x̂_e, x_e)          (CIFAR: − β_u · CE(receiver(x̂_e), y_target)/30)
C     = Σ_i (1 − cos(z_r,i, z'_r,i)) / Σ_i (1 − cos(z_e,i, z_r,i))
L_ss  = ρ · (β · KL_prior(μ_r, lv_r) + C + MSE(x̂_r, x_r))   (CIFAR: 30·MSE and + CE(receiver(x̂_r), y_r)/30)
loss  = a · L_unl + b · L_ss,   a = |L_unl| / (|L_unl| + |L_ss|),  b = 1 − a
```
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from scu_jax import losses
from scu_jax.models import System, to_unit_interval
from scu_jax.train import make_optimizer
from scu_jax.unlearning.base import (Batch, StepMetrics, UnlearnState, UnlearningMethod,
                                     backdoor_rate, codec_forward, frozen_original,
                                     receiver_logits, trainable_params)


def forget_term(config: ml_collections.ConfigDict, x_hat: jax.Array, x: jax.Array,
                logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The erased-data term that unlearning ascends: MSE(x̂_e, x_e), or CE(receiver(x̂_e), y_t)/30."""
    if config.unlearning.erased_objective == "ce":
        return config.train.ce_weight * losses.cross_entropy(logits, targets)
    return losses.reconstruction_mse(x_hat, x)


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
        x_e, x_r = to_unit_interval(batch.erased_images), to_unit_interval(batch.remain_images)
        out_e, batch_stats = codec_forward(system, params, batch_stats, batch.erased_images, erased_key)
        logits_e = receiver_logits(system, params, out_e.x_hat, config)
        mu_o, logvar_o = system.codec.apply(
            jax.lax.stop_gradient(original), x_e, train=False, method="encode")
        kl_eo = losses.gaussian_kl(out_e.mu, out_e.logvar, mu_o, logvar_o)
        forget = forget_term(config, out_e.x_hat, x_e, logits_e, batch.erased_targets)
        unlearn_loss = u.lambda_kl * kl_eo - u.beta_u * forget
        utility = jnp.zeros(())
        loss = unlearn_loss
        if compensation:
            out_r, batch_stats = codec_forward(system, params, batch_stats, batch.remain_images, remain_key)
            (mu_re, logvar_re), mutated = system.codec.apply(
                {"params": params["codec"], "batch_stats": batch_stats},
                jax.lax.stop_gradient(out_r.x_hat), train=True, method="encode",
                mutable=["batch_stats"], rngs={"latent": reencode_key})
            batch_stats = mutated.get("batch_stats", batch_stats)
            z_reencoded = mu_re + jnp.exp(0.5 * logvar_re) * jax.random.normal(
                reencode_noise, mu_re.shape, mu_re.dtype)
            compensation_term = losses.contrastive_compensation(out_e.z, out_r.z, z_reencoded)
            utility = (t.beta * losses.kl_to_prior(out_r.mu, out_r.logvar) + compensation_term
                       + t.mse_weight * losses.reconstruction_mse(out_r.x_hat, x_r))
            if t.ce_weight > 0:
                logits_r = receiver_logits(system, params, out_r.x_hat, config)
                utility = utility + t.ce_weight * losses.cross_entropy(logits_r, batch.remain_labels)
            utility = u.rho * utility
            loss = losses.scu_loss(unlearn_loss, utility, stop_weight_gradient=u.stop_weight_gradient)
        metrics = StepMetrics(loss, backdoor_rate(logits_e, batch.erased_targets), forget, utility)
        return loss, (batch_stats, metrics)

    return make_gradient_method(config, system, loss_fn)


def scu_no_cc(config: ml_collections.ConfigDict, system: System) -> UnlearningMethod:
    """SCU without the contrastive compensation (ablation, spec §6): `loss = L_unl`."""
    return scu(config, system, compensation=False)
