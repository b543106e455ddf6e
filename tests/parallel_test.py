"""Data parallelism (`scu_jax.parallel`): a 4-device mesh and 2 processes give one device's results.

The mesh runs in a subprocess with 4 forced CPU devices (`--xla_force_host_platform_device_count`
must be set before JAX starts); the multi-host run launches the real `scu-train` as 2 processes on
127.0.0.1 (gloo CPU collectives), each with one device. (`scu-unlearn` takes the same flags and
the same mesh code; its 2-process run is not repeated here, to keep the suite inside its budget.)
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from scu_jax import config as config_lib
from scu_jax import presets
from scu_jax import parallel
from scu_jax.runs.checkpointing import Checkpoints
from scu_jax.runs.train import train_and_evaluate
from scu_jax.runs import build
from scu_jax.runs.build import build_system
from scu_jax.runs.saved import load_variables

REPO = pathlib.Path(__file__).resolve().parent.parent

MESH_CHECK = textwrap.dedent("""
    import json
    import jax, numpy as np
    from scu_jax import config as config_lib, engine, presets
    from scu_jax.data import Dataset, make_erasure_split
    from scu_jax.errors import ConfigError
    from scu_jax.evaluation import system_for_evaluation
    from scu_jax.stopping import draws_of, stopping_key, target_rate
    from scu_jax.methods import training
    from scu_jax.runs import build, erasing, train
    from scu_jax.runs.build import build_system

    def fit(system, config, images, labels, shape):
        recipe = build.recipe_of(config)
        state = training.initial_state(system, recipe, config.seed, shape)
        return train.fit(system, recipe, config, state, images, labels,
                         parallel=build.data_parallel(config))

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    found = {"devices": jax.device_count()}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (256, 28, 28, 1), dtype=np.uint8)
    labels = (np.arange(256) % 10).astype(np.int32)

    # MLP system: two codec epochs (32 Adam steps at batch 16).
    config = presets.apply_variant(config_lib.default_config(), "smoke")
    config.train.receiver_epochs, config.train.epochs = 0, 2
    system = build_system(config, (28, 28, 1), 10)
    trained = {}
    for devices in (1, 4):
        config.parallel.devices = devices
        state, _ = fit(system, config, images, labels, (28, 28, 1))
        trained[devices] = jax.device_get(state)
    found["train"] = max_diff(trained[1].params, trained[4].params)

    # The HLO of a mesh block: the batch is split 4 ways and the gradients are all-reduced.
    parallel_4 = build.data_parallel(config)
    phase = engine.Phase("codec", training.codec_step(system, build.recipe_of(config)), range(1),
                         None, training.gather_examples)
    runner = engine.make_block(phase, parallel_4)
    indices = parallel_4.shard_batches(np.arange(32, dtype=np.int32).reshape(2, 16))
    found["index_shards"] = [list(s.data.shape) for s in indices.addressable_shards]
    hlo = runner.lower(parallel_4.replicate(trained[1]), np.zeros((), bool), indices,
                       parallel_4.replicate(training.Examples(images, labels)),
                       parallel_4.replicate(jax.random.PRNGKey(0)), None).compile().as_text()
    found["all_reduce"] = "all-reduce" in hlo

    # SCU: two unlearning epochs (4 steps), no early stop, from the trained system.
    split = make_erasure_split(Dataset("mnist5k", images, labels, images[:32], labels[:32], 10),
                               edr=0.25, base_class=1, target_class=2, seed=0)
    config.unlearning.early_stop, config.unlearning.max_epochs = False, 2
    unlearned = {}
    for devices in (1, 4):
        config.parallel.devices = devices
        config.unlearning.method = "scu"
        params, stats, _ = erasing.erased_loop(config, system, split, trained[1].params,
                                                trained[1].batch_stats, None, None,
                                                build.data_parallel(config))
        params, stats = jax.device_get((params, stats))
        draws = draws_of(split.erased_images, build.protocol_of(config))
        eval_system = system_for_evaluation(system, build.protocol_of(config))
        backdoor = float(target_rate(eval_system, params, stats, draws,
                                     split.target_class, stopping_key(build.protocol_of(config))))
        unlearned[devices] = (params, backdoor)
    found["scu"] = max_diff(unlearned[1][0], unlearned[4][0])
    found["scu_history"] = [unlearned[d][1] for d in (1, 4)]

    # ResNet codec (BatchNorm statistics across devices, joint receiver, random crops): one step.
    cifar = presets.apply_variant(presets.cifar_config("cifar10"), "smoke")
    cifar.train.learning_rate = 5e-4
    cimages = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    system = build_system(cifar, (32, 32, 3), 10)
    stepped = {}
    for devices in (1, 4):
        cifar.parallel.devices = devices
        state, _ = fit(system, cifar, cimages, labels[:8], (32, 32, 3))
        stepped[devices] = jax.device_get(state)
    grads = [np.concatenate([np.ravel(leaf) for leaf in
                             jax.tree.leaves(s.opt_state["codec"][1][0].mu)]) for s in
             (stepped[1], stepped[4])]  # Adam's first moment after one step: 0.1 × gradient
    found["resnet_grad"] = float(np.linalg.norm(grads[0] - grads[1]) / np.linalg.norm(grads[0]))
    found["resnet_batch_stats"] = max_diff(stepped[1].batch_stats, stepped[4].batch_stats)

    errors = []
    for devices, batch in ((3, 16), (8, 16)):
        config.parallel.devices, config.train.batch_size = devices, batch
        try:
            build.data_parallel(config)
        except ConfigError as error:
            errors.append(str(error))
    found["errors"] = errors
    print("RESULT", json.dumps(found))
""")


@pytest.mark.slow
def test_a_4_device_mesh_trains_and_unlearns_as_one_device():
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = subprocess.run([sys.executable, "-c", MESH_CHECK], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.split("RESULT", 1)[1])
    assert found["devices"] == 4
    assert found["index_shards"] == [[2, 4]] * 4  # each device holds 4 of every 16-image batch
    assert found["all_reduce"]
    assert found["train"] < 1e-5, found  # measured 1.6e-6
    assert found["scu"] < 1e-5, found  # measured 1.7e-7
    assert found["scu_history"][0] == pytest.approx(found["scu_history"][1], abs=1e-6)
    # One ResNet step. The forward pass (BatchNorm statistics over the global batch) agrees to
    # float rounding (measured 1.2e-7). The gradients agree to 3e-3 relative, not to rounding: a
    # rounding-level change in a pre-activation at ReLU's kink flips its derivative (measured with
    # softplus in place of ReLU: 8e-6 largest difference; with ReLU: 4e-3 on a few decoder
    # weights). The parameters are not compared: Adam's first update is lr·g/(|g| + 1e-8), so
    # gradients of ~1e-8 (there are some) turn 1e-9 of rounding into lr/20 of update.
    assert found["resnet_batch_stats"] < 1e-5, found
    assert found["resnet_grad"] < 1e-2, found
    assert found["errors"] == [
        "config.train.batch_size=16: a batch must split evenly over the 3 devices of "
        "config.parallel.devices",
        "config.parallel.devices=8: only 4 cpu device(s) are visible",
    ]


def test_parallel_flags_and_one_device_default():
    config = config_lib.default_config()
    assert build.data_parallel(config).mesh is None  # devices=1: no mesh, no overhead
    config.parallel.devices = 0  # every device: a 1-device mesh on this machine
    assert build.data_parallel(config).size == jax.device_count()
    with pytest.raises(ValueError, match="give all three or none"):
        parallel.initialize_distributed("127.0.0.1:1", None, 0)
    with pytest.raises(ValueError, match=r"--process_id=-1: must be in \[0, 2\)"):
        parallel.initialize_distributed("127.0.0.1:1", 2, -1)
    with pytest.raises(ValueError, match="add --config.parallel.devices=0"):
        parallel.initialize_distributed("127.0.0.1:1", 2, 1, devices=1)
    parallel.initialize_distributed(None, None, None)  # single process: nothing to do
    assert jax.process_count() == 1 and parallel.is_primary()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_two(binary: str, args: list[str]) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    coordinator = f"--coordinator_address=127.0.0.1:{_free_port()}"
    processes = [subprocess.Popen(
        [sys.executable, "-m", f"scu_jax.binaries.{binary}", *args, coordinator,
         "--num_processes=2", f"--process_id={rank}", "--config.parallel.devices=0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
        assert "connected to 1 peer" in stdout + stderr  # gloo's CPU collectives joined both


def _saved_params(workdir: pathlib.Path, config):
    """The saved parameters, read back in this single process (as `scu-unlearn` reads them)."""
    system = build_system(config, (28, 28, 1), 10)
    params, _, _ = load_variables(workdir, system, config, (28, 28, 1))
    return Checkpoints(workdir, read_only=True).latest_step(), params


def _assert_same_run(single: pathlib.Path, multi: pathlib.Path, config,
                     keys: tuple[str, ...]) -> None:
    step_1, params_1 = _saved_params(single, config)
    step_2, params_2 = _saved_params(multi, config)
    assert step_1 == step_2
    leaves_1, leaves_2 = jax.tree.leaves(params_1), jax.tree.leaves(params_2)
    assert len(leaves_1) == len(leaves_2) > 0
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(leaves_1, leaves_2)) < 1e-5
    results_1 = json.loads((single / "results.json").read_text())
    results_2 = json.loads((multi / "results.json").read_text())
    assert (results_1["processes"], results_2["processes"], results_2["devices"]) == (1, 2, 2)
    for key in keys:
        assert results_2[key] == pytest.approx(results_1[key], abs=1e-4), key


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path):
    overrides = ["--config.train.epochs=1", "--config.train.receiver_epochs=1",
                 "--config.evaluation.mi_steps=0", "--config.max_train_examples=512",
                 "--config.eval_draws=1"]
    config = presets.apply_variant(config_lib.default_config(), "smoke")
    config.train.epochs = config.train.receiver_epochs = 1
    config.evaluation.mi_steps, config.max_train_examples = 0, 512
    config.eval_draws = 1
    smoke = f"--config={REPO / 'configs' / 'mnist.py'}:smoke"

    train_and_evaluate(config, str(tmp_path / "train_1"))
    _launch_two("train", [smoke, *overrides, f"--workdir={tmp_path / 'train_2'}"])
    _assert_same_run(tmp_path / "train_1", tmp_path / "train_2", config,
                     ("mse_clean", "accuracy_test", "backdoor_accuracy"))
