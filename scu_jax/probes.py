"""Probes of what crosses the channel: is the erased information gone, or only hidden?

Every receiver-side metric reads x̂ through a receiver; a method can stop the receiver from
reading the erased behaviour while the transmitted latent still carries it (the relearning attack
brings it back in a few steps). These probes read the latent sample z and the channel output y at
several SNRs directly, for D_e's TRAINING labels (the backdoor's target class, a forgotten class,
the labels of erased samples):
  * `head_linear_<f>`, `head_mlp_<f>`, frozen-transmitter relearning: a fresh head (a linear
    layer; the MLP receiver's architecture) trained, transmitter frozen, on the relearning attack's
    seeded part of D_e with its training labels and as many D_r images (of D_e's source class
    where D_r has it: clean base-class images under the backdoor protocol), read on the rest of
    D_e: the share of it that reads as its training label;
  * `knn_<f>` (k = 10) and `linear_<f>` (multinomial logistic regression), the probes of Kim et
    al. 2025 adapted: fit on D_r (backdoor protocol) or on the held-out test images (other forget
    sets, whose classes D_r may lack), read on all of D_e;
  * `cka_<reference>_<set>`: linear CKA (Kornblith et al., ICML 2019) of z against a reference
    system's z (the original's, retraining's) on D_e, D_r and the test set, same draws.
Each value comes with `<key>_se`: the binomial standard error over the images read (a bootstrap
over images for CKA), the noise floor of one system's number. Every system is read with the same
keys (`Protocol.seed`), so two systems see the same latent and channel draws; features are
standardised with the fit set's mean and deviation.

`gap_closed` puts a probe's value on the scale (original − system) / (original − retraining): 1
is as gone as retraining, 0 as present as before; `separates` says whether a probe tells the
original from retraining at all (else it is reported as useless); `verdict` flags a system whose
receiver looks like retraining (gap closed ≥ 0.9) while a separating probe does not (≤ 0.5):
"hidden, not erased".
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from scu_jax.data import ErasureSplit
from scu_jax.models import Receiver, System, to_unit_interval
from scu_jax.passes import Protocol, in_batches, remain_subsample

PROBE_SNRS = (-5.0, 0.0, 5.0, 10.0, 20.0)
HEADS = ("head_linear", "head_mlp")
PROBES = HEADS + ("knn", "linear")
CKA_SETS = ("erased", "remain", "test")
ATTACK_FRACTION = 0.1  # the relearning attack's default part of D_e
NEIGHBOURS = 10
FIT_STEPS = 300  # full-batch Adam steps of every head and linear probe
HIDDEN, ERASED, NOT_ERASED = "hidden, not erased", "erased", "not erased"


def feature_names(snrs: Sequence[float] = PROBE_SNRS) -> tuple[str, ...]:
    """The probed features: the latent sample `z` and the channel output at each SNR, `y<snr>dB`.

    Example:
      >>> scu_jax.probe_feature_names((-5.0, 10.0))
      ('z', 'y-5dB', 'y10dB')
    """
    return ("z", *(f"y{snr:g}dB" for snr in snrs))


def attack_rows(count: int, fraction: float, min_size: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The relearning attack's seeded split of D_e's `count` rows: `(attack, held_out)`, the
    attack `fraction` of them (at least `min_size`, one batch) and at least one row held out.

    Example:
      >>> attack, held_out = scu_jax.attack_rows(240, 0.1, 16, seed=0)
      >>> len(attack), len(held_out), len(set(attack) | set(held_out))
      (24, 216, 240)
    """
    if count < 2:
        raise ValueError(f"D_e has {count} images: the attack needs 2 or more")
    order = np.random.default_rng(seed).permutation(count)
    size = min(max(int(round(fraction * count)), min(min_size, count - 1)), count - 1)
    return order[:size], order[size:]


@functools.partial(jax.jit, static_argnums=(0, 5))
def _features(system: System, params, batch_stats, images: jax.Array, key: jax.Array,
              snrs: tuple[float, ...]) -> dict[str, jax.Array]:
    mu, logvar = system.codec.apply({"params": params["codec"], "batch_stats": batch_stats},
                                    to_unit_interval(images), train=False, method="encode")
    latent_key, channel_key = jax.random.split(key)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(latent_key, mu.shape, mu.dtype)
    sent = [system.codec.channel.apply({}, z, snr, rngs={"channel": jax.random.fold_in(
        channel_key, index)}) for index, snr in enumerate(snrs)]
    return {"features": jnp.stack([z, *sent], axis=1)}


def transmitted_features(system: System, params, batch_stats, images: np.ndarray, *,
                         snrs: Sequence[float], key: jax.Array, batch_size: int,
                         draws: int = 1) -> np.ndarray:
    """What the transmitter sends for each image, `(1 + len(snrs), draws · n, d)`: the latent
    sample z, then the channel output y at each SNR (the system's channel), each image sent
    `draws` times (draw-major); batch `i` keyed `fold_in(key, i)`, so systems share the draws.

    Example:
      >>> features = scu_jax.transmitted_features(system, state.params, {}, images,
      ...                                         snrs=(0.0, 10.0), key=key, batch_size=8)
      >>> features.shape
      (3, 16, 20)
    """
    tiled = np.tile(images, (draws,) + (1,) * (images.ndim - 1))
    rows = in_batches(lambda *args: _features(*args, tuple(float(s) for s in snrs)), system,
                      params, batch_stats, tiled, batch_size=batch_size, key=key)
    return np.swapaxes(rows["features"], 0, 1)


def _standardise(fit: jax.Array, read: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean, std = fit.mean(axis=0), fit.std(axis=0) + 1e-6
    return (fit - mean) / std, (read - mean) / std


@functools.partial(jax.jit, static_argnums=(0, 5))
def _fit_and_predict(head: nn.Module, fit: jax.Array, labels: jax.Array, read: jax.Array,
                     key: jax.Array, steps: int) -> jax.Array:
    """Trains `head` full-batch on each feature set's (fit, labels) (vmapped over the leading
    feature axis, one program) and returns its predictions on `read`, (features, m)."""
    optimizer = optax.adamw(1e-2, weight_decay=1e-4)

    def one(fit_x, read_x):
        fit_x, read_x = _standardise(fit_x, read_x)
        params = head.init(key, fit_x[:1])

        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(head.apply(p, fit_x),
                                                                   labels).mean()

        def step(carry, _):
            p, state = carry
            updates, state = optimizer.update(jax.grad(loss)(p), state, p)
            return (optax.apply_updates(p, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
        return jnp.argmax(head.apply(params, read_x), axis=-1)

    return jax.vmap(one)(fit, read)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _knn_predict(fit: jax.Array, labels: jax.Array, read: jax.Array, k: int,
                 num_classes: int) -> jax.Array:
    def one(fit_x, read_x):
        fit_x, read_x = _standardise(fit_x, read_x)
        distances = ((read_x ** 2).sum(-1)[:, None] - 2 * read_x @ fit_x.T
                     + (fit_x ** 2).sum(-1)[None, :])
        _, nearest = jax.lax.top_k(-distances, k)
        return jnp.argmax(jax.nn.one_hot(labels[nearest], num_classes).sum(axis=1), axis=-1)

    return jax.vmap(one)(fit, read)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n examples (rows), in [0, 1]:
    ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F) of the centred matrices (Kornblith et al., ICML 2019, eq. 5).

    Example:
      >>> x = np.random.default_rng(0).normal(size=(100, 8))
      >>> round(scu_jax.linear_cka(x, 3.0 * x @ np.linalg.qr(np.ones((8, 8)) + np.eye(8))[0]), 6)
      1.0
    """
    x = np.asarray(x, np.float64) - np.mean(x, axis=0)
    y = np.asarray(y, np.float64) - np.mean(y, axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y) + 1e-30))


def _cka_with_se(x: np.ndarray, y: np.ndarray, seed: int, resamples: int = 30
                 ) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    boot = [linear_cka(x[rows], y[rows]) for rows in
            (rng.integers(0, len(x), len(x)) for _ in range(resamples))]
    return linear_cka(x, y), float(np.std(boot))


def _rate(predictions: np.ndarray, labels: np.ndarray, images: int) -> tuple[float, float]:
    """The share of predictions equal to their label (rows tiled over draws), and its binomial
    standard error over the `images` distinct images."""
    rate = float(np.mean(predictions == labels))
    return rate, math.sqrt(max(rate * (1 - rate), 1e-12) / images)


def _paired_remain(split: ErasureSplit, count: int, seed: int) -> np.ndarray:
    """`count` D_r rows beside the attack's D_e images: of D_e's source class where D_r has
    images of it (the clean base class under the backdoor protocol; D_e's classes otherwise),
    else of any class (a forgotten class is not in D_r)."""
    source = ([split.base_class] if split.backdoor else np.unique(split.erased_labels))
    pool = np.flatnonzero(np.isin(split.remain_labels, source))
    if len(pool) == 0:
        pool = np.arange(len(split.remain_labels))
    rng = np.random.default_rng([seed, 11])
    return rng.choice(pool, size=count, replace=len(pool) < count)


def probe_system(system: System, params, batch_stats, split: ErasureSplit, protocol: Protocol,
                 *, snrs: Sequence[float] = PROBE_SNRS, fraction: float = ATTACK_FRACTION,
                 seed: int = 0, attack_batch: int = 16, references: Mapping[str, tuple[Any, Any]] | None = None
                 ) -> dict[str, float]:
    """Every probe of the module docstring on one system: `probe_<probe>_<feature>` and
    `probe_cka_<reference>_<set>`, each with `_se`, plus the images read and the seconds taken.

    Args:
      system, params, batch_stats: the system probed (its receiver is not used).
      split: the erasure split: D_e, D_r, the test set.
      protocol: its `seed`, `draws` (each read image sent that many times; the fit sets once)
        and `batch_size` are used.
      snrs: the channel outputs probed, in dB.
      fraction, seed, attack_batch: the relearning attack's part of D_e (`attack_rows`: at
        least its batch), and the seed of the D_r images beside it.
      references: name → `(params, batch_stats)` of the systems CKA compares z with (e.g.
        "original", "retrain").

    Returns:
      Floats; rates are the share of the images read that come out as D_e's training label.

    Example:
      >>> split = scu_jax.make_erasure_split(scu_jax.load_dataset("mnist5k"), edr=0.06,
      ...                                    base_class=1, target_class=2, seed=0)
      >>> probes = scu_jax.probe_system(system, state.params, {}, split,
      ...                               scu_jax.passes.Protocol(draws=2), snrs=(0.0,))
      >>> sorted(k for k in probes if k.startswith("probe_knn"))
      ['probe_knn_y0dB', 'probe_knn_y0dB_se', 'probe_knn_z', 'probe_knn_z_se']
    """
    started = time.perf_counter()
    erased, labels = split.erased_images, np.asarray(split.erased_labels)
    attack, held_out = attack_rows(len(erased), fraction, attack_batch, seed)
    paired = _paired_remain(split, len(attack), seed)
    if split.backdoor:
        fit_images, fit_labels = remain_subsample(split, protocol)
    else:
        fit_images, fit_labels = split.test_images, split.test_labels
    draws, names = protocol.draws, feature_names(snrs)
    base = jax.random.fold_in(jax.random.PRNGKey(protocol.seed), 90)

    def features(images, index, times):
        return transmitted_features(system, params, batch_stats, images, snrs=snrs,
                                    key=jax.random.fold_in(base, index),
                                    batch_size=protocol.batch_size, draws=times)

    erased_features = features(erased, 0, draws)  # (F, draws · |D_e|, d)
    rows = np.arange(draws)[:, None] * len(erased)
    attack_set = np.concatenate([erased_features[:, (rows + attack).ravel()],
                                 features(split.remain_images[paired], 1, draws)], axis=1)
    attack_labels = np.concatenate([np.tile(labels[attack], draws),
                                    np.tile(split.remain_labels[paired], draws)])
    read_held_out = erased_features[:, (rows + held_out).ravel()]
    classes = int(getattr(system.receiver, "num_classes"))
    key = jax.random.fold_in(base, 7)
    results: dict[str, float] = {}
    for head_name, head in (("head_linear", nn.Dense(classes)), ("head_mlp", Receiver(classes))):
        predicted = np.asarray(_fit_and_predict(head, attack_set, attack_labels, read_held_out,
                                                key, FIT_STEPS))
        for name, row in zip(names, predicted):
            results[f"probe_{head_name}_{name}"], results[f"probe_{head_name}_{name}_se"] = _rate(
                row, np.tile(labels[held_out], draws), len(held_out))
    fit_features = features(fit_images, 2, 1)
    for probe_name, predicted in (
            ("knn", _knn_predict(fit_features, fit_labels, erased_features, NEIGHBOURS, classes)),
            ("linear", _fit_and_predict(nn.Dense(classes), fit_features, fit_labels,
                                        erased_features, key, FIT_STEPS))):
        for name, row in zip(names, np.asarray(predicted)):
            results[f"probe_{probe_name}_{name}"], results[f"probe_{probe_name}_{name}_se"] = _rate(
                row, np.tile(labels, draws), len(erased))
    if references:
        sets = {"erased": erased, "remain": remain_subsample(split, protocol)[0],
                "test": split.test_images}
        for index, (set_name, images) in enumerate(sets.items()):
            key_of_set = jax.random.fold_in(base, 20 + index)
            ours = _latents(system, params, batch_stats, images, key_of_set, protocol)
            for reference, (ref_params, ref_stats) in references.items():
                theirs = _latents(system, ref_params, ref_stats, images, key_of_set, protocol)
                value, se = _cka_with_se(ours, theirs, protocol.seed + index)
                results[f"probe_cka_{reference}_{set_name}"] = value
                results[f"probe_cka_{reference}_{set_name}_se"] = se
    results.update(probe_attack_images=int(len(attack)), probe_heldout_images=int(len(held_out)),
                   probe_fit_images=int(len(fit_labels)), probe_draws=int(draws),
                   probe_seconds=time.perf_counter() - started)
    return results


def _latents(system, params, batch_stats, images, key, protocol) -> np.ndarray:
    return transmitted_features(system, params, batch_stats, images, snrs=(), key=key,
                                batch_size=protocol.batch_size)[0]


def probe_keys(results: Mapping[str, Any]) -> list[str]:
    """The probe values in a results dict (`probe_system`'s keys without the `_se` and count
    entries), in their order."""
    extra = {"probe_attack_images", "probe_heldout_images", "probe_fit_images", "probe_draws",
             "probe_seconds"}
    return [k for k in results if k.startswith("probe_") and not k.endswith("_se")
            and k not in extra]


def gap_closed(value: float, original: float, retrain: float) -> float:
    """(original − value) / (original − retrain): 1 where `value` is retraining's, 0 where it is
    the original's (NaN where the two are equal: the scale is undefined).

    Example:
      >>> scu_jax.gap_closed(0.9, original=0.9, retrain=0.1), scu_jax.gap_closed(0.1, 0.9, 0.1)
      (0.0, 1.0)
    """
    if original == retrain:
        return float("nan")
    return float((original - value) / (original - retrain))


def separates(original: float, retrain: float, original_se: float, retrain_se: float, *,
              z: float = 3.0, min_gap: float = 0.02) -> bool:
    """Whether a number tells the original from retraining: their difference is at least
    `min_gap` and `z` standard errors (each number's noise floor).

    Example:
      >>> scu_jax.probe_separates(0.9, 0.1, 0.02, 0.02), scu_jax.probe_separates(0.5, 0.48, 0.02, 0.02)
      (True, False)
    """
    gap = abs(original - retrain)
    return bool(gap >= min_gap and gap >= z * math.hypot(original_se, retrain_se))


def verdict(receiver_gap: float, probe_gaps: Mapping[str, float], *, erased_at: float = 0.9,
            hidden_at: float = 0.5) -> str:
    """"hidden, not erased" where the receiver's gap closed is ≥ `erased_at` and a (separating)
    probe's is ≤ `hidden_at`; "erased" where the receiver's is ≥ `erased_at` and no probe's is;
    "not erased" where the receiver's is below (NaN: the receiver tells nothing apart, "n/a").

    Example:
      >>> scu_jax.probe_verdict(1.0, {"probe_head_linear_z": 0.1})
      'hidden, not erased'
    """
    if math.isnan(receiver_gap):
        return "n/a"
    if receiver_gap < erased_at:
        return NOT_ERASED
    return HIDDEN if any(g <= hidden_at for g in probe_gaps.values()) else ERASED
