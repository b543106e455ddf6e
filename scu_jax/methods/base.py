"""What every method shares: states, the factory type, the codec objective, the forward pass.

A method is a factory in the style of an optax `GradientTransformation`: it takes the system and
explicit hyper-parameters and returns `Method(init, step)`. `init(params, batch_stats)` builds a
pytree state from a trained (or fresh) system; `step(state, batch, key)` is pure and is what the
engine (`scu_jax.engine`) scans over an epoch with the state donated. Steps draw their randomness
from `fold_in(key, state.step)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from scu_jax import losses
from scu_jax.data.augment import random_crop
from scu_jax.models import CodecOutput, System, apply_receiver, to_unit_interval


class Method(NamedTuple):
    """A method as pure functions (optax style).

    Attributes:
      init: `init(params, batch_stats)` → the method's state (`UnlearnState`), from a trained
        system's variables (kept as θ_o where the method needs them).
      step: `step(state, batch, key)` → `(state, StepMetrics)`, pure: jit it with the state
        donated, or hand the method to `unlearning_phase` and the engine.

    Example:
      >>> method = scu_jax.vbu(system, objective, learning_rate=1e-4, grad_clip=5.0, beta_u=0.1)
      >>> isinstance(method, scu_jax.Method)
      True
    """

    init: Callable[[dict[str, Any], dict[str, Any]], Any]
    step: Callable[[Any, Any, jax.Array], tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class CodecObjective:
    """The codec's training loss `β·KL(q(z|x) ‖ N(0, I)) + mse_weight·MSE + ce_weight·CE`
    (the paper's VAE objective; the CE term trains the receiver jointly on CIFAR).

    Attributes:
      beta: β, the KL weight (the paper's 1e-4 on MNIST).
      mse_weight: the MSE weight (30 in the CIFAR scripts).
      ce_weight: the weight of the receiver's CE on x̂ (1/30 on CIFAR; 0: the receiver trains
        apart, on raw images).

    Example:
      >>> scu_jax.CodecObjective(beta=1e-4, mse_weight=30.0, ce_weight=1 / 30).joint_receiver
      True
    """

    beta: float = 1.0
    mse_weight: float = 1.0
    ce_weight: float = 0.0

    @property
    def joint_receiver(self) -> bool:
        """Whether the receiver trains (and unlearns) with the codec."""
        return self.ce_weight > 0


@flax.struct.dataclass
class UnlearnState:
    """The state an unlearning method carries between steps (a pytree).

    Attributes:
      step: the steps taken.
      params: `{"codec": ..., "receiver": ...}`.
      batch_stats: BatchNorm running averages (`{}` for the MLP codec).
      opt_state: the method's optimiser state (`()` for methods without one).
      original: the frozen original codec `{"params", "batch_stats"}` (θ_o).

    Example:
      >>> method = scu_jax.vbu(system, objective, learning_rate=1e-4, grad_clip=5.0, beta_u=0.1)
      >>> unlearn_state = method.init(state.params, state.batch_stats)
      >>> int(unlearn_state.step), sorted(unlearn_state.original)
      (0, ['batch_stats', 'params'])
    """

    step: jax.Array
    params: dict[str, Any]  # {"codec": ..., "receiver": ...}
    batch_stats: dict[str, Any]  # BatchNorm running averages ({} for the MLP codec)
    opt_state: Any  # the method's optimiser state (() for methods without one)
    original: dict[str, Any]  # the frozen original codec {"params", "batch_stats"} (θ_o)


class StepMetrics(NamedTuple):
    """Per-step numbers of an unlearning method; `backdoor` drives the backdoor protocol's early
    stop. The adaptive weights `a`, `b` are SCU's (None for methods without them)."""

    loss: jax.Array
    # Fraction of the erased batch the receiver labels as its target: the backdoor's target
    # label, or, for a forget set without a backdoor, the image's true label (its accuracy).
    backdoor: jax.Array
    forget: jax.Array  # the erased-data term before weighting
    utility: jax.Array  # the remaining-data loss (0 where the method has none)
    a: jax.Array | None = None
    b: jax.Array | None = None


class Batch(NamedTuple):
    """One unlearning step's data: an erased batch (target labels) and a remaining batch.

    Attributes:
      erased_images: uint8 (B, H, W, C), from D_e.
      erased_targets: int (B,), the labels the erased images were trained with (the backdoor's
        target, or a forget set's true labels).
      remain_images: uint8 (B, H, W, C), from D_r.
      remain_labels: int (B,), their labels.

    Example:
      >>> batch = scu_jax.Batch(images, jnp.full((16,), 2), images, labels)
      >>> batch.erased_images.shape, batch.remain_labels.shape
      ((16, 28, 28, 1), (16,))
    """

    erased_images: jax.Array
    erased_targets: jax.Array
    remain_images: jax.Array
    remain_labels: jax.Array


def make_optimizer(learning_rate: float, grad_clip: float) -> optax.GradientTransformation:
    """Adam with global grad-norm clipping (the reference's `clip_grad_norm_(…, 5)`)."""
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(learning_rate))


class GradientMaskState(NamedTuple):
    mask: Any  # 0/1 arrays of the parameters' shapes


def gradient_mask(mask: Any) -> optax.GradientTransformation:
    """Multiplies every gradient by `mask` (0/1, the parameters' pytree). The mask is kept in the
    optimiser state, a device array of the run (under `vmap`, each run's own), not a constant
    compiled into the step."""
    def init(params):
        del params
        return GradientMaskState(jax.tree.map(jnp.asarray, mask))

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda g, m: g * m.astype(g.dtype), updates, state.mask), state

    return optax.GradientTransformation(init, update)


def trainable_params(params: dict[str, Any], joint_receiver: bool) -> dict[str, Any]:
    """The parameters a step updates: the codec, and the receiver where it trains jointly."""
    if joint_receiver:
        return {"codec": params["codec"], "receiver": params["receiver"]}
    return {"codec": params["codec"]}


def frozen_original(params: dict[str, Any], batch_stats: dict[str, Any]) -> dict[str, Any]:
    """θ_o: a copy of the trained codec that no gradient reaches."""
    return jax.tree.map(jnp.copy, {"params": params["codec"], "batch_stats": batch_stats})


def codec_forward(system: System, params: dict[str, Any], batch_stats: dict[str, Any],
                  images: jax.Array, latent_key: jax.Array, channel_key: jax.Array
                  ) -> tuple[CodecOutput, dict[str, Any]]:
    """One training-mode pass (batch statistics) through encoder, channel and decoder.

    Returns the outputs and the updated BatchNorm running averages.
    """
    out, mutated = system.codec.apply(
        {"params": params["codec"], "batch_stats": batch_stats}, to_unit_interval(images),
        train=True, rngs={"latent": latent_key, "channel": channel_key}, mutable=["batch_stats"],
    )
    return out, mutated.get("batch_stats", batch_stats)


def codec_has_batch_norm(batch_stats: dict[str, Any]) -> bool:
    """Whether the codec keeps BatchNorm statistics (a receiver's sit under "receiver")."""
    return any(name != "receiver" for name in batch_stats)


def codec_forward_parts(system: System, params: dict[str, Any], batch_stats: dict[str, Any],
                        parts: tuple[jax.Array, ...], latent_key: jax.Array,
                        channel_key: jax.Array, *, fuse: bool | None = None
                        ) -> tuple[tuple[CodecOutput, ...], dict[str, Any]]:
    """Training-mode passes of several batches, each through encoder, channel and decoder as
    if sent alone (`codec_forward` on each).

    Fused (`fuse`; by default wherever the codec has no BatchNorm), the parts run as one batch
    (`SemanticCodec.forward_parts`: one matrix multiply a layer, the channel applied to each
    part); otherwise one pass a part, so that a BatchNorm codec's statistics are each part's own
    (the stored averages are updated part by part). The two draw different noise (one ε draw for
    all parts against one a part), from the same distributions.
    """
    if fuse is None:
        fuse = not codec_has_batch_norm(batch_stats)
    if fuse:
        outs = system.codec.apply(
            {"params": params["codec"]}, tuple(to_unit_interval(p) for p in parts), train=True,
            rngs={"latent": latent_key, "channel": channel_key}, method="forward_parts")
        return outs, batch_stats
    outs = []
    for part, keys in zip(parts, zip(jax.random.split(latent_key, len(parts)),
                                     jax.random.split(channel_key, len(parts)))):
        out, batch_stats = codec_forward(system, params, batch_stats, part, *keys)
        outs.append(out)
    return tuple(outs), batch_stats


def receiver_logits(system: System, params: dict[str, Any], batch_stats: dict[str, Any],
                    x_hat: jax.Array, joint_receiver: bool) -> tuple[jax.Array, dict[str, Any]]:
    """The receiver's logits on x̂ in training mode (as the reference runs it in training and
    unlearning) and its updated BatchNorm statistics; no gradient reaches a receiver that does
    not train jointly."""
    receiver_params = params["receiver"]
    if not joint_receiver:
        receiver_params = jax.lax.stop_gradient(receiver_params)
    return apply_receiver(system, {"receiver": receiver_params}, batch_stats, x_hat, train=True)


def objective_loss(system: System, objective: CodecObjective):
    """`loss(trainable, params, batch_stats, images, labels, key)`: the codec's training objective
    (β·KL + MSE, + CE with a joint receiver) on one batch, in training mode, `trainable` (the
    parameters differentiated) over `params`; `key` draws the latent and channel noise."""
    joint = objective.joint_receiver

    def loss(trainable, params, batch_stats, images, labels, key):
        params = {**params, **trainable}
        latent_key, channel_key = jax.random.split(key)
        x = to_unit_interval(images)
        out, batch_stats = codec_forward(system, params, batch_stats, x, latent_key, channel_key)
        logits, _ = receiver_logits(system, params, batch_stats, out.x_hat, joint)
        return losses.codec_loss(out.mu, out.logvar, out.x_hat, x, beta=objective.beta,
                                 mse_weight=objective.mse_weight, receiver_logits=logits,
                                 labels=labels, ce_weight=objective.ce_weight)

    return loss


def backdoor_rate(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == targets)


def forget_term(erased_objective: str, ce_weight: float, x_hat: jax.Array, x: jax.Array,
                logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The erased-data term F_e that unlearning ascends.

    `mse`: MSE(x̂_e, x_e) (MNIST); `ce`: CE(receiver(x̂_e), y_target)·ce_weight; `mse+ce`: their
    sum, `MSE + CE/30`, the authors' CIFAR scripts' term. The CE forms need `ce_weight > 0`
    (the config refuses them otherwise: the term would be 0).
    """
    term = jnp.zeros((), jnp.float32)
    if erased_objective in ("mse", "mse+ce"):
        term = term + losses.reconstruction_mse(x_hat, x)
    if erased_objective in ("ce", "mse+ce"):
        term = term + ce_weight * losses.cross_entropy(logits, targets)
    return term


def remain_inputs(images: jax.Array, key: jax.Array, augment: bool) -> jax.Array:
    """A D_r batch in [0, 1]; with `augment`, freshly cropped (the reference's CIFAR D_r loader
    crops on every access)."""
    x = to_unit_interval(images)
    return random_crop(key, x) if augment else x


def unlearn_state(params: dict[str, Any], batch_stats: dict[str, Any],
                  opt_state: Any = ()) -> UnlearnState:
    """A method's state at step 0: the trained system, its frozen copy θ_o, `opt_state`."""
    return UnlearnState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                        opt_state=opt_state, original=frozen_original(params, batch_stats))


def sam_neighbour(params: Any, grads: Any, radius: float) -> Any:
    """`params + radius · grads / ‖grads‖` (global norm): SAM's worst-case neighbour, to first
    order, of the parameters within `radius`."""
    scale = radius / (optax.global_norm(grads) + 1e-12)
    return jax.tree.map(lambda p, g: p + scale * g.astype(p.dtype), params, grads)


def gradient_method(loss_fn, *, learning_rate: float, grad_clip: float,
                    joint_receiver: bool, mask: Any = None, sam_radius: float = 0.0) -> Method:
    """An Adam (grad-norm clipped) unlearning method minimising
    `loss_fn(params, batch_stats, θ_o, batch, key) → (loss, (new_batch_stats, StepMetrics))`.

    `mask` (optional, a 0/1 pytree of the trainable parameters' shapes) multiplies the gradient
    before the clip and Adam (`gradient_mask`): a masked-out parameter's moments stay 0, so its
    update is exactly 0.

    `sam_radius` ρ > 0 makes the step sharpness-aware (SAM, Foret et al. 2021): the gradient is
    taken at the worst-case neighbour `θ + ρ·g/‖g‖` of the trainable parameters (g: the loss's
    gradient at θ, the same batch and noise draws), so the step minimises the loss over a ball
    around θ rather than at θ alone; a flat minimum of the unlearning loss is one that a few steps
    of relearning do not leave (Fan et al. 2025). ρ = 0 is the plain step, bit for bit.
    """
    tx = make_optimizer(learning_rate, grad_clip)
    if mask is not None:
        tx = optax.chain(gradient_mask(mask), tx)

    def init(params, batch_stats) -> UnlearnState:
        return unlearn_state(params, batch_stats,
                             tx.init(trainable_params(params, joint_receiver)))

    def step(state: UnlearnState, batch: Batch, key: jax.Array):
        def objective(trainable):
            params = {**state.params, **trainable}
            return loss_fn(params, state.batch_stats, state.original, batch,
                           jax.random.fold_in(key, state.step))

        trainable = trainable_params(state.params, joint_receiver)
        (_, (batch_stats, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        if sam_radius:
            grads = jax.grad(lambda t: objective(t)[0])(sam_neighbour(trainable, grads, sam_radius))
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        params = {**state.params, **optax.apply_updates(trainable, updates)}
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                             opt_state=opt_state), metrics

    return Method(init, step)
