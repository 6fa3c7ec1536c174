"""Input classes beyond the junk sweep (issue 14) for diagnostics, faithfulness, distributed and learn: dtypes,
magnitudes, empty sizes and the memory budget, each against an independent oracle (float64 NumPy written here,
scipy) or a tracemalloc bound, and the command-line cases the garbage sweep found (hangs before the fix)."""

import math
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import attnlab
from attnlab import budget, cli, diagnostics as D, faithfulness as FA, masks
from attnlab.distributed import layout as DL, ring as DR
from attnlab.learn import explain as EX, practice as PR

rng = np.random.default_rng(0)
W = rng.random((2, 3, 5))
W /= W.sum(-1, keepdims=True)                                   # (H, Lq, Lk) rows sum to 1


def _entropy_oracle(w):
    """Mean normalized row entropy per head, float64, written from the formula."""
    h = -(w * np.log(np.where(w > 0, w, 1.0))).sum(-1) / math.log(w.shape[-1])
    return h.mean(-1)


# --- dtypes: any real dtype and array library in, float64 NumPy out ------------------------------------------
@pytest.mark.parametrize("convert", [lambda w: w.astype(np.float16), lambda w: w.astype(np.float32),
                                     lambda w: torch.tensor(w, dtype=torch.bfloat16), lambda w: w.tolist()],
                         ids=["float16", "float32", "torch bfloat16", "list"])
def test_diagnostics_take_any_real_dtype_and_return_float64(convert):
    given = convert(W)
    back = np.asarray(torch.as_tensor(given).double() if isinstance(given, torch.Tensor) else given, np.float64)
    out = D.entropy(given)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, _entropy_oracle(back), rtol=1e-12)   # computed in float64 from the given values


def test_one_hot_integer_weights_are_probabilities():
    assert D.entropy(np.eye(4, dtype=int)[None]).tolist() == [0.0]
    assert D.top1_mass(np.eye(4, dtype=bool)[None]).tolist() == [1.0]


# --- magnitudes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, what", [(np.full((1, 2, 2), 2.0), "in \\[0, 1\\]"), (np.full((1, 2, 2), 1e300), "in \\[0, 1\\]"),
                                       (np.full((1, 2, 2), np.nan), "finite"), (-W, "non-negative")])
def test_weights_that_are_not_probabilities_are_refused(bad, what):
    with pytest.raises(ValueError, match=f"weights must .*{what}"):
        D.entropy(bad)


def test_float16_rounding_above_one_is_still_a_probability():
    w = np.array([[[1.0004, 0.0]]])                             # float16 can round a one-hot row a little above 1
    assert D.top1_mass(w).tolist() == [1.0004]


def test_rank_correlations_at_extreme_magnitudes_match_scipy_without_overflow():
    x = np.array([1e308, -1e308, 0.0, 5e-324, -5e-324])
    y = np.array([3.0, 1.0, 2.0, 2.0, 5.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # 1e308 - (-1e308) used to overflow to inf (a warning)
        assert FA.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert FA.spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="x must hold finite numbers"):
        FA.kendall_tau([1.0, np.nan, 2.0], [1.0, 2.0, 3.0])


def test_rankdata_averages_ties_like_scipy_at_scale():
    x = rng.integers(0, 50, 20_000).astype(float)              # 20,000 values, 50 tie groups: the old loop was
    np.testing.assert_array_equal(FA.rankdata(x), stats.rankdata(x))   # O(n x distinct values)
    with pytest.raises(ValueError, match="x must be 1-D"):
        FA.rankdata(np.ones((2, 2)))


# --- empty sizes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [D.entropy, D.effective_tokens, D.top1_mass, D.mean_distance, D.previous_token_score],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(0, 3, 5), (2, 0, 5), (2, 3, 0)], ids=["H=0", "Lq=0", "Lk=0"])
def test_empty_sizes_give_zero_per_head(fn, shape):
    out = fn(np.zeros(shape))
    assert out.shape == shape[:1] and (out == 0).all()           # no live row: 0, never NaN or a NumPy error


def test_positions_where_there_are_no_keys_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"indices must be key positions in \[-0, 0\)"):
        D.sink_score(np.zeros((2, 3, 0)))
    with pytest.raises(ValueError, match="L=0 is shorter than the n=1 chunks"):
        DL.chunk_bounds(0, 1)


# --- the memory budget ------------------------------------------------------------------------------------------
SIZED = {
    "diagnostics.repeated_random_tokens": lambda: D.repeated_random_tokens(50, 2**40),
    "faithfulness.kendall_tau": lambda: FA.kendall_tau(np.arange(20_000.0), np.arange(20_000.0)),
    "distributed.layout.positions": lambda: DL.positions(0, 1, 2**40, "contiguous"),
    "distributed.layout.chunk_bounds": lambda: DL.chunk_bounds(2**40, 2**39),
    "distributed.ring.work_balance": lambda: DR.work_balance(2**20, 2**12, "contiguous"),
    "distributed.ring.sub_blocks": lambda: DR.sub_blocks(masks.from_function(lambda b, h, q, kv: q >= kv), 2**20,
                                                         [(0, 2**19)], [(2**19, 2**20)]),
    "learn.practice.mha_shapes": lambda: PR.mha_shapes(1, 2**20, 8, 2),
    "learn.explain.random_inputs": lambda: EX.random_inputs(0, Lq=2**30),
    "learn.explain.worked_example": lambda: EX.worked_example(np.ones((4000, 1)), np.ones((4000, 1)),
                                                              np.ones((4000, 1))),
}


@pytest.mark.parametrize("name", SIZED)
def test_sized_by_input_is_refused_before_allocating(name):
    tracemalloc.start()
    try:
        with pytest.raises(budget.MemoryBudgetError, match="over the memory budget"):
            SIZED[name]()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**22, f"{name} allocated {peak} bytes before refusing"     # inputs at most ~1 MiB each


def test_ring_attention_checks_its_arguments_before_joining_the_ring():
    q = torch.zeros(1, 1, 4, 2)
    # no process group: a check that ran only after joining would fail with "not initialized" instead
    for kwargs, message in (({"scale": math.nan}, "scale must be a finite number"),
                            ({"causal": np.ones(2)}, "causal must be True or False"),
                            ({"stats": "x"}, "stats must be a dict"), ({"timeout": -1}, "timeout must be"),
                            ({"layout": "spiral"}, "layout must be one of"),
                            ({"mask": np.ones((4, 4))}, "mask must be an attnlab.masks.Mask, a boolean")):
        with pytest.raises((TypeError, ValueError), match=message):
            DR.ring_attention(q, q, q, **kwargs)


# --- the command line: what the garbage sweep found ---------------------------------------------------------------
@pytest.mark.parametrize("argv", [["mask", "document", "--n", "99999999999999999999"],
                                  ["mask", "document", "--n", "6", "--lk", "9999999999"],
                                  ["experiment", "train", "--quick", "--steps", "1000000"],
                                  ["experiment", "bottleneck", "--quick", "--steps", "1000000"]],
                         ids=" ".join)
def test_sizes_that_used_to_run_for_ever_are_one_line_and_exit_2(argv, capsys):
    assert cli.main(argv) == 2                              # before: building 10^20 document ids / 10^6 steps
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("memory budget" in err or "at most 100000" in err), err


@pytest.mark.parametrize("junk", [None, 1.5, b"x", ""], ids=repr)
def test_a_score_file_that_is_not_a_path_is_refused_before_anything_is_asked(junk):
    from attnlab.learn import session
    asked = []
    with pytest.raises(TypeError, match="score_file must be a file path"):
        session.run_session([PR.make("softmax", 0)], seed=0, answers=["0.5"], write=asked.append, score_file=junk)
    assert asked == []


@pytest.mark.parametrize("argv", [["serve", "--host", "abc"], ["serve", "--host", "-1"], ["serve", "--port", "-1"],
                                  ["serve", "--port", "70000"]], ids=" ".join)
def test_serve_refuses_a_bad_address_before_loading_any_model(argv, monkeypatch, capsys):
    import attnlab.app

    def no_app(*args, **kwargs):
        raise AssertionError("the app (and its models) was built before the address was checked")

    monkeypatch.setattr(attnlab.app, "App", no_app)
    try:
        code = cli.main(argv)
    except SystemExit as stop:                                 # argparse's own one-line errors
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "internal error" not in err, err


@pytest.mark.parametrize("kwargs, message", [({"world": 10**6}, "world must be at most 256"),
                                             ({"world": 2, "timeout": math.nan}, "timeout must be a finite"),
                                             ({"world": 2, "init_timeout": 0}, "init_timeout must be"),
                                             ({"world": 2, "grace": -1}, "grace must be"),
                                             ({"world": 2, "threads": 1.5}, "threads must be"),
                                             ({"world": 2, "backend": "mpi"}, "backend must be one of"),
                                             ({"world": 2, "ranks": "01"}, "ranks must be a list"),
                                             ({"world": 2, "fn": None}, "fn must be a function")])
def test_run_local_refuses_junk_before_starting_a_process(kwargs, message, monkeypatch):
    from attnlab.distributed import launch

    def no_process(*args, **kw):
        raise AssertionError("a process was started before the arguments were checked")

    monkeypatch.setattr(launch.mp, "get_context", no_process)
    fn = kwargs.pop("fn", print)
    with pytest.raises((TypeError, ValueError), match=message):
        launch.run_local(fn, **kwargs)


@pytest.mark.parametrize("heads", [None, 2])
def test_sub_blocks_evaluates_a_large_piece_in_stripes_equal_to_the_formula(heads):
    """A piece over masks.STRIPE_CELLS cells is evaluated stripe by stripe (bounded temporaries, as budgeted);
    the stripes put together must equal the mask written here as a formula, per head too."""
    n = 2100                                                    # 2100 x 2100 > STRIPE_CELLS: two stripes
    mask = masks.from_function(lambda b, h, q, kv: (q + kv + h) % 3 == 0, heads=heads)
    (piece,) = DR.sub_blocks(mask, 2 * n, [(0, n)], [(n, 2 * n)], H=heads or 1)
    q, kv = np.arange(n)[:, None], np.arange(n, 2 * n)[None, :]
    h = np.arange(heads or 1)[:, None, None]
    expected = (q + kv + h) % 3 == 0                            # (H, rows, keys)
    got = piece.mask.numpy()
    np.testing.assert_array_equal(got.reshape(expected.shape) if heads else got, expected if heads else expected[0])
    assert piece.cells == int(expected.sum())
