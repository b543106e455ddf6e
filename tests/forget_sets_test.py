"""Tests for users' forget sets: request files, class and random sets, their split, the config."""

import hashlib
import subprocess

import numpy as np
import pytest

from scu_jax import config as config_lib
from scu_jax import data
from scu_jax.errors import ConfigError
from scu_jax.runs import build


@pytest.fixture(scope="module")
def mnist5k():
    return data.load_dataset("mnist5k")


def test_ids_file_comments_blank_lines_and_npy(tmp_path):
    text = tmp_path / "request.txt"
    text.write_text("# user 17's samples\n12\n\n3  # the second\n3999\n")
    np.testing.assert_array_equal(data.read_ids(text, 4000), [3, 12, 3999])
    npy = tmp_path / "request.npy"
    np.save(npy, np.array([7, 1, 5], np.int32))
    ids = data.read_ids(npy, 4000)
    np.testing.assert_array_equal(ids, [1, 5, 7])
    assert ids.dtype == np.int64


@pytest.mark.parametrize("content, message", [
    ("1\n4000\n", "index 4000 is out of range: the training split has 4000 samples (0..3999)"),
    ("-1\n", "index -1 is out of range"),
    ("5\n6\n5\n", "names sample 5 twice (3 indices, 2 distinct)"),
    ("# nothing\n\n", "names no sample"),
    ("1\n2.5\n", "line 2: '2.5' is not a sample index"),
    ("1\nseven\n", "line 2: 'seven' is not a sample index"),
    ("\n".join(map(str, range(4000))), "would erase every training sample (4000)"),
])
def test_bad_ids_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "ids.txt"
    path.write_text(content)
    with pytest.raises(ValueError) as error:
        data.read_ids(path, 4000)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_npy_and_missing_files(tmp_path):
    floats = tmp_path / "f.npy"
    np.save(floats, np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match="must be integers"):
        data.read_ids(floats, 10)
    matrix = tmp_path / "m.npy"
    np.save(matrix, np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"flat list .* shape \(2, 2\)"):
        data.read_ids(matrix, 10)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.read_ids(tmp_path / "absent.txt", 10)


def test_ids_erased_before_are_refused(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("1\n2\n3\n")
    with pytest.raises(ValueError, match=r"2 of its samples were erased by an earlier request "
                                         r"\(first: 2\)"):
        data.read_ids(path, 100, excluded=[2, 3, 50])
    # Together with what was erased before, nothing would remain.
    with pytest.raises(ValueError, match="would erase every training sample"):
        data.check_ids(np.arange(5, 10), 10, "request", excluded=np.arange(5))


def test_digest_is_sha256_of_the_sorted_ids_one_per_line(tmp_path):
    ids = np.array([30, 4, 1000, 7])
    (tmp_path / "ids.txt").write_text("30\n4\n1000\n7\n")
    by_shell = subprocess.run("sort -n ids.txt | sha256sum", shell=True, cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.split()[0]
    assert data.ids_digest(ids) == by_shell
    assert data.ids_digest(ids) == hashlib.sha256(b"4\n7\n30\n1000\n").hexdigest()


def test_class_and_random_sets(mnist5k):
    ones = data.class_ids(mnist5k.train_labels, 1, 10)
    assert len(ones) == 400 and (mnist5k.train_labels[ones] == 1).all()
    assert len(data.class_ids(mnist5k.train_labels, 1, 10, excluded=ones[:10])) == 390
    with pytest.raises(ValueError, match="class 10 is not one of the 10 classes"):
        data.class_ids(mnist5k.train_labels, 10, 10)
    picked = data.random_ids(4000, 0.02, seed=3)
    assert len(picked) == 80 and np.all(np.diff(picked) > 0)
    np.testing.assert_array_equal(picked, data.random_ids(4000, 0.02, seed=3))
    assert not np.array_equal(picked, data.random_ids(4000, 0.02, seed=4))
    later = data.random_ids(4000, 0.02, seed=3, excluded=picked)
    assert len(later) == 80 and not np.intersect1d(later, picked).size
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        data.random_ids(4000, 1.0, seed=0)


def test_forget_split_holds_the_clean_data_in_dataset_order(mnist5k):
    ids = np.array([0, 5, 17, 3999])
    excluded = np.array([1, 2])
    s = data.make_forget_split(mnist5k, ids, kind="ids", seed=0, excluded=excluded)
    assert s.kind == "ids" and not s.backdoor and s.target_class is None
    np.testing.assert_array_equal(s.erased_indices, ids)
    np.testing.assert_array_equal(s.erased_images, mnist5k.train_images[ids])  # no trigger
    np.testing.assert_array_equal(s.erased_labels, mnist5k.train_labels[ids])  # true labels
    assert len(s.remain_labels) == 4000 - 4 - 2
    assert not np.intersect1d(s.remain_indices, np.concatenate([ids, excluded])).size
    np.testing.assert_array_equal(s.remain_images, mnist5k.train_images[s.remain_indices])
    np.testing.assert_array_equal(s.train_images, mnist5k.train_images)  # what it trained on
    assert s.train_is_erased.sum() == 6 and s.train_is_erased[[0, 1, 2, 5, 17, 3999]].all()
    assert s.summary()["num_erased"] == 4 and s.edr == pytest.approx(4 / 4000)
    empty = data.make_forget_split(mnist5k, (), kind="random", seed=0)
    assert len(empty.erased_labels) == 0 and len(empty.remain_labels) == 4000
    with pytest.raises(ValueError, match="kind must be one of: ids, class, random"):
        data.make_forget_split(mnist5k, ids, kind="backdoor", seed=0)


def test_data_identity_tells_splits_and_orders_apart(mnist5k):
    import dataclasses
    identity = data.data_identity(mnist5k)
    assert identity["dataset"] == "mnist5k" and identity["num_train"] == 4000
    assert data.data_identity(mnist5k) == identity
    capped = dataclasses.replace(mnist5k, train_images=mnist5k.train_images[:1000],
                                 train_labels=mnist5k.train_labels[:1000])
    reordered = dataclasses.replace(mnist5k, train_images=mnist5k.train_images[::-1],
                                    train_labels=mnist5k.train_labels[::-1])
    assert data.data_identity(capped)["sha256"] != identity["sha256"]
    assert data.data_identity(reordered)["sha256"] != identity["sha256"]


def test_one_trained_system_serves_every_forget_kind():
    fingerprints = []
    for kind in ("ids", "class", "random"):
        c = config_lib.default_config()
        c.forget.kind = kind
        c.forget.fraction, c.forget.class_id = 0.1, 3
        fingerprints.append(config_lib.training_fingerprint(c))
    assert fingerprints[0] == fingerprints[1] == fingerprints[2]
    assert fingerprints[0]["training_set"] == "clean" and "erasure" not in fingerprints[0]
    backdoor = config_lib.training_fingerprint(config_lib.default_config())
    assert "erasure" in backdoor and "training_set" not in backdoor
    # A stored clean fingerprint reads back as a clean-set config.
    again = config_lib.config_from_json(fingerprints[0])
    assert config_lib.training_fingerprint(again) == fingerprints[0]


@pytest.mark.parametrize("field, value, message", [
    ("kind", "everything", "config.forget.kind='everything': must be one of"),
    ("fraction", 1.0, "config.forget.fraction=1.0: must be below 1"),
    ("fraction", 0.0, "config.forget.fraction=0.0: must be a finite number in (0.0, 1.0]"),
    ("class_id", -1, "config.forget.class_id=-1"),
    ("seed", -2, "config.forget.seed=-2"),
])
def test_forget_config_validation(field, value, message):
    c = config_lib.default_config()
    c.forget[field] = value
    with pytest.raises(ConfigError) as error:
        config_lib.validate_config(c)
    assert message in str(error.value)


def test_split_from_config_for_every_kind(tmp_path):
    c = config_lib.default_config()
    c.forget.kind = "class"
    c.forget.class_id = 7
    s = build.load_split(c)
    assert s.kind == "class" and len(s.erased_indices) == 400 and set(s.erased_labels) == {7}
    assert s.source["num_train"] == 4000
    c.forget.kind, c.forget.fraction = "random", 0.1
    s = build.load_split(c)
    assert len(s.erased_indices) == 400 and len(s.remain_labels) == 3600
    c.forget.kind = "ids"
    with pytest.raises(ConfigError, match="needs config.forget.ids_file"):
        build.load_split(c)
    assert len(build.load_split(c, training=True).erased_labels) == 0
    (tmp_path / "r.txt").write_text("4\n8\n")
    c.forget.ids_file = str(tmp_path / "r.txt")
    np.testing.assert_array_equal(build.load_split(c).erased_indices, [4, 8])
    c.forget.kind, c.forget.class_id = "class", 12
    with pytest.raises(ConfigError, match="class_id=12: mnist5k has 10 classes"):
        build.load_split(c)


def test_tfds_forget_split(mock_tfds):
    c = config_lib.default_config()
    c.dataset, c.forget.kind, c.forget.fraction = "cifar10", "random", 0.25
    s = build.load_split(c)
    assert s.erased_images.shape == (16, 32, 32, 3) and len(s.remain_labels) == 48
    assert s.source["dataset"] == "cifar10" and s.source["num_train"] == 64
