"""`runs/signals.py` in-process: where a signal stops a run, and what the hook says. The binaries'
behaviour (a real SIGTERM, a save, a resume) is in interruption_test.py."""

import os
import signal

import pytest

from scu_jax import engine
from scu_jax.errors import Interrupted
from scu_jax.runs import signals


@pytest.fixture
def handled():
    """The handlers installed as a binary installs them; the previous ones restored after."""
    previous = {number: signal.getsignal(number) for number in signals.SIGNALS}
    yield signals.handle_signals
    for number, handler in previous.items():
        signal.signal(number, handler)
    signals._state.update(received=None, boundary_runs=0, second=True)


def _epoch(epoch):
    return engine.EpochResult("train", "codec", epoch, 0, {}, engine.Report())


def test_a_signal_outside_a_run_stops_at_once(handled):
    handled("scu-x")
    with pytest.raises(Interrupted) as error:
        os.kill(os.getpid(), signal.SIGTERM)
    assert (error.value.signal, str(error.value)) == (signal.SIGTERM, "interrupted by SIGTERM")
    assert signals.received() == signal.SIGTERM


def test_inside_a_run_it_waits_for_the_boundary_after_the_save(handled):
    handled("scu-x")
    saved = []

    class Saver(engine.Hook):
        def needs_state(self, epochs_done):
            return signals.received() is not None

        def on_epoch(self, result, state):
            saved.append(result.epoch + 1)

    hooks = [Saver(), signals.StopOnSignal(7, saved=True, what="train")]
    with signals.stops_at_boundaries():
        assert not any(hook.needs_state(3) for hook in hooks)
        os.kill(os.getpid(), signal.SIGINT)  # no exception: the run goes on to its boundary
        assert all(hook.needs_state(3) for hook in hooks)
        with pytest.raises(Interrupted) as error:
            for hook in hooks:  # as the engine calls them, in order
                hook.on_epoch(_epoch(2), state={"params": 1})
    assert saved == [3]
    assert error.value.signal == signal.SIGINT
    assert str(error.value) == ("interrupted by SIGINT at epoch 3 of 7 (train): saved; the same "
                                "command resumes")
    # An epoch the engine passed no state for (no hook asked before the signal) is not the stop.
    signals.StopOnSignal(7, saved=True, what="train").on_epoch(_epoch(3), None)


def test_a_run_that_saves_nothing_says_so(handled):
    handled("scu-x")
    with signals.stops_at_boundaries():
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Interrupted, match=r"^interrupted by SIGTERM at epoch 5 of 300 \(scu\): "
                                              r"scu keeps no checkpoint of its own; the same "
                                              r"command reruns it$"):
            signals.StopOnSignal(300, saved=False, what="scu").on_epoch(_epoch(4), {"p": 0})
    # A run that starts after the signal stops before its first step.
    with pytest.raises(Interrupted):
        with signals.stops_at_boundaries():
            pytest.fail("the run started")


def test_a_worker_only_ever_stops_at_a_boundary_or_before_its_next_task(handled):
    handled("worker", immediate_second=False)
    os.kill(os.getpid(), signal.SIGTERM)  # outside a run: no exception in the pool's own code
    os.kill(os.getpid(), signal.SIGTERM)  # nor does a second one exit: the parent decides
    assert signals.received() == signal.SIGTERM
    with pytest.raises(Interrupted, match="^interrupted by SIGTERM$"):
        signals.check()
