"""Orbax round trip, config mismatch detection, unreadable checkpoints, atomic JSON writes."""

import json
import os
import shutil

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


def _model_state(value: float = 0.0):
    # A 256×256 kernel: most of the largest data file is then its (compressed) values, which the
    # checkpoint library does not checksum.
    noise = jax.random.normal(jax.random.PRNGKey(int(value)), (256, 256))
    return {"step": jnp.array(5, jnp.int32),
            "params": {"w": noise + value, "b": jnp.ones(3)},
            "batch_stats": {"mean": jnp.zeros(4)}, "opt_state": {"mu": jnp.ones((64, 64))}}


def test_every_save_records_its_digests_and_every_restore_checks_them(tmp_path):
    state = _model_state()
    checkpoints = checkpointing.Checkpoints(tmp_path)
    checkpoints.save(1, state, config_lib.default_config())
    checkpoints.close()
    reopened = checkpointing.Checkpoints(tmp_path)
    digests = reopened.saved_config(1)["digests"]
    assert digests["state"] == checkpointing.tree_digest(state)
    assert digests["model"] == checkpointing.model_digest(state["params"], state["batch_stats"])
    assert reopened.model_digest() == digests["model"]
    restored = reopened.restore(jax.tree.map(jnp.zeros_like, state))
    assert checkpointing.tree_digest(restored) == digests["state"]
    # The digest sees every bit, the dtype, the shape and where a leaf sits in the tree.
    assert checkpointing.tree_digest({"a": jnp.zeros(2)}) != checkpointing.tree_digest(
        {"a": jnp.zeros(2, jnp.int32)})
    assert checkpointing.tree_digest({"a": jnp.zeros(2)}) != checkpointing.tree_digest(
        {"b": jnp.zeros(2)})
    assert checkpointing.tree_digest({"a": jnp.zeros((1, 2))}) != checkpointing.tree_digest(
        {"a": jnp.zeros(2)})
    nudged = {"a": jnp.zeros(2).at[1].set(np.float32(1e-45))}  # one bit of one value
    assert checkpointing.tree_digest(nudged) != checkpointing.tree_digest({"a": jnp.zeros(2)})


def _flip_middle(path, count=64):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for index in range(middle, min(middle + count, len(data))):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def _largest_data_file(step_dir):
    return max((p for p in (step_dir / "state").rglob("d/*") if p.is_file()),
               key=lambda p: p.stat().st_size)


DAMAGE = {
    "bytes flipped in array data": lambda step: _flip_middle(_largest_data_file(step)),
    "array data truncated": lambda step: _largest_data_file(step).write_bytes(
        _largest_data_file(step).read_bytes()[:100]),
    "garbage manifest": lambda step: [p.write_bytes(os.urandom(120))
                                      for p in (step / "state").rglob("manifest.ocdbt")],
    "array metadata deleted": lambda step: (step / "state" / "_METADATA").unlink(),
    "config deleted": lambda step: (step / "config" / "metadata").unlink(),
    "arrays of another checkpoint": lambda step: (
        shutil.rmtree(step / "state"), shutil.copytree(step.parent / "1" / "state", step / "state")),
}


# The reads a failed restore abandons are reported by pytest as unraisable at garbage collection
# (the binaries leave without it: `binaries/common.py`).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_each_damage_is_refused_in_one_line_naming_the_checkpoint(tmp_path, damage):
    """Refused in one line, or (the array metadata, which a restore into a known structure
    does not need) restored exactly as saved: never used silently wrong."""
    config = config_lib.default_config()
    checkpoints = checkpointing.Checkpoints(tmp_path)
    checkpoints.save(1, _model_state(1.0), config)
    checkpoints.save(2, _model_state(2.0), config)
    checkpoints.close()
    step = tmp_path / "checkpoints" / "2"
    DAMAGE[damage](step)
    try:
        restored = checkpointing.Checkpoints(tmp_path).restore(
            jax.tree.map(jnp.zeros_like, _model_state()))
    except errors.CheckpointReadError as error:
        message = str(error)
        assert "\n" not in message and str(step) in message and len(message) < 500, message
        if damage in ("bytes flipped in array data", "arrays of another checkpoint"):
            # Loaded without complaint by the checkpoint library: only the digest sees it.
            assert "does not hold what was saved" in message, message
        return
    assert damage == "array metadata deleted"
    assert checkpointing.tree_digest(restored) == checkpointing.tree_digest(_model_state(2.0))


def test_a_checkpoint_saved_before_digests_restores_with_a_warning(tmp_path, caplog):
    checkpoints = checkpointing.Checkpoints(tmp_path)
    checkpoints.save(1, _model_state(), config_lib.default_config())
    checkpoints.close()
    metadata = tmp_path / "checkpoints" / "1" / "config" / "metadata"
    meta = json.loads(metadata.read_text())
    del meta["digests"]
    metadata.write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        restored = checkpointing.Checkpoints(tmp_path).restore(
            jax.tree.map(jnp.zeros_like, _model_state()))
    np.testing.assert_array_equal(restored["params"]["w"], _model_state()["params"]["w"])
    assert "saved before checkpoints recorded digests" in caplog.text


def test_a_failed_save_is_one_line_naming_what_is_still_restorable(tmp_path, monkeypatch):
    config = config_lib.default_config()
    checkpoints = checkpointing.Checkpoints(tmp_path)
    checkpoints.save(1, _model_state(), config)
    checkpoints.close()
    checkpoints = checkpointing.Checkpoints(tmp_path)

    def full_disk(*args, **kwargs):
        raise ValueError('OUT_OF_RANGE: Error writing "step/0" in OCDBT database: Failed writing: '
                         '"x": Failed to write 439569 bytes to file 7: No space left on device '
                         "[os_error_code='28']\nmore lines")

    monkeypatch.setattr(checkpoints._manager, "save", full_disk)
    with pytest.raises(errors.CheckpointWriteError) as error:
        checkpoints.save(2, _model_state(), config)
    assert str(error.value) == (
        f"cannot save a checkpoint in {tmp_path / 'checkpoints'}: No space left on device; the "
        "latest complete checkpoint is step 1, which the same command resumes from")
