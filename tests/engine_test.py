"""The engine on a toy problem: blocks, per-step dispatch, stops, evaluation, finite checks, hooks."""

import time
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scu_jax import engine, errors


@flax.struct.dataclass
class _State:
    step: jax.Array
    params: dict[str, Any]
    batch_stats: dict[str, Any]


class _Metrics(NamedTuple):
    loss: jax.Array
    error: jax.Array
    unused: Any = None  # a field that is None is not reported


_TARGET = 3.0


def _data():
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    return x, _TARGET * x


def _step(state, batch, key):
    """One SGD step of y ≈ w·x; `error` is |w − 3|."""
    del key
    x, y = batch

    def loss_fn(w):
        return jnp.mean((w * x - y) ** 2)

    loss, grad = jax.value_and_grad(loss_fn)(state.params["w"])
    w = state.params["w"] - 0.5 * grad
    return (state.replace(step=state.step + 1, params={"w": w}),
            _Metrics(loss, jnp.abs(w - _TARGET)))


def _phase(epochs=3, **kwargs):
    def batches(epoch):
        return np.random.default_rng(epoch).permutation(64).reshape(8, 8).astype(np.int32)

    return engine.Phase("fit", _step, range(epochs), batches,
                        lambda data, rows: (data[0][rows], data[1][rows]), **kwargs)


def _state(w=0.0):
    return _State(step=jnp.zeros((), jnp.int32), params={"w": jnp.float32(w)}, batch_stats={})


class _Recorder(engine.Hook):
    def __init__(self, every=0):
        self.blocks, self.epochs, self.states, self.steps, self.ended = [], [], [], [], []
        self.every = every

    def on_block(self, result):
        self.blocks.append((result.phase, result.epoch, result.first_step,
                            len(result.columns["loss"]), sorted(result.columns)))

    def on_epoch(self, result, state):
        self.epochs.append(result.summary)
        self.states.append(None if state is None else float(state.params["w"]))
        self.steps.append(None if state is None else int(state.step))

    def needs_state(self, epochs_done):
        return bool(self.every) and epochs_done % self.every == 0

    def on_end(self, run, report):
        self.ended.append((run, report.steps))


def test_fused_blocks_and_per_step_dispatch_agree():
    finals = {}
    for block_steps, per_step in ((0, False), (0, True), (3, False)):
        recorder = _Recorder()
        state, report = engine.run([_phase()], _state(), _data(), jax.random.PRNGKey(0),
                                   name="toy", block_steps=block_steps, per_step=per_step,
                                   hooks=[recorder])
        finals[(block_steps, per_step)] = float(state.params["w"])
        assert report.steps == 24 and report.epochs == 3 and int(state.step) == 24
        assert [h["steps"] for h in report.history] == [8, 16, 24]
        # Blocks reach the hooks in order, numbered by the steps before them; None fields left out.
        block = {0: 8, 3: 3}[block_steps] if not per_step else 1
        expected = [e * 8 + f for e in range(3) for f in range(0, 8, block)]
        assert [b[2] for b in recorder.blocks] == expected
        assert sum(b[3] for b in recorder.blocks) == 24
        assert recorder.blocks[0][4] == ["error", "loss"]
        assert recorder.ended == [("toy", 24)]
        assert report.compile_seconds > 0 and report.seconds > 0
    values = list(finals.values())
    assert values[0] == pytest.approx(_TARGET, abs=1e-3)
    assert max(values) - min(values) < 1e-6


def test_epoch_summaries_are_means_over_the_epochs_steps():
    recorder = _Recorder()
    _, report = engine.run([_phase(epochs=2)], _state(), _data(), jax.random.PRNGKey(0),
                           name="toy", hooks=[recorder])
    # The first step's error is 3 − 0.5·grad(0); later ones shrink, so the mean lies between.
    first_epoch = report.history[0]
    assert 0 < first_epoch["error"] < _TARGET
    assert report.history[1]["error"] < first_epoch["error"]
    assert set(first_epoch) == {"epoch", "steps", "loss", "error"}


def test_batch_stop_skips_the_rest_of_the_epoch_and_stop_ends_the_phase():
    phase = _phase(epochs=5, batch_stop=lambda metrics: metrics.error < 1.0,
                   stop=lambda summary: summary["epoch"] >= 2)
    state, report = engine.run([phase], _state(), _data(), jax.random.PRNGKey(0), name="toy")
    steps_per_epoch = [b - a for a, b in zip([0] + [h["steps"] for h in report.history],
                                             [h["steps"] for h in report.history])]
    assert report.epochs == 2  # `stop` after the second epoch
    assert steps_per_epoch[0] < 8  # stopped early inside the first epoch
    assert int(state.step) == report.steps


def test_evaluation_runs_after_each_epoch_in_the_same_dispatch():
    phase = _phase(epochs=2, evaluate=lambda state, data: jnp.abs(state.params["w"] - data),
                   evaluation_name="distance")
    state, report = engine.run([phase], _state(), _data(), jax.random.PRNGKey(0), name="toy",
                               eval_data=jnp.float32(_TARGET))
    assert report.history[-1]["distance"] == pytest.approx(abs(float(state.params["w"]) - 3.0),
                                                           abs=1e-6)


def test_hooks_get_the_state_only_where_they_asked_for_it():
    recorder = _Recorder(every=2)
    engine.run([_phase(epochs=4)], _state(), _data(), jax.random.PRNGKey(0), name="toy",
               hooks=[recorder])
    # Epochs 2 and 4 were waited for, with the state at their end; 1 and 3 were read one block
    # late, the state already donated to the next block.
    assert [s is not None for s in recorder.states] == [False, True, False, True]
    assert [w for w in recorder.steps if w is not None] == [16, 32]


@pytest.mark.parametrize("what", ["loss", "parameters"])
@pytest.mark.parametrize("per_step", [False, True])
def test_a_non_finite_value_stops_the_run_naming_run_phase_and_step(what, per_step):
    def poisoned(state, batch, key):
        new, metrics = _step(state, batch, key)
        if what == "loss":
            return new, metrics._replace(loss=jnp.where(state.step >= 11, jnp.nan, metrics.loss))
        # The last step of epoch 2 leaves an infinite weight behind a finite loss.
        bad = state.step == 15
        return new.replace(params={"w": jnp.where(bad, jnp.inf, new.params["w"])}), metrics

    phase = _phase()._replace(step=poisoned)
    recorder = _Recorder()
    expected = 11 if what == "loss" else 15
    with pytest.raises(errors.NonFiniteError,
                       match=rf"^toy: fit {what} became non-finite at step {expected} \(epoch 2\); "
                             "kept"):
        engine.run([phase], _state(), _data(), jax.random.PRNGKey(0), name="toy",
                   per_step=per_step, hooks=[recorder], when_non_finite="; kept")
    assert recorder.epochs and recorder.epochs[-1]["epoch"] == 1  # epoch 2 was never reported


def test_phases_run_in_order_and_number_steps_across_them():
    recorder = _Recorder()
    second = _phase(epochs=2)._replace(name="again", epochs=range(2, 4))
    state, report = engine.run([_phase(epochs=2), second], _state(), _data(),
                               jax.random.PRNGKey(0), name="toy", hooks=[recorder],
                               step_offset=100)
    assert [b[0] for b in recorder.blocks] == ["fit", "fit", "again", "again"]
    assert [b[2] for b in recorder.blocks] == [100, 108, 116, 124]
    assert report.steps == 32 and int(state.step) == 32
    assert [h["steps"] for h in report.history] == [108, 116, 124, 132]  # a resumed run's numbers


class _ListWriter:
    def __init__(self):
        self.events = []

    def write_scalars(self, step, scalars):
        self.events.append((step, dict(scalars)))

    def flush(self):
        pass

    def close(self):
        pass


def test_write_summaries_every_nth_step_and_every_epoch():
    writer = _ListWriter()
    engine.run([_phase(epochs=2)], _state(), _data(), jax.random.PRNGKey(0), name="toy",
               hooks=[engine.WriteSummaries(writer, every_steps=5)])
    step_events = [s for s, values in writer.events if "fit/loss" in values]
    epoch_events = [(s, v) for s, v in writer.events if "fit/epoch/loss" in v]
    assert step_events == [5, 10, 15]
    assert [s for s, _ in epoch_events] == [8, 16]
    assert set(epoch_events[0][1]) == {"fit/epoch/loss", "fit/epoch/error"}


@pytest.mark.parametrize("block_steps,per_step", [(0, False), (3, False), (0, True)])
def test_an_early_stop_holds_across_the_blocks_of_an_epoch(block_steps, per_step):
    """`batch_stop` after the 2nd step of every epoch: the rest of the epoch is skipped however
    the epoch is split into dispatches (the stop is carried from block to block)."""
    def counted(state, batch, key):  # `error` is 1 after every second step
        new, metrics = _step(state, batch, key)
        return new, metrics._replace(error=jnp.where(new.step % 2 == 0, 1.0, 0.0))

    phase = _phase(epochs=3, batch_stop=lambda metrics: metrics.error > 0.5)._replace(step=counted)
    state, report = engine.run([phase], _state(), _data(), jax.random.PRNGKey(0), name="toy",
                               block_steps=block_steps, per_step=per_step)
    assert [h["steps"] for h in report.history] == [2, 4, 6]
    assert int(state.step) == 6


def test_each_block_shape_compiles_once(monkeypatch):
    made = []
    real = engine.loop.make_block

    def counting(*args, **kwargs):
        made.append(kwargs.get("with_evaluation"))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.loop, "make_block", counting)
    evaluate = lambda state, data: jnp.abs(state.params["w"] - data)  # noqa: E731
    engine.run([_phase(epochs=4, evaluate=evaluate)], _state(), _data(), jax.random.PRNGKey(0),
               name="toy", eval_data=jnp.float32(_TARGET))
    assert made == [True]  # whole-epoch blocks with the evaluation fused: one executable
    made.clear()
    engine.run([_phase(epochs=4, evaluate=evaluate)], _state(), _data(), jax.random.PRNGKey(0),
               name="toy", eval_data=jnp.float32(_TARGET), per_step=True)
    assert made == [False]  # one step per dispatch: the step once, the evaluation apart
    made.clear()
    # Two phases of one name and shape but different steps get executables of their own.
    doubled = _phase(epochs=1)._replace(step=lambda st, b, k: _step(st, b, k))
    state, _ = engine.run([_phase(epochs=1), doubled], _state(), _data(), jax.random.PRNGKey(0),
                          name="toy")
    assert len(made) == 2 and int(state.step) == 16


def test_the_step_time_leaves_out_hooks_that_the_device_waited_for():
    class Slow(engine.Hook):
        def needs_state(self, epochs_done):
            return True  # every epoch waited for: the device idles while the hook runs

        def on_epoch(self, result, state):
            time.sleep(0.2)

    started = time.perf_counter()
    _, report = engine.run([_phase(epochs=3)], _state(), _data(), jax.random.PRNGKey(0),
                           name="toy", hooks=[Slow()])
    wall = time.perf_counter() - started
    assert wall > 0.6  # three 0.2 s hooks
    assert report.seconds < wall - 0.6 - report.compile_seconds + 0.05


def test_report_progress_rate_counts_only_timed_steps(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 3.0])
    monkeypatch.setattr(engine.hooks.time, "perf_counter", lambda: next(clock))
    logged = []
    monkeypatch.setattr(engine.hooks.logging, "info", lambda fmt, *args: logged.append(fmt % args))
    progress = engine.ReportProgress(total_steps=40, every_seconds=0.0)
    for first in (0, 10, 20):  # blocks of 10 steps, one per second
        progress.on_block(engine.BlockResult("toy", "fit", 0, first,
                                             {"loss": np.zeros(10, np.float32)}))
    assert "starting" in logged[0]
    assert "10 steps/s, ETA 2s" in logged[1] and "10 steps/s, ETA 1s" in logged[2]


def _stopping_phase():
    """Partial epochs (`batch_stop`), an evaluation and a stop that holds after epoch 3 of 6
    (reading the evaluation and a metric's mean over the steps that ran)."""
    return _phase(epochs=6, batch_stop=lambda metrics: metrics.error < 0.2,
                  evaluate=lambda state, data: jnp.abs(state.params["w"] - data),
                  evaluation_name="distance",
                  stop=lambda summary: (summary["distance"] < 0.11) & (summary["error"] < 0.09))


@pytest.mark.parametrize("per_dispatch,every", [(2, 0), (2, 2), (0, 0)])
def test_several_epochs_per_dispatch_decide_and_report_as_one_per_dispatch(per_dispatch, every):
    """The stop read on device ends the run after the same epoch as the host's reading, with the
    same state, history and hooks; a dispatch ends where a hook asked for the state, and a stop
    inside a dispatch read one late still hands the hooks the final state."""
    runs = {}
    for epochs_per_dispatch in (1, per_dispatch):
        recorder = _Recorder(every=every)
        state, report = engine.run([_stopping_phase()], _state(), _data(), jax.random.PRNGKey(0),
                                   name="toy", eval_data=jnp.float32(_TARGET), hooks=[recorder],
                                   epochs_per_dispatch=epochs_per_dispatch)
        runs[epochs_per_dispatch] = (state, report, recorder)
    (state, report, recorder), (chunked, chunked_report, chunked_recorder) = runs.values()
    assert [h["epoch"] for h in chunked_report.history] == [1, 2, 3]
    assert chunked_report.stopped == report.stopped == ["fit"]
    assert int(chunked.step) == int(state.step) == report.steps == chunked_report.steps == 9
    assert float(chunked.params["w"]) == pytest.approx(float(state.params["w"]), abs=1e-6)
    for ours, theirs in zip(chunked_report.history, report.history):
        assert ours.keys() == theirs.keys() and ours["steps"] == theirs["steps"]
        assert [ours[k] for k in sorted(ours)] == pytest.approx([theirs[k] for k in sorted(ours)],
                                                                 abs=1e-6)
    assert chunked_recorder.blocks == recorder.blocks and chunked_recorder.ended == [("toy", 9)]
    given = [s is not None for s in chunked_recorder.states]
    assert given == ([False, True, True] if every else [False, False, True])
    assert chunked_recorder.states[-1] == pytest.approx(float(state.params["w"]), abs=1e-6)
    assert chunked_report.compile_seconds > 0


@pytest.mark.parametrize("what", ["loss", "parameters"])
def test_a_non_finite_value_inside_a_multi_epoch_dispatch_is_named_at_its_epoch(what):
    def poisoned(state, batch, key):
        new, metrics = _step(state, batch, key)
        if what == "loss":
            return new, metrics._replace(loss=jnp.where(state.step >= 11, jnp.nan, metrics.loss))
        bad = state.step == 15  # the last step of epoch 2: an infinite weight, a finite loss
        return new.replace(params={"w": jnp.where(bad, jnp.inf, new.params["w"])}), metrics

    expected = 11 if what == "loss" else 15
    with pytest.raises(errors.NonFiniteError,
                       match=rf"^toy: fit {what} became non-finite at step {expected} \(epoch 2\)$"):
        engine.run([_phase(epochs=4)._replace(step=poisoned)], _state(), _data(),
                   jax.random.PRNGKey(0), name="toy", epochs_per_dispatch=0)


def _rate_step(rate):
    """`_step` with the learning rate an argument (an array inside `run_many`'s program)."""
    def step(state, batch, key):
        del key
        x, y = batch
        loss, grad = jax.value_and_grad(lambda w: jnp.mean((w * x - y) ** 2))(state.params["w"])
        w = state.params["w"] - rate * grad
        return (state.replace(step=state.step + 1, params={"w": w}),
                _Metrics(loss, jnp.abs(w - _TARGET)))
    return step


def test_many_runs_in_one_program_equal_the_runs_one_by_one():
    """Three runs (own batches, start, learning rate and stop epoch) vmapped in one program:
    each stops where it stops alone, with the same history and state."""
    def batches_of(seed):
        return lambda epoch: np.random.default_rng([seed, epoch]).permutation(64).reshape(
            8, 8).astype(np.int32)

    starts, rates, seeds = (0.0, 1.0, -2.0), (0.5, 0.3, 0.1), (0, 1, 2)
    phase = _stopping_phase()
    alone = []
    for start, rate, seed in zip(starts, rates, seeds):
        state, report = engine.run(
            [phase._replace(step=_rate_step(rate), batches=batches_of(seed))], _state(start),
            _data(), jax.random.PRNGKey(seed), name="toy", eval_data=jnp.float32(_TARGET),
            epochs_per_dispatch=4)
        alone.append((float(state.params["w"]), report))
    states = jax.tree.map(lambda *a: jnp.stack(a), *[_state(start) for start in starts])
    keys = jnp.stack([jax.random.PRNGKey(seed) for seed in seeds])
    finals, reports = engine.run_many(
        phase, [batches_of(seed) for seed in seeds], states, _data(), keys, name="toy",
        eval_data=jnp.full((3,), _TARGET), shared_data=True, hyper=jnp.asarray(rates),
        step_for=_rate_step, epochs_per_dispatch=4)
    assert len({r.epochs for _, r in alone}) > 1  # the runs stop after different epochs
    for index, ((w, report), many) in enumerate(zip(alone, reports)):
        assert (many.epochs, many.steps, many.stopped) == (report.epochs, report.steps,
                                                           report.stopped)
        for ours, theirs in zip(many.history, report.history):
            assert ours.keys() == theirs.keys()
            assert [ours[k] for k in sorted(ours)] == pytest.approx(
                [theirs[k] for k in sorted(ours)], abs=1e-6)
        assert float(finals.params["w"][index]) == pytest.approx(w, abs=1e-6)
        assert int(finals.step[index]) == report.steps
    assert reports[0].compile_seconds > 0 and reports[0].seconds > 0
