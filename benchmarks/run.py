"""`python -m benchmarks.run`: step throughput of JAX (per-step dispatch and scan-fused) against the
PyTorch eager reference, side by side in one process, with achieved FLOP/s against the machine's
measured matrix-multiply FLOP/s.

  python -m benchmarks.run --out=runs/benchmark.json   # MNIST codec 16/128/1024, CIFAR codec 16/128
  python -m benchmarks.run --batches=16 --methods=train,scu --repeats=5 --cifar_batches=
  python -m benchmarks.run --cifar_dtype=bfloat16          # the CIFAR ResNet codec in bf16 (GPU)
  python -m benchmarks.run --batches= --cifar_batches=16 --cifar_methods=train --rolled_scan

Every number is the best of `--repeats` timed runs after a warm-up (compilation is timed apart).
Throughput does not depend on pixel values, so the images are synthetic uint8 noise.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

from absl import app, flags

from scu_jax.runs.files import write_text_atomic

_OUT = flags.DEFINE_string("out", "runs/benchmark.json", "Where the JSON results go.")
_BATCHES = flags.DEFINE_list("batches", ["16", "128", "1024"], "Batch sizes (MNIST codec).")
_METHODS = flags.DEFINE_list("methods", ["train", "scu", "scu_no_cc", "vbu", "hbu"],
                             "Steps to time: train and the erased-data unlearning methods.")
_STEPS = flags.DEFINE_integer("steps", 250, "Steps per timed run (one scan block).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per measurement; the best is kept.")
_TORCH = flags.DEFINE_boolean("torch", True, "Time the PyTorch eager reference too.")
_CIFAR_BATCHES = flags.DEFINE_list("cifar_batches", ["16", "128"],
                                   "Batch sizes for the CIFAR ResNet codec (empty: none).")
_CIFAR_METHODS = flags.DEFINE_list("cifar_methods", ["train", "scu"],
                                   "Steps to time on the CIFAR codec.")
_CIFAR_STEPS = flags.DEFINE_integer("cifar_steps", 3, "Steps per timed CIFAR run (one scan block).")
_CIFAR_REPEATS = flags.DEFINE_integer("cifar_repeats", 1, "Timed runs per CIFAR measurement (a "
                                      "ResNet SCU step at batch 128 takes seconds on a CPU).")
_ROLLED = flags.DEFINE_boolean("rolled_scan", False, "Keep every scan a loop, even where "
                               "build.convolutions_slow_in_loops unrolls it (to measure why).")
_CIFAR_DTYPE = flags.DEFINE_enum("cifar_dtype", "float32", ["float32", "bfloat16"],
                                 "Compute dtype of the CIFAR ResNet codec.")


def _best(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_flops(repeats: int, size: int = 1024) -> dict[str, float]:
    """Measured float32 matrix-multiply FLOP/s (2n³ per product), JAX and (if present) PyTorch."""
    import jax
    import numpy as np

    a = jax.device_put(np.random.default_rng(0).standard_normal((size, size), np.float32))
    product = jax.jit(lambda x: x @ x)
    product(a).block_until_ready()
    count = 10

    def run():
        for _ in range(count):
            out = product(a)
        out.block_until_ready()

    result = {"matmul_size": size, "jax_matmul_flops": 2 * size**3 * count / _best(run, repeats)}
    if _TORCH.value:
        import torch

        t = torch.from_numpy(np.array(a))
        result["torch_matmul_flops"] = 2 * size**3 * count / _best(
            lambda: [t @ t for _ in range(count)], repeats)
    return result


def _setup(codec: str, batch_size: int, steps: int):
    import jax
    import numpy as np

    from scu_jax import config as config_lib
    from scu_jax import presets
    from scu_jax.methods import training
    from scu_jax.runs.build import build_system, recipe_of

    if codec == "mnist":
        config, shape = config_lib.default_config(), (28, 28, 1)
    else:  # the paper's CIFAR-10 system: ResNet encoder and decoder, joint receiver
        config, shape = presets.cifar_config("cifar10"), (32, 32, 3)
        config.model.dtype = _CIFAR_DTYPE.value
    config.train.batch_size = config.unlearning.batch_size = batch_size
    system = build_system(config, shape, 10)
    state = training.initial_state(system, recipe_of(config), config.seed, shape)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (steps, batch_size, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, (steps, batch_size)).astype(np.int32)
    return config, system, state, jax.device_put(images), jax.device_put(labels)


def jax_step_throughput(method: str, batch_size: int, repeats: int, codec: str = "mnist",
                        steps: int = 250) -> dict[str, float]:
    """Samples/s of one method's step: per-step dispatch (one jitted call per step) and one
    `lax.scan` block of `steps` steps; compile times; XLA's FLOP count of a step."""
    import jax
    import jax.numpy as jnp

    from scu_jax.methods import Batch, training
    from scu_jax.runs.build import convolutions_slow_in_loops, method_of, recipe_of

    config, system, train_state, images, labels = _setup(codec, batch_size, steps)
    # As the engine does: where XLA runs the step slower inside a loop (the ResNet on a CPU),
    # the block is unrolled (one dispatch, no loop).
    unroll = convolutions_slow_in_loops(config) and not _ROLLED.value
    key = jax.random.PRNGKey(0)
    if method == "train":
        step = training.codec_step(system, recipe_of(config))
        state = train_state

        def one(s, i):
            return step(s, training.Examples(images[i], labels[i]), key)
    else:
        config.unlearning.method = method
        algorithm = method_of(config, system)
        state = algorithm.init(train_state.params, train_state.batch_stats)
        half = images.shape[0] // 2

        def one(s, i):  # erased batch i, remaining batch i + half (pairs as the loop forms them)
            j = (i + half) % images.shape[0]
            return algorithm.step(s, Batch(images[i], labels[i], images[j], labels[j]), key)

    single = jax.jit(lambda s, i: one(s, i)[0], donate_argnums=0)
    started = time.perf_counter()
    compiled_single = single.lower(state, jnp.int32(0)).compile()
    compile_single = time.perf_counter() - started
    cost = compiled_single.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0

    def run_block(s):
        return jax.lax.scan(lambda c, i: (one(c, i)[0], None), s, jnp.arange(images.shape[0]),
                            unroll=unroll)[0]

    block = jax.jit(run_block, donate_argnums=0)
    started = time.perf_counter()
    compiled_block = block.lower(state).compile()
    compile_block = time.perf_counter() - started
    indices = [jnp.int32(i) for i in range(images.shape[0])]
    holder = {"state": jax.tree.map(jnp.copy, state)}

    def dispatch():
        s = holder["state"]
        for i in indices:
            s = compiled_single(s, i)
        jax.block_until_ready(s)
        holder["state"] = s

    def fused():
        holder["state"] = jax.block_until_ready(compiled_block(holder["state"]))

    dispatch()  # warm-up
    per_step = _best(dispatch, repeats) / len(indices)
    fused()
    per_step_fused = _best(fused, repeats) / len(indices)
    return {"codec": codec if codec == "mnist" else f"cifar10 ({_CIFAR_DTYPE.value})",
            "method": method, "batch_size": batch_size, "scan_unrolled": unroll,
            "dispatch_samples_per_s": batch_size / per_step,
            "scan_samples_per_s": batch_size / per_step_fused,
            "dispatch_step_ms": 1e3 * per_step, "scan_step_ms": 1e3 * per_step_fused,
            "compile_step_s": compile_single, "compile_scan_s": compile_block,
            "xla_flops_per_step": flops,
            "scan_flops_per_s": flops / per_step_fused if flops else None}


def torch_step_throughput(method: str, batch_size: int, repeats: int) -> dict[str, float] | None:
    """Samples/s of the PyTorch eager reference's step (train and scu only)."""
    if method not in ("train", "scu"):
        return None
    import numpy as np
    import torch

    from benchmarks.torch_reference import Reference

    reference = Reference()
    rng = np.random.default_rng(0)
    count = _STEPS.value
    data = torch.from_numpy(rng.random((count, batch_size, 28, 28, 1), dtype=np.float32))
    if method == "train":
        def run():
            for i in range(count):
                reference.train_step(data[i])
    else:
        half = count // 2

        def run():
            for i in range(count):
                reference.scu_step(data[i], data[(i + half) % count])
    run()  # warm-up
    per_step = _best(run, repeats) / count
    return {"torch_samples_per_s": batch_size / per_step, "torch_step_ms": 1e3 * per_step}


def _machine() -> dict[str, Any]:
    from scu_jax.experiments.machine import machine_info

    info = machine_info()
    if _TORCH.value:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


def _table(rows: list[dict[str, Any]], peak: float) -> str:
    lines = ["| codec | step | batch | JAX per-step dispatch samples/s | JAX scan-fused samples/s | "
             "PyTorch eager samples/s | scan / PyTorch | dispatch / PyTorch | compile s (step, scan) "
             "| achieved GFLOP/s (scan) | of matmul peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        torch_rate = r.get("torch_samples_per_s")
        ratio = (lambda x: f"{x / torch_rate:.1f}×") if torch_rate else (lambda x: "–")
        achieved = r.get("scan_flops_per_s")
        lines.append(
            f"| {r['codec']} | {r['method']} | {r['batch_size']} | {r['dispatch_samples_per_s']:,.0f} | "
            f"{r['scan_samples_per_s']:,.0f}{' (unrolled)' if r.get('scan_unrolled') else ''} | "
            f"{f'{torch_rate:,.0f}' if torch_rate else '–'} | {ratio(r['scan_samples_per_s'])} | "
            f"{ratio(r['dispatch_samples_per_s'])} | {r['compile_step_s']:.2f}, {r['compile_scan_s']:.2f} | "
            f"{f'{achieved / 1e9:.2f}' if achieved else '–'} | "
            f"{f'{100 * achieved / peak:.1f} %' if achieved else '–'} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"benchmarks.run: error: unexpected arguments: {' '.join(argv[1:])}")
    try:
        batches = [int(b) for b in _BATCHES.value]
        cifar_batches = [int(b) for b in _CIFAR_BATCHES.value]
    except ValueError:
        sys.exit("benchmarks.run: error: --batches and --cifar_batches must be integers")
    known = ("train", "scu", "scu_no_cc", "vbu", "hbu")
    if (not set(_METHODS.value) | set(_CIFAR_METHODS.value) <= set(known)
            or min(batches + cifar_batches, default=1) < 1 or min(_STEPS.value, _CIFAR_STEPS.value) < 2):
        sys.exit(f"benchmarks.run: error: --methods and --cifar_methods from {', '.join(known)}, "
                 "batches >= 1 and --steps, --cifar_steps >= 2")
    repeats = _REPEATS.value
    results: dict[str, Any] = {"machine": _machine(), **matmul_flops(repeats)}
    rows = []
    plan = ([("mnist", b, m, _STEPS.value, repeats) for b in batches for m in _METHODS.value]
            + [("cifar", b, m, _CIFAR_STEPS.value, max(_CIFAR_REPEATS.value, 1))
               for b in cifar_batches for m in _CIFAR_METHODS.value])
    for codec, batch_size, method, steps, times in plan:
        row = jax_step_throughput(method, batch_size, times, codec, steps)
        if _TORCH.value and codec == "mnist":  # the reference mirrors the MNIST codec only
            row.update(torch_step_throughput(method, batch_size, repeats) or {})
        rows.append(row)
        print(f"{codec} {method} batch {batch_size}: scan {row['scan_samples_per_s']:,.0f}/s, "
              f"dispatch {row['dispatch_samples_per_s']:,.0f}/s"
              + (f", torch {row['torch_samples_per_s']:,.0f}/s" if "torch_samples_per_s" in row else ""),
              file=sys.stderr, flush=True)
    results["steps"] = rows
    write_text_atomic(_OUT.value, json.dumps(results, indent=2) + "\n")
    print(f"matmul peak (float32, {results['matmul_size']}²): JAX "
          f"{results['jax_matmul_flops'] / 1e9:.1f} GFLOP/s"
          + (f", PyTorch {results['torch_matmul_flops'] / 1e9:.1f} GFLOP/s"
             if "torch_matmul_flops" in results else ""))
    print(_table(rows, results["jax_matmul_flops"]))


if __name__ == "__main__":
    app.run(main)
