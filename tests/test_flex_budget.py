"""integrations.flex reads the one memory budget at call time (issue 14): a budget changed after import, by
assignment or by the environment variable, is what its conversions are checked against."""

import numpy as np
import pytest

import attnlab
from attnlab import budget, masks, scores
from attnlab.integrations import flex


@pytest.fixture
def restore_budget():
    saved = budget.MEMORY_BUDGET
    yield
    budget.set_limit(saved)


CONVERSIONS = {
    "to_mask_mod": lambda n: flex.to_mask_mod(masks.causal(), n, n),
    "from_mask_mod": lambda n: flex.from_mask_mod(lambda b, h, q, kv: q >= kv, n, n),
    "to_score_mod": lambda n: flex.to_score_mod(scores.alibi(2), n, n, heads=2),
}


@pytest.mark.parametrize("name", CONVERSIONS)
def test_a_budget_lowered_after_import_is_seen(name, restore_budget):
    convert = CONVERSIONS[name]
    convert(600)                                          # within the default 256 MiB
    budget.set_limit(2**20)                               # 1 MiB, set after flex was imported
    with pytest.raises(budget.MemoryBudgetError, match=r"over the memory budget of 1\.0 MiB"):
        convert(600)
    attnlab.planner.MEMORY_BUDGET = 2**30                 # the older name changes the same budget
    convert(600)


@pytest.mark.parametrize("name", CONVERSIONS)
def test_the_environment_variable_is_read_at_call_time(name, monkeypatch, restore_budget):
    budget.set_limit(None)
    monkeypatch.setenv(budget.ENV, "1MiB")
    with pytest.raises(budget.MemoryBudgetError, match="over the memory budget"):
        CONVERSIONS[name](600)
    monkeypatch.setenv(budget.ENV, "nonsense")
    with pytest.raises(ValueError, match=budget.ENV):
        CONVERSIONS[name](600)


def test_a_refused_conversion_allocates_nothing_of_its_size(restore_budget):
    import tracemalloc
    budget.set_limit(2**20)
    for convert in CONVERSIONS.values():
        tracemalloc.start()
        with pytest.raises(budget.MemoryBudgetError):
            convert(4096)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 2**18, peak


JUNK_SIZES = {"nan": float("nan"), "1.5": 1.5, "str": "8", "True": True, "-1": -1, "None": None, "2**70": 2**70}


@pytest.mark.parametrize("label", JUNK_SIZES)
@pytest.mark.parametrize("param", ["Lq", "Lk"])
def test_junk_lengths_are_refused_naming_the_argument(label, param):
    junk = JUNK_SIZES[label]
    calls = [lambda **kw: flex.to_mask_mod(masks.causal(), **kw),
             lambda **kw: flex.from_mask_mod(lambda b, h, q, kv: q >= kv, **kw),
             lambda **kw: flex.to_score_mod(scores.alibi(2), **kw),
             lambda **kw: flex.block_counts(masks.causal(), **kw)]
    for call in calls:
        with pytest.raises((TypeError, ValueError), match=rf"\b{param}\b"):
            call(**{"Lq": 4, "Lk": 4, param: junk})


@pytest.mark.parametrize("label", ["nan", "1.5", "str", "True", "-1", "2**70"])
def test_junk_heads_and_blocks_are_refused_naming_the_argument(label):
    junk = JUNK_SIZES[label]
    with pytest.raises((TypeError, ValueError), match=r"\bheads\b"):
        flex.to_score_mod(scores.alibi(2), 4, 4, heads=junk)
    with pytest.raises((TypeError, ValueError), match=r"\bheads\b"):
        flex.to_mask_mod(masks.causal(), 4, 4, heads=junk)
    with pytest.raises((TypeError, ValueError), match=r"\bblock_q\b"):
        flex.block_counts(masks.causal(), 4, 4, block_q=junk)
    with pytest.raises((TypeError, ValueError), match=r"\bblock_k\b"):
        flex.block_counts(masks.causal(), 4, 4, block_k=junk)


def test_empty_lengths_convert_to_empty_tables():
    assert flex.block_counts(masks.causal(), 0, 4).partial.shape == (1, 1, 0)
    assert flex.from_mask_mod(lambda b, h, q, kv: q >= kv, 0, 3).to_array(0, 3).shape == (0, 3)
    counts = flex.block_counts(masks.causal(), 4, 4, 2)     # 2 x 2 tiles: the diagonal ones partial, one full below
    np.testing.assert_array_equal(counts.partial, [[[1, 1]]])
    np.testing.assert_array_equal(counts.full, [[[0, 1]]])
