"""Config schema, per-method resolution and validation.

`default_config()` is the whole schema (with the paper's MNIST settings on the embedded data);
`scu_jax.presets` derives every dataset's preset and variant from it, so every binary and test
shares one schema and one validator.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

# `check_field` and `first_difference` are imported from here by the layers above.
from scu_jax.checks import _boolean, _choice, _finite, _jsonable, _number, check_field, first_difference
from scu_jax.errors import ConfigError
from scu_jax.channels import CHANNELS, DRAWS, EQUALIZERS, FADINGS, FAMILIES
from scu_jax.data import DATASETS, FORGET_KINDS
from scu_jax.models import INITS, MODELS, RECEIVER_MODELS

# The unlearning methods, by name (`scu_jax.methods` holds one factory for each; named here so
# that validation needs no import of the methods); first, those the erased-data loop runs.
ERASED_LOOP_METHODS = ("scu", "scu_no_cc", "vbu", "hbu", "salun")
METHODS = (*ERASED_LOOP_METHODS, "ssd", "l1_sparse", "finetune", "retrain")
ERASED_OBJECTIVES = ("mse", "ce", "mse+ce")
EVALUATION_CHANNELS = ("train", "none")
RECEIVERS = ("original", "own")

# The config fields that define a trained system: a checkpoint made under different values of
# these cannot be resumed or reused.
TRAINING_FIELDS = ("dataset", "seed", "max_train_examples", "erasure", "model", "channel", "train")


def default_config() -> ml_collections.ConfigDict:
    """The full config schema with the paper's MNIST settings on the embedded data."""
    config = ml_collections.ConfigDict()
    config.dataset = "mnist5k"
    config.data_dir = ""  # tfds data_dir for the tfds datasets; "" = tfds's default.
    config.seed = 0
    # Caps on the number of training / test images used (0 = all), for smoke runs.
    config.max_train_examples = 0
    config.max_test_examples = 0

    config.erasure = ml_collections.ConfigDict()
    config.erasure.edr = 0.06
    config.erasure.base_class = 1
    config.erasure.target_class = 2
    # |D_r|: "rest" = N − |D_e| (the training set keeps N images); "requested" = N − EDR·N, the
    # reference's, which trains on fewer images where D_e is capped at its class (CIFAR-100).
    config.erasure.remain_size = "rest"

    # What a run forgets (`scu_jax.data.forget`). "backdoor": the erasure split above, the paper's
    # protocol (the system trains on the poisoned set). "ids", "class", "random", "worst_case": a
    # user's forget set of the clean training split, on which the system trains whole: indices in
    # `ids_file` (one per line, or a .npy), every image of class `class_id`, a random `fraction`
    # drawn with `seed` (-1: config.seed), or the trained system's hardest `fraction` for SCU
    # (`runs.worst_case`, searched with `seed`, cached in the trained workdir; ids_file then
    # names it). One trained system serves all four.
    # `known_fraction` < 1 ("backdoor" only; corrective unlearning): the methods, retraining
    # included, are given a `seed`-ed share of D_e; the rest stays in D_r, trigger and all.
    # `expand`: D_r samples that look like the known ones are erased too (`scu_jax.expansion`).
    config.forget = ml_collections.ConfigDict()
    config.forget.kind = "backdoor"
    config.forget.ids_file = ""
    config.forget.class_id = 1
    config.forget.fraction = 0.02
    config.forget.seed = -1
    config.forget.known_fraction = 1.0
    config.forget.expand = False

    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"
    config.model.latent_dim = 20
    config.model.hidden = 96
    config.model.widths = (64, 64, 128, 128, 256, 256, 512, 512)  # ResNet only.
    config.model.dtype = "float32"  # ResNet compute dtype: float32 or bfloat16.
    config.model.init = "flax"  # parameter initialisers: "flax" or "torch" (the reference's)
    # The receiver: "mlp" (MNIST, CIFAR-10) or "resnet18" (the reference's CIFAR-100 script).
    config.model.receiver = "mlp"

    config.channel = ml_collections.ConfigDict()
    config.channel.name = "awgn"
    config.channel.family = "paper"
    config.channel.snr_db = 5.0
    config.channel.k_factor = 2.0
    config.channel.fading = "block"
    config.channel.equalizer = "mmse"
    # "element": i.i.d. noise per latent element (the formulas); "scalar": one draw per call,
    # broadcast over the batch, its std detached (what the reference ran; paper family only).
    config.channel.draw = "element"

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 16
    # The paper's 75,000 codec and 37,500 receiver steps at batch 16 are 300 and 150 epochs of
    # the embedded 4,000 images (docs/results.md "Training the original system").
    config.train.epochs = 300
    config.train.learning_rate = 1e-4
    config.train.grad_clip = 5.0
    config.train.beta = 1e-4
    config.train.mse_weight = 1.0
    config.train.ce_weight = 0.0  # > 0 trains the receiver jointly with the codec (CIFAR).
    config.train.receiver_epochs = 150  # Receiver first, then frozen (MNIST); 0 for CIFAR.
    config.train.receiver_learning_rate = 1e-4
    # Random crop with 4-pixel padding (CIFAR): a fresh crop every step, the trigger re-stamped at
    # its fixed position; with `crop_once`, every training image is cropped once when the data
    # set is built, before the trigger is stamped (the reference).
    config.train.augment = False
    config.train.crop_once = False
    # A fresh Adam state at the start of every training epoch (the reference builds one per epoch).
    config.train.reset_optimizer_each_epoch = False
    # Steps fused into one dispatch with jax.lax.scan (0 = a whole epoch per dispatch; one step
    # for the ResNet codec on a CPU, where XLA runs convolutions slower inside loops).
    config.train.steps_per_dispatch = 0
    # Exact unlearning by sharding (scu_jax.sharding; docs/exact-unlearning.md): `count` S
    # disjoint shards of the training set (seeded, stratified), each of `slices` R slices trained
    # in stages with a checkpoint after each; `aggregation` "best" or "vote". count 1: one system.
    config.shards = ml_collections.ConfigDict()
    config.shards.count = 1
    config.shards.slices = 1
    config.shards.aggregation = "best"

    # Unlearning (SCU and the baselines): which method, its hyper-parameters and the stopping rules.
    config.unlearning = ml_collections.ConfigDict()
    config.unlearning.method = "scu"
    config.unlearning.beta_u = 0.1  # weight of the erased-data forgetting term
    config.unlearning.lambda_kl = 1.0  # weight of KL(q_θ(z|x_e) ‖ q_θo(z|x_e))
    config.unlearning.rho = 1.0  # weight of the utility (compensation) loss L_ss
    # The paper's 1e-4 needs many more steps and loses test accuracy; 3e-4 stops sooner with the
    # same clean accuracy and MSE (docs/results.md, "Training the original system").
    config.unlearning.learning_rate = 3e-4
    config.unlearning.grad_clip = 5.0
    config.unlearning.batch_size = 16
    # The paper's cap is 20 epochs over its 3,600-image D_e, i.e. 4,500 steps; over our 240 erased
    # images the same step budget is 300 epochs. The early stop ends every method long before.
    config.unlearning.max_epochs = 300
    config.unlearning.early_stop = True
    config.unlearning.batch_stop = 0.02  # end an epoch once a batch's backdoor accuracy is below
    config.unlearning.epoch_stop = 0.10  # stop once the epoch's backdoor accuracy is below
    # "eval": all of D_e re-evaluated after the epoch, `eval_draws` draws an image (a key apart
    # from the final evaluation's); "epoch_batches": the mean over the epoch's erased batches as
    # the steps saw them (the reference: one noisy draw; docs/performance.md).
    config.unlearning.stop_on = "eval"
    # The stop of the "ids", "random" and "worst_case" forget sets, after each epoch: once D_e's
    # reconstruction error (relative to the original's and to held-out images' drift) has risen
    # by (1 − tolerance) of the original's generalisation gap; retrained systems close about
    # three quarters (docs/results.md, "Forget requests against retraining").
    config.unlearning.gap_tolerance = 0.25
    # The stop of `forget.kind="class"` (whose test images are of a class the system still knows,
    # so no held-out reference exists): stop once the receiver recognises the class on x̂(D_e)
    # less often than this (chance for 10 classes; stricter than retraining on MNIST,
    # docs/results.md, "Forget requests against retraining").
    config.unlearning.class_stop = 0.1
    # The erased term F_e that L_unl = λ_kl·KL_eo − β_u·F_e ascends: "mse", the erased
    # reconstruction error (MNIST); "ce", the receiver's CE on the backdoor target times
    # train.ce_weight; "mse+ce", both, `MSE + CE/30` (the reference's CIFAR scripts).
    config.unlearning.erased_objective = "mse"
    config.unlearning.stop_weight_gradient = False  # reference: gradients flow through a and b
    # The reference's CIFAR quirk: the adaptive weights a, b see |L_ss| with 1·MSE while the loss
    # carries mse_weight·MSE.
    config.unlearning.unit_mse_in_weights = False
    # "wrap": the last erased batch of an epoch wraps around D_e (⌈|D_e|/B⌉ steps); "drop": it is
    # skipped (⌊|D_e|/B⌋ steps, the reference's CIFAR SCU/VBU loops).
    config.unlearning.partial_batch = "wrap"
    config.unlearning.augment_remain = False  # a fresh random crop of every D_r batch (CIFAR ref.)
    config.unlearning.hbu_fixed_probe = False  # HBU reuses one Rademacher probe (the reference)
    # Per-method values of the fields above, e.g. `per_method.hbu.early_stop = True`: a method's
    # run takes config.unlearning with its entry applied (`method_config`).
    config.unlearning.per_method = ml_collections.ConfigDict()
    config.unlearning.finetune_epochs = 20  # epochs over D_r for `finetune` and `l1_sparse`
    # The field's baselines (methods/ssd.py, sparse.py, salun.py): SSD's α and λ, ℓ1-sparse's γ,
    # the share of parameters SalUn's mask keeps (λ and the half the papers'; their α = 10 and
    # γ = 5e-4 wreck the decoder here: docs/results.md, "Baselines from the field").
    config.unlearning.ssd_alpha = 15.0
    config.unlearning.ssd_lambda = 1.0
    config.unlearning.l1_strength = 1e-6
    config.unlearning.salun_fraction = 0.5
    config.unlearning.sam_radius = 0.0  # ρ_sam of SCU's, SalUn's sharpness-aware step (0: off)

    # What the evaluation adds beyond the protocol metrics.
    config.evaluation = ml_collections.ConfigDict()
    config.evaluation.mi_steps = 1500  # MINE / InfoNCE critic training steps (0 = skip MI)
    config.evaluation.mi_batch_size = 128
    config.evaluation.mi_max_examples = 1000  # D_r subsample for the MI estimates
    # Which sets get the MINE / InfoNCE estimates ("erased" is the paper's metric; the upper bound
    # is computed on both whatever this says).
    config.evaluation.mi_sets = ("erased", "remain")
    # Where x̂ is read: through the training channel ("train"), or with the channel switched off
    # ("none": the decoder reads the clean latent sample, as the reference's MNIST script does).
    config.evaluation.channel = "train"
    # Which receiver reads every system's x̂: the original's, frozen ("original": one instrument
    # for every row), or each system's own ("own": the reference's CIFAR scripts). Results also
    # carry the other one's accuracies where the two differ.
    config.evaluation.receiver = "original"
    # The forget sets without a backdoor: how many D_r images (a fixed seeded subsample) the
    # utility metrics read (0: all of D_r).
    config.evaluation.remain_examples = 2000
    # Probes of z and of the channel output y at these SNRs (dB), fresh heads, k-NN, linear
    # probes, CKA: is the erased information still sent? (scu_jax.probes; docs/is-it-gone.md)
    config.evaluation.probes = False
    config.evaluation.probe_snrs = (-5.0, 0.0, 5.0, 10.0, 20.0)

    config.eval_batch_size = 500
    # Training and retraining save a checkpoint every this many epochs and at the end of each
    # phase (a save costs about an epoch of MNIST steps: docs/performance.md "Checkpoints").
    config.checkpoint_every_epochs = 10
    # Data parallelism (scu_jax.parallel): devices on the `data` axis: 1 = one device, no mesh;
    # n = the first n; 0 = every device of every process (multi-host runs).
    config.parallel = ml_collections.ConfigDict()
    config.parallel.devices = 1
    config.log_every_seconds = 5.0  # Progress lines at most this often (and at phase ends).
    # TensorBoard curves (WORKDIR/summaries): every epoch's means, and every n-th step's values
    # (0: epochs only). Each written step costs the host one event, so not every step by default.
    config.summary_every_steps = 25
    config.eval_seed = 1234  # Fixed key for the channel and latent noise in evaluation.
    config.eval_draws = 8  # channel realisations per evaluated image, averaged (noise at low SNR)

    return config


# The unlearning fields a `per_method` entry may set: all but the method and the entries.
_PER_METHOD_FIELDS = tuple(field for field in default_config().unlearning
                           if field not in ("method", "per_method"))


def method_config(config: ml_collections.ConfigDict, method: str | None = None
                  ) -> ml_collections.ConfigDict:
    """A copy of `config` for one method's run: `unlearning.per_method[method]` applied.

    `method` defaults to `config.unlearning.method`. The copy's `per_method` is emptied, so a
    run's config says, field by field, what the method ran with."""
    resolved = config.copy_and_resolve_references()
    method = method or resolved.unlearning.method
    resolved.unlearning.method = method
    overrides = resolved.unlearning.per_method.get(method)
    with resolved.unlocked():
        for field, value in (overrides or {}).items():
            try:
                resolved.unlearning[field] = value
            except (TypeError, KeyError, ValueError) as error:
                raise ConfigError(f"config.unlearning.per_method.{method}.{field}={value!r}: "
                                  f"{error}") from None
        resolved.unlearning.per_method = ml_collections.ConfigDict()
    return resolved


def config_from_json(stored: dict[str, Any]) -> ml_collections.ConfigDict:
    """Rebuilds a config saved with a checkpoint on top of today's schema.

    Fields added to the schema since the checkpoint was written keep their defaults; fields the
    schema no longer has are dropped."""
    config = default_config()

    def merge(node: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in node:
                continue
            if key == "per_method" and isinstance(value, dict):
                node[key] = ml_collections.ConfigDict(value)  # open-ended: every entry counts
            elif isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
                merge(node[key], value)
            else:
                node[key] = tuple(value) if isinstance(node[key], tuple) else value

    merge(config, stored)
    if stored.get("training_set") == "clean" and config.forget.kind == "backdoor":
        config.forget.kind = "ids"  # a training fingerprint of the clean set (any such kind)
    return config


def training_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The JSON-able subset of the config that identifies a trained system.

    Under a forget kind without a backdoor the system trains on the clean set whatever the forget
    set is: `erasure` is left out and `training_set` reads "clean", so one trained system serves
    every request. (A backdoor system's fingerprint is as it always was, with no such field.)
    """
    plain = config.to_dict()
    fingerprint = {name: _jsonable(plain[name]) for name in TRAINING_FIELDS if name in plain}
    if plain.get("forget", {}).get("kind", "backdoor") != "backdoor":
        del fingerprint["erasure"]
        fingerprint["training_set"] = "clean"
    if plain.get("shards", {}).get("count", 1) > 1:  # one system's fingerprint stays as it was
        fingerprint["shards"] = _jsonable(plain["shards"])
    return fingerprint


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every field before any work starts; raises `ConfigError` naming field and value."""
    for field, choices in (("dataset", DATASETS), ("model.name", MODELS),
                           ("model.dtype", ("float32", "bfloat16")), ("model.init", INITS),
                           ("model.receiver", RECEIVER_MODELS), ("channel.name", CHANNELS),
                           ("channel.family", FAMILIES), ("channel.fading", FADINGS),
                           ("channel.equalizer", EQUALIZERS), ("channel.draw", DRAWS)):
        _choice(config, field, choices)
    check_field(config.channel.draw == "element" or config.channel.family == "paper",
                "channel.draw", config.channel.draw, "'scalar' is the reference's draw of the paper "
                "family; the physical family draws per symbol")
    for field, high in (("seed", 2**31 - 1), ("eval_seed", 2**31 - 1),
                        ("max_train_examples", math.inf), ("max_test_examples", math.inf),
                        ("erasure.base_class", math.inf), ("erasure.target_class", math.inf),
                        ("forget.class_id", math.inf)):
        _number(config, field, 0, high, integer=True)
    _number(config, "erasure.edr", 0.0, 0.5, low_open=True)
    _choice(config, "erasure.remain_size", ("rest", "requested"))
    _choice(config, "forget.kind", FORGET_KINDS)
    _number(config, "shards.count", 1, 4096, integer=True)
    _number(config, "shards.slices", 1, 4096, integer=True)
    _choice(config, "shards.aggregation", ("best", "vote"))
    check_field(isinstance(config.forget.ids_file, str), "forget.ids_file", config.forget.ids_file,
                "must be a path")
    _number(config, "forget.fraction", 0.0, 1.0, low_open=True)
    check_field(config.forget.fraction < 1.0, "forget.fraction", config.forget.fraction,
                "must be below 1 (something must remain)")
    _number(config, "forget.seed", -1, 2**31 - 1, integer=True)
    _number(config, "forget.known_fraction", 0.0, 1.0, low_open=True)
    for field, off in (("known_fraction", 1.0), ("expand", False)):
        check_field(config.forget[field] == off or config.forget.kind == "backdoor",
                    f"forget.{field}", config.forget[field], "applies to forget.kind='backdoor' only")
    _boolean(config, "forget.expand")
    check_field(config.erasure.base_class != config.erasure.target_class, "erasure.target_class",
                config.erasure.target_class, "must differ from erasure.base_class")
    _number(config, "model.latent_dim", 1, integer=True)
    _number(config, "model.hidden", 1, integer=True)
    widths = config.model.widths
    check_field(len(widths) > 0 and all(_finite(w) and w >= 1 for w in widths), "model.widths",
                widths, "must be a non-empty list of positive integers")
    _number(config, "channel.snr_db", -50.0, 100.0)
    _number(config, "channel.k_factor", 0.0, 1e6)
    for field, low, high in (("batch_size", 1, 65536), ("epochs", 0, 10000),
                             ("receiver_epochs", 0, 10000), ("steps_per_dispatch", 0, math.inf)):
        _number(config, f"train.{field}", low, high, integer=True)
    for field in ("learning_rate", "receiver_learning_rate"):
        _number(config, f"train.{field}", 0.0, 10.0, low_open=True)
    _number(config, "train.grad_clip", 0.0, low_open=True)
    for field in ("beta", "mse_weight", "ce_weight"):
        _number(config, f"train.{field}", 0.0)
    check_field(not config.train.crop_once or config.train.augment, "train.crop_once",
                config.train.crop_once, "needs train.augment=True (it says when to crop)")
    _number(config, "eval_batch_size", 1, 65536, integer=True)
    _number(config, "log_every_seconds", 0.0)
    _number(config, "summary_every_steps", 0, integer=True)
    _number(config, "checkpoint_every_epochs", 1, 10000, integer=True)
    _number(config, "eval_draws", 1, 1000, integer=True)
    _number(config, "parallel.devices", 0, 65536, integer=True)
    _choice(config, "unlearning.method", METHODS)
    _choice(config, "evaluation.channel", EVALUATION_CHANNELS)
    _choice(config, "evaluation.receiver", RECEIVERS)
    unknown = sorted(set(config.unlearning.per_method) - set(METHODS))
    check_field(not unknown, "unlearning.per_method", unknown,
                f"names methods from: {', '.join(METHODS)}")
    for method, overrides in config.unlearning.per_method.items():
        fields = sorted(set(overrides) - set(_PER_METHOD_FIELDS))
        check_field(not fields, f"unlearning.per_method.{method}", fields,
                    f"may set only: {', '.join(_PER_METHOD_FIELDS)}")
    _validate_unlearning(config)
    for method in config.unlearning.per_method:
        # The base fields passed: what fails now is a value this entry sets.
        try:
            _validate_unlearning(method_config(config, method))
        except ConfigError as error:
            raise ConfigError(str(error).replace("config.unlearning.",
                                                 f"config.unlearning.per_method.{method}.", 1)) from None
    for field, low, high in (("mi_steps", 0, 10**7), ("mi_batch_size", 2, 65536),
                             ("mi_max_examples", 2, math.inf), ("remain_examples", 0, math.inf)):
        _number(config, f"evaluation.{field}", low, high, integer=True)
    _boolean(config, "evaluation.probes")
    snrs = config.evaluation.probe_snrs
    check_field(len(snrs) > 0 and all(isinstance(s, (int, float)) and -50 <= s <= 60
                                      for s in snrs), "evaluation.probe_snrs", snrs,
                "must be one or more SNRs in [-50, 60] dB")
    check_field(set(config.evaluation.mi_sets) <= {"erased", "remain"}, "evaluation.mi_sets",
                config.evaluation.mi_sets, "must be a subset of: erased, remain")


def _validate_unlearning(config: ml_collections.ConfigDict) -> None:
    """The `config.unlearning` fields of one method's run (after `method_config`)."""
    _choice(config, "unlearning.erased_objective", ERASED_OBJECTIVES)
    check_field(config.unlearning.erased_objective == "mse" or config.train.ce_weight > 0,
                "unlearning.erased_objective", config.unlearning.erased_objective,
                "needs the receiver's CE term (train.ce_weight > 0), or the forget term is 0: "
                "use 'mse'")
    _choice(config, "unlearning.stop_on", ("epoch_batches", "eval"))
    _choice(config, "unlearning.partial_batch", ("wrap", "drop"))
    for field in ("beta_u", "lambda_kl", "rho"):
        _number(config, f"unlearning.{field}", 0.0, 1e6)
    for field in ("batch_stop", "epoch_stop", "gap_tolerance", "class_stop"):
        _number(config, f"unlearning.{field}", 0.0, 1.0)
    for field, high in (("ssd_alpha", 1e9), ("ssd_lambda", 1e9), ("l1_strength", 10.0),
                        ("sam_radius", 1e3)):
        _number(config, f"unlearning.{field}", 0.0, high)
    for field, high in (("batch_size", 65536), ("max_epochs", 10000), ("finetune_epochs", 10000)):
        _number(config, f"unlearning.{field}", 1, high, integer=True)
    _number(config, "unlearning.learning_rate", 0.0, 10.0, low_open=True)
    _number(config, "unlearning.grad_clip", 0.0, low_open=True)
    _number(config, "unlearning.salun_fraction", 0.0, 1.0, low_open=True)
    for field in ("early_stop", "stop_weight_gradient", "unit_mse_in_weights", "augment_remain",
                  "hbu_fixed_probe"):
        _boolean(config, f"unlearning.{field}")
