"""attnlab.masks: materialized arrays against hand-written expectations and loop oracles, tile maps against brute
force, the algebra, and the text drawings."""

import numpy as np
import pytest

import oracles as O
from attnlab import masks as M

T, F = True, False


def _rows(*rows):
    """Hand-written mask rows: '#' may attend, '.' blocked."""
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


# --- to_array against hand-written expectations ---------------------------------------------------------------
HAND = [
    (M.causal(), 4, 4, _rows("#...", "##..", "###.", "####")),
    (M.causal(), 2, 4, _rows("###.", "####")),                       # bottom-right: queries are keys 2, 3
    (M.causal("top_left"), 2, 4, _rows("#...", "##..")),
    (M.causal(), 4, 2, _rows("..", "..", "#.", "##")),               # queries 0, 1 sit before every key
    (M.causal("top_left"), 4, 2, _rows("#.", "##", "##", "##")),
    (M.sliding_window(1), 4, 4, _rows("#...", "##..", ".##.", "..##")),
    (M.sliding_window(1, 1), 4, 4, _rows("##..", "###.", ".###", "..##")),
    (M.sliding_window(0, 2, align="top_left"), 2, 5, _rows("###..", ".###.")),
    (M.prefix_lm(2), 4, 4, _rows("##..", "##..", "###.", "####")),
    (M.document([0, 0, 1, 1, 2]), 5, 5, _rows("##...", "##...", "..##.", "..##.", "....#")),
    (M.document([0, 0, 1, 1, 2]), 2, 5, _rows("..##.", "....#")),
    (M.document([0, 1, 1], q_doc_ids=[1, 0]), 2, 3, _rows(".##", "#..")),
    (M.dilated(2), 4, 4, _rows("#.#.", ".#.#", "#.#.", ".#.#")),              # both directions
    (M.dilated(2) & M.causal(), 4, 4, _rows("#...", ".#..", "#.#.", ".#.#")),
    (M.dilated(3), 2, 5, _rows("#..#.", ".#..#")),
    (M.global_tokens([0]), 4, 4, _rows("####", "#...", "#...", "#...")),
    (M.global_tokens([1]) | M.sliding_window(0), 3, 3, _rows("##.", "###", ".##")),
    (M.full(), 2, 3, _rows("###", "###")),
    (~M.causal(), 3, 3, _rows(".##", "..#", "...")),
    (M.causal() & M.sliding_window(1, 5), 3, 3, _rows("#..", "##.", ".##")),
    (M.from_array(_rows("#.#", ".#.")), 2, 3, _rows("#.#", ".#.")),
    (M.from_function(lambda b, h, q, kv: (q + kv) % 2 == 0), 3, 3, _rows("#.#", ".#.", "#.#")),
]


@pytest.mark.parametrize("mask, Lq, Lk, expected", HAND, ids=[f"{m}-{a}x{b}" for m, a, b, _ in HAND])
def test_to_array_matches_hand_written(mask, Lq, Lk, expected):
    got = mask.to_array(Lq, Lk)
    assert got.dtype == bool and got.shape == (Lq, Lk)
    np.testing.assert_array_equal(got, expected)


def test_padding_to_array_by_hand():
    got = M.padding([2, 3]).to_array(2, 4)
    assert got.shape == (2, 1, 2, 4)                                    # (B, H=1, Lq, Lk)
    np.testing.assert_array_equal(got[0, 0], _rows("##..", "##.."))
    np.testing.assert_array_equal(got[1, 0], _rows("###.", "###."))
    with_q = M.padding([2, 3], q_lengths=[1, 2]).to_array(3, 4)
    np.testing.assert_array_equal(with_q[0, 0], _rows("##..", "....", "...."))
    np.testing.assert_array_equal(with_q[1, 0], _rows("###.", "###.", "...."))


def test_batched_document_and_head_dependent_arrays():
    doc = M.document([[0, 0, 1], [0, 1, 1]])
    got = doc.to_array(3, 3)
    assert got.shape == (2, 1, 3, 3) and doc.batch == 2
    np.testing.assert_array_equal(got[0, 0], _rows("##.", "##.", "..#"))
    np.testing.assert_array_equal(got[1, 0], _rows("#..", ".##", ".##"))
    per_head = np.stack([np.eye(3, dtype=bool), ~np.eye(3, dtype=bool)])           # (H=2, Lq, Lk)
    m = M.from_array(per_head)
    assert m.heads == 2 and m.batch is None
    np.testing.assert_array_equal(m.to_array(3, 3)[0], per_head)
    combo = m & M.padding([3, 2])                                                  # depends on both
    arr = combo.to_array(3, 3)
    assert arr.shape == (2, 2, 3, 3)
    np.testing.assert_array_equal(arr[1, 1], ~np.eye(3, dtype=bool) & _rows("##.", "##.", "##."))


# --- to_array against the loop oracles for random sizes ------------------------------------------------------
def _kinds(rng, Lq, Lk):
    """(attnlab mask, oracle predicate) for every kind, both alignments, with random parameters."""
    ids = np.sort(rng.integers(0, 3, size=Lk)).tolist()
    arr = rng.random((Lq, Lk)) < 0.5
    glob = sorted(set(rng.integers(0, max(Lk, 1), size=2).tolist()))
    fn = lambda b, h, q, kv: (q * 3 + kv) % 4 != 1                                 # noqa: E731
    pairs = [(M.from_array(arr), O.from_array(arr)),
             (M.from_function(fn), lambda b, h, i, j, Lq_, Lk_: fn(b, h, i, j)),
             (M.full(), lambda *a: True)]
    if Lq <= Lk:
        pairs.append((M.document(ids), O.document(ids)))
    for align in M.ALIGNS:
        pairs += [(M.causal(align), O.causal(align)),
                  (M.sliding_window(2, 1, align), O.sliding_window(2, 1, align)),
                  (M.prefix_lm(3, align), O.prefix_lm(3, align)),
                  (M.dilated(3, align), O.dilated(3, align)),
                  (M.global_tokens(glob, align), O.global_tokens(glob, align))]
    return pairs


@pytest.mark.parametrize("Lq, Lk", [(1, 1), (5, 5), (3, 8), (8, 3), (7, 11)])
def test_to_array_matches_oracle(rng, Lq, Lk):
    pairs = _kinds(rng, Lq, Lk)
    (a, oa), (b, ob) = pairs[-3], pairs[-6]
    pairs += [(a & b, O.both(oa, ob)), (a | b, O.either(oa, ob)), (~a, O.negate(oa)), (~(a | ~b), O.negate(
        O.either(oa, O.negate(ob))))]
    for mask, pred in pairs:
        np.testing.assert_array_equal(mask.to_array(Lq, Lk), O.grid(pred, Lq, Lk), err_msg=str(mask))


def test_padding_matches_oracle_per_batch(rng):
    lengths, q_lengths = [0, 3, 6], [2, 0, 5]
    for mask, pred in ((M.padding(lengths), O.padding(lengths)),
                       (M.padding(lengths, q_lengths), O.padding(lengths, q_lengths))):
        arr = mask.to_array(5, 6)
        for b in range(3):
            np.testing.assert_array_equal(arr[b, 0], O.grid(pred, 5, 6, b=b))


def test_random_blocks_structure():
    """Every query block sees exactly n_random whole key blocks; the same seed gives the same mask."""
    bs, n = 3, 2
    mask = M.random_blocks(bs, n, seed=7)
    arr = mask.to_array(10, 10)
    np.testing.assert_array_equal(arr, M.random_blocks(bs, n, seed=7).to_array(10, 10))
    assert not np.array_equal(arr, M.random_blocks(bs, n, seed=8).to_array(10, 10)) or \
        not np.array_equal(arr, M.random_blocks(bs, n, seed=9).to_array(10, 10))
    for i in range(10):
        row = arr[i]
        key_blocks = [row[s:s + bs] for s in range(0, 10, bs)]
        assert all(blk.all() or not blk.any() for blk in key_blocks)              # whole key blocks
        assert sum(blk.all() for blk in key_blocks) == n
        np.testing.assert_array_equal(row, arr[(i // bs) * bs])                    # one choice per query block
    too_many = M.random_blocks(4, 5).to_array(6, 6)
    assert too_many.all()                                                         # only 2 key blocks exist


# --- blocks() against brute force -------------------------------------------------------------------------------
EXACT = ["causal", "sliding_window", "padding", "prefix_lm"]


def _all_masks(rng, Lq, Lk):
    ids = np.sort(rng.integers(0, 4, size=Lk))
    named = {
        "causal": M.causal(), "causal_tl": M.causal("top_left"),
        "sliding_window": M.sliding_window(int(rng.integers(0, 5)), int(rng.integers(0, 3))),
        "sliding_window_tl": M.sliding_window(3, 2, align="top_left"),
        "padding": M.padding([int(rng.integers(0, Lk + 1))], q_lengths=[int(rng.integers(0, Lq + 1))]),
        "padding_k": M.padding([int(rng.integers(0, Lk + 1))]),
        "prefix_lm": M.prefix_lm(int(rng.integers(0, Lk + 1))),
        "prefix_lm_tl": M.prefix_lm(int(rng.integers(0, Lk + 1)), align="top_left"),
        "document": M.document(ids, q_doc_ids=np.sort(rng.integers(0, 4, size=Lq))),
        "dilated": M.dilated(int(rng.integers(1, 4))),
        "global": M.global_tokens(rng.integers(0, Lk, size=2)),
        "random_blocks": M.random_blocks(3, 2, seed=int(rng.integers(100))),
        "from_array": M.from_array(rng.random((Lq, Lk)) < 0.3),
        "from_function": M.from_function(lambda b, h, q, kv: (q // 3) == (kv // 4)),
        "full": M.full(),
    }
    named["causal&window"] = named["causal"] & named["sliding_window"]
    named["global|window"] = named["global"] | named["sliding_window"]
    named["~causal"] = ~named["causal"]
    named["document&causal"] = named["document"] & named["causal"]
    named["~(prefix|global)&padding"] = ~(named["prefix_lm"] | named["global"]) & named["padding"]
    named["random|array"] = named["random_blocks"] | named["from_array"]
    return named


@pytest.mark.parametrize("seed", range(6))
def test_blocks_agree_with_brute_force(seed):
    rng = np.random.default_rng(seed)
    Lq, Lk = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    bq, bk = int(rng.integers(1, 9)), int(rng.integers(1, 9))                   # usually not dividing Lq / Lk
    for name, mask in _all_masks(rng, Lq, Lk).items():
        cells = mask.to_array(Lq, Lk).reshape(-1, Lq, Lk)[0]
        truth = O.tiles(cells, bq, bk)
        got = mask.blocks(Lq, Lk, bq, bk)
        assert got.shape == (-(-Lq // bq), -(-Lk // bk)) and got.dtype == np.int8
        wrong = (got != truth) & (got != M.PARTIAL)                              # conservative only by PARTIAL
        assert not wrong.any(), f"{name}: tile map differs from brute force at {np.argwhere(wrong)[:3].tolist()}"
        if name.split("_")[0] in EXACT or name in ("causal_tl", "sliding_window_tl", "prefix_lm_tl",
                                                 "padding_k"):
            np.testing.assert_array_equal(got, truth, err_msg=f"{name} must be exact")


def test_blocks_exact_for_analytic_kinds_at_awkward_sizes():
    for Lq, Lk, bq, bk in [(5, 13, 4, 3), (13, 5, 3, 4), (1, 1, 1, 1), (9, 9, 9, 9), (7, 30, 2, 7), (30, 7, 7, 2)]:
        for mask in (M.causal(), M.causal("top_left"), M.sliding_window(2, 1), M.sliding_window(0, 3, "top_left"),
                     M.padding([4], q_lengths=[3]), M.prefix_lm(3), M.prefix_lm(2, "top_left"),
                     M.global_tokens([1, 4]), M.document(np.arange(Lk) // 3) if Lq <= Lk else M.full()):
            cells = mask.to_array(Lq, Lk).reshape(-1, Lq, Lk)[0]
            np.testing.assert_array_equal(mask.blocks(Lq, Lk, bq, bk), O.tiles(cells, bq, bk), err_msg=str(mask))


def test_blocks_per_batch_row():
    mask = M.padding([2, 7])
    for b, n in enumerate([2, 7]):
        cells = O.grid(O.padding([2, 7]), 4, 8, b=b)
        np.testing.assert_array_equal(mask.blocks(4, 8, 2, 3, b=b), O.tiles(cells, 2, 3))
    heads = M.from_array(np.stack([np.tri(5, dtype=bool), np.ones((5, 5), bool)]))
    assert (heads.blocks(5, 5, 5, 5, h=1) == M.FULL).all()
    assert (heads.blocks(5, 5, 5, 5, h=0) == M.PARTIAL).all()


def test_blocks_causal_by_hand():
    np.testing.assert_array_equal(M.causal().blocks(6, 6, 2, 2), [[1, 0, 0], [2, 1, 0], [2, 2, 1]])
    np.testing.assert_array_equal(M.causal().blocks(5, 5, 2, 2), [[1, 0, 0], [2, 1, 0], [2, 2, 2]])  # 1x1 corner


# --- drawings -----------------------------------------------------------------------------------------------------
def test_show_causal_bottom_right_and_top_left():
    assert M.causal().show(2, 3) == (
        "causal(align='bottom_right')  Lq=2 Lk=3  (# may attend, . blocked)\n"
        "    k0 k1 k2\n"
        "q0   #  #  .\n"
        "q1   #  #  #")
    assert M.causal("top_left").show(2, 3) == (
        "causal(align='top_left')  Lq=2 Lk=3  (# may attend, . blocked)\n"
        "    k0 k1 k2\n"
        "q0   #  .  .\n"
        "q1   #  #  .")


def test_show_custom_symbols_batch_row_and_wide_labels():
    text = M.padding([1, 2]).show(1, 2, b=1, allowed="x", blocked="-")
    assert text.splitlines()[-1] == "q0   x  x"
    assert "x may attend, - blocked" in text
    lines = M.sliding_window(1).show(11, 11).splitlines()
    assert lines[1] == "    " + "".join(f"k{j}".rjust(4) for j in range(11))
    assert lines[-1] == "q10 " + "   ." * 9 + "   #   #"
    assert len({len(line) for line in lines[1:]}) == 1                              # columns line up


def test_names_describe_the_mask():
    assert repr(M.sliding_window(3, 1)) == "sliding_window(left=3, right=1)"
    assert repr(M.causal() & ~M.padding([2])) == "(causal(align='bottom_right') & ~padding(lengths=[2]))"
    assert repr(M.prefix_lm(4)) == "prefix_lm(4)"


def test_from_function_reading_batch_and_head_declares_their_sizes():
    fn = lambda b, h, q, kv: (kv <= q + h) & (kv >= b)                               # noqa: E731
    arr = M.from_function(fn, batch=2, heads=3).to_array(3, 4)
    assert arr.shape == (2, 3, 3, 4)
    for b in range(2):
        for h in range(3):
            np.testing.assert_array_equal(arr[b, h], O.grid(lambda b_, h_, i, j, Lq, Lk: fn(b_, h_, i, j), 3, 4, b, h))
    undeclared = M.from_function(fn).to_array(3, 4)                               # documented: b = h = 0
    np.testing.assert_array_equal(undeclared, arr[0, 0])


def test_evaluate_on_index_arrays():
    m = M.causal()
    got = m.evaluate(4, 6, np.array([0, 3]), np.array([2, 5]))                    # pairs (0,2) and (3,5)
    np.testing.assert_array_equal(got, [True, True])
    np.testing.assert_array_equal(m.evaluate(4, 6, 0, np.arange(6)), [T, T, T, F, F, F])
