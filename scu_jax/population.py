"""A population of runs as the reference: per-sample outcomes of many systems, and how far one
population's distribution of an outcome lies from another's, sample by sample (KLOM).

Retraining from scratch is itself random (initial parameters, data order, noise draws): one
retrained system is one draw of what exact unlearning gives. A method matches retraining where,
for every sample, the outcomes of N runs of the method are distributed as those of N retrained
runs (Georgiev et al. 2024, "Attribute-to-delete: machine unlearning via datamodel matching",
KLOM: the KL divergence of margins). `per_sample_outcomes` reads one system's outcome of each
sample (the receiver's correct-class margin and the reconstruction error, averaged over the
protocol's channel draws, the same draws for every system); `klom` compares two populations'
(runs, samples) arrays sample by sample, `noise_floor` compares retraining's two halves (what two
populations of the SAME procedure score), and `klom_summary` gives the median and 95th percentile
over samples.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import numpy as np

from scu_jax.losses import per_image_sse
from scu_jax.models import System, to_unit_interval, with_receiver
from scu_jax.passes import Protocol, evaluation_pass, in_batches, system_for_evaluation

BINNINGS = ("width", "quantile")


@functools.partial(jax.jit, static_argnums=0)
def _forward_outcomes(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                      images: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    x = to_unit_interval(images)
    out, logits = evaluation_pass(system, params, batch_stats, x, key)
    return {"sse": per_image_sse(out.x_hat, x), "logits": logits}


def correct_class_margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The logit of each row's label minus the largest other logit.

    `margin = logits[y] − max_{k ≠ y} logits[k]`: positive where the receiver picks `y`, the
    more so the more confidently. (KLOM's own margin subtracts `logsumexp` of the other logits;
    the largest one is its limit for a confident receiver and needs no temperature.)

    Args:
      logits: (..., classes) receiver logits.
      labels: (...) the label whose margin is read, broadcast against `logits[..., 0]`.

    Returns:
      (...) float array of margins.

    Example:
      >>> scu_jax.correct_class_margin(np.array([[1.0, 3.0, 2.0]] * 2), np.array([1, 0]))
      array([ 1., -2.])
    """
    logits = np.asarray(logits, np.float64)
    labels = np.broadcast_to(np.asarray(labels), logits.shape[:-1])
    own = np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    others = np.where(np.arange(logits.shape[-1]) == labels[..., None], -np.inf, logits)
    return own - others.max(axis=-1)


def per_sample_outcomes(system: System, params: Mapping[str, Any],
                        batch_stats: Mapping[str, Any], images: np.ndarray, labels: np.ndarray,
                        *, protocol: Protocol, key: jax.Array,
                        receiver: tuple[Any, Any] | None = None) -> dict[str, np.ndarray]:
    """Each image's correct-class margin and reconstruction SSE, averaged over channel draws.

    Every image is sent `protocol.draws` times through the system as `protocol.channel` reads
    it (the images tiled draw by draw, in padded batches of `protocol.batch_size`, batch `i`
    keyed `fold_in(key, i)`, as `passes.mean_sse` does), so two systems read with one key see the
    same latent and channel noise. For image `n` over draws `d = 1..D`:

      margin_n = (1/D) Σ_d [ℓ_d(x̂)[y_n] − max_{k ≠ y_n} ℓ_d(x̂)[k]]  (`correct_class_margin`)
      sse_n    = (1/D) Σ_d ‖x̂_d − x_n‖²  (`losses.per_image_sse`; equals `passes.mean_sse`)

    where ℓ_d are the logits of `receiver` (the evaluation's default: the original trained
    system's, `models.receiver_of` of it) on the d-th reconstruction.

    Args:
      system: the system (its channel; `protocol.channel` "none" switches it off).
      params, batch_stats: the system's variables.
      images: (n, H, W, C) uint8 or [0, 1] float images.
      labels: (n,) the label whose margin is read (the true label; for the backdoor's D_e the
        training label, the target class, so a high margin is a backdoor that went through).
      protocol: `draws` and `batch_size` (and `channel`) of the reading.
      key: the fixed evaluation key (the same for every system compared).
      receiver: `(params, batch_stats or None)` of the receiver that reads x̂; None: the
        system's own.

    Returns:
      {"margin": (n,) float64, "sse": (n,) float64}, one row per image.

    Example:
      >>> rows = scu_jax.per_sample_outcomes(system, state.params, state.batch_stats, images,
      ...                                    labels, protocol=scu_jax.passes.Protocol(draws=2),
      ...                                    key=key)
      >>> {name: value.shape for name, value in rows.items()}
      {'margin': (16,), 'sse': (16,)}
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if receiver is not None:
        params, batch_stats = with_receiver(params, batch_stats, receiver)
    draws, count = int(protocol.draws), len(images)
    tiled = np.tile(images, (draws,) + (1,) * (images.ndim - 1))
    rows = in_batches(_forward_outcomes, system_for_evaluation(system, protocol), params,
                      batch_stats, tiled, batch_size=protocol.batch_size, key=key)
    logits = rows["logits"].reshape(draws, count, -1)
    margin = correct_class_margin(logits, np.broadcast_to(labels, (draws, count)))
    sse = rows["sse"].astype(np.float64).reshape(draws, count)
    return {"margin": margin.mean(axis=0), "sse": sse.mean(axis=0)}


def _check_values(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.shape[0] < 1:
        raise ValueError(f"{name} must be a (runs, samples) array with runs >= 1, got shape "
                         f"{values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} holds non-finite values")
    return values


def _bin_indices(values: np.ndarray, union: np.ndarray, bins: int, binning: str) -> np.ndarray:
    """Each value's bin (0..bins−1) among its sample's bins, made from `union` (runs, samples)."""
    if binning == "width":
        low, high = union.min(axis=0), union.max(axis=0)
        width = np.where(high > low, (high - low) / bins, 1.0)
        return np.clip(np.floor((values - low) / width), 0, bins - 1).astype(np.int64)
    inner = np.quantile(union, np.arange(1, bins) / bins, axis=0)  # (bins − 1, samples)
    return (values[:, None, :] > inner[None]).sum(axis=1)


def klom(method_values: np.ndarray, retrain_values: np.ndarray, *, bins: int = 4,
         binning: str = "width", smoothing: float = 0.1) -> np.ndarray:
    """Per-sample KL divergence from a method's population of an outcome to retraining's (KLOM).

    For sample `n`, the method's N_m values and retraining's N_r values fall into the SAME
    `bins` bins, fixed from the union of both (`binning` "width": equal widths over
    [min, max] of the union, as the KLOM reference implementation; "quantile": the union's
    k/bins quantiles as edges, robust to one outlying run; where every value of a sample is
    equal they all fall in one bin). Each bin gets `smoothing` pseudo-counts, so no bin is empty:

      p_b = (c^m_b + α) / (N_m + α·B),   q_b = (c^r_b + α) / (N_r + α·B)
      KLOM_n = KL(p ‖ q) = Σ_b p_b · log(p_b / q_b)   (nats)

    0 where the two histograms agree; at most about log((N_r + α·B)/α) where they share no bin.
    With N runs a side, two populations of the same procedure do not score 0 (`noise_floor`):
    the floor grows with bins/N, so the defaults (4 bins, α = 0.1) suit N = 8–16 runs a side
    (for normal outcomes at 8 against 8, a floor of ~0.4 nats, against ~0.8 for a shift of one
    standard deviation and ~1.9 for two). Georgiev et al. 2024, "Attribute-to-delete", §2 (KLOM).

    Args:
      method_values: (N_m, samples) the method's runs' outcome of every sample.
      retrain_values: (N_r, samples) retraining's, same samples in the same order.
      bins: bins per sample (>= 1).
      binning: "width" or "quantile" (above).
      smoothing: α > 0, pseudo-counts added to every bin of both histograms.

    Returns:
      (samples,) float64 KL divergences.

    Raises:
      ValueError: shapes that do not match, non-finite values or bad settings.

    Example:
      >>> runs = np.random.default_rng(0).normal(size=(16, 3))
      >>> scu_jax.klom(runs, runs).tolist()
      [0.0, 0.0, 0.0]
      >>> bool(np.all(scu_jax.klom(runs, runs + 100.0) > 4.0))
      True
    """
    method_values = _check_values("method_values", method_values)
    retrain_values = _check_values("retrain_values", retrain_values)
    if method_values.shape[1] != retrain_values.shape[1]:
        raise ValueError(f"method_values has {method_values.shape[1]} samples, retrain_values "
                         f"{retrain_values.shape[1]}")
    if isinstance(bins, bool) or int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    if binning not in BINNINGS:
        raise ValueError(f"binning must be one of {BINNINGS}, got {binning!r}")
    if not (np.isfinite(smoothing) and smoothing > 0):
        raise ValueError(f"smoothing must be a positive number, got {smoothing!r}")
    bins = int(bins)
    union = np.concatenate([method_values, retrain_values])
    histograms = []
    for values in (method_values, retrain_values):
        indices = _bin_indices(values, union, bins, binning)
        counts = (indices[..., None] == np.arange(bins)).sum(axis=0)  # (samples, bins)
        histograms.append((counts + smoothing) / (len(values) + smoothing * bins))
    p, q = histograms
    return np.sum(p * np.log(p / q), axis=1)


def noise_floor(retrain_values: np.ndarray, **klom_settings) -> np.ndarray:
    """KLOM of retraining against itself: its first N/2 runs against its next N/2.

    What two populations of the same procedure score with N/2 runs a side (`klom` with
    `klom_settings`); a method is as close to retraining as can be told apart with this many
    runs where its score (at N/2 a side) is no higher. With an odd N the last run is left out.

    Args:
      retrain_values: (N, samples) retraining's outcomes, N >= 2.
      **klom_settings: `bins`, `binning`, `smoothing` of `klom`.

    Returns:
      (samples,) `klom(retrain_values[:N//2], retrain_values[N//2 : 2·(N//2)])`.

    Example:
      >>> runs = np.concatenate([np.zeros((2, 3)), np.ones((2, 3))])  # halves disagree
      >>> scu_jax.noise_floor(runs, bins=2).round(2).tolist()
      [2.77, 2.77, 2.77]
    """
    retrain_values = _check_values("retrain_values", retrain_values)
    half = len(retrain_values) // 2
    if half < 1:
        raise ValueError("the noise floor needs at least 2 retraining runs, got "
                         f"{len(retrain_values)}")
    return klom(retrain_values[:half], retrain_values[half:2 * half], **klom_settings)


def klom_summary(scores: np.ndarray) -> dict[str, float]:
    """The median, 95th percentile and mean of per-sample KLOM scores (KLOM's own summary is
    the distribution over samples: its median and upper tail).

    Args:
      scores: (samples,) `klom` or `noise_floor` output.

    Returns:
      {"median", "p95", "mean"} as floats.

    Example:
      >>> scu_jax.klom_summary(np.arange(101.0))
      {'median': 50.0, 'p95': 95.0, 'mean': 50.0}
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("no scores to summarise")
    return {"median": float(np.median(scores)), "p95": float(np.percentile(scores, 95)),
            "mean": float(scores.mean())}
