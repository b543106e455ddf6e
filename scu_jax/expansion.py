"""Finding the rest of a poisoned set from the part a deployer knows (corrective unlearning).

A deployer who erases a backdoor rarely knows every poisoned sample, and what it does not know
stays in D_r: retraining on that D_r, or compensating on it as SCU does, plants the backdoor
again (docs/robust-forgetting.md measures it). A label-flip poison has a tell the deployer can
read: its images carry a label they do not look like. Among the D_r samples that carry a label
the known erased samples carry, the ones that look like the known ones are flagged: in the
trained encoder's posterior means μ(x), two-means with the known samples held in the "erased"
cluster, one centre started at their mean and the other at the candidates' mean. The flagged
samples are then erased with the known ones (`data.move_to_erased`).

This finds samples that sit apart from the clean ones of their label (a backdoor's flipped
images); it is not for a forget set of ordinary samples, which look like the rest of their class.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from scu_jax.data import ErasureSplit
from scu_jax.models import System
from scu_jax.passes import system_outputs


def like_known(known: np.ndarray, candidates: np.ndarray, *, iterations: int = 100) -> np.ndarray:
    """Which `candidates` (rows of features) cluster with the `known` rows.

    Two-means over `known ∪ candidates` with every known row held in the first cluster: its
    centre starts at the known rows' mean, the other at the candidates' mean; each candidate
    joins the nearer centre (Euclidean), until no assignment changes.

    Args:
      known: ``(k, d)`` features of the known samples (k ≥ 1).
      candidates: ``(n, d)`` features of the samples that may belong with them.
      iterations: the most Lloyd steps.

    Returns:
      A bool ``(n,)`` array, True where a candidate joined the known rows' cluster.

    Example:
      >>> known = np.array([[5.0, 5.0], [5.2, 4.9]])
      >>> candidates = np.array([[0.0, 0.1], [4.8, 5.1], [0.2, -0.1], [5.1, 5.3], [-0.1, 0.0]])
      >>> scu_jax.like_known(known, candidates)
      array([False,  True, False,  True, False])
    """
    known, candidates = np.asarray(known, np.float64), np.asarray(candidates, np.float64)
    if not len(known):
        raise ValueError("like_known needs at least one known sample")
    flagged = np.zeros(len(candidates), bool)
    if not len(candidates):
        return flagged
    known, candidates = known.reshape(len(known), -1), candidates.reshape(len(candidates), -1)
    centres = np.stack([known.mean(0), candidates.mean(0)])
    for step in range(iterations):
        distances = ((candidates[:, None, :] - centres[None]) ** 2).sum(-1)
        previous, flagged = flagged, distances[:, 0] < distances[:, 1]
        if step and np.array_equal(flagged, previous):
            break
        centres[0] = np.concatenate([known, candidates[flagged]]).mean(0)
        if (~flagged).any():
            centres[1] = candidates[~flagged].mean(0)
    return flagged


def flag_like_erased(system: System, params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                     erased_images: np.ndarray, erased_labels: np.ndarray,
                     remain_images: np.ndarray, remain_labels: np.ndarray, *,
                     batch_size: int = 500) -> np.ndarray:
    """Which D_r samples look like the known erased ones, to the trained system's encoder.

    The candidates are the D_r samples whose label is one of `erased_labels`; `like_known`
    groups them by the encoder's posterior means μ(x) (no channel, no sampling).

    Args:
      system, params, batch_stats: the trained system (its receiver is not read).
      erased_images, erased_labels: the known D_e, with the labels it was trained with.
      remain_images, remain_labels: D_r.
      batch_size: images per encoder call.

    Returns:
      A bool array over D_r, True where a sample is flagged.

    Example:
      >>> flags = scu_jax.flag_like_erased(system, state.params, state.batch_stats,
      ...                                  images[:2], labels[:2], images[2:], labels[2:])
      >>> flags.shape, bool(flags[labels[2:] > 1].any())  # only labels D_e carries are candidates
      ((14,), False)
    """
    erased_labels, remain_labels = np.asarray(erased_labels), np.asarray(remain_labels)
    candidates = np.flatnonzero(np.isin(remain_labels, erased_labels))
    flags = np.zeros(len(remain_labels), bool)
    if not len(candidates):
        return flags
    key = jax.random.PRNGKey(0)  # μ is deterministic; the key only feeds the unread channel

    def means(images):
        return system_outputs(system, params, batch_stats, np.asarray(images),
                              batch_size=batch_size, key=key)["mu"]

    flags[candidates] = like_known(means(erased_images),
                                   means(np.asarray(remain_images)[candidates]))
    return flags


def expansion_summary(split: ErasureSplit, method_split: ErasureSplit) -> dict[str, Any]:
    """What `forget.expand` flagged, against the truth `split` holds: how many D_r samples, how
    many of them are triggered images left out of D_e, and the share of those it found; {} where
    nothing was flagged or looked for."""
    if method_split is split:
        return {}
    flagged = method_split.erased_indices[method_split.num_known:]
    labels = method_split.erased_labels[method_split.num_known:]
    poisoned = int(np.isin(flagged[labels == split.target_class], split.unknown_indices).sum()
                   if split.num_unknown else 0)
    return {"flagged": int(len(flagged)), "flagged_unknown": poisoned,
            "flagged_recall": poisoned / split.num_unknown if split.num_unknown else None}
