"""Training the original semantic communication system (spec §3).

MNIST: the receiver classifier is trained first on the poisoned training set (D_e ∪ D_r) and then
frozen; the codec is trained with `β·KL_prior + MSE`. CIFAR: the receiver trains jointly with the
codec through the `CE(receiver(x̂), y)/30` term. Steps are pure functions jitted with the state
donated; `jax.lax.scan` fuses a block of steps (a whole epoch by default) into one dispatch.
Randomness: data order from `(seed, epoch)`, every other draw from `fold_in(key, step)`, so a
resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from scu_jax.errors import NonFiniteError
from scu_jax import losses
from scu_jax.runs.checkpointing import CHECKPOINT_DIR, Checkpoints
from scu_jax.errors import CheckpointMismatchError, CheckpointReadError
from scu_jax.runs.files import check_workdir, remove_run_outputs, write_json_atomic
from scu_jax.config import validate_config
from scu_jax.data import ErasureSplit, load_dataset, make_erasure_split
from scu_jax.data.augment import crop_keeping_trigger
from scu_jax.data.batching import epoch_permutation
from scu_jax.evaluation import describe_protocol, evaluate_system
from scu_jax.models import System, apply_receiver, build_system, init_system, to_unit_interval
from scu_jax.parallel import DataParallel, barrier, data_parallel, is_primary

RESULTS_FILE = "results.json"



@flax.struct.dataclass
class TrainState:
    """Everything a training run carries between steps (a pytree)."""

    step: jax.Array  # global step over both phases
    params: dict[str, Any]  # {"codec": ..., "receiver": ...}
    batch_stats: dict[str, Any]  # codec BatchNorm running averages ({} for the MLP codec)
    opt_state: dict[str, Any]  # {"receiver": ..., "codec": ...}


class StepMetrics(NamedTuple):
    loss: jax.Array
    accuracy: jax.Array


@dataclasses.dataclass
class FitReport:
    """Wall time of a `fit` call: `seconds` excludes compilation, measured apart."""

    seconds: float = 0.0
    compile_seconds: float = 0.0
    steps: int = 0


def make_optimizer(learning_rate: float, grad_clip: float) -> optax.GradientTransformation:
    """Adam with global grad-norm clipping (the reference's `clip_grad_norm_(…, 5)`)."""
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(learning_rate))


def _codec_trainable(params: dict[str, Any], joint_receiver: bool) -> dict[str, Any]:
    if joint_receiver:
        return {"codec": params["codec"], "receiver": params["receiver"]}
    return {"codec": params["codec"]}


def _joint_receiver(config: ml_collections.ConfigDict) -> bool:
    return config.train.ce_weight > 0


def train_state_from(params: dict[str, Any], batch_stats: dict[str, Any],
                     config: ml_collections.ConfigDict) -> TrainState:
    """A `TrainState` at step 0 holding `params` with fresh optimiser states for `config.train`."""
    train = config.train
    receiver_tx = make_optimizer(train.receiver_learning_rate, train.grad_clip)
    codec_tx = make_optimizer(train.learning_rate, train.grad_clip)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state={
            "receiver": receiver_tx.init(params["receiver"]),
            "codec": codec_tx.init(_codec_trainable(params, _joint_receiver(config))),
        },
    )


def create_train_state(system: System, config: ml_collections.ConfigDict, key: jax.Array,
                       image_shape: tuple[int, ...]) -> TrainState:
    """Initialises parameters and both optimiser states."""
    variables = init_system(system, key, image_shape)
    return train_state_from(variables["params"], variables["batch_stats"], config)


StepFn = Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, StepMetrics]]


def make_receiver_step(system: System, config: ml_collections.ConfigDict) -> StepFn:
    """One cross-entropy step of the receiver on raw (poisoned) training images."""
    tx = make_optimizer(config.train.receiver_learning_rate, config.train.grad_clip)

    def step(state: TrainState, images: jax.Array, labels: jax.Array,
             key: jax.Array) -> tuple[TrainState, StepMetrics]:
        del key  # The receiver step draws no randomness.
        x = to_unit_interval(images)

        def loss_fn(receiver_params):
            logits, batch_stats = apply_receiver(system, {"receiver": receiver_params},
                                                 state.batch_stats, x, train=True)
            return losses.cross_entropy(logits, labels), (logits, batch_stats)

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params["receiver"])
        updates, receiver_opt = tx.update(grads, state.opt_state["receiver"], state.params["receiver"])
        params = {**state.params, "receiver": optax.apply_updates(state.params["receiver"], updates)}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state={**state.opt_state, "receiver": receiver_opt})
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return new_state, StepMetrics(loss, accuracy)

    return step


def make_codec_step(system: System, config: ml_collections.ConfigDict) -> StepFn:
    """One step of the codec loss of spec §3 (with the receiver jointly when `ce_weight > 0`)."""
    train = config.train
    joint = _joint_receiver(config)
    tx = make_optimizer(train.learning_rate, train.grad_clip)

    def step(state: TrainState, images: jax.Array, labels: jax.Array,
             key: jax.Array) -> tuple[TrainState, StepMetrics]:
        latent_key, channel_key, crop_key = jax.random.split(jax.random.fold_in(key, state.step), 3)
        x = to_unit_interval(images)
        if train.augment and not train.crop_once:
            x = crop_keeping_trigger(crop_key, x)

        def loss_fn(trainable):
            params = {**state.params, **trainable}
            out, mutated = system.codec.apply(
                {"params": params["codec"], "batch_stats": state.batch_stats}, x, train=True,
                rngs={"latent": latent_key, "channel": channel_key}, mutable=["batch_stats"],
            )
            receiver_params = params["receiver"] if joint else jax.lax.stop_gradient(params["receiver"])
            logits, batch_stats = apply_receiver(
                system, {"receiver": receiver_params},
                mutated.get("batch_stats", state.batch_stats), out.x_hat, train=True)
            loss = losses.codec_loss(
                out.mu, out.logvar, out.x_hat, x, beta=train.beta, mse_weight=train.mse_weight,
                receiver_logits=logits, labels=labels, ce_weight=train.ce_weight,
            )
            return loss, (batch_stats, logits)

        trainable = _codec_trainable(state.params, joint)
        (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, codec_opt = tx.update(grads, state.opt_state["codec"], trainable)
        params = {**state.params, **optax.apply_updates(trainable, updates)}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state={**state.opt_state, "codec": codec_opt})
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return new_state, StepMetrics(loss, accuracy)

    return step


def convolutions_slow_in_loops(config: ml_collections.ConfigDict) -> bool:
    """Whether XLA's CPU backend runs this codec's step slower inside a `lax.scan` loop.

    Inside a while loop XLA's layout assignment gives the ResNet's weight-gradient convolutions
    non-canonical layouts (`f01b_i01o->01bf`), which the CPU runtime runs on its slow generic
    path. Measured with `python -m benchmarks.run --batches= --cifar_batches=16
    --cifar_methods=train --cifar_steps=2 --rolled_scan` (XLA CPU, JAX 0.10.2): a scan-fused
    training step at the paper's widths takes 16.1 s against 0.79 s dispatched alone (20×).
    The MLP codec has no convolutions; GPUs are not affected.
    """
    return config.model.name == "resnet18" and jax.default_backend() == "cpu"


def make_block_runner(step: StepFn, parallel: DataParallel = DataParallel(), *,
                      unroll: bool = False):
    """Jits a `lax.scan` over a block of batches: many steps, one dispatch, state donated.

    The returned function takes `(state, images, labels, batch_indices, key)` where `images` and
    `labels` are the whole device-resident training set and `batch_indices` is (steps, B), and
    returns `(state, stacked step metrics, whether every parameter is finite)`. On a mesh
    (`parallel`), pass `batch_indices` sharded on its batch axis (`parallel.shard_batches`) and
    the rest replicated: every step's batch stays split over the devices. `unroll` unrolls the
    scan fully (no loop: for blocks of one step, see `convolutions_slow_in_loops`).
    """

    def run_block(state, images, labels, batch_indices, key):
        def body(carry, indices):
            return step(carry, parallel.constrain(images[indices]),
                        parallel.constrain(labels[indices]), key)

        state, metrics = jax.lax.scan(body, state, batch_indices, unroll=unroll)
        # A step can leave NaN parameters behind a finite loss (the loss is computed before the
        # update); checked here, on device, so no non-finite state is ever checkpointed.
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf))
                                      for leaf in jax.tree.leaves((state.params, state.batch_stats))]))
        return state, metrics, finite

    return parallel.jit(run_block, donate_argnums=0)


def load_split(config: ml_collections.ConfigDict) -> ErasureSplit:
    """Loads the configured dataset (capped for smoke runs) and builds the erasure split."""
    dataset = load_dataset(config.dataset, data_dir=config.data_dir or None)
    if config.max_train_examples or config.max_test_examples:
        n_train = config.max_train_examples or len(dataset.train_images)
        n_test = config.max_test_examples or len(dataset.test_images)
        dataset = dataclasses.replace(
            dataset,
            train_images=dataset.train_images[:n_train], train_labels=dataset.train_labels[:n_train],
            test_images=dataset.test_images[:n_test], test_labels=dataset.test_labels[:n_test],
        )
    erasure = config.erasure
    return make_erasure_split(dataset, edr=erasure.edr, base_class=erasure.base_class,
                              target_class=erasure.target_class, seed=config.seed,
                              crop_once=4 if config.train.crop_once else 0,
                              remain_size=erasure.remain_size)


def image_shape_and_classes(split: ErasureSplit, config: ml_collections.ConfigDict) -> tuple[tuple[int, ...], int]:
    num_classes = 20 if config.dataset == "cifar100" else 10
    return tuple(split.train_images.shape[1:]), num_classes


class _Progress:
    """Progress lines: epoch, step, loss, steps/s (excluding the first, compiling, block), ETA."""

    def __init__(self, total_steps: int, every_seconds: float):
        self.total_steps = total_steps
        self.every_seconds = every_seconds
        self.timed_from: tuple[float, int] | None = None
        self.last_report = -math.inf

    def due(self, force: bool = False) -> bool:
        return force or time.perf_counter() - self.last_report >= self.every_seconds

    def report(self, phase: str, epoch: int, epochs: int, step: int, loss: float, accuracy: float) -> None:
        now = self.last_report = time.perf_counter()
        if self.timed_from is None:
            self.timed_from = (now, step)
            rate_text, eta_text = "compiling", "?"
        else:
            elapsed, done = now - self.timed_from[0], step - self.timed_from[1]
            rate = done / max(elapsed, 1e-9)
            rate_text = f"{rate:.0f} steps/s"
            eta_text = f"{(self.total_steps - step) / max(rate, 1e-9):.0f}s"
        logging.info("%s epoch %d/%d step %d/%d loss %.5f acc %.3f %s ETA %s", phase, epoch, epochs,
                     step, self.total_steps, loss, accuracy, rate_text, eta_text)


def initial_state(system: System, config: ml_collections.ConfigDict,
                  image_shape: tuple[int, ...]) -> TrainState:
    """The freshly initialised state of a run (keys derived from `config.seed`)."""
    return create_train_state(system, config, jax.random.fold_in(jax.random.PRNGKey(config.seed), 0),
                              image_shape)


def _fresh_optimizer(state: TrainState, phase: str, config: ml_collections.ConfigDict,
                     parallel: DataParallel) -> TrainState:
    """`state` with a new Adam state for `phase` (the reference builds an optimiser per epoch)."""
    fresh = train_state_from(state.params, state.batch_stats, config).opt_state[phase]
    if parallel.mesh is not None:
        fresh = parallel.replicate(fresh)
    return state.replace(opt_state={**state.opt_state, phase: fresh})


def fit(system: System, config: ml_collections.ConfigDict, state: TrainState, images: np.ndarray,
        labels: np.ndarray, *, start_epoch: int = 0, name: str = "train",
        on_epoch_end: Callable[[int, TrainState, FitReport], None] | None = None
        ) -> tuple[TrainState, FitReport]:
    """Runs the training recipe's epochs `[start_epoch, receiver_epochs + epochs)` on a dataset.

    The receiver epochs come first (MNIST), then the codec epochs. Each epoch's batches are a
    permutation derived from `(config.seed, epoch)`; each step's noise from `fold_in(key, step)`.
    With `train.reset_optimizer_each_epoch` every epoch starts from a fresh Adam state, so a run
    resumed at an epoch boundary still equals an uninterrupted one.

    Args:
      system: the Linen modules.
      config: the run's config (its `train` recipe).
      state: the state to continue from (a fresh one, or one restored at `start_epoch`).
      images, labels: the training set, host arrays (uint8 images).
      start_epoch: the number of epochs already done.
      name: names the run in progress lines and errors.
      on_epoch_end: called as `on_epoch_end(epochs_done, state, report)` after each epoch.

    Returns:
      The final state and a `FitReport` of this call: the step time without compilation (each
      block shape is compiled ahead of time, and timed apart) and the compile time.

    Raises:
      NonFiniteError: a loss became NaN or infinite; the state of the last epoch is not passed on.
    """
    train = config.train
    num_train = len(images)
    if train.batch_size > num_train:
        raise ValueError(f"config.train.batch_size={train.batch_size}: larger than the "
                         f"{num_train} training images")
    steps_per_epoch = num_train // train.batch_size
    total_epochs = train.receiver_epochs + train.epochs
    step_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    parallel = data_parallel(config)
    if parallel.mesh is None:
        images, labels = jax.device_put(images), jax.device_put(labels)
    else:
        images, labels, state, step_key = parallel.replicate((images, labels, state, step_key))
    # 0 = a whole epoch per dispatch, except where XLA runs the step slower in a loop.
    unroll = not train.steps_per_dispatch and convolutions_slow_in_loops(config)
    block = train.steps_per_dispatch or (1 if unroll else steps_per_epoch)
    runners = {
        "receiver": make_block_runner(make_receiver_step(system, config), parallel, unroll=unroll),
        "codec": make_block_runner(make_codec_step(system, config), parallel, unroll=unroll),
    }
    progress = _Progress(total_epochs * steps_per_epoch, config.log_every_seconds)
    report = FitReport()
    compiled: dict[tuple[str, int], Any] = {}

    def executable(phase: str, indices: np.ndarray):
        key = (phase, len(indices))
        if key not in compiled:
            started = time.perf_counter()
            compiled[key] = runners[phase].lower(state, images, labels, indices, step_key).compile()
            report.compile_seconds += time.perf_counter() - started
        return compiled[key]

    for epoch in range(start_epoch, total_epochs):
        phase = "receiver" if epoch < train.receiver_epochs else "codec"
        if train.reset_optimizer_each_epoch:
            state = _fresh_optimizer(state, phase, config, parallel)
        permutation = epoch_permutation(config.seed, epoch, num_train, train.batch_size)
        for first in range(0, steps_per_epoch, block):
            indices = parallel.shard_batches(permutation[first:first + block])
            run_block = executable(phase, indices)
            started = time.perf_counter()
            state, metrics, finite = run_block(state, images, labels, indices, step_key)
            loss = np.asarray(metrics.loss)
            if not np.all(np.isfinite(loss)) or not bool(finite):
                bad = int(np.argmin(np.isfinite(loss))) if not np.all(np.isfinite(loss)) else len(loss) - 1
                what = "loss" if not np.all(np.isfinite(loss)) else "parameters"
                raise NonFiniteError(
                    f"{name}: {phase} {what} became non-finite at step "
                    f"{epoch * steps_per_epoch + first + bad} (epoch {epoch + 1}); the last good "
                    f"checkpoint (epoch {epoch}) is kept"
                )
            report.seconds += time.perf_counter() - started
            report.steps += len(indices)
            phase_end = epoch + 1 in (train.receiver_epochs, total_epochs)
            if progress.due(force=phase_end and first + block >= steps_per_epoch):
                progress.report(f"{name} {phase}", epoch + 1, total_epochs, int(state.step),
                                float(loss.mean()), float(np.mean(metrics.accuracy)))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, state, report)
    return state, report


def fit_with_checkpoints(system: System, config: ml_collections.ConfigDict, workdir: pathlib.Path,
                         images: np.ndarray, labels: np.ndarray, *, kind: str,
                         image_shape: tuple[int, ...], subdir: str = "checkpoints"
                         ) -> tuple[TrainState, FitReport]:
    """`fit` from scratch in `workdir`, resuming from its latest checkpoint.

    Saves every `config.checkpoint_every_epochs` epochs and at the end of each phase.

    Returns the final state and a `FitReport` whose times are summed over every (resumed) run.
    """
    checkpoints = Checkpoints(workdir, subdir=subdir)
    checkpoints.check_compatible(config)
    state = initial_state(system, config, image_shape)
    start_epoch, previous = 0, FitReport()
    if checkpoints.latest_step() is not None:
        start_epoch = checkpoints.latest_step()
        state = checkpoints.restore(state)
        saved = checkpoints.saved_config()
        previous = FitReport(float(saved.get("train_seconds", 0.0)),
                             float(saved.get("compile_seconds", 0.0)), int(saved.get("steps", 0)))
        logging.info("resuming %s from epoch %d", workdir, start_epoch)

    def total(report: FitReport) -> FitReport:
        return FitReport(previous.seconds + report.seconds,
                         previous.compile_seconds + report.compile_seconds,
                         previous.steps + report.steps)

    phase_ends = (config.train.receiver_epochs, config.train.receiver_epochs + config.train.epochs)

    def save(epochs_done: int, epoch_state: TrainState, report: FitReport) -> None:
        if epochs_done % config.checkpoint_every_epochs and epochs_done not in phase_ends:
            return
        so_far = total(report)
        checkpoints.save(epochs_done, epoch_state, config,
                         {"train_seconds": so_far.seconds, "compile_seconds": so_far.compile_seconds,
                          "steps": so_far.steps, "kind": kind})

    try:
        state, report = fit(system, config, state, images, labels, start_epoch=start_epoch,
                            name=kind, on_epoch_end=save)
    finally:
        checkpoints.close()
    return state, total(report)


def build_for(config: ml_collections.ConfigDict) -> tuple[ErasureSplit, System, tuple[int, ...]]:
    """Validates the config, loads its erasure split and builds its system."""
    validate_config(config)
    split = load_split(config)
    image_shape, num_classes = image_shape_and_classes(split, config)
    return split, build_system(config, image_shape, num_classes), image_shape


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False) -> TrainState:
    """Trains (or resumes) the original system in `workdir`, evaluates it, writes results.json.

    The original system trains on the poisoned training set D_e ∪ D_r. Returns the final
    `TrainState`. Resumes from `workdir`'s latest checkpoint when there is one (raising
    `CheckpointMismatchError` before any work if it belongs to another configuration, unless
    `overwrite`: then that run's checkpoints and results are deleted first).
    """
    validate_config(config)
    parallel = data_parallel(config)  # the mesh's errors before any work
    check_workdir(workdir)
    workdir_path = pathlib.Path(workdir)
    try:
        Checkpoints(workdir_path).check_compatible(config)
    except (CheckpointMismatchError, CheckpointReadError):
        if not overwrite:
            raise
        logging.warning("--overwrite: deleting the run of another configuration in %s", workdir_path)
        if is_primary():
            remove_run_outputs(workdir_path, (CHECKPOINT_DIR, RESULTS_FILE))
        barrier("overwrite")
    split, system, image_shape = build_for(config)
    logging.info("training on %s: %s", config.dataset, split.summary())
    state, report = fit_with_checkpoints(system, config, workdir_path, split.train_images,
                                         split.train_labels, kind="train", image_shape=image_shape)
    # Evaluated on each process's default device from host copies: the mesh is for the steps.
    params, batch_stats = jax.device_get((state.params, state.batch_stats))
    results = evaluate_system(system, params, batch_stats, split, config)
    results.update({"protocol": describe_protocol(config), "receiver": config.evaluation.receiver,
                    "train_seconds": report.seconds, "compile_seconds": report.compile_seconds,
                    "epochs": config.train.receiver_epochs + config.train.epochs,
                    "steps": int(state.step), "dataset": config.dataset,
                    "devices": parallel.size, "processes": jax.process_count()})
    if is_primary():
        write_json_atomic(workdir_path / RESULTS_FILE, results)
    logging.info("results: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()})
    return state
