"""How a system is read: the `Protocol`, the evaluation-mode pass in fixed padded batches, and the
image sets a forget set is read on (`scu_jax.evaluation` builds its metrics on these)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from scu_jax.data import ErasureSplit
from scu_jax.data.batching import padded_batches
from scu_jax.losses import per_image_sse
from scu_jax.models import System, apply_receiver, to_unit_interval, without_channel


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How systems are read (see the module docstring); `runs/build.protocol_of` makes one from
    the `eval_*` and `evaluation.*` fields of a run's settings."""

    seed: int = 1234
    draws: int = 8
    batch_size: int = 500
    channel: str = "train"  # "train": through the training channel; "none": channel off
    receiver: str = "original"  # "original" or "own"
    mi_steps: int = 1500  # MINE / InfoNCE critic steps (0 skips them)
    mi_batch_size: int = 128
    mi_max_examples: int = 1000
    mi_sets: Sequence[str] = ("erased", "remain")
    remain_examples: int = 2000  # D_r images read for the utility metrics of a forget set (0: all)
    description: str = ""  # one line for results files: how the numbers were read


def system_for_evaluation(system: System, protocol: Protocol) -> System:
    """The system as `protocol.channel` reads it: as trained, or with the channel off."""
    return without_channel(system) if protocol.channel == "none" else system


def evaluation_pass(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                    x: jax.Array, key: jax.Array):
    """One evaluation-mode pass of a batch: the codec outputs and the receiver's logits on x̂.

    `key` is split into the latent and channel draws, the same way everywhere that evaluates.
    """
    mu, logvar = system.codec.apply({"params": params["codec"], "batch_stats": batch_stats}, x,
                                    train=False, method="encode")
    return posterior_pass(system, params, batch_stats, mu, logvar, key)


def posterior_pass(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                   mu: jax.Array, logvar: jax.Array, key: jax.Array):
    """`evaluation_pass` after the encoder: a batch's posterior `(μ, logvar)` sampled, sent and
    decoded, and the receiver's logits on x̂, with the draws `evaluation_pass` makes for `key`.
    Images sent many times need their posterior only once."""
    latent_key, channel_key = jax.random.split(key)
    out = system.codec.apply(
        {"params": params["codec"], "batch_stats": batch_stats}, mu, logvar, train=False,
        method="sample_and_decode", rngs={"latent": latent_key, "channel": channel_key},
    )
    return out, apply_receiver(system, params, batch_stats, out.x_hat)[0]


@functools.partial(jax.jit, static_argnums=0)
def _forward_metrics(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                     images: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    x = to_unit_interval(images)
    out, logits = evaluation_pass(system, params, batch_stats, x, key)
    input_logits = apply_receiver(system, params, batch_stats, x)[0]
    x_hat = jnp.clip(out.x_hat, 0.0, 1.0)
    return {
        "sse": per_image_sse(out.x_hat, x),
        "psnr": pix.psnr(x_hat, x),
        "ssim": pix.ssim(x_hat, x),
        "prediction": jnp.argmax(logits, axis=-1),
        "input_prediction": jnp.argmax(input_logits, axis=-1),
    }


def per_sample_metrics(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                       images: np.ndarray, *, batch_size: int, key: jax.Array,
                       forward=None) -> dict[str, np.ndarray]:
    """Runs `images` through the system in fixed-size padded batches; one row per image.

    Batch `i` uses `fold_in(key, i)`, so results depend only on the key, the images and the batch
    size, not on the system being evaluated. `forward`: another system's pass with the same rows
    (a sharded one's, `scu_jax.sharding.sharded_metrics`).
    """
    return in_batches(forward or _forward_metrics, system, params, batch_stats, images,
                      batch_size=batch_size, key=key)


def in_batches(forward, system: System, params, batch_stats, images: np.ndarray, *,
                batch_size: int, key: jax.Array) -> dict[str, np.ndarray]:
    """Runs a jitted `forward` over fixed-size padded batches (batch `i` keyed `fold_in(key, i)`)
    and concatenates its per-image outputs, padding dropped."""
    if len(images) == 0:
        raise ValueError("cannot evaluate an empty image set")
    indices, mask = padded_batches(len(images), min(batch_size, len(images)))
    rows: dict[str, list[np.ndarray]] = {}
    for batch_index, (batch, valid) in enumerate(zip(indices, mask)):
        out = forward(system, params, batch_stats, images[batch], jax.random.fold_in(key, batch_index))
        for name, value in out.items():
            rows.setdefault(name, []).append(np.asarray(value)[valid > 0])
    return {name: np.concatenate(parts) for name, parts in rows.items()}


def heldout_set(split: ErasureSplit) -> tuple[np.ndarray, np.ndarray]:
    """Test images of the classes D_e holds (all test images where D_e is empty): never seen by
    any system, and from D_e's distribution for a class or a random forget set."""
    if len(split.erased_labels) == 0:
        return split.test_images, split.test_labels
    keep = np.isin(split.test_labels, np.unique(split.erased_labels))
    return split.test_images[keep], split.test_labels[keep]


def remain_subsample(split: ErasureSplit, protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """The D_r images the utility metrics read: `protocol.remain_examples` of them, a fixed seeded
    choice (all of D_r where it is 0 or larger)."""
    count = len(split.remain_labels)
    if protocol.remain_examples and protocol.remain_examples < count:
        rows = np.sort(np.random.default_rng([protocol.seed, 31]).choice(
            count, protocol.remain_examples, replace=False))
        return split.remain_images[rows], split.remain_labels[rows]
    return split.remain_images, split.remain_labels


@functools.partial(jax.jit, static_argnums=0)
def _forward_outputs(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                     images: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    x = to_unit_interval(images)
    out, _ = evaluation_pass(system, params, batch_stats, x, key)
    return {"mu": out.mu, "logvar": out.logvar, "z": out.z, "x_hat": out.x_hat,
            "sse": per_image_sse(out.x_hat, x)}


def system_outputs(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                   images: np.ndarray, *, batch_size: int, key: jax.Array) -> dict[str, np.ndarray]:
    """Posterior (μ, logvar), latent sample z, reconstruction x̂ and per-image SSE of every image.

    Batches and keys as in `per_sample_metrics`, so two systems see the same noise draws.
    """
    return in_batches(_forward_outputs, system, params, batch_stats, images,
                       batch_size=batch_size, key=key)


def mean_sse(system: System, params, batch_stats, images: np.ndarray, protocol: Protocol,
             key: jax.Array, draws: int) -> np.ndarray:
    """Each image's reconstruction SSE averaged over `draws` channel draws (one row per image);
    the draws depend only on `key`, so two systems read with one key see the same noise."""
    tiled = np.tile(images, (draws,) + (1,) * (images.ndim - 1))
    sse = per_sample_metrics(system, params, batch_stats, tiled, batch_size=protocol.batch_size,
                             key=key)["sse"]
    return sse.reshape(draws, len(images)).mean(axis=0)
