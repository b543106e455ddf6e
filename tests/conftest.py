"""Shared fixtures."""

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One JAX compilation cache for every sweep of the session: the smoke sweeps and the shards'
    runs compile the same programs."""
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture
def mock_tfds(monkeypatch):
    import tensorflow_datasets as tfds  # A dev dependency: fail, never skip, without it.
    from tensorflow_datasets.core.data_sources import base

    # tfds 4.9.10's mock_data sets `__getitems__` on a MagicMock as a plain
    # attribute, so it is called without `self` and fails; read one by one.
    monkeypatch.setattr(base.BaseDataSource, "__getitems__",
                        lambda self, keys: [self[k] for k in keys])
    with tfds.testing.mock_data(num_examples=64):
        yield
