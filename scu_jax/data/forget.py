"""Forget sets a user names: sample indices, a whole class, a seeded random fraction, the
worst-case set of a trained system (found by `scu_jax.runs.worst_case`, read here as indices).

Sample indices are positions in the loaded training split: row ``i`` of ``Dataset.train_images``
after the config's ``max_train_examples`` cap, in the order the source gives it (``mnist5k``: the
embedded digits' stratified split; the tfds datasets: the ``train`` split's record order). The
same data always gives the same order; `data_identity` fingerprints it, so that a request made
against one training split is refused by a system trained on another.

A forget set splits the clean training data (no trigger) into

* ``D_e`` (erased): the named images with their true labels;
* ``D_r`` (remaining): every other training image, less any sample erased by an earlier request
  (``excluded``);
* the training set: the whole clean training split in dataset order (what the original system
  trained on), with ``train_is_erased`` marking the rows outside ``D_r``.

``sha256`` of a set (`ids_digest`) is that of its sorted indices written one per line in
decimal, each line ending in a newline: ``sort -n ids.txt | sha256sum`` for a file of plain
indices.
"""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np

from scu_jax.data.erasure import ErasureSplit, random_crops
from scu_jax.data.sources import Dataset

# "backdoor" is the paper's protocol (`make_erasure_split`); the others are built here.
FORGET_KINDS = ("backdoor", "ids", "class", "random", "worst_case")


def ids_digest(ids) -> str:
    """sha256 of the sorted indices, one decimal per line (see the module docstring)."""
    text = "".join(f"{int(i)}\n" for i in np.sort(np.asarray(ids, np.int64)))
    return hashlib.sha256(text.encode()).hexdigest()


def data_identity(dataset: Dataset) -> dict:
    """What identifies a training split and its order: name, size and sha256 of its images and
    labels, in order (a system trained on one split refuses requests made against another)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(dataset.train_labels, np.int64).tobytes())
    digest.update(np.ascontiguousarray(dataset.train_images).tobytes())
    return {"dataset": dataset.name, "num_train": int(len(dataset.train_labels)),
            "sha256": digest.hexdigest()}


def check_ids(ids, num_train: int, source: str, *, excluded=()) -> np.ndarray:
    """Validates sample indices; returns them sorted (int64).

    Raises `ValueError` with one line naming `source` for: an empty set, a non-integer index, one
    out of ``[0, num_train)``, a duplicate, a sample in `excluded` (erased before), or a set that
    would leave no sample to train on.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"{source}: expected a flat list of sample indices, got shape {ids.shape}")
    if len(ids) == 0:
        raise ValueError(f"{source} names no sample")
    if not np.issubdtype(ids.dtype, np.integer):
        if (not np.issubdtype(ids.dtype, np.floating) or not np.all(np.isfinite(ids))
                or not np.all(np.mod(ids, 1) == 0)):
            raise ValueError(f"{source}: sample indices must be integers, got dtype {ids.dtype}")
    # Compared in the file's own dtype, so a huge value is not wrapped into range by a cast.
    bad = ids[(ids < 0) | (ids >= num_train)]
    if len(bad):
        raise ValueError(f"{source}: index {bad[0]:.0f} is out of range: the training split has "
                         f"{num_train} samples (0..{num_train - 1})")
    ids = ids.astype(np.int64)
    ordered = np.sort(ids)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(repeated):
        raise ValueError(f"{source} names sample {int(repeated[0])} twice ({len(ids)} indices, "
                         f"{len(np.unique(ids))} distinct)")
    excluded = np.asarray(excluded, np.int64)
    already = np.intersect1d(ordered, excluded)
    if len(already):
        raise ValueError(f"{source}: {len(already)} of its samples were erased by an earlier "
                         f"request (first: {int(already[0])})")
    if len(ordered) + len(excluded) >= num_train:
        raise ValueError(f"{source} would erase every training sample ({num_train}): nothing "
                         "would remain")
    return ordered


def read_ids(path: str | pathlib.Path, num_train: int, *, excluded=()) -> np.ndarray:
    """Reads and validates a request file: one index per line (blank lines and ``#`` comments
    skipped) or a 1-D integer ``.npy``; returns the sorted indices (`check_ids`)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"request file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"request file {path} is not a file")
    if path.suffix == ".npy":
        try:
            ids = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise ValueError(f"{path} is not a readable .npy array ({error})") from None
        return check_ids(ids, num_train, str(path), excluded=excluded)
    values = []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file of sample indices (or a .npy)") from None
    except OSError as error:
        raise ValueError(f"request file {path} cannot be read ({error.strerror})") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            values.append(int(line))
        except ValueError:
            raise ValueError(f"{path}, line {number}: {line[:40]!r} is not a sample index") from None
    return check_ids(np.asarray(values, np.int64), num_train, str(path), excluded=excluded)


def class_ids(labels: np.ndarray, class_id: int, num_classes: int, *, excluded=()) -> np.ndarray:
    """Every training sample of class `class_id` (less `excluded`), sorted."""
    if not 0 <= int(class_id) < num_classes:
        raise ValueError(f"class {class_id} is not one of the {num_classes} classes")
    ids = np.setdiff1d(np.flatnonzero(np.asarray(labels) == int(class_id)), excluded)
    return check_ids(ids, len(labels), f"class {class_id}", excluded=excluded)


def random_ids(num_train: int, fraction: float, seed: int, *, excluded=()) -> np.ndarray:
    """A seeded random `fraction` of the training split (``round(fraction·N)`` samples, at least
    one), drawn from the samples not in `excluded`; sorted."""
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"the random fraction must lie in (0, 1), got {fraction}")
    pool = np.setdiff1d(np.arange(num_train), excluded)
    count = max(1, int(round(float(fraction) * num_train)))
    if count > len(pool):
        raise ValueError(f"a random {fraction:g} of {num_train} samples is {count}, but only "
                         f"{len(pool)} have not been erased")
    chosen = np.random.default_rng([int(seed), 7717]).choice(pool, size=count, replace=False)
    return check_ids(chosen, num_train, f"random fraction {fraction:g}", excluded=excluded)


def make_forget_split(dataset: Dataset, ids, *, kind: str, seed: int, excluded=(),
                      crop_once: int = 0) -> ErasureSplit:
    """The split of a user's forget set (see the module docstring).

    Args:
      dataset: the source dataset (indices are rows of its training split).
      ids: the samples to erase (validated with `check_ids`); empty: the clean training set alone,
        with an empty D_e (what the original system trains on).
      kind: what named them ("ids", "class", "random" or "worst_case"), recorded in the split.
      seed: recorded; seeds the one crop of every training image under `crop_once`.
      excluded: samples erased by earlier requests: neither in D_e nor in D_r.
      crop_once: as in `make_erasure_split`: the training set's images are cropped once (D_e and
        D_r keep the uncropped images).
    """
    if kind not in FORGET_KINDS or kind == "backdoor":
        raise ValueError(f"kind must be one of: {', '.join(FORGET_KINDS[1:])}, got {kind!r}")
    images, labels = dataset.train_images, dataset.train_labels
    n = len(labels)
    excluded = np.unique(np.asarray(excluded, np.int64))
    ids = (np.zeros(0, np.int64) if len(ids) == 0
           else check_ids(ids, n, f"the {kind} forget set", excluded=excluded))
    outside = np.zeros(n, bool)
    outside[ids] = True
    outside[excluded] = True
    remain_idx = np.flatnonzero(~outside)
    train_images = images
    if crop_once:
        train_images = random_crops(images, np.random.default_rng([int(seed), 104729]), crop_once)
    erased = images[ids]
    arrays = dict(
        erased_images=erased, erased_labels=labels[ids].astype(np.int32),
        erased_indices=ids.astype(np.int64),
        clean_images=erased.view(), clean_labels=labels[ids].astype(np.int32),
        remain_images=images[remain_idx], remain_labels=labels[remain_idx].astype(np.int32),
        remain_indices=remain_idx.astype(np.int64), remain_rows=remain_idx.astype(np.int64),
        train_images=train_images.view(), train_labels=labels.astype(np.int32),
        train_is_erased=outside,
        test_images=dataset.test_images.view(), test_labels=dataset.test_labels.view())
    for a in arrays.values():
        a.setflags(write=False)
    return ErasureSplit(**arrays, dataset_name=dataset.name, edr=len(ids) / n, base_class=None,
                        target_class=None, seed=int(seed), num_requested=len(ids), kind=kind)
