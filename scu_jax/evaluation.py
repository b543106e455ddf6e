"""Evaluation of a semantic communication system: the paper's backdoor protocol, and more.

A `Protocol` says how systems are read. Every image set passes through encoder → channel →
decoder → receiver with a FIXED evaluation key (`Protocol.seed`), so two systems (original,
unlearned, retrained) see the same latent and channel noise draws; each image is sent
`Protocol.draws` times and the metrics average over the draws. `Protocol.channel` says whether x̂
is read through the training channel ("train", our default) or with the channel off ("none", the
reference's MNIST evaluation), and `Protocol.receiver` which receiver reads every system: the
original trained one, frozen (our default: one instrument for every row), or each system's own.
Metrics:
  * `mse_*`: per-image SUM of squared errors, averaged over images (the reference's "MSE");
  * `psnr_*`, `ssim_*`: dm-pix PSNR and SSIM of x̂ clipped to [0, 1];
  * `accuracy_clean` / `accuracy_test`: receiver accuracy on x̂ against the true label;
  * `backdoor_accuracy`: fraction of x̂(D_e) that the receiver labels as the target class;
    where D_e holds only a known fraction of the triggered images, `backdoor_accuracy_unknown`
    reads the others (left in D_r) and `backdoor_accuracy_all` every one of them (at known
    fraction 1 it is `backdoor_accuracy`).
A forget set without a backdoor (`ErasureSplit.kind` "ids", "class", "random") is read on D_e
(`*_erased`: forget quality), a fixed subsample of D_r (`*_remain`) and the test set (`*_test`:
utility), and on held-out test images of D_e's classes (`*_heldout`), what D_e would look like to
a system that never saw it; `erased_to_heldout` is the ratio of their reconstruction errors.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from scu_jax import mi
from scu_jax.data import ErasureSplit, add_trigger
from scu_jax.models import System, receiver_of, to_unit_interval, with_receiver
# The protocol and the passes live in `passes`; imported here, where users have always found them.
from scu_jax.passes import (Protocol, heldout_set, mean_sse, per_sample_metrics, remain_subsample,
                            system_for_evaluation, system_outputs)


def _image_set_metrics(system: System, params, batch_stats, sets: Mapping[str, Any],
                       protocol: Protocol, key: jax.Array,
                       target: tuple[tuple[str, ...], int] | None = None,
                       forward=None) -> dict[str, float]:
    """mse/psnr/ssim/accuracy/input_accuracy of each named (images, labels) set, every image sent
    `protocol.draws` times; set `index` is keyed `fold_in(key, index)`. `target` = (sets, class):
    those sets' backdoor accuracy too (and `input_backdoor_accuracy`): `backdoor_accuracy` for
    "erased", `backdoor_accuracy_<name>` for another."""
    metrics: dict[str, Any] = {}
    for index, (name, (images, labels)) in enumerate(sets.items()):
        # Each image goes through the channel `draws` times (independent noise): at low SNR one
        # draw decides a borderline image's class by chance, and the accuracies would carry it.
        images, labels = np.tile(images, (protocol.draws, 1, 1, 1)), np.tile(labels, protocol.draws)
        rows = per_sample_metrics(system, params, batch_stats, images, forward=forward,
                                  batch_size=protocol.batch_size, key=jax.random.fold_in(key, index))
        metrics[f"mse_{name}"] = float(rows["sse"].mean())
        metrics[f"psnr_{name}"] = float(rows["psnr"].mean())
        metrics[f"ssim_{name}"] = float(rows["ssim"].mean())
        metrics[f"accuracy_{name}"] = float((rows["prediction"] == labels).mean())
        metrics[f"input_accuracy_{name}"] = float((rows["input_prediction"] == labels).mean())
        if target is not None and name in target[0]:
            suffix = "" if name == "erased" else f"_{name}"
            metrics[f"backdoor_accuracy{suffix}"] = float((rows["prediction"] == target[1]).mean())
            metrics[f"input_backdoor_accuracy{suffix}"] = float(
                (rows["input_prediction"] == target[1]).mean())
    return metrics


def _forget_set_metrics(system: System, params, batch_stats, split: ErasureSplit,
                        protocol: Protocol, forward=None) -> dict[str, Any]:
    """The metrics of a forget set without a backdoor (module docstring)."""
    system = system_for_evaluation(system, protocol)
    sets = {"remain": remain_subsample(split, protocol), "test": (split.test_images,
                                                                  split.test_labels)}
    if len(split.erased_labels):
        sets = {"erased": (split.erased_images, split.erased_labels), **sets,
                "heldout": heldout_set(split)}
    # Key offsets apart from the backdoor protocol's sets (0-2).
    metrics = _image_set_metrics(system, params, batch_stats, sets, protocol,
                                 jax.random.fold_in(jax.random.PRNGKey(protocol.seed), 50),
                                 forward=forward)
    if "mse_erased" in metrics:
        metrics["erased_to_heldout"] = metrics["mse_erased"] / metrics["mse_heldout"]
    metrics.update(kind=split.kind, eval_draws=int(protocol.draws),
                   evaluation_channel=protocol.channel, num_erased=int(len(split.erased_labels)),
                   num_remain=int(len(split.remain_labels)), num_test=int(len(split.test_labels)),
                   num_remain_read=int(len(sets["remain"][1])))
    if "heldout" in sets:
        metrics["num_heldout"] = int(len(sets["heldout"][1]))
    return metrics


def evaluate_system(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                    split: ErasureSplit, protocol: Protocol, forward=None) -> dict[str, float]:
    """The paper's evaluation protocol (MSE, accuracy, backdoor accuracy) on D_clean, D_e, test;
    for a forget set without a backdoor, its metrics on D_e, D_r, test and held-out images.

    `params["receiver"]` reads x̂; the channel is `protocol.channel`'s. `forward`: the pass of
    another kind of system (`passes.per_sample_metrics`), e.g. a sharded one's.
    """
    if not split.backdoor:
        return _forget_set_metrics(system, params, batch_stats, split, protocol, forward)
    system = system_for_evaluation(system, protocol)
    key = jax.random.PRNGKey(protocol.seed)
    sets = {
        "clean": (split.clean_images, split.clean_labels),
        "erased": (split.erased_images, np.full(len(split.erased_images), split.base_class)),
        "test": (split.test_images, split.test_labels),
    }
    if split.num_unknown:  # the triggered images D_e leaves out (`ErasureSplit.known_fraction`)
        sets["unknown"] = (split.unknown_images, np.full(split.num_unknown, split.base_class))
    metrics = _image_set_metrics(system, params, batch_stats, sets, protocol, key,
                                 target=(("erased", "unknown"), split.target_class),
                                 forward=forward)
    known = len(split.erased_images)
    metrics["backdoor_accuracy_all"] = (
        known * metrics["backdoor_accuracy"] + split.num_unknown
        * metrics.get("backdoor_accuracy_unknown", 0.0)) / (known + split.num_unknown)
    metrics["eval_draws"] = int(protocol.draws)
    metrics["evaluation_channel"] = protocol.channel
    metrics["num_erased"] = int(len(split.erased_images))
    metrics["num_remain"] = int(len(split.remain_images))
    metrics["num_test"] = int(len(split.test_images))
    metrics["num_unknown"] = split.num_unknown
    return metrics


# --- Beyond the paper: membership inference, MI, distance to the retrained system ---------------


def roc_auc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting ½ (the Mann–Whitney AUC)."""
    scores = np.concatenate([positive_scores, negative_scores])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = 0.5 * (start + end - 1) + 1
    n_pos, n_neg = len(positive_scores), len(negative_scores)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def never_trained_triggered(split: ErasureSplit) -> np.ndarray:
    """Triggered base-class TEST images: look like D_e, but no system ever trained on them."""
    return add_trigger(split.test_images[split.test_labels == split.base_class])


def membership_sets(split: ErasureSplit) -> tuple[np.ndarray, np.ndarray]:
    """The attack's members (D_e) and non-members that no system saw: triggered base-class test
    images (backdoor), or the held-out test images of D_e's classes (`heldout_set`)."""
    if split.backdoor:
        return split.erased_images, never_trained_triggered(split)
    return split.erased_images, heldout_set(split)[0]


def membership_scores(system: System, params, batch_stats, split: ErasureSplit,
                      protocol: Protocol, reference=None) -> tuple[np.ndarray, np.ndarray]:
    """The attack's scores of the members and of the non-members (`membership_sets`).

    Without `reference`: −(per-image reconstruction SSE), the loss attack (one channel draw for
    the backdoor protocol, the numbers it has always reported; `protocol.draws` otherwise).
    With `reference`, the `(params, batch_stats)` of a system that never saw D_e (retraining):
    the difficulty-calibrated attack (Watson et al., ICLR 2022), SSE_reference(x) − SSE(x), both
    averaged over `protocol.draws` shared channel draws. A VAE's per-image error is dominated by
    how hard the image is (stroke area, texture), which hides the small gain from having trained
    on it; the difference to a system that never saw the image cancels the difficulty.
    """
    system = system_for_evaluation(system, protocol)
    members, outsiders = membership_sets(split)
    calibrated = reference is not None
    draws = protocol.draws if calibrated or not split.backdoor else 1
    key = jax.random.fold_in(jax.random.PRNGKey(protocol.seed), 70 if calibrated else 10)
    scores = []
    for index, images in enumerate((members, outsiders)):
        set_key = jax.random.fold_in(key, index)
        score = -mean_sse(system, params, batch_stats, images, protocol, set_key, draws)
        if calibrated:
            score = score + mean_sse(system, *reference, images, protocol, set_key, draws)
        scores.append(score)
    return scores[0], scores[1]


def membership_inference_auc(system: System, params, batch_stats, split: ErasureSplit,
                             protocol: Protocol, reference=None) -> float:
    """AUC of a membership-inference attack separating D_e from never-seen images
    (`membership_scores`; calibrated against `reference` where given).

    A system that memorised D_e reconstructs it better than unseen images (AUC > ½). A forgotten
    set scores like the retrained system's (≈ ½; the retrained system itself, as its own
    reference, scores exactly ½); below ½ the erased set is reconstructed WORSE than unseen data,
    itself a tell-tale.
    """
    return roc_auc(*membership_scores(system, params, batch_stats, split, protocol, reference))


def sample_outputs(system: System, params, batch_stats, split: ErasureSplit,
                   protocol: Protocol, *, count: int = 8) -> dict[str, np.ndarray]:
    """What the report draws for one system: the reconstructions of the first `count` D_clean and
    D_e images (one fixed channel draw, the same for every system) and the attack's scores."""
    system = system_for_evaluation(system, protocol)
    key = jax.random.fold_in(jax.random.PRNGKey(protocol.seed), 40)
    samples: dict[str, np.ndarray] = {}
    for index, (name, images) in enumerate((("clean", split.clean_images[:count]),
                                            ("erased", split.erased_images[:count]))):
        out = system_outputs(system, params, batch_stats, images, batch_size=count,
                             key=jax.random.fold_in(key, index))
        samples[f"input_{name}"] = np.asarray(images)
        samples[f"x_hat_{name}"] = np.clip(out["x_hat"], 0.0, 1.0).astype(np.float32)
    samples["mia_members"], samples["mia_outsiders"] = membership_scores(
        system, params, batch_stats, split, protocol)
    return samples


def posterior_kl_per_sample(mu_q, logvar_q, mu_p, logvar_p) -> np.ndarray:
    """KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) per sample, summed over latent dimensions (nats)."""
    kl = 0.5 * (logvar_p - logvar_q + (np.exp(logvar_q) + (mu_q - mu_p) ** 2) / np.exp(logvar_p) - 1)
    return kl.reshape(kl.shape[0], -1).sum(axis=1)


def distance_to_reference(system: System, params, batch_stats, reference_params,
                          reference_batch_stats, split: ErasureSplit,
                          protocol: Protocol) -> dict[str, float]:
    """How far a system is from a reference (the retrained one) on D_e, same noise draws.

    `kl_to_retrain`: mean over D_e of KL(q_θ(z|x) ‖ q_ref(z|x)) summed over latent dimensions;
    `mse_to_retrain`: mean per-image SSE between the two systems' reconstructions.
    """
    system = system_for_evaluation(system, protocol)
    key = jax.random.fold_in(jax.random.PRNGKey(protocol.seed), 20)
    ours = system_outputs(system, params, batch_stats, split.erased_images,
                          batch_size=protocol.batch_size, key=key)
    theirs = system_outputs(system, reference_params, reference_batch_stats, split.erased_images,
                            batch_size=protocol.batch_size, key=key)
    kl = posterior_kl_per_sample(ours["mu"], ours["logvar"], theirs["mu"], theirs["logvar"])
    diff = (ours["x_hat"] - theirs["x_hat"]).reshape(len(kl), -1)
    return {"kl_to_retrain": float(kl.mean()), "mse_to_retrain": float((diff ** 2).sum(1).mean())}


def mutual_information(system: System, params, batch_stats, split: ErasureSplit,
                       protocol: Protocol) -> dict[str, float]:
    """I(x; z) on D_e and on (a subsample of) D_r, in nats.

    `mi_upper_*`: the variational upper bound E KL(q(z|x) ‖ N(0, I)); `mi_mine_*`: MINE's
    Donsker–Varadhan lower bound; `mi_infonce_*`: the InfoNCE lower bound (at most log of the
    number of held-out samples it contrasts).
    """
    key = jax.random.fold_in(jax.random.PRNGKey(protocol.seed), 30)
    limit = protocol.mi_max_examples
    results: dict[str, float] = {}
    for index, (name, images) in enumerate((("erased", split.erased_images[:limit]),
                                            ("remain", split.remain_images[:limit]))):
        out = system_outputs(system, params, batch_stats, images, batch_size=protocol.batch_size,
                             key=jax.random.fold_in(key, index))
        results[f"mi_upper_{name}"] = float(mi.variational_upper_bound(out["mu"], out["logvar"]))
        if protocol.mi_steps and name in protocol.mi_sets:
            x = np.asarray(to_unit_interval(images)).reshape(len(images), -1)
            z = out["z"].reshape(len(images), -1)
            # The estimators hold out 20 % for the estimate; batches come from the other 80 %.
            batch_size = min(protocol.mi_batch_size, int(0.8 * len(images)))
            results[f"mi_mine_{name}"] = float(mi.estimate_mine(
                jax.random.fold_in(key, 100 + index), x, z, steps=protocol.mi_steps,
                batch_size=batch_size))
            results[f"mi_infonce_{name}"] = float(mi.estimate_infonce(
                jax.random.fold_in(key, 200 + index), x, z, steps=protocol.mi_steps,
                batch_size=batch_size))
    return results


RECEIVER_METRICS = ("backdoor_accuracy", "accuracy_clean", "accuracy_test", "backdoor_accuracy_all")
FORGET_RECEIVER_METRICS = ("accuracy_erased", "accuracy_remain", "accuracy_test",
                           "accuracy_heldout")


def receiver_metrics(split: ErasureSplit) -> tuple[str, ...]:
    """The metrics a receiver decides: the backdoor protocol's (with the images D_e leaves out,
    where it leaves some), or a forget set's."""
    if not split.backdoor:
        return FORGET_RECEIVER_METRICS
    return RECEIVER_METRICS + (("backdoor_accuracy_unknown",) if split.num_unknown else ())


def _same_tree(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


def full_evaluation(system: System, params, batch_stats, split: ErasureSplit,
                    protocol: Protocol, *, reference=None,
                    original_receiver=None) -> dict[str, Any]:
    """The protocol metrics plus membership inference, MI and (given `reference`, a
    `(params, batch_stats)` pair of the retrained system) the distance to retraining and the
    calibrated membership attack (`mia_auc_calibrated`).

    `original_receiver`: the trained system's receiver, `models.receiver_of(params, batch_stats)`
    of the original system (None: the system's own is the original). `protocol.receiver`
    picks the receiver of every metric ("original" or "own"); where the two differ (retraining's
    receiver, trained on D_r; a CIFAR receiver unlearned with the codec) the other one's
    accuracies are added as `own_receiver_<metric>` or `original_receiver_<metric>`.
    """
    own = receiver_of(params, batch_stats)
    original = own if original_receiver is None else original_receiver
    chosen = protocol.receiver
    reading, other, other_name = ((original, own, "own") if chosen == "original"
                                  else (own, original, "original"))
    metrics: dict[str, Any] = evaluate_system(system, *with_receiver(params, batch_stats, reading),
                                              split, protocol)
    metrics["receiver"] = chosen
    if not _same_tree(reading, other):
        extra = evaluate_system(system, *with_receiver(params, batch_stats, other), split, protocol)
        metrics.update({f"{other_name}_receiver_{name}": extra[name]
                        for name in receiver_metrics(split) if name in extra})
    metrics["protocol"] = protocol.description
    if len(split.erased_labels) == 0:
        return metrics  # a clean-set system before any request: nothing erased to attack
    metrics["mia_auc"] = membership_inference_auc(system, params, batch_stats, split, protocol)
    metrics.update(mutual_information(system, params, batch_stats, split, protocol))
    if reference is not None:
        metrics["mia_auc_calibrated"] = membership_inference_auc(system, params, batch_stats, split,
                                                                 protocol, reference)
        metrics.update(distance_to_reference(system, params, batch_stats, *reference, split, protocol))
    return metrics
