"""What every unlearning method shares: its state, its factory type and the system's forward pass.

A method is a factory `method(config, system) -> UnlearningMethod(init, step)` in the style of an
optax `GradientTransformation`: `init` builds a pytree state from the trained system, `step` is a
pure function of `(state, erased batch, remaining batch, key)` that the loop jits with the state
donated and scans over a whole epoch.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections

from scu_jax.models import CodecOutput, System, apply_receiver, to_unit_interval


@flax.struct.dataclass
class UnlearnState:
    """The state an unlearning method carries between steps (a pytree)."""

    step: jax.Array
    params: dict[str, Any]  # {"codec": ..., "receiver": ...}
    batch_stats: dict[str, Any]  # codec BatchNorm running averages ({} for the MLP codec)
    opt_state: Any  # the method's optimiser state (() for methods without one)
    original: dict[str, Any]  # the frozen original codec {"params", "batch_stats"} (θ_o)


class StepMetrics(NamedTuple):
    """Per-step numbers every method reports; `backdoor` drives the early stop."""

    loss: jax.Array
    backdoor: jax.Array  # fraction of the erased batch that the receiver labels as the target
    forget: jax.Array  # the erased-data term (MSE or CE) before weighting
    utility: jax.Array  # the remaining-data loss (0 where the method has none)


class Batch(NamedTuple):
    """One step's data: an erased batch (target labels) and a remaining batch (true labels)."""

    erased_images: jax.Array
    erased_targets: jax.Array
    remain_images: jax.Array
    remain_labels: jax.Array


class UnlearningMethod(NamedTuple):
    """An unlearning method as pure functions (optax style)."""

    init: Callable[[dict[str, Any], dict[str, Any]], UnlearnState]
    step: Callable[[UnlearnState, Batch, jax.Array], tuple[UnlearnState, StepMetrics]]


class TrainingMethod(NamedTuple):
    """A method that runs the training recipe (`train.fit`) on D_r: finetune and retrain.

    `init(params, batch_stats)` gives the `TrainState` to start from, `step` is the codec step it
    scans over D_r batches, `config` is the recipe `train.fit` runs (epochs, learning rate).
    """

    init: Callable[[dict[str, Any], dict[str, Any]], Any]
    step: Callable[..., Any]
    config: ml_collections.ConfigDict


def trainable_params(params: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The parameters a method updates: the codec, plus the receiver where it trains jointly (CIFAR)."""
    if config.train.ce_weight > 0:
        return {"codec": params["codec"], "receiver": params["receiver"]}
    return {"codec": params["codec"]}


def frozen_original(params: dict[str, Any], batch_stats: dict[str, Any]) -> dict[str, Any]:
    """θ_o: a copy of the trained codec that no gradient reaches."""
    return jax.tree.map(jnp.copy, {"params": params["codec"], "batch_stats": batch_stats})


def codec_forward(system: System, params: dict[str, Any], batch_stats: dict[str, Any],
                  images: jax.Array, key: jax.Array) -> tuple[CodecOutput, dict[str, Any]]:
    """One training-mode pass (batch statistics) through encoder, channel and decoder.

    Returns the outputs and the updated BatchNorm running averages.
    """
    latent_key, channel_key = jax.random.split(key)
    out, mutated = system.codec.apply(
        {"params": params["codec"], "batch_stats": batch_stats}, to_unit_interval(images),
        train=True, rngs={"latent": latent_key, "channel": channel_key}, mutable=["batch_stats"],
    )
    return out, mutated.get("batch_stats", batch_stats)


def receiver_logits(system: System, params: dict[str, Any], batch_stats: dict[str, Any],
                    x_hat: jax.Array, config: ml_collections.ConfigDict
                    ) -> tuple[jax.Array, dict[str, Any]]:
    """The receiver's logits on x̂ (training mode, as the reference's unlearning loops run it)
    and the updated BatchNorm statistics of a ResNet receiver; the receiver is frozen unless it
    trains jointly."""
    receiver_params = params["receiver"]
    if config.train.ce_weight <= 0:
        receiver_params = jax.lax.stop_gradient(receiver_params)
    return apply_receiver(system, {"receiver": receiver_params}, batch_stats, x_hat, train=True)


def backdoor_rate(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == targets)
