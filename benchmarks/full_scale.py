"""`python -m benchmarks.full_scale`: retraining (so training throughput) and SCU unlearning at a
dataset's full size, on synthetic images of its shape (no dataset can be downloaded where the
GPU runs): the wall times behind the GPU speed-up over retraining.

  python -m benchmarks.full_scale --dataset=mnist                      # 60,000 images
  python -m benchmarks.full_scale --dataset=cifar10 --scale_fraction=0.05 --scale_scu_epochs=2

Every run is the library's own code path: the erasure protocol (`make_erasure_split`, EDR 6 %
of the training set triggered from the base class) on a `Dataset` of uniform uint8 noise with
uniform labels; the preset's training recipe on D_r through `runs.train.fit` (retraining, the
exact-unlearning reference); SCU through `runs.erasing.erased_loop`, its early stop off so that
it runs all its epochs (the reference's MNIST SCU has no stop; on CIFAR its per-batch stop ends
runs sooner, so this is the bound). Wall times leave compilation out (timed apart). With
`--scale_fraction` below 1 the recipe's epochs (receiver and codec alike) are scaled down and the
full retraining time is extrapolated from them (every epoch of a phase runs the same steps); the
SCU time over `--scale_scu_epochs` is extrapolated to the preset's most epochs the same way.
Throughput does not depend on pixel values.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from absl import app, flags

_DATASET = flags.DEFINE_enum("dataset", "mnist", ["mnist", "cifar10"], "The dataset whose size "
                             "and shape the synthetic set takes (60,000 or 50,000 images).")
_SIZE = flags.DEFINE_integer("scale_size", 0, "Training images (0: the dataset's).")
_DTYPE = flags.DEFINE_enum("scale_dtype", "float32", ["float32", "bfloat16"],
                           "The ResNet codec's compute dtype.")
_FRACTION = flags.DEFINE_float("scale_fraction", 1.0, "The share of the recipe's epochs run.")
_SCU_EPOCHS = flags.DEFINE_integer("scale_scu_epochs", 0, "SCU epochs run (0: the preset's most).")
_JSON = flags.DEFINE_string("scale_json", "", "Where the JSON result goes (empty: none).")

SIZES = {"mnist": (60000, (28, 28, 1)), "cifar10": (50000, (32, 32, 3))}
EDR = 0.06


def _config(dataset: str, dtype: str):
    from scu_jax import presets

    config = presets.preset(dataset)
    config.model.dtype = dtype
    config.evaluation.mi_steps = 0
    config.unlearning.method = "scu"
    config.unlearning.early_stop = False
    return config


def _split(dataset: str, size: int, seed: int = 0):
    import numpy as np

    from scu_jax.data import Dataset
    from scu_jax.data.erasure import make_erasure_split

    shape = SIZES[dataset][1]
    rng = np.random.default_rng(seed)
    data = Dataset(name=dataset, train_images=rng.integers(0, 256, (size, *shape), dtype=np.uint8),
                   train_labels=rng.integers(0, 10, size).astype(np.int32),
                   test_images=np.zeros((0, *shape), np.uint8),
                   test_labels=np.zeros((0,), np.int32), num_classes=10)
    return make_erasure_split(data, edr=EDR, base_class=1, target_class=2, seed=seed)


def scaled_epochs(receiver_epochs: int, epochs: int, fraction: float) -> tuple[int, int]:
    """The recipe's (receiver, codec) epochs times `fraction`, each a whole number."""
    scaled = (receiver_epochs * fraction, epochs * fraction)
    if fraction <= 0 or fraction > 1 or any(abs(e - round(e)) > 1e-9 for e in scaled) \
            or round(scaled[1]) < 1:
        raise ValueError(f"--scale_fraction={fraction}: must make whole epochs of the recipe's "
                         f"{receiver_epochs} receiver and {epochs} codec epochs, at least one "
                         "codec epoch")
    return round(scaled[0]), round(scaled[1])


def measure(dataset: str, *, size: int = 0, dtype: str = "float32", fraction: float = 1.0,
            scu_epochs: int = 0) -> dict[str, Any]:
    """Retraining and SCU on the synthetic full-size set (see the module's docstring)."""
    import jax

    from scu_jax.methods import training
    from scu_jax.parallel import DataParallel
    from scu_jax.runs.build import build_system, recipe_of
    from scu_jax.runs.erasing import erased_loop
    from scu_jax.runs.train import fit

    config = _config(dataset, dtype)
    recipe = recipe_of(config)
    receiver_epochs, epochs = scaled_epochs(recipe.receiver_epochs, recipe.epochs, fraction)
    split = _split(dataset, size or SIZES[dataset][0])
    shape = split.remain_images.shape[1:]
    system = build_system(config, shape, 10)
    run = dataclasses.replace(recipe, receiver_epochs=receiver_epochs, epochs=epochs)
    state = training.initial_state(system, run, config.seed, shape)
    trained, report = fit(system, run, config, state, split.remain_images, split.remain_labels,
                          parallel=DataParallel(), name="retrain")
    scale = recipe.total_epochs / run.total_epochs
    result = {"dataset": dataset, "dtype": dtype, "train_images": int(len(split.train_images)),
              "erased": int(len(split.erased_images)), "remain": int(len(split.remain_images)),
              "batch_size": recipe.batch_size,
              "retrain": {"epochs_run": [receiver_epochs, epochs],
                          "recipe_epochs": [recipe.receiver_epochs, recipe.epochs],
                          "steps": report.steps, "seconds": report.seconds,
                          "compile_s": report.compile_seconds,
                          "images_per_s": report.steps * recipe.batch_size / report.seconds,
                          "full_seconds": report.seconds * scale,
                          "extrapolated": scale != 1.0}}
    most = config.unlearning.max_epochs
    config.unlearning.max_epochs = scu_epochs or most
    params, batch_stats = jax.device_get((trained.params, trained.batch_stats))
    _, _, info = erased_loop(config, system, split, params, batch_stats, None, shape,
                             DataParallel())
    per_epoch = info["unlearn_seconds"] / info["epochs"]
    result["scu"] = {"epochs_run": info["epochs"], "most_epochs": most, "steps": info["steps"],
                     "seconds": info["unlearn_seconds"], "compile_s": info["compile_seconds"],
                     "seconds_per_epoch": per_epoch, "most_epochs_seconds": per_epoch * most,
                     "extrapolated": info["epochs"] != most}
    result["speedup"] = result["retrain"]["full_seconds"] / result["scu"]["most_epochs_seconds"]
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| data set (synthetic) | dtype | D_e / D_r | retraining | training images/s | "
             "SCU (every epoch) | SCU a epoch | retraining / SCU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        retrain, scu = r["retrain"], r["scu"]
        lines.append(
            f"| {r['dataset']} ({r['train_images']:,}) | {r['dtype']} | "
            f"{r['erased']:,} / {r['remain']:,} | {retrain['full_seconds']:.1f} s"
            + (" (extrapolated)" if retrain["extrapolated"] else "")
            + f" | {retrain['images_per_s']:,.0f} | {scu['most_epochs_seconds']:.2f} s"
            + (" (extrapolated)" if scu["extrapolated"] else "")
            + f", {scu['most_epochs']} epochs | {scu['seconds_per_epoch']:.3f} s | "
            f"{r['speedup']:.0f}× |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"benchmarks.full_scale: error: unexpected arguments: {' '.join(argv[1:])}")
    from scu_jax.runs.files import write_text_atomic
    from scu_jax.runs.logs import quiet_library_logs

    quiet_library_logs()
    try:
        result = measure(_DATASET.value, size=_SIZE.value, dtype=_DTYPE.value,
                         fraction=_FRACTION.value, scu_epochs=_SCU_EPOCHS.value)
    except ValueError as error:
        sys.exit(f"benchmarks.full_scale: error: {error}")
    if _JSON.value:
        write_text_atomic(_JSON.value, json.dumps(result, indent=2) + "\n")
    print(markdown([result]))


if __name__ == "__main__":
    app.run(main)
