"""Orbax round trip, config mismatch detection, unreadable checkpoints, atomic JSON writes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scu_jax import errors
from scu_jax.runs import checkpointing, files
from scu_jax import config as config_lib


def _state():
    return {"step": jnp.array(3, jnp.int32), "params": {"w": jnp.arange(6.0).reshape(2, 3)}}


def test_save_restore_round_trip(tmp_path):
    config = config_lib.default_config()
    checkpoints = checkpointing.Checkpoints(tmp_path)
    assert checkpoints.latest_step() is None
    checkpoints.save(1, _state(), config, {"train_seconds": 1.5})
    checkpoints.save(2, jax.tree.map(lambda x: x + 1, _state()), config)
    checkpoints.close()
    reopened = checkpointing.Checkpoints(tmp_path)
    assert reopened.latest_step() == 2
    target = jax.tree.map(jnp.zeros_like, _state())
    restored = reopened.restore(target)
    np.testing.assert_array_equal(restored["params"]["w"], np.arange(6.0).reshape(2, 3) + 1)
    assert restored["step"].dtype == jnp.int32
    assert reopened.saved_config(1)["train_seconds"] == 1.5
    assert reopened.saved_config()["training"]["channel"]["snr_db"] == 5.0


def test_mismatched_config_is_refused(tmp_path):
    config = config_lib.default_config()
    checkpoints = checkpointing.Checkpoints(tmp_path)
    checkpoints.save(1, _state(), config)
    checkpoints.close()
    same = checkpointing.Checkpoints(tmp_path)
    same.check_compatible(config_lib.default_config())  # no error
    other = config_lib.default_config()
    other.erasure.edr = 0.1
    with pytest.raises(errors.CheckpointMismatchError,
                       match=r"config.erasure.edr is 0.06 in the checkpoint but 0.1 now"):
        same.check_compatible(other)


def test_corrupted_checkpoint_gives_one_line_error(tmp_path):
    config = config_lib.default_config()
    checkpoints = checkpointing.Checkpoints(tmp_path)
    checkpoints.save(1, _state(), config)
    checkpoints.close()
    state_dir = tmp_path / "checkpoints" / "1" / "state"
    for path in state_dir.rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\x00garbage")
    with pytest.raises(errors.CheckpointReadError) as error:
        checkpointing.Checkpoints(tmp_path).restore(jax.tree.map(jnp.zeros_like, _state()))
    assert "\n" not in str(error.value) and "cannot be restored" in str(error.value)
    (tmp_path / "checkpoints" / "1" / "config" / "metadata").write_text("{not json")
    with pytest.raises(errors.CheckpointReadError, match="cannot read its config"):
        checkpointing.Checkpoints(tmp_path).saved_config()


def test_write_json_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "out" / "results.json"
    files.write_json_atomic(path, {"a": 1})
    files.write_json_atomic(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as any file the user writes

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        files.write_json_atomic(path, {"c": Unserialisable()})
    assert json.loads(path.read_text()) == {"b": 2}  # the old file survives a failed write
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]
