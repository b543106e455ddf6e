"""Shared fixtures, and one JAX compilation cache for the whole run.

The suite's binaries, sweeps and in-process runs compile the same few programs again and again,
in both xdist workers and in every subprocess they start. The controller makes one persistent
cache directory before the workers start and names it in the environment, which the workers and
every subprocess inherit; a cache hit loads the same executable a compilation would build.
"""

import fcntl
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Callable

import pytest

_CACHE_VARIABLES = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def pytest_configure(config):
    if hasattr(config, "workerinput") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # an xdist worker (it inherited the controller's), or the user chose one
    config._scu_cache = tempfile.mkdtemp(prefix="scu_jax_test_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = config._scu_cache
    os.environ.update(_CACHE_VARIABLES)


def pytest_unconfigure(config):
    if getattr(config, "_scu_cache", None):
        shutil.rmtree(config._scu_cache, ignore_errors=True)


@pytest.fixture(scope="session")
def cache_dir():
    """The run's compilation cache, for the sweeps' `--compilation_cache` flag."""
    return os.environ["JAX_COMPILATION_CACHE_DIR"]


def made_once(tmp_path_factory, name: str,
              make: Callable[[pathlib.Path], Any]) -> tuple[pathlib.Path, Any]:
    """`make(directory)` run once per test run, by whichever xdist worker asks first; the other
    waits on a lock and gets the same directory and `make`'s (JSON-able) value. For the costly
    module fixtures whose tests only read what they made (a test that writes works on a copy):
    each worker that runs one of their tests would otherwise make them again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-N/, the run's directory, which the workers' popen-gwK/ share
    directory, value = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not value.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            value.write_text(json.dumps(make(directory)))
    return directory, json.loads(value.read_text())


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


def said(stderr: str) -> list[str]:
    """What a binary printed on stderr besides absl's log lines (a level letter and a date)."""
    return [line for line in stderr.splitlines() if line and not re.match(r"[IWE]\d{4} ", line)]
