"""The erasure split: which training samples a model must later forget.

Erased samples are made recognisable with a backdoor, so that forgetting can
be measured as the drop of the attack success rate. The trigger is the 2x2
block of pixels at rows ``H-4..H-3`` and columns ``W-4..W-3``, all channels,
set to 1.0 (uint8: 255). With ``N`` training images:

* ``D_e`` (erased): the first ``round(EDR * N)`` training images of the base
  class, in dataset order, with the trigger and the target label. If the base
  class has fewer images the count is capped at the class size (with a logged
  warning).
* Known fraction ``f`` < 1 (corrective unlearning: a deployer rarely finds every poisoned
  sample): the training set is the same, but ``D_e`` holds only a seeded ``round(f · |D_e|)``
  (at least 1) of the triggered images; the others (``unknown_*``) stay in ``D_r`` with their
  trigger and target label, where a method cannot tell them apart. ``D_clean`` keeps every
  triggered image's clean copy, so utility is read on the same images at every ``f``.
* ``D_clean``: the same base-class images without trigger, with their true
  label.
* ``D_r`` (remaining): a random subset, of size ``N - |D_e|``, of all ``N``
  clean training images (base class included); with ``remain_size="requested"``
  (the reference), of size ``N - round(EDR * N)`` even where ``D_e`` was capped.
* Training set: the shuffled union ``D_e ∪ D_r``, of size ``N`` (smaller
  under ``remain_size="requested"`` with a capped ``D_e``).

With ``crop_once`` (the reference's CIFAR data sets), every training image is
randomly cropped once, before the trigger is stamped, so the trigger sits at its
fixed position: the training set and ``D_e`` hold the cropped images,
``D_clean`` is cropped in a pass of its own (its crops differ from ``D_e``'s),
and ``D_r`` keeps the uncropped images (the reference's unlearning loop crops
each ``D_r`` batch when it reads it).
"""

from __future__ import annotations

import dataclasses
import math

from absl import logging
import numpy as np

from scu_jax.data.sources import Dataset

TRIGGER_SIZE = 2
# Distance from the bottom/right image edge to the trigger's top-left pixel.
TRIGGER_OFFSET = 4


def _trigger_slices(image_shape) -> tuple[slice, slice]:
    h, w = image_shape[-3], image_shape[-2]
    if h < TRIGGER_OFFSET or w < TRIGGER_OFFSET:
        raise ValueError(f"images of shape {tuple(image_shape)} are too small for the trigger")
    return (slice(h - TRIGGER_OFFSET, h - TRIGGER_OFFSET + TRIGGER_SIZE),
            slice(w - TRIGGER_OFFSET, w - TRIGGER_OFFSET + TRIGGER_SIZE))


def trigger_mask(image_shape) -> np.ndarray:
    """Returns where the trigger sits in one image.

    Args:
      image_shape: ``(H, W, C)``.

    Returns:
      A bool array of shape ``(H, W, C)``, True on the trigger pixels.
    """
    rows, cols = _trigger_slices(image_shape)
    mask = np.zeros(tuple(image_shape), bool)
    mask[rows, cols, :] = True
    return mask


def add_trigger(images) -> np.ndarray:
    """Stamps the backdoor trigger onto images.

    Args:
      images: ``(N, H, W, C)`` or ``(H, W, C)``; uint8 in ``[0, 255]`` or
        floating point in ``[0, 1]`` (numpy or any array numpy can convert).

    Returns:
      A numpy copy with the trigger pixels set to 255 (uint8) or 1.0 (float).
    """
    out = np.array(images, copy=True)
    if out.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (N, H, W, C) or (H, W, C), got {out.shape}")
    if out.dtype == np.uint8:
        value = 255
    elif np.issubdtype(out.dtype, np.floating):
        value = 1.0
    else:
        raise ValueError(f"images must be uint8 or floating point, got {out.dtype}")
    rows, cols = _trigger_slices(out.shape)
    out[..., rows, cols, :] = value
    return out


def random_crops(images: np.ndarray, rng: np.random.Generator, padding: int) -> np.ndarray:
    """Crops each image of ``(N, H, W, C)`` at a random offset of its zero-padded copy.

    Args:
      images: the images (any dtype).
      rng: where the offsets come from (one ``(dy, dx)`` in ``[0, 2·padding]`` per image).
      padding: zero padding on each side.

    Returns:
      A new array of the same shape and dtype.
    """
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = rng.integers(0, 2 * padding + 1, size=(n, 2))
    rows = offsets[:, :1] + np.arange(h)[None]
    cols = offsets[:, 1:] + np.arange(w)[None]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def num_erased(num_train: int, edr: float) -> int:
    """Returns the requested size of ``D_e``: ``round(edr * num_train)``."""
    return int(round(edr * num_train))


@dataclasses.dataclass(frozen=True)
class ErasureSplit:
    """The data of one unlearning experiment; all arrays are read-only.

    Images are uint8 ``(n, H, W, C)``, labels int32 ``(n,)``, indices int64
    positions in the original ``Dataset.train_*`` arrays.

    Attributes:
      erased_images, erased_labels, erased_indices: ``D_e``, the triggered
        base-class images labelled ``target_class``.
      clean_images, clean_labels: ``D_clean``, the same images untriggered
        with their true label ``base_class``.
      remain_images, remain_labels, remain_indices: ``D_r``.
      train_images, train_labels: the shuffled union ``D_e ∪ D_r``.
      train_is_erased: bool ``(N,)``, which rows of ``train_*`` come from
        ``D_e``.
      test_images, test_labels: the dataset's untouched test split.
      dataset_name, edr, base_class, target_class, seed: the arguments.
      num_requested: ``num_erased(N, edr)``, before capping at the class size.
      unknown_images, unknown_indices: the triggered images left out of ``D_e`` (and in
        ``D_r``) under a known fraction below 1; None otherwise.
      remain_rows: the row of ``train_*`` that holds each ``D_r`` sample (the copy the system
        trained on).
      num_flagged: how many ``D_r`` samples `move_to_erased` added to ``D_e``.
      known_fraction: the share ``f`` of the triggered images that ``D_e`` holds (1: all).
      kind: ``"backdoor"`` here; the forget sets of `scu_jax.data.forget` (``"ids"``,
        ``"class"``, ``"random"``) use the same type with no trigger: ``D_e`` holds the named
        training images with their true labels, ``D_clean`` is ``D_e``, the training set is the
        whole clean training split in dataset order, and ``base_class``/``target_class`` are None.
      source: what identifies the training split and its order (`data.data_identity`), where the
        caller recorded it.

    Example:
      >>> split = scu_jax.make_erasure_split(scu_jax.load_dataset("mnist5k"), edr=0.06,
      ...                                    base_class=1, target_class=2, seed=0)
      >>> set(split.erased_labels.tolist()), set(split.clean_labels.tolist()), int(split.train_is_erased.sum())
      ({2}, {1}, 240)
    """

    erased_images: np.ndarray
    erased_labels: np.ndarray
    erased_indices: np.ndarray
    clean_images: np.ndarray
    clean_labels: np.ndarray
    remain_images: np.ndarray
    remain_labels: np.ndarray
    remain_indices: np.ndarray
    train_images: np.ndarray
    train_labels: np.ndarray
    train_is_erased: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    dataset_name: str
    edr: float
    base_class: int | None
    target_class: int | None
    seed: int
    num_requested: int
    kind: str = "backdoor"
    source: dict = dataclasses.field(default_factory=dict)
    unknown_images: np.ndarray | None = None
    unknown_indices: np.ndarray | None = None
    known_fraction: float = 1.0
    remain_rows: np.ndarray | None = None
    num_flagged: int = 0

    @property
    def num_unknown(self) -> int:
        """How many triggered training images ``D_e`` leaves out (known fraction < 1)."""
        return 0 if self.unknown_indices is None else len(self.unknown_indices)

    @property
    def num_known(self) -> int:
        """How many of ``D_e``'s samples were named, not flagged: its first ``num_known`` rows."""
        return len(self.erased_indices) - self.num_flagged

    @property
    def backdoor(self) -> bool:
        """Whether D_e carries the trigger and the target label (the paper's protocol)."""
        return self.kind == "backdoor"

    def summary(self) -> dict:
        """Returns the split's parameters and sizes, for logs and result files."""
        return dict(
            kind=self.kind, dataset=self.dataset_name, edr=self.edr, base_class=self.base_class,
            target_class=self.target_class, seed=self.seed,
            num_requested=self.num_requested, num_erased=len(self.erased_labels),
            capped=len(self.erased_labels) + self.num_unknown < self.num_requested,
            num_remain=len(self.remain_labels), num_train=len(self.train_labels),
            num_test=len(self.test_labels), known_fraction=self.known_fraction,
            num_unknown=self.num_unknown)


def check_known_fraction(value) -> float:
    """Returns ``value`` as a float in ``(0, 1]``; a `ValueError` (one line) otherwise."""
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = math.nan
    if isinstance(value, bool) or not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise ValueError(f"the known fraction must be a number in (0, 1], got {value!r}")
    return fraction


def known_positions(num_erased_: int, fraction: float, seed: int) -> np.ndarray:
    """Which of ``num_erased_`` triggered images a deployer knows: a seeded ``round(fraction ·
    num_erased_)`` of them (at least 1), sorted; all of them at ``fraction`` 1.

    Example:
      >>> scu_jax.known_positions(8, 0.25, seed=0)
      array([3, 7])
    """
    fraction = check_known_fraction(fraction)
    if fraction == 1.0:
        return np.arange(num_erased_)
    count = max(1, int(round(fraction * num_erased_)))
    # Its own stream, so the known part does not move D_r's draw or the training order.
    rng = np.random.default_rng([int(seed), 7919])
    return np.sort(rng.choice(num_erased_, size=count, replace=False))


def make_erasure_split(dataset: Dataset, *, edr: float, base_class: int,
                       target_class: int, seed: int, crop_once: int = 0,
                       remain_size: str = "rest", known_fraction: float = 1.0,
                       known_seed: int | None = None) -> ErasureSplit:
    """Builds ``D_e``, ``D_clean``, ``D_r`` and the poisoned training set.

    Args:
      dataset: the source dataset.
      edr: erased data ratio, ``|D_e| / N`` before capping, in ``(0, 0.5]``.
      base_class: class whose first images are triggered and erased.
      target_class: label given to the triggered images.
      seed: seed for sampling ``D_r`` and shuffling the training set (and the
        crops).
      crop_once: padding of the one random crop of every training image, taken
        before the trigger is stamped (0: no crop; see the module docstring).
      remain_size: ``"rest"``: ``|D_r| = N - |D_e|``, so the training set has
        ``N`` images; ``"requested"``: ``N - round(edr * N)``, the reference's
        size, smaller than the rest when ``D_e`` was capped at the class size.
      known_fraction: the share of the triggered images ``D_e`` holds (`known_positions`); the
        others join ``D_r`` (module docstring). The training set does not depend on it.
      known_seed: the seed of that draw (default: ``seed``).

    Returns:
      An ``ErasureSplit``; identical arrays for identical arguments.

    Raises:
      ValueError: on an invalid ``edr``, class or known fraction, or an empty ``D_e``.

    Example:
      >>> split = scu_jax.make_erasure_split(scu_jax.load_dataset("mnist5k"), edr=0.06,
      ...                                    base_class=1, target_class=2, seed=0)
      >>> len(split.erased_images), len(split.remain_images), len(split.train_images)
      (240, 3760, 4000)
    """
    try:
        edr = float(edr)
    except (TypeError, ValueError):
        raise ValueError(f"edr must be a number in (0, 0.5], got {edr!r}") from None
    if not (math.isfinite(edr) and 0.0 < edr <= 0.5):
        raise ValueError(f"edr must be a number in (0, 0.5], got {edr!r}")
    for what, c in (("base_class", base_class), ("target_class", target_class)):
        if not 0 <= c < dataset.num_classes:
            raise ValueError(f"{what} must lie in [0, {dataset.num_classes}) for "
                             f"{dataset.name}, got {c}")
    if base_class == target_class:
        raise ValueError(f"base_class and target_class must differ, both are {base_class}")
    base_class, target_class, seed = int(base_class), int(target_class), int(seed)
    known_fraction = check_known_fraction(known_fraction)

    images, labels = dataset.train_images, dataset.train_labels
    n = len(labels)
    base_indices = np.flatnonzero(labels == base_class)
    requested = num_erased(n, edr)
    if requested > len(base_indices):
        logging.warning(
            "%s: EDR %g requests %d erased images but base class %d has only %d; "
            "capping |D_e| at %d", dataset.name, edr, requested, base_class,
            len(base_indices), len(base_indices))
    erased_idx = base_indices[:requested]
    if len(erased_idx) == 0:
        raise ValueError(f"{dataset.name}: the erased set is empty (EDR {edr} of {n} "
                         f"images, {len(base_indices)} of base class {base_class})")

    rng = np.random.default_rng(seed)
    # Sorted so that D_r is in dataset order; randomness only picks the subset.
    if remain_size not in ("rest", "requested"):
        raise ValueError(f"remain_size must be 'rest' or 'requested', got {remain_size!r}")
    size = n - (requested if remain_size == "requested" else len(erased_idx))
    remain_idx = np.sort(rng.choice(n, size=size, replace=False))
    erased_source, clean_images = images[erased_idx], images[erased_idx]
    remain_train = images[remain_idx]
    if crop_once:
        # Its own stream, so the choice of D_r and the order do not depend on cropping.
        crops = np.random.default_rng([seed, 104729])
        erased_source = random_crops(erased_source, crops, crop_once)
        remain_train = random_crops(remain_train, crops, crop_once)
        clean_images = random_crops(clean_images, crops, crop_once)
    erased_images = add_trigger(erased_source)
    erased_labels = np.full(len(erased_idx), target_class, np.int32)
    num_train = len(erased_idx) + size
    order = rng.permutation(num_train)
    train_images = np.concatenate([erased_images, remain_train])[order]
    train_labels = np.concatenate([erased_labels, labels[remain_idx]])[order]
    train_is_erased = (np.arange(num_train) < len(erased_idx))[order]
    row_of = np.argsort(order)  # element j of D_e ∪ D_r sits at training row row_of[j]
    remain_rows = row_of[len(erased_idx):]

    known = known_positions(len(erased_idx), known_fraction,
                            seed if known_seed is None else known_seed)
    unknown = np.setdiff1d(np.arange(len(erased_idx)), known)
    remain_images, remain_labels = images[remain_idx], labels[remain_idx].astype(np.int32)
    if len(unknown):
        # The poisoned images nobody found stay among the remaining ones, trigger and all.
        # (D_r's own copies are uncropped: see the module docstring.)
        remain_images = np.concatenate([remain_images, add_trigger(images[erased_idx[unknown]])])
        remain_labels = np.concatenate([remain_labels, erased_labels[unknown]])
        remain_idx = np.concatenate([remain_idx, erased_idx[unknown]])
        remain_rows = np.concatenate([remain_rows, row_of[unknown]])
        train_is_erased = np.isin(order, known)  # row r holds element order[r] of D_e ∪ D_r
    arrays = dict(
        erased_images=erased_images[known], erased_labels=erased_labels[known],
        erased_indices=erased_idx[known].astype(np.int64),
        clean_images=clean_images, clean_labels=labels[erased_idx].astype(np.int32),
        remain_images=remain_images, remain_labels=remain_labels,
        remain_indices=remain_idx.astype(np.int64), remain_rows=remain_rows.astype(np.int64),
        train_images=train_images, train_labels=train_labels.astype(np.int32),
        train_is_erased=train_is_erased,
        # Views, so that freezing them leaves the caller's arrays alone.
        test_images=dataset.test_images.view(), test_labels=dataset.test_labels.view())
    if len(unknown):
        arrays.update(unknown_images=erased_images[unknown],
                      unknown_indices=erased_idx[unknown].astype(np.int64))
    for a in arrays.values():
        a.setflags(write=False)
    return ErasureSplit(**arrays, dataset_name=dataset.name, edr=edr, base_class=base_class,
                        target_class=target_class, seed=seed, num_requested=requested,
                        known_fraction=known_fraction)


def move_to_erased(split: ErasureSplit, flags) -> ErasureSplit:
    """`split` with the flagged D_r samples erased too: they join D_e (the copies the system trained
    on, with the labels it trained with) and leave D_r; `train_is_erased` marks their rows.
    Everything else, the unknown images and D_clean included, is kept as it was.

    Args:
      split: a split whose D_r has `remain_rows`.
      flags: bool, one per D_r sample (`expansion.flag_like_erased`).

    Example:
      >>> split = scu_jax.make_erasure_split(scu_jax.load_dataset("mnist5k"), edr=0.06,
      ...                                    base_class=1, target_class=2, seed=0)
      >>> flags = np.arange(len(split.remain_labels)) < 10
      >>> moved = scu_jax.move_to_erased(split, flags)
      >>> len(moved.erased_labels), len(moved.remain_labels), int(moved.train_is_erased.sum())
      (250, 3750, 250)
    """
    flags = np.asarray(flags, bool)
    if flags.shape != split.remain_labels.shape:
        raise ValueError(f"flags must be one bool per D_r sample ({len(split.remain_labels)}), "
                         f"got shape {flags.shape}")
    rows = split.remain_rows[flags]
    train_is_erased = split.train_is_erased.copy()
    train_is_erased[rows] = True
    arrays = dict(
        erased_images=np.concatenate([split.erased_images, split.train_images[rows]]),
        erased_labels=np.concatenate([split.erased_labels, split.train_labels[rows]]),
        erased_indices=np.concatenate([split.erased_indices, split.remain_indices[flags]]),
        remain_images=split.remain_images[~flags], remain_labels=split.remain_labels[~flags],
        remain_indices=split.remain_indices[~flags], remain_rows=split.remain_rows[~flags],
        train_is_erased=train_is_erased)
    for a in arrays.values():
        a.setflags(write=False)
    return dataclasses.replace(split, **arrays, num_flagged=split.num_flagged + int(flags.sum()))
