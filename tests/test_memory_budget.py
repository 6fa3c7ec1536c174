"""One memory budget (``attnlab.budget``) for every allocation sized by input (issue 14): each path below raises
``MemoryBudgetError`` naming the size and the budget *before* allocating, which tracemalloc checks (the peak during
the refused call stays far below what it asked for). The sizes asked for are kept moderate (tens of MiB) so that a
missing check fails the assertion rather than exhausting the machine."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import attnlab
from attnlab import budget, cli, masks, planner
from attnlab import scores as S
from attnlab.budget import MemoryBudgetError
from attnlab.viz import explorer

BUDGET = 2**20                     # 1 MiB
REFUSED = r"needs ~[0-9.]+ (KiB|MiB|GiB|TiB), over the memory budget of 1\.0 MiB"


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setattr(budget, "MEMORY_BUDGET", BUDGET)
    return BUDGET


def refused_before_allocating(call, pattern=REFUSED):
    """``call`` raises MemoryBudgetError matching ``pattern`` with less than a quarter of the budget allocated."""
    tracemalloc.start()
    try:
        with pytest.raises(MemoryBudgetError, match=pattern) as info:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < BUDGET // 4, f"{peak} bytes allocated before the refusal"
    return str(info.value)


def _qkv(Lq, Lk, D=4, H=1):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((H, Lq, D)), rng.standard_normal((H, Lk, D)), rng.standard_normal((H, Lk, D)))


def test_the_error_is_both_a_value_error_and_a_memory_error():
    assert issubclass(MemoryBudgetError, ValueError) and issubclass(MemoryBudgetError, MemoryError)
    assert planner.MemoryBudgetError is MemoryBudgetError


def test_planner_name_and_budget_module_are_one_budget(monkeypatch):
    monkeypatch.setattr(planner, "MEMORY_BUDGET", 12345)
    assert budget.limit() == 12345 == planner.MEMORY_BUDGET
    monkeypatch.setattr(budget, "MEMORY_BUDGET", None)
    monkeypatch.setenv("ATTNLAB_MEMORY_BUDGET", "3MiB")
    assert planner.MEMORY_BUDGET == 3 * 2**20 and attnlab.plan((64, 8), (64, 8)).budget == 3 * 2**20
    saved = planner.MEMORY_BUDGET                                   # save and restore through the old name...
    planner.MEMORY_BUDGET = saved
    assert budget.MEMORY_BUDGET is None                              # ...keeps following the environment
    monkeypatch.setenv("ATTNLAB_MEMORY_BUDGET", "lots")
    with pytest.raises(ValueError, match=r"^ATTNLAB_MEMORY_BUDGET must be a positive number of bytes.*got 'lots'$"):
        budget.limit()
    monkeypatch.delenv("ATTNLAB_MEMORY_BUDGET")
    assert budget.limit() == budget.DEFAULT == 256 * 2**20
    budget.check(budget.FLOOR - 1, "a small table", limit=1)      # below the floor: never refused
    assert [budget.parse(t) for t in ("1024", "1e3", "2 KiB", "1.5MiB")] == [1024, 1000, 2048, 1572864]


def test_attention_with_any_scorer_checks_first(small_budget):
    q, k, v = _qkv(1000, 1000)                                   # scores 8 MB, several copies
    for score, params in (("dot", {}), ("scaled_dot", {}), ("general", {"weight": np.eye(4)}),
                          (lambda a, b: a @ np.swapaxes(b, -1, -2), {})):
        msg = refused_before_allocating(lambda: attnlab.attention(q, k, v, score, **params))
        assert "attention(score=" in msg and "flash_attention" in msg


def test_additive_scoring_checks_its_tanh_tensor(small_budget):
    q, k, v = _qkv(200, 200)
    A = 32                                                       # (200, 200, 32) float64: 10 MiB, three of them
    w_q, w_k, w_v = np.ones((A, 4)), np.ones((A, 4)), np.ones(A)
    for call in (lambda: attnlab.additive_attention(q, k, v, w_q, w_k, w_v),
                 lambda: attnlab.attention(q, k, v, "additive", w_q=w_q, w_k=w_k, w_v=w_v),
                 lambda: S.additive(q, k, w_q, w_k, w_v)):
        msg = refused_before_allocating(call)
        assert "A=32" in msg


def test_reference_paths_and_backward_check_first(small_budget):
    q, k, v = _qkv(1000, 1000)
    refused_before_allocating(lambda: attnlab.scaled_dot_product_attention(q, k, v, impl="reference"),
                              r"budget 1\.0 MiB")
    refused_before_allocating(lambda: attnlab.attention_backward(np.ones((1, 1000, 4)), q, k, v))


def test_attention_weights_for_all_rows_checks_first(small_budget):
    q, k, v = _qkv(1200, 1200)
    _, lse = attnlab.flash_attention(q, k, v, return_lse=True)
    msg = refused_before_allocating(lambda: attnlab.attention_weights_for(q, k, slice(None), lse))
    assert "1200 rows x 1200 keys" in msg and "fewer rows" in msg
    w = attnlab.attention_weights_for(q, k, [0, 7], lse)          # a few rows still work, equal to the reference
    _, ref = attnlab.scaled_dot_product_attention(q[:, :8], k, v, return_weights=True)
    np.testing.assert_allclose(w, ref[:, [0, 7]], atol=1e-12)


def test_kernel_attention_weights_for_checks_the_budget_too(small_budget):
    """attnlab.kernel.attention_weights_for (not only the api wrapper) refuses before allocating (issue 14)."""
    from attnlab.kernel import attention_weights_for as kernel_weights_for

    q, k, v = _qkv(1200, 1200)
    _, lse = attnlab.flash_attention(q, k, v, return_lse=True)
    msg = refused_before_allocating(lambda: kernel_weights_for(q, k, slice(None), lse))
    assert "1200 rows x 1200 keys" in msg and "fewer rows" in msg
    w = kernel_weights_for(q, k, [3, 1199], lse)
    _, ref = attnlab.scaled_dot_product_attention(q[:, [3, 1199]], k, v, return_weights=True)   # no mask: rows
    np.testing.assert_allclose(w, ref, atol=1e-12)


def test_masks_materialize_and_draw_only_within_the_budget(small_budget):
    m = masks.causal() & masks.sliding_window(4)
    refused_before_allocating(lambda: m.to_array(3000, 3000))
    refused_before_allocating(lambda: masks.padding([5, 6]).to_array(1000, 1000))
    msg = refused_before_allocating(lambda: m.show(1000, 1000))
    assert "as text" in msg
    grid = np.zeros((600, 600), bool)
    refused_before_allocating(lambda: masks.draw(grid))
    refused_before_allocating(lambda: masks.from_function(lambda b, h, q, kv: q >= kv).blocks(4000, 4000, 1, 1))
    # within the budget the striped materialization equals the mask's definition
    want = np.fromfunction(lambda i, j: (j <= i) & (j >= i - 4), (200, 200))
    assert np.array_equal(m.to_array(200, 200), want)


def test_striped_to_array_equals_whole_grid_evaluation(monkeypatch):
    """to_array evaluates STRIPE_CELLS cells of rows at a time; with tiny stripes the result is unchanged."""
    monkeypatch.setattr(masks, "STRIPE_CELLS", 7)
    rng = np.random.default_rng(1)
    for m in (masks.causal(), masks.dilated(3) & masks.causal(), masks.random_blocks(2, 1, seed=2),
              masks.padding([3, 9], q_lengths=[4, 2]), masks.from_array(rng.random((2, 5, 9)) < 0.5)):
        whole = m.evaluate(5, 9, np.arange(5)[:, None], np.arange(9)[None, :],
                           np.arange(m.batch or 1)[:, None, None, None], np.arange(m.heads or 1)[None, :, None, None])
        arr = m.to_array(5, 9)
        assert np.array_equal(arr, np.broadcast_to(whole, arr.shape)), m.name


def test_explorer_demo_and_its_page_check_first(small_budget, monkeypatch, capsys, tmp_path):
    refused_before_allocating(lambda: explorer.demo_data(400))
    monkeypatch.setattr(budget, "MEMORY_BUDGET", 4 * 2**20)      # the demo (~2.7 MiB) fits, its page (~6 MiB) not
    assert explorer.page_bytes(explorer.demo_data(150)) > 4 * 2**20
    code, err = _cli(["explore", "--demo", "--n", "150", "--out", str(tmp_path / "p.html")], capsys)
    assert code == 2 and "the explorer page of the demo at 150 tokens (2 layers x 4 heads) needs ~" in err
    assert not (tmp_path / "p.html").exists()


def test_layer_weights_check_first(small_budget):
    msg = refused_before_allocating(lambda: attnlab.MultiHeadAttention(4096, 8))
    assert "MultiHeadAttention(d_model=4096" in msg


# --- the command line: one line, exit code 2, nothing big allocated ------------------------------------------
def _cli(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("argv, what", [
    (["mask", "causal", "--n", "3000"], "drawing mask causal"),
    (["explore", "--demo", "--n", "3000"], "the explorer demo at 3000 tokens"),
    (["bench", "--sizes", "200000", "--cases", "dense"], "attnlab bench at n="),
])
def test_cli_sizes_are_one_line_budget_errors(argv, what, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(budget, "MEMORY_BUDGET", None)
    monkeypatch.setenv("ATTNLAB_MEMORY_BUDGET", "1MiB")           # the variable a shell user would set
    code, err = _cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and what in err and "over the memory budget of 1.0 MiB" in err
    assert not list(tmp_path.iterdir())                           # nothing was written


def _npy_header(path, shape, dtype="<f8"):
    """A .npy file whose header claims ``shape`` and that holds no data."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, dtype))
    header["shape"] = shape
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)


def test_npy_header_is_checked_before_loading(tmp_path, capsys, monkeypatch):
    huge = tmp_path / "huge.npy"
    _npy_header(huge, (100_000, 100_000))                         # 74.5 GiB by its header, 128 bytes on disk
    code, err = _cli(["plot", "heatmap", "--weights", str(huge), "--out", str(tmp_path / "f.png")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "huge.npy, a float64 array of shape (100000, 100000) by its header needs ~74.5 GiB" in err
    truncated = tmp_path / "short.npy"
    _npy_header(truncated, (10, 10))
    code, err = _cli(["plot", "heatmap", "--weights", str(truncated), "--out", str(tmp_path / "f.png")], capsys)
    assert code == 2 and "is truncated: its header says shape (10, 10) (800 bytes of data)" in err
    for name, content in (("empty.npy", b""), ("junk.npy", b"not an array at all")):
        (tmp_path / name).write_bytes(content)
        code, err = _cli(["plot", "heatmap", "--weights", str(tmp_path / name), "--out", str(tmp_path / "f.png")],
                         capsys)
        assert code == 2 and err.count("\n") == 1 and f"{name} is not a .npy array file" in err
    assert not (tmp_path / "f.png").exists()


def test_a_malformed_budget_variable_is_a_one_line_error(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(budget, "MEMORY_BUDGET", None)
    monkeypatch.setenv("ATTNLAB_MEMORY_BUDGET", "-5")
    code, err = _cli(["mask", "causal", "--n", "4"], capsys)
    assert code == 2 and err.count("\n") == 1 and "ATTNLAB_MEMORY_BUDGET must be a positive number" in err
