"""attnlab.measure: timing bookkeeping and tracemalloc peaks (no timing assertions)."""

import itertools
import time
import tracemalloc

import numpy as np
import pytest

from attnlab.measure import Timing, peak_memory, run_for, time_call, time_calls


def test_time_call_runs_warmup_then_repeat():
    calls = []
    t = time_call(lambda: calls.append(1), repeat=6, warmup=2)
    assert len(calls) == 8 and len(t.runs) == 6
    assert t.min_s <= t.median_s and t.spread >= 0


def test_time_calls_interleaves_the_runs_alternating_their_order():
    """Warm-up a, b; then rounds a b | b a | a b ...: each call follows the other as often as itself."""
    order = []
    a, b = time_calls(lambda: order.append("a"), lambda: order.append("b"), repeat=5, warmup=1)
    assert "".join(order) == "ab" + "ab" + "ba" + "ab" + "ba" + "ab"
    assert len(a.runs) == len(b.runs) == 5


def test_settle_runs_each_call_untimed_in_a_loop_before_its_timed_run():
    """settle=S: before each timed run of a, a runs untimed until S seconds have passed; the runs of b stay b's."""
    order = []
    slow = lambda name: (lambda: (order.append(name), time.sleep(0.002)))
    a, b = time_calls(slow("a"), slow("b"), repeat=5, warmup=0, settle=0.01)
    text = "".join(order)
    assert len(a.runs) == len(b.runs) == 5
    assert text.count("a") >= 5 * 4 and text.count("b") >= 5 * 4        # 10 ms of 2 ms calls before each run
    loops = "".join(name for name, _ in itertools.groupby(text))     # rounds a b | b a | a b | b a | a b
    assert loops == "ababab"                                          # (a b b a a b b a a b, neighbours merged)
    assert time_calls(lambda: order.append("c"), repeat=5, warmup=0, settle=0) and order[-5:] == ["c"] * 5


def test_run_for_loops_until_the_time_has_passed_and_not_at_all_for_zero():
    calls = []
    start = time.perf_counter()
    run_for(lambda: (calls.append(1), time.sleep(0.001)), 0.02)
    assert time.perf_counter() - start >= 0.02 and len(calls) >= 5
    run_for(lambda: calls.append(2), 0)
    assert 2 not in calls


@pytest.mark.parametrize("settle", [-1.0, float("nan"), "1", True])
def test_settle_must_be_a_finite_number_of_seconds(settle):
    with pytest.raises(ValueError, match="settle"):
        time_calls(lambda: None, repeat=5, settle=settle)


def test_timing_median():
    t = Timing((3.0, 1.0, 2.0, 100.0, 2.5))
    assert t.median_s == 2.5 and t.min_s == 1.0


@pytest.mark.parametrize("kwargs, error", [
    (dict(repeat=4), ValueError), (dict(repeat=True), ValueError), (dict(warmup=-1), ValueError),
])
def test_time_call_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error, match="repeat|warmup"):
        time_call(lambda: None, **kwargs)


def test_non_callables_are_rejected():
    with pytest.raises(TypeError, match="callable"):
        time_call(3)
    with pytest.raises(TypeError, match="callable"):
        peak_memory("f")
    with pytest.raises(TypeError, match="callable"):
        time_calls(lambda: None, None)


def test_peak_memory_sees_a_numpy_buffer():
    n = 1_000_000
    peak = peak_memory(lambda: np.ones(n))
    assert n * 8 <= peak <= n * 8 * 1.01


def test_peak_memory_counts_temporaries_freed_before_return():
    n = 500_000

    def f():
        a = np.ones(n)
        b = a + 1.0          # two arrays alive at once
        del a, b
        return np.zeros(10)

    assert 2 * n * 8 <= peak_memory(f) <= 2.05 * n * 8


def test_peak_memory_leaves_outer_tracing_alone():
    tracemalloc.start()
    try:
        peak_memory(lambda: np.ones(1000), warmup=False)
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()
    peak_memory(lambda: None)
    assert not tracemalloc.is_tracing()


def test_clock_is_the_one_given_cpu_time_ignores_sleeping():
    """``clock`` replaces perf_counter: a fake clock gives exact runs; thread_time does not count a sleep (the time
    other programs hold the core on a busy machine), perf_counter does."""
    import itertools
    import time

    ticks = itertools.count(0.0, 0.25)
    assert time_call(lambda: None, clock=lambda: next(ticks)).runs == (0.25,) * 5
    cpu, wall = (time_call(lambda: time.sleep(0.01), clock=c).median_s for c in (time.thread_time, time.perf_counter))
    assert cpu < 0.005 < 0.009 < wall
    with pytest.raises(TypeError, match="clock must be a callable"):
        time_calls(lambda: None, clock=3.0)
