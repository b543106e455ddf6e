"""`python -m benchmarks.run`: step throughput of JAX (per-step dispatch and scan-fused) against the
PyTorch reference (eager, the loss under `torch.compile`, the whole step under `torch.compile`),
side by side in one process, each step against its floor (the bare matrix multiplies or
convolutions of the step, timed the same way) and both against the measured matmul peak.

  python -m benchmarks.run --out=runs/benchmark.json   # MNIST 16/128 (every method), CIFAR 16
  python -m benchmarks.run --batches=16 --methods=scu --cifar_batches= --repeats=6
  python -m benchmarks.run --batches=16 --methods=scu --cifar_batches= --unroll=1,2,4
  python -m benchmarks.run --cifar_dtype=bfloat16          # the CIFAR ResNet codec in bf16 (GPU)
  python -m benchmarks.run --batches= --cifar_batches=16 --cifar_methods=train --rolled_scan

Run time of the default command on the 2-core CPU: 17 min 13 s on a busy machine for a first
version that ran 600-step windows at batch 128 too and compiled the CIFAR floor as one unrolled
block (250 s); these defaults save about 8 of those minutes, so expect under 10 minutes idle
(torch.compile: seconds with a warm inductor cache, ~2.5 min cold).

Timing protocol, the same for every rate (JAX and PyTorch, step and floor): a window is `--steps`
steps at batch 16 (one scan block, as many dispatches, or as many PyTorch steps; a batch of B
runs steps·16/B); a measurement is the best of `--windows` windows after a warm-up; the
measurement is repeated `--repeats` times and every rate is reported as its range (min–max over
the repeats). Compilation (XLA and torch.compile) is timed apart. Throughput does not depend on
pixel values, so the images are synthetic uint8 noise, a pool of `_POOL` batches that the steps
cycle through.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

from absl import app, flags

from scu_jax.runs.files import write_text_atomic

_OUT = flags.DEFINE_string("out", "runs/benchmark.json", "Where the JSON results go.")
_BATCHES = flags.DEFINE_list("batches", ["16", "128"], "Batch sizes (MNIST codec).")
_METHODS = flags.DEFINE_list("methods", ["train", "scu", "scu_no_cc", "vbu", "hbu"],
                             "Steps to time: train and the erased-data unlearning methods.")
_STEPS = flags.DEFINE_integer("steps", 600, "Steps per timed window (one scan block) at batch "
                              "16; a batch of B runs steps·16/B (at least 2), so that every "
                              "window holds about as many samples.")
_WINDOWS = flags.DEFINE_integer("windows", 3, "Windows per measurement; the best is kept.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Measurements per rate; the table shows their "
                                "range.")
_UNROLL = flags.DEFINE_list("unroll", ["1"], "`lax.scan` unroll factors to time the MNIST scan "
                            "with (one column each).")
_TORCH = flags.DEFINE_boolean("torch", True, "Time the PyTorch reference too.")
_TORCH_COMPILE = flags.DEFINE_boolean("torch_compile", True, "Time the PyTorch reference under "
                                      "torch.compile too (the loss, and the whole step).")
_CIFAR_BATCHES = flags.DEFINE_list("cifar_batches", ["16"],
                                   "Batch sizes for the CIFAR ResNet codec (empty: none).")
_CIFAR_METHODS = flags.DEFINE_list("cifar_methods", ["train", "scu"],
                                   "Steps to time on the CIFAR codec.")
_CIFAR_STEPS = flags.DEFINE_integer("cifar_steps", 3, "Steps per CIFAR window (one scan block).")
_CIFAR_WINDOWS = flags.DEFINE_integer("cifar_windows", 1, "Windows per CIFAR measurement (a "
                                      "ResNet SCU step takes seconds on a CPU).")
_CIFAR_REPEATS = flags.DEFINE_integer("cifar_repeats", 1, "Measurements per CIFAR rate.")
_ROLLED = flags.DEFINE_boolean("rolled_scan", False, "Keep every scan a loop, even where "
                               "build.convolutions_slow_in_loops unrolls it (to measure why).")
_MANY_RUNS = flags.DEFINE_list("many_runs", ["1", "2", "4", "8", "16"],
                               "Numbers N of independent SCU runs to time vmapped in one program "
                               "against one by one (benchmarks/many.py; empty: none).")
_MANY_EPOCHS = flags.DEFINE_integer("many_epochs", 10, "Epochs of each of those runs.")
_MANY_ALONE = flags.DEFINE_boolean("many_alone", True, "Time those runs one by one too.")
_MANY_TRAIN_RUNS = flags.DEFINE_list("many_train_runs", ["1", "2", "4"],
                                     "Training runs vmapped in one program, each N, against one by "
                                     "one (benchmarks/many.py; empty: none).")
_MANY_TRAIN_EPOCHS = flags.DEFINE_integer("many_train_epochs", 3,
                                          "Codec epochs of each training run (after one receiver "
                                          "epoch).")
_CIFAR_DTYPE = flags.DEFINE_enum("cifar_dtype", "float32", ["float32", "bfloat16"],
                                 "Compute dtype of the CIFAR ResNet codec.")
_PEAK_SIZE = flags.DEFINE_integer("peak_size", 2048, "Side of the square float32 matrices whose "
                                  "product measures the matmul peak.")

_POOL = 16  # distinct batches on the device; step i reads batch i % _POOL


def _best(fn: Callable[[], Any], windows: int) -> float:
    """The shortest wall time of `windows` calls of `fn`."""
    best = float("inf")
    for _ in range(windows):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def flop_count(lowered, compiled) -> float:
    """XLA's FLOP count of a program: the lowered HLO's (the backend-independent count; a GPU's
    compiled count can miss the library calls that do the products), else the compiled one's;
    0.0 where neither gives a positive count (shown as unknown, never as a share of a peak)."""
    for source in (lowered, compiled):
        try:
            cost = source.cost_analysis()
        except Exception:  # some backends count nothing
            continue
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float((cost or {}).get("flops", 0.0))
        if flops > 0:
            return flops
    return 0.0


def rates(window: Callable[[], Any], steps: int, windows: int, repeats: int) -> list[float]:
    """Steps/s of `window` (which runs `steps` steps), best of `windows` windows, for each of
    `repeats` measurements; one warm-up window first."""
    window()
    return [steps / _best(window, windows) for _ in range(repeats)]


def span(values: list[float] | None) -> tuple[float, float] | None:
    """(min, max) of the measurements."""
    return (min(values), max(values)) if values else None


def matmul_flops(repeats: int, size: int = 2048, windows: int = 3) -> dict[str, Any]:
    """Measured float32 matrix-multiply FLOP/s (2n³ per product), JAX and (if timed) PyTorch,
    one value per repeat."""
    import jax
    import numpy as np

    a = jax.device_put(np.random.default_rng(0).standard_normal((size, size), np.float32))
    product = jax.jit(lambda x: x @ x)
    product(a).block_until_ready()
    count = max(1, 2 * 1024**3 // size**3)  # about 2 GFLOP a window

    def run():
        for _ in range(count):
            out = product(a)
        out.block_until_ready()

    flops = 2 * size**3 * count
    result = {"matmul_size": size,
              "jax_matmul_flops": [r * flops for r in rates(run, 1, windows, repeats)]}
    if _TORCH.value:
        import torch

        t = torch.from_numpy(np.array(a))
        result["torch_matmul_flops"] = [
            r * flops for r in rates(lambda: [t @ t for _ in range(count)], 1, windows, repeats)]
    return result


def _setup(codec: str, batch_size: int, dtype: str = "float32"):
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
        config.model.dtype = dtype
        # No crop in the step: the PyTorch mirror (torch_cifar) has none, so both do the same
        # arithmetic; a crop is a few element-wise passes over the batch.
        config.train.augment = False
    config.train.batch_size = config.unlearning.batch_size = batch_size
    system = build_system(config, shape, 10)
    state = training.initial_state(system, recipe_of(config), config.seed, shape)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (_POOL, batch_size, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, (_POOL, batch_size)).astype(np.int32)
    return config, system, state, jax.device_put(images), jax.device_put(labels)


def _step_function(method: str, config, system, train_state, images, labels):
    """`(one(state, i) → (state, metrics), initial state)` for step i of `method`."""
    import jax

    from scu_jax.methods import Batch, training
    from scu_jax.runs.build import method_of, recipe_of

    key = jax.random.PRNGKey(0)
    if method == "train":
        step = training.codec_step(system, recipe_of(config))

        def one(s, i):
            return step(s, training.Examples(images[i % _POOL], labels[i % _POOL]), key)

        return one, train_state
    config.unlearning.method = method
    algorithm = method_of(config, system)

    def one(s, i):  # erased batch i, remaining batch i + half (pairs as the loop forms them)
        e, r = i % _POOL, (i + _POOL // 2) % _POOL
        return algorithm.step(s, Batch(images[e], labels[e], images[r], labels[r]), key)

    return one, algorithm.init(train_state.params, train_state.batch_stats)


def _scan_window(one: Callable, state: Any, steps: int, unroll: int | bool):
    """A compiled `lax.scan` block of `steps` steps, its compile seconds, and a window that
    runs it on a held (donated) state."""
    import jax
    import jax.numpy as jnp

    def run_block(s):
        return jax.lax.scan(lambda c, i: (one(c, i)[0], None), s, jnp.arange(steps),
                            unroll=unroll)[0]

    started = time.perf_counter()
    compiled = jax.jit(run_block, donate_argnums=0).lower(state).compile()
    compile_seconds = time.perf_counter() - started
    holder = {"state": jax.tree.map(jnp.copy, state)}

    def window():
        holder["state"] = jax.block_until_ready(compiled(holder["state"]))

    return window, compile_seconds


def jax_step_throughput(method: str, batch_size: int, repeats: int, codec: str = "mnist",
                        steps: int = 600, windows: int = 3,
                        unrolls: tuple[int, ...] = (1,), *, dtype: str = "float32",
                        rolled: bool = False, scan: bool = True) -> dict[str, Any]:
    """Steps/s of one method's step: per-step dispatch (one jitted call per step) and one
    `lax.scan` block of `steps` steps (for each scan unroll factor in `unrolls`; the ResNet on a
    CPU is always fully unrolled, unless `rolled`; none without `scan`); compile times; XLA's
    FLOP count of a step; the device's peak memory where it reports one. Each rate is a list,
    one value per repeat. `dtype` is the ResNet codec's compute dtype."""
    import jax
    import jax.numpy as jnp

    from scu_jax.runs.build import convolutions_slow_in_loops

    config, system, train_state, images, labels = _setup(codec, batch_size, dtype)
    one, state = _step_function(method, config, system, train_state, images, labels)
    # As the engine does: where XLA runs the step slower inside a loop (the ResNet on a CPU),
    # the block is unrolled (one dispatch, no loop).
    fully_unrolled = convolutions_slow_in_loops(config) and not rolled
    single = jax.jit(lambda s, i: one(s, i)[0], donate_argnums=0)
    started = time.perf_counter()
    lowered = single.lower(state, jnp.int32(0))
    compiled_single = lowered.compile()
    compile_single = time.perf_counter() - started
    flops = flop_count(lowered, compiled_single)
    indices = [jnp.int32(i) for i in range(steps)]
    holder = {"state": jax.tree.map(jnp.copy, state)}

    def dispatch():
        s = holder["state"]
        for i in indices:
            s = compiled_single(s, i)
        holder["state"] = jax.block_until_ready(s)

    row = {"codec": codec if codec == "mnist" else f"cifar10 ({dtype})",
           "method": method, "batch_size": batch_size, "scan_unrolled": fully_unrolled,
           "steps_per_window": steps, "windows": windows,
           "dispatch_steps_per_s": rates(dispatch, steps, windows, repeats),
           "compile_step_s": compile_single, "xla_flops_per_step": flops}
    for unroll in ((True,) if fully_unrolled else unrolls) if scan else ():
        window, compile_scan = _scan_window(one, state, steps, unroll)
        suffix = "" if unroll in (1, True) else f"_unroll{unroll}"
        row[f"scan{suffix}_steps_per_s"] = rates(window, steps, windows, repeats)
        row[f"compile_scan{suffix}_s"] = compile_scan
    analysis = compiled_single.memory_analysis()
    if analysis is not None:  # what one step holds on the device: its arguments, outputs, scratch
        row["step_bytes"] = int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                                - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)
    return row


def _mnist_floor_step(system, params):
    """The floor of the MNIST codec's step: forward and backward of its six dense layers alone
    (encoder 784→96→40, decoder 20→96→784, receiver 784→96→10) on the step's rows as one batch
    (the erased and remaining batches of an unlearning step), with plain SGD: no noise, no
    channel, no KL, no Adam."""
    import jax
    import jax.numpy as jnp

    latent = system.codec.latent_dim

    def dense(layer, x):
        return x @ layer["kernel"] + layer["bias"]

    def loss(layers, x):
        stats = dense(layers["encoder"]["out"], jax.nn.relu(dense(layers["encoder"]["hidden"], x)))
        decoder = layers["decoder"]["mlp"]
        x_hat = jax.nn.sigmoid(dense(decoder["out"], jax.nn.relu(dense(decoder["hidden"],
                                                                       stats[:, :latent]))))
        receiver = layers["receiver"]["mlp"]
        logits = dense(receiver["out"], jax.nn.relu(dense(receiver["hidden"], x_hat)))
        return jnp.mean((x_hat - x) ** 2) + jnp.mean(logits ** 2)

    def step(layers, x):
        grads = jax.grad(loss)(layers, x)
        return jax.tree.map(lambda p, g: p - 1e-4 * g, layers, grads)

    layers = {"encoder": params["codec"]["encoder"], "decoder": params["codec"]["decoder"],
              "receiver": params["receiver"]}
    return step, layers


def _called_primitives(jaxpr, names: tuple[str, ...]) -> list[tuple[Any, dict, list]]:
    """Every call of a primitive named in `names` in `jaxpr` and the jaxprs nested in it:
    `(primitive, params, input avals)`."""
    from jax.extend import core

    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in names:
            found.append((eqn.primitive, eqn.params, [v.aval for v in eqn.invars]))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(sub, core.ClosedJaxpr):
                    found += _called_primitives(sub.jaxpr, names)
                elif isinstance(sub, core.Jaxpr):
                    found += _called_primitives(sub, names)
    return found


def _replay_floor_step(one: Callable, state: Any):
    """The floor of a convolutional step: every convolution of the step (forward, and the
    input- and weight-gradient convolutions of the backward pass, as they appear in the step's
    jaxpr) alone, at the step's shapes and dtypes. Each step perturbs the smaller operand of
    every convolution by a scalar of the previous step's outputs, so XLA hoists none of them out
    of the loop."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    calls = _called_primitives(jax.make_jaxpr(one)(state, jnp.int32(0)).jaxpr,
                               ("conv_general_dilated",))
    rng = np.random.default_rng(0)
    operands = [[jnp.asarray(rng.standard_normal(a.shape), a.dtype) for a in avals]
                for _, _, avals in calls]

    def step(carry, _):
        operands, scale = carry
        total = jnp.zeros((), jnp.float32)
        moved = []
        for (primitive, params, _), ops in zip(calls, operands):
            small = int(np.argmin([op.size for op in ops]))
            ops = [op + (scale * 1e-30).astype(op.dtype) if k == small else op
                   for k, op in enumerate(ops)]
            total = total + jnp.sum(primitive.bind(*ops, **params).astype(jnp.float32))
            moved.append(ops)
        return (moved, total), None

    return step, (operands, jnp.zeros((), jnp.float32)), len(calls)


def floor_throughput(codec: str, batch_size: int, repeats: int, steps: int, windows: int,
                     method: str = "scu", *, dtype: str = "float32",
                     rolled: bool = False) -> dict[str, Any]:
    """Steps/s of the floor of `method`'s step on `codec`, scan-fused (one value per repeat), and
    the floor's FLOPs.

    MNIST: `_mnist_floor_step` on 2·batch_size rows (the erased and remaining batches; for
    `train`, batch_size rows).
    CIFAR: `_replay_floor_step`, the step's convolutions alone; on a CPU one step a dispatch,
    as the engine runs the ResNet there (`convolutions_slow_in_loops`).
    """
    import jax
    import jax.numpy as jnp

    from scu_jax.runs.build import convolutions_slow_in_loops

    config, system, train_state, images, labels = _setup(codec, batch_size, dtype)
    if codec == "mnist":
        step, layers = _mnist_floor_step(system, train_state.params)
        parts = 1 if method == "train" else 2
        pool = images.reshape(_POOL // parts, parts * batch_size, -1)  # both batches as one

        def one(carry, i):
            return step(carry, pool[i % (_POOL // parts)].astype(jnp.float32) / 255.0), None

        carry, per_step = layers, False
        what = f"6 dense layers, {parts * batch_size} rows, SGD"
    else:
        step_one, state = _step_function(method, config, system, train_state, images, labels)
        one, carry, count = _replay_floor_step(step_one, state)
        what = f"{count} convolutions of the {method} step alone"
        per_step = convolutions_slow_in_loops(config) and not rolled
    started = time.perf_counter()
    lowered = jax.jit(lambda c: one(c, jnp.int32(0))[0], donate_argnums=0).lower(carry)
    single = lowered.compile()
    compile_seconds = time.perf_counter() - started
    floor_flops = flop_count(lowered, single)
    if per_step:  # as the engine runs the ResNet on a CPU: one step a dispatch
        holder = {"carry": jax.tree.map(jnp.copy, carry)}

        def window():
            current = holder["carry"]
            for _ in range(steps):
                current = single(current)
            holder["carry"] = jax.block_until_ready(current)
    else:
        window, compile_seconds = _scan_window(one, carry, steps, 1)
    return {"floor": what, "floor_steps_per_s": rates(window, steps, windows, repeats),
            "floor_flops_per_step": floor_flops,
            "compile_floor_s": compile_seconds}


TORCH_VARIANTS = ("eager", "compile_loss", "compile_step", "compile_loss_graphs")


def torch_step_throughput(method: str, batch_size: int, repeats: int, steps: int = 600,
                          windows: int = 3, compile_step: bool = True, *, codec: str = "mnist",
                          dtype: str = "float32", device: str = "cpu",
                          variants: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """Steps/s of the PyTorch reference's step (train and scu only), one value per repeat.

    Variants (`TORCH_VARIANTS`; by default eager, and with `compile_step` the two compiled
    ones a CPU user picks): `eager`; `compile_loss`, the loss under `torch.compile` (its
    backward compiled too) with the update (zero_grad, backward, clip, Adam) eager;
    `compile_step`, the whole step under `torch.compile`; `compile_loss_graphs`, the loss under
    `torch.compile(mode="reduce-overhead")`, CUDA graphs (a GPU only). Each compiled variant is
    warmed up first, its compile seconds apart. `codec` "cifar" is `torch_cifar`'s ResNet system
    in `dtype` (bfloat16 by autocast). On a GPU every window ends with a synchronisation.
    """
    if method not in ("train", "scu"):
        return None
    import numpy as np
    import torch

    if variants is None:
        variants = ("eager", "compile_loss", "compile_step") if compile_step else ("eager",)
    rng = np.random.default_rng(0)
    if codec == "mnist":
        from benchmarks.torch_reference import Reference

        reference = Reference(device=device)
        data = torch.from_numpy(rng.random((_POOL, batch_size, 28, 28, 1), dtype=np.float32))
        data = data.to(device)
        loss_fn, update = (reference.train_loss if method == "train" else reference.scu_loss,
                           reference._update)
        pool = [((data[i],), (data[i], data[(i + _POOL // 2) % _POOL])) for i in range(_POOL)]
    else:
        from benchmarks.torch_cifar import Reference as CifarReference

        reference = CifarReference(device=device, dtype=dtype)
        images = [reference.images(torch.from_numpy(rng.random((batch_size, 32, 32, 3),
                                                               dtype=np.float32)))
                  for _ in range(_POOL)]
        labels = [torch.from_numpy(rng.integers(0, 10, batch_size)).to(device)
                  for _ in range(_POOL)]
        loss_fn, update = (reference.train_loss if method == "train" else reference.scu_loss,
                           reference.update)
        pool = [((images[i], labels[i]),
                 (images[i], labels[i], images[(i + _POOL // 2) % _POOL],
                  labels[(i + _POOL // 2) % _POOL])) for i in range(_POOL)]
    which = 0 if method == "train" else 1
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def stepper(loss):
        def step(*batch):
            value = loss(*batch)
            update(value)
            return value.detach()
        return step

    def window_of(fn):
        def window():
            for i in range(steps):
                fn(*pool[i % _POOL][which])
            sync()
        return window

    row: dict[str, Any] = {}
    for name in variants:
        if name == "eager":
            row["torch_eager_steps_per_s"] = rates(window_of(stepper(loss_fn)), steps, windows,
                                                   repeats)
            continue
        torch._dynamo.reset()  # each variant compiles afresh, at its own (static) shapes
        skips = _cudagraph_skips()
        if name == "compile_step":
            fn = torch.compile(stepper(loss_fn), dynamic=False)
        else:
            mode = "reduce-overhead" if name == "compile_loss_graphs" else None
            fn = stepper(torch.compile(loss_fn, mode=mode, dynamic=False))
        started = time.perf_counter()
        for i in range(3):  # compiles (and records the graphs), recompiling once if a guard fails
            fn(*pool[i % _POOL][which])
        sync()
        row[f"torch_{name}_compile_s"] = time.perf_counter() - started
        if name == "compile_loss_graphs":  # inductor falls back to no graphs quietly: count it
            row["torch_cudagraph_skips"] = _cudagraph_skips() - skips
        row[f"torch_{name}_steps_per_s"] = rates(window_of(fn), steps, windows, repeats)
    return row


def _cudagraph_skips() -> int:
    """How many times inductor has run a graph without CUDA graphs, in this process."""
    from torch._dynamo.utils import counters

    return sum(count for key, count in counters["inductor"].items() if "cudagraph_skip" in key)


def _machine() -> dict[str, Any]:
    from scu_jax.experiments.machine import machine_info

    info = machine_info()
    if _TORCH.value:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


def _fmt(values: list[float] | None, scale: float = 1.0, digits: int | None = None) -> str:
    """`min–max` (or one value where they agree to the digits shown) of `values`·scale; by
    default to 3 significant digits or to units, whichever shows more."""
    if not values:
        return "–"
    low, high = (v * scale for v in span(values))
    if digits is None:
        digits = 0 if low >= 100 else 1 if low >= 10 else 2
    text = [f"{v:,.{digits}f}" for v in (low, high)]
    return text[0] if text[0] == text[1] else f"{text[0]}–{text[1]}"


def _ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Every repeat's numerator over every repeat's denominator: the range of the ratio."""
    return [n / d for n in numerators for d in denominators]


def _table(rows: list[dict[str, Any]], peak: list[float]) -> str:
    unroll_keys = sorted({k for r in rows for k in r
                          if k.startswith("scan_unroll") and k.endswith("_steps_per_s")})
    header = (["codec", "step", "batch", "JAX dispatch steps/s", "JAX scan steps/s"]
              + [f"scan, unroll {k[len('scan_unroll'):-len('_steps_per_s')]}" for k in unroll_keys]
              + ["floor steps/s", "JAX / floor", "JAX / peak", "floor / peak",
                 "PyTorch eager", "PyTorch compile (loss)", "PyTorch compile (step)",
                 "PyTorch compile (loss, CUDA graphs)",
                 "JAX / fastest PyTorch", "compile s (step, scan, floor)",
                 "torch.compile s (loss, step, graphs)"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        scan = r.get("scan_steps_per_s") or r["dispatch_steps_per_s"]  # scan where timed, else dispatch
        floor = r.get("floor_steps_per_s")
        torch_rates = {name: r.get(f"torch_{name}_steps_per_s")
                       for name in ("eager", "compile_loss", "compile_step",
                                    "compile_loss_graphs")}
        measured = {name: max(v) for name, v in torch_rates.items() if v}
        fastest = max(measured, key=measured.get) if measured else None

        def torch_cell(name):
            text = _fmt(torch_rates[name])
            if name == "compile_loss_graphs" and r.get("torch_cudagraph_skips"):
                text += " (graphs skipped)"
            return f"**{text}**" if name == fastest and len(measured) > 1 else text

        def peak_share(values, flops):
            return _fmt(_ratios([v * flops for v in values], peak), 100, 0) + " %" if flops else "–"

        cells = [r["codec"], r["method"], str(r["batch_size"]), _fmt(r["dispatch_steps_per_s"]),
                 _fmt(r.get("scan_steps_per_s"))
                 + (" (unrolled)" if r.get("scan_unrolled") else "")]
        cells += [_fmt(r[k]) for k in unroll_keys]
        cells += [_fmt(floor), _fmt(_ratios(scan, floor), 100, 0) + " %" if floor else "–",
                  peak_share(scan, r["xla_flops_per_step"]),
                  peak_share(floor, r.get("floor_flops_per_step", 0.0)) if floor else "–",
                  torch_cell("eager"), torch_cell("compile_loss"), torch_cell("compile_step"),
                  torch_cell("compile_loss_graphs"),
                  _fmt(_ratios(scan, torch_rates[fastest]), 1, 1) + "×" if fastest else "–",
                  ", ".join(f"{r[k]:.1f}" for k in ("compile_step_s", "compile_scan_s",
                                                     "compile_floor_s") if k in r),
                  ", ".join(f"{r[k]:.0f}" for k in ("torch_compile_loss_compile_s",
                                                     "torch_compile_step_compile_s",
                                                     "torch_compile_loss_graphs_compile_s")
                            if k in r)
                  or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"benchmarks.run: error: unexpected arguments: {' '.join(argv[1:])}")
    try:
        batches = [int(b) for b in _BATCHES.value]
        cifar_batches = [int(b) for b in _CIFAR_BATCHES.value]
        unrolls = tuple(int(u) for u in _UNROLL.value)
        many = [int(n) for n in _MANY_RUNS.value]
        many_train = [int(n) for n in _MANY_TRAIN_RUNS.value]
    except ValueError:
        sys.exit("benchmarks.run: error: --batches, --cifar_batches, --unroll, --many_runs and "
                 "--many_train_runs must be integers")
    if (min(many + many_train, default=1) < 1 or _MANY_EPOCHS.value < 1
            or _MANY_TRAIN_EPOCHS.value < 1):
        sys.exit("benchmarks.run: error: --many_runs, --many_train_runs, --many_epochs and "
                 "--many_train_epochs must be >= 1")
    known = ("train", "scu", "scu_no_cc", "vbu", "hbu")
    if (not set(_METHODS.value) | set(_CIFAR_METHODS.value) <= set(known)
            or min(batches + cifar_batches, default=1) < 1 or min(unrolls, default=0) < 1
            or 1 not in unrolls or min(_STEPS.value, _CIFAR_STEPS.value) < 2
            or min(_WINDOWS.value, _REPEATS.value, _CIFAR_WINDOWS.value, _CIFAR_REPEATS.value) < 1):
        sys.exit(f"benchmarks.run: error: --methods and --cifar_methods from {', '.join(known)}, "
                 "batches >= 1, --unroll includes 1, --steps, --cifar_steps >= 2 and windows, "
                 "repeats >= 1")
    started = time.perf_counter()
    repeats, windows, steps = _REPEATS.value, _WINDOWS.value, _STEPS.value
    results: dict[str, Any] = {"machine": _machine(),
                               **matmul_flops(repeats, _PEAK_SIZE.value, windows)}
    rows = []
    plan = ([("mnist", b, m, max(2, steps * 16 // b), windows, repeats)
             for b in batches for m in _METHODS.value]
            + [("cifar", b, m, _CIFAR_STEPS.value, _CIFAR_WINDOWS.value, _CIFAR_REPEATS.value)
               for b in cifar_batches for m in _CIFAR_METHODS.value])
    for codec, batch_size, method, count, times, repeat in plan:
        row = jax_step_throughput(method, batch_size, repeat, codec, count, times,
                                  unrolls if codec == "mnist" else (1,),
                                  dtype=_CIFAR_DTYPE.value, rolled=_ROLLED.value)
        if method in ("train", "scu"):  # the floors of the other methods' steps are SCU's or less
            row.update(floor_throughput(codec, batch_size, repeat, count, times, method,
                                        dtype=_CIFAR_DTYPE.value, rolled=_ROLLED.value))
        if _TORCH.value and codec == "mnist":  # the reference mirrors the MNIST codec only
            row.update(torch_step_throughput(method, batch_size, repeat, count, times,
                                             _TORCH_COMPILE.value) or {})
        rows.append(row)
        print(f"{codec} {method} batch {batch_size}: scan {_fmt(row['scan_steps_per_s'])}/s, "
              f"dispatch {_fmt(row['dispatch_steps_per_s'])}/s"
              + (f", floor {_fmt(row['floor_steps_per_s'])}/s" if "floor_steps_per_s" in row
                 else "")
              + (f", torch eager {_fmt(row['torch_eager_steps_per_s'])}/s"
                 if "torch_eager_steps_per_s" in row else ""),
              file=sys.stderr, flush=True)
    results["steps"] = rows
    from benchmarks import many as many_runs

    if many:
        results["many"] = many_runs.measure(many, _MANY_EPOCHS.value, repeats, _MANY_ALONE.value)
    if many_train:
        results["many_train"] = many_runs.measure_training(many_train, _MANY_TRAIN_EPOCHS.value,
                                                           repeats, _MANY_ALONE.value)
    results["seconds"] = time.perf_counter() - started
    write_text_atomic(_OUT.value, json.dumps(results, indent=2) + "\n")
    print(f"matmul peak (float32, {results['matmul_size']}²): JAX "
          f"{_fmt(results['jax_matmul_flops'], 1e-9, 1)} GFLOP/s"
          + (f", PyTorch {_fmt(results['torch_matmul_flops'], 1e-9, 1)} GFLOP/s"
             if "torch_matmul_flops" in results else "")
          + f"; {results['seconds'] / 60:.1f} min")
    if rows:
        print(_table(rows, results["jax_matmul_flops"]))
    if many:
        print(f"\nIndependent SCU runs ({_MANY_EPOCHS.value} epochs each), vmapped in one program "
              "against one by one:")
        print(many_runs.table(results["many"]))
    if many_train:
        print(f"\nIndependent training runs (1 + {_MANY_TRAIN_EPOCHS.value} epochs each), "
              "vmapped in one program against one by one:")
        print(many_runs.table(results["many_train"]))


if __name__ == "__main__":
    app.run(main)
