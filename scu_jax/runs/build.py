"""A run's pieces from its config: the data split, the system, the mesh, the recipe, the method.

The config is resolved and validated once, at the top of a run (`runs/train.py`,
`runs/unlearn.py`); the functions here turn it into the explicit values the library takes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scu_jax.channels import Channel
from scu_jax.config import ERASED_LOOP_METHODS
from scu_jax.data import (Dataset, ErasureSplit, class_ids, data_identity, load_dataset,
                          make_erasure_split, make_forget_split, random_ids, read_ids)
from scu_jax.data.batching import stacked_batches
from scu_jax.data import sources
from scu_jax.errors import ConfigError
from scu_jax.evaluation import Protocol
from scu_jax.methods import (CodecObjective, Method, Recipe, finetune, hbu, l1_sparse, saliency,
                             saliency_mask, salun, scu, scu_no_cc, vbu)
from scu_jax.models import (MODELS, MLP, MLPDecoder, Receiver, ResNet18, ResNetDecoder,
                            ResNetReceiver, SemanticCodec, System)
from scu_jax.parallel import DataParallel, mesh_for


def data_parallel(config: ml_collections.ConfigDict) -> DataParallel:
    """The mesh `config.parallel.devices` selects; both batch sizes must split over it."""
    return mesh_for(config.parallel.devices, {
        "train.batch_size": config.train.batch_size,
        "unlearning.batch_size": config.unlearning.batch_size})


def build_system(config: ml_collections.ConfigDict, image_shape: Sequence[int],
                 num_classes: int) -> System:
    """Builds the codec and receiver that `config.model` and `config.channel` describe."""
    model, channel_config = config.model, config.channel
    channel = Channel(
        channel=channel_config.name,
        family=channel_config.family,
        snr_db=float(channel_config.snr_db),
        k_factor=float(channel_config.k_factor),
        fading=channel_config.fading,
        equalizer=channel_config.equalizer,
        draw=channel_config.draw,
    )
    image_size = math.prod(image_shape)
    init = model.init
    if model.name == "mlp":
        latent_dim = model.latent_dim
        encoder = MLP(2 * latent_dim, model.hidden, init)
        decoder = MLPDecoder(tuple(image_shape), model.hidden, init)
    elif model.name == "resnet18":
        # The reference's CIFAR latent has one value per pixel (d = 3072) so that it can be
        # reshaped into an image for the second ResNet.
        latent_dim = image_size
        dtype = jnp.dtype(model.dtype)
        encoder = ResNet18(2 * latent_dim, tuple(model.widths), dtype, init)
        decoder = ResNetDecoder(tuple(image_shape), tuple(model.widths), dtype, init)
    else:
        raise ValueError(f"unknown model {model.name!r}; choose one of: {', '.join(MODELS)}")
    codec = SemanticCodec(encoder, decoder, channel, latent_dim)
    if model.receiver == "resnet18":
        receiver = ResNetReceiver(num_classes, tuple(image_shape), tuple(model.widths),
                                  jnp.dtype(model.dtype), init)
    else:
        receiver = Receiver(num_classes, model.hidden, init)
    return System(codec, receiver)


def load_data(config: ml_collections.ConfigDict) -> Dataset:
    """The configured dataset, capped for smoke runs (`max_train_examples`, `max_test_examples`)."""
    dataset = load_dataset(config.dataset, data_dir=config.data_dir or None)
    if config.max_train_examples or config.max_test_examples:
        n_train = config.max_train_examples or len(dataset.train_images)
        n_test = config.max_test_examples or len(dataset.test_images)
        dataset = dataclasses.replace(
            dataset,
            train_images=dataset.train_images[:n_train], train_labels=dataset.train_labels[:n_train],
            test_images=dataset.test_images[:n_test], test_labels=dataset.test_labels[:n_test],
        )
    return dataset


def forget_seed(config: ml_collections.ConfigDict) -> int:
    """The seed of a random forget set: `forget.seed`, or the run's seed where it is -1."""
    return config.seed if config.forget.seed < 0 else config.forget.seed


def forget_ids(config: ml_collections.ConfigDict, dataset: Dataset, *, excluded=()):
    """The training-set indices `config.forget` names, sorted. A sample in `excluded` (erased
    before) is an error for "ids" and left out of "class" and "random"."""
    forget = config.forget
    n = len(dataset.train_labels)
    if forget.kind == "ids":
        if not forget.ids_file:
            raise ConfigError("config.forget.kind='ids' needs config.forget.ids_file: a file of "
                              "training-set indices, one per line (or a .npy)")
        return read_ids(forget.ids_file, n, excluded=excluded)
    if forget.kind == "class":
        if forget.class_id >= dataset.num_classes:
            raise ConfigError(f"config.forget.class_id={forget.class_id}: {dataset.name} has "
                              f"{dataset.num_classes} classes")
        return class_ids(dataset.train_labels, forget.class_id, dataset.num_classes,
                         excluded=excluded)
    if forget.kind == "random":
        return random_ids(n, forget.fraction, forget_seed(config), excluded=excluded)
    if forget.kind == "worst_case":
        if not forget.ids_file:  # `runs.worst_case.resolve_worst_case` names the found set
            raise ConfigError("config.forget.kind='worst_case' is found against the trained "
                              "system: run it through scu-unlearn or scu-pipeline, or name a "
                              "found set in config.forget.ids_file")
        return read_ids(forget.ids_file, n, excluded=excluded)
    raise ValueError(f"forget.kind={forget.kind!r} names no sample set")


def load_split(config: ml_collections.ConfigDict, *, training: bool = False, ids=None,
               excluded=()) -> ErasureSplit:
    """Loads the configured dataset (capped for smoke runs) and builds the split its
    `forget.kind` describes, with the data's identity in `split.source`.

    `training`: only the training set is needed (a clean-set system trains before any request:
    D_e is then empty). `ids`: the forget set itself, instead of `config.forget`'s (the ledger's
    requests); `excluded`: samples erased by earlier requests, kept out of D_e and D_r.
    """
    dataset = load_data(config)
    crop_once = 4 if config.train.crop_once else 0
    kind = config.forget.kind
    if kind == "backdoor":
        erasure = config.erasure
        split = make_erasure_split(dataset, edr=erasure.edr, base_class=erasure.base_class,
                                   target_class=erasure.target_class, seed=config.seed,
                                   crop_once=crop_once, remain_size=erasure.remain_size,
                                   known_fraction=config.forget.known_fraction,
                                   known_seed=forget_seed(config))
    else:
        if ids is None:
            ids = () if training else forget_ids(config, dataset, excluded=excluded)
        split = make_forget_split(dataset, ids, kind=kind, seed=config.seed, excluded=excluded,
                                  crop_once=crop_once)
    return dataclasses.replace(split, source=data_identity(dataset))


def image_shape_and_classes(split: ErasureSplit,
                            config: ml_collections.ConfigDict) -> tuple[tuple[int, ...], int]:
    return tuple(split.train_images.shape[1:]), sources.num_classes(config.dataset)


def build_for(config: ml_collections.ConfigDict, **split_args
              ) -> tuple[ErasureSplit, System, tuple[int, ...]]:
    """Loads the split of a validated config (`load_split`'s `split_args`) and builds its system."""
    split = load_split(config, **split_args)
    image_shape, num_classes = image_shape_and_classes(split, config)
    return split, build_system(config, image_shape, num_classes), image_shape


def convolutions_slow_in_loops(config: ml_collections.ConfigDict) -> bool:
    """Whether XLA's CPU backend runs this codec's step slower inside a `lax.scan` loop.

    Inside a while loop XLA's layout assignment gives the ResNet's weight-gradient convolutions
    non-canonical layouts, which the CPU runtime runs on its slow generic path (docs/performance.md); the engine then dispatches one step at a time. The MLP codec has no
    convolutions; GPUs are not affected.
    """
    return config.model.name == "resnet18" and jax.default_backend() == "cpu"


def objective_of(config: ml_collections.ConfigDict) -> CodecObjective:
    train = config.train
    return CodecObjective(beta=train.beta, mse_weight=train.mse_weight, ce_weight=train.ce_weight)


def recipe_of(config: ml_collections.ConfigDict) -> Recipe:
    """The training recipe `config.train` describes."""
    train = config.train
    return Recipe(objective=objective_of(config), learning_rate=train.learning_rate,
                  receiver_learning_rate=train.receiver_learning_rate, grad_clip=train.grad_clip,
                  batch_size=train.batch_size, receiver_epochs=train.receiver_epochs,
                  epochs=train.epochs, crop=bool(train.augment and not train.crop_once),
                  reset_optimizer_each_epoch=train.reset_optimizer_each_epoch)


def finetune_recipe(config: ml_collections.ConfigDict, num_remain: int) -> Recipe:
    """The `finetune` recipe over `num_remain` D_r images, with the ℓ1 penalty for `l1_sparse`."""
    u = config.unlearning
    if u.method == "l1_sparse":
        return l1_sparse(recipe_of(config), learning_rate=u.learning_rate,
                         batch_size=u.batch_size, epochs=u.finetune_epochs,
                         strength=u.l1_strength, steps_per_epoch=num_remain // u.batch_size)
    return finetune(recipe_of(config), learning_rate=u.learning_rate, batch_size=u.batch_size,
                    epochs=u.finetune_epochs)


def salun_mask(config: ml_collections.ConfigDict, system: System, params, batch_stats,
               images: np.ndarray, labels: np.ndarray) -> Any:
    """SalUn's saliency mask of a trained system over D_e (`images`, the `labels` it trained
    with) in batches of `unlearning.batch_size` (a partial last batch dropped)."""
    size = min(config.unlearning.batch_size, len(images))
    scores = saliency(system, objective_of(config), params, batch_stats,
                      *stacked_batches(images, labels, size),
                      jax.random.fold_in(jax.random.PRNGKey(config.seed), 3))
    return saliency_mask(scores, config.unlearning.salun_fraction)


def method_of(config: ml_collections.ConfigDict, system: System, mask: Any = None,
              forget_weight: float = 0.5) -> Method:
    """The erased-data method `config.unlearning.method` names, with its hyper-parameters
    (after `config.method_config` has applied its `unlearning.per_method` entry); `salun` takes
    its saliency `mask` (`salun_mask`) and its erased term's weight |D_e| / (|D_e| + |D_r|)."""
    u, objective = config.unlearning, objective_of(config)
    name = u.method
    if name not in ERASED_LOOP_METHODS:
        raise ValueError(f"{name!r} is not an erased-data method ({', '.join(ERASED_LOOP_METHODS)})")
    if name == "salun":
        if mask is None:
            raise ValueError("salun needs its saliency mask (runs.build.salun_mask)")
        return salun(system, objective, learning_rate=u.learning_rate, grad_clip=u.grad_clip,
                     mask=mask, forget_weight=forget_weight, sam_radius=u.sam_radius)
    if name == "hbu":
        return hbu(system, objective, learning_rate=u.learning_rate,
                   fixed_probe=u.hbu_fixed_probe, augment_remain=u.augment_remain)
    if name == "vbu":
        return vbu(system, objective, learning_rate=u.learning_rate, grad_clip=u.grad_clip,
                   beta_u=u.beta_u, erased_objective=u.erased_objective)
    factory = scu if name == "scu" else scu_no_cc
    return factory(system, objective, learning_rate=u.learning_rate, grad_clip=u.grad_clip,
                   lambda_kl=u.lambda_kl, beta_u=u.beta_u, rho=u.rho,
                   erased_objective=u.erased_objective,
                   stop_weight_gradient=u.stop_weight_gradient,
                   unit_mse_in_weights=u.unit_mse_in_weights, augment_remain=u.augment_remain,
                   sam_radius=u.sam_radius)


def describe_protocol(config: ml_collections.ConfigDict) -> str:
    """One line saying how the numbers of a run were read (for results files and tables)."""
    c = config.channel
    if c.name == "none":
        channel = "no channel"
    else:
        draw = "one noise scalar per call" if c.draw == "scalar" else "noise per element"
        kind = f"{c.name} (K = {c.k_factor:g})" if c.name == "rician" else c.name
        channel = f"{kind}, {c.family} family, {c.snr_db:g} dB, {draw}"
    where = ("without the channel" if config.evaluation.channel == "none"
             else "through the training channel")
    receiver = ("the original system's receiver" if config.evaluation.receiver == "original"
                else "each system's own receiver")
    return f"trained through {channel}; evaluated {where}, read by {receiver}"


def protocol_of(config: ml_collections.ConfigDict) -> Protocol:
    """How `config` reads its systems (`eval_*` and `evaluation.*`)."""
    e = config.evaluation
    return Protocol(seed=config.eval_seed, draws=config.eval_draws,
                    batch_size=config.eval_batch_size, channel=e.channel, receiver=e.receiver,
                    mi_steps=e.mi_steps, mi_batch_size=e.mi_batch_size,
                    mi_max_examples=e.mi_max_examples, mi_sets=tuple(e.mi_sets),
                    remain_examples=e.remain_examples, description=describe_protocol(config))
