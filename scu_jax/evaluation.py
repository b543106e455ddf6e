"""Evaluation of a semantic communication system through its channel (spec §4).

Every image set passes through encoder → channel → decoder → receiver with a FIXED evaluation key
(`config.eval_seed`), so two systems (original, unlearned, retrained) see the same latent and
channel noise draws. Metrics:
  * `mse_*`: per-image SUM of squared errors, averaged over images (the reference's "MSE");
  * `psnr_*`, `ssim_*`: dm-pix PSNR and SSIM of x̂ clipped to [0, 1];
  * `accuracy_clean` / `accuracy_test`: receiver accuracy on x̂ against the true label;
  * `backdoor_accuracy`: fraction of x̂(D_e) that the receiver labels as the target class.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scu_jax.data import ErasureSplit
from scu_jax.data.batching import padded_batches
from scu_jax.losses import per_image_sse
from scu_jax.models import System, to_unit_interval


@functools.partial(jax.jit, static_argnums=0)
def _forward_metrics(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                     images: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    latent_key, channel_key = jax.random.split(key)
    x = to_unit_interval(images)
    out = system.codec.apply(
        {"params": params["codec"], "batch_stats": batch_stats}, x, train=False,
        rngs={"latent": latent_key, "channel": channel_key},
    )
    logits = system.receiver.apply({"params": params["receiver"]}, out.x_hat)
    input_logits = system.receiver.apply({"params": params["receiver"]}, x)
    x_hat = jnp.clip(out.x_hat, 0.0, 1.0)
    return {
        "sse": per_image_sse(out.x_hat, x),
        "psnr": pix.psnr(x_hat, x),
        "ssim": pix.ssim(x_hat, x),
        "prediction": jnp.argmax(logits, axis=-1),
        "input_prediction": jnp.argmax(input_logits, axis=-1),
    }


def per_sample_metrics(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                       images: np.ndarray, *, batch_size: int, key: jax.Array) -> dict[str, np.ndarray]:
    """Runs `images` through the system in fixed-size padded batches; one row per image.

    Batch `i` uses `fold_in(key, i)`, so results depend only on the key, the images and the batch
    size, not on the system being evaluated.
    """
    if len(images) == 0:
        raise ValueError("cannot evaluate an empty image set")
    batch_size = min(batch_size, len(images))
    indices, mask = padded_batches(len(images), batch_size)
    rows: dict[str, list[np.ndarray]] = {}
    for batch_index, (batch, valid) in enumerate(zip(indices, mask)):
        out = _forward_metrics(system, params, batch_stats, images[batch],
                               jax.random.fold_in(key, batch_index))
        for name, value in out.items():
            rows.setdefault(name, []).append(np.asarray(value)[valid > 0])
    return {name: np.concatenate(parts) for name, parts in rows.items()}


def evaluate_system(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                    split: ErasureSplit, config: ml_collections.ConfigDict) -> dict[str, float]:
    """The evaluation protocol of spec §4 on D_clean, D_e and the test split."""
    key = jax.random.PRNGKey(config.eval_seed)
    sets = {
        "clean": (split.clean_images, split.clean_labels),
        "erased": (split.erased_images, split.clean_labels),
        "test": (split.test_images, split.test_labels),
    }
    metrics: dict[str, float] = {}
    for index, (name, (images, true_labels)) in enumerate(sets.items()):
        rows = per_sample_metrics(system, params, batch_stats, images,
                                  batch_size=config.eval_batch_size,
                                  key=jax.random.fold_in(key, index))
        metrics[f"mse_{name}"] = float(rows["sse"].mean())
        metrics[f"psnr_{name}"] = float(rows["psnr"].mean())
        metrics[f"ssim_{name}"] = float(rows["ssim"].mean())
        metrics[f"accuracy_{name}"] = float((rows["prediction"] == true_labels).mean())
        metrics[f"input_accuracy_{name}"] = float((rows["input_prediction"] == true_labels).mean())
        if name == "erased":
            target = split.target_class
            metrics["backdoor_accuracy"] = float((rows["prediction"] == target).mean())
            metrics["input_backdoor_accuracy"] = float((rows["input_prediction"] == target).mean())
    metrics["num_erased"] = int(len(split.erased_images))
    metrics["num_remain"] = int(len(split.remain_images))
    metrics["num_test"] = int(len(split.test_images))
    return metrics
