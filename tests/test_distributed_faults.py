"""A rank that dies, stalls or never joins makes the others raise RingError, naming the peer and the timeout,
within a bounded time: never a hang. Each scenario is one spawned world on 127.0.0.1 (gloo)."""

import os
import signal
import time

import pytest
import torch
import torch.distributed as dist

from attnlab import masks
from attnlab.distributed import RingError, launch, ring_attention

TIMEOUT = 3.0          # the ring's timeout in these drills, seconds
SLACK = 6.0            # scheduling slack on a busy 2-core machine


def _die_in_first_step():
    """A causal mask for the victim that kills its process when the first block is evaluated: after the shape
    exchange and after the first transfer was posted, before the second one (which rank 2 then never gets)."""
    def allowed(b, h, q, kv):
        if kv.size > 1:                                           # not the 1 x 1 probe made before any transfer
            os.kill(os.getpid(), signal.SIGKILL)
        return kv <= q
    return masks.from_function(allowed)


def _attend_unless_victim(victim, mode):
    """The victim rank dies (SIGKILL, before or during the call) or stalls; every other rank runs ring attention
    and reports what it saw."""
    mask = masks.causal()
    if dist.get_rank() == victim:
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "stall":
            time.sleep(3 * TIMEOUT)                               # alive but never sends
            return "stalled"
        mask = _die_in_first_step()
    q = torch.randn(1, 2, 8, 4)                                   # L = 24 over 3 ranks: 8 positions each
    start = time.perf_counter()
    try:
        ring_attention(q, q, q, mask=mask, timeout=TIMEOUT)
    except RingError as err:
        return {"message": str(err), "peer": err.peer, "timeout_s": err.timeout_s,
                "seconds": time.perf_counter() - start}
    return {"message": None}


@pytest.mark.parametrize("mode", ["kill", "kill_mid_ring"])
def test_killed_rank_fails_the_others_quickly(mode):
    results = launch.run_local(_attend_unless_victim, 3, 1, mode, timeout=120)
    victim = results[1]
    assert not victim.ok and victim.exitcode == -signal.SIGKILL
    for r in (results[0], results[2]):
        assert r.ok, r.error
        seen = r.value
        if seen["message"] is None:                # mid-ring, rank 0 may already have everything it needs
            assert mode == "kill_mid_ring" and r.rank == 0
            continue
        assert seen["timeout_s"] == TIMEOUT and f"timeout {TIMEOUT:g} s" in seen["message"]
        assert seen["seconds"] < TIMEOUT + SLACK
    seen = results[2].value                        # rank 2 receives from rank 1: it names the dead rank
    assert seen["peer"] == 1 and "peer rank 1" in seen["message"], seen["message"]
    if mode == "kill_mid_ring":
        assert "key/value block" in seen["message"], seen["message"]


def test_stalled_rank_times_out_the_others():
    results = launch.run_local(_attend_unless_victim, 3, 0, "stall", timeout=120)
    assert results[0].value == "stalled"
    for r in (results[1], results[2]):             # rank 1 receives from 0, rank 2 sends to 0
        assert r.ok, r.error
        seen = r.value
        assert seen["peer"] == 0 and "peer rank 0" in seen["message"], seen["message"]
        assert f"timeout {TIMEOUT:g} s" in seen["message"]
        assert TIMEOUT * 0.9 <= seen["seconds"] < TIMEOUT + SLACK


def _never_reached():
    return "the group formed"


def test_rank_that_never_joins_fails_the_rendezvous():
    start = time.monotonic()
    results = launch.run_local(_never_reached, 3, ranks=[0, 1], init_timeout=TIMEOUT, timeout=120)
    for r in results:
        assert not r.ok
        assert r.error.startswith("RingError") and f"did not form within {TIMEOUT:g} s" in r.error, r.error
        assert r.seconds < TIMEOUT + SLACK
    assert time.monotonic() - start < 120


def _stop_or_attend(victim):
    """The victim stops itself (SIGSTOP: alive, never scheduled again); the others let RingError escape."""
    if dist.get_rank() == victim:
        os.kill(os.getpid(), signal.SIGSTOP)
    q = torch.randn(1, 2, 8, 4)
    ring_attention(q, q, q, causal=True, timeout=TIMEOUT)
    return "finished"


def test_launcher_ends_a_stopped_rank_once_the_others_have_failed():
    start = time.monotonic()
    results = launch.run_local(_stop_or_attend, 3, 1, timeout=120, grace=2.0)
    elapsed = time.monotonic() - start
    victim = results[1]
    assert not victim.ok and victim.exitcode is None and "another rank failed" in victim.error, victim.error
    for r in (results[0], results[2]):             # every survivor's own error is reported, not hidden
        assert not r.ok and r.error.startswith("RingError") and "peer rank" in r.error, r.error
    assert "peer rank 1" in results[2].error       # rank 2 receives from the stopped rank
    assert elapsed < 60, elapsed                   # far from the 120 s deadline
