"""attnlab.diagnostics against hand-computed float64 oracles on tiny arrays."""

import math

import numpy as np
import pytest

import attnlab
from attnlab import diagnostics as dg


def _h(row):
    """Entropy in nats of one probability row, by the formula (0 log 0 = 0)."""
    return -sum(p * math.log(p) for p in row if p > 0)


# --- entropy -----------------------------------------------------------------------------------------------------
def test_entropy_uniform_is_one_and_one_hot_is_zero():
    w = np.array([[[0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]],
                  [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]])          # (H=2, Lq=2, Lk=4)
    np.testing.assert_allclose(dg.entropy(w), [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(dg.entropy(w, normalized=False), [math.log(4), 0.0], atol=1e-12)


def test_entropy_matches_formula_per_row_and_mean():
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(5), size=(2, 3, 4))                        # (B=2, H=3, Lq=4, Lk=5)
    got = dg.entropy(w)
    assert got.shape == (2, 3)
    for b in range(2):
        for h in range(3):
            want = np.mean([_h(w[b, h, i]) / math.log(5) for i in range(4)])
            assert abs(got[b, h] - want) < 1e-12


def test_entropy_causal_mask_normalizes_by_allowed_keys():
    # row 0 sees 1 key (counts as 0), row 1 sees 2 keys, row 2 sees 3 keys
    w = np.array([[[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]])
    want = (0.0 + _h([0.5, 0.5]) / math.log(2) + _h([0.2, 0.3, 0.5]) / math.log(3)) / 3
    np.testing.assert_allclose(dg.entropy(w, mask=attnlab.masks.causal()), [want], atol=1e-12)
    np.testing.assert_allclose(dg.entropy(w, mask=np.tril(np.ones((3, 3), bool))), [want], atol=1e-12)


def test_entropy_skips_fully_masked_query_rows():
    mask = attnlab.masks.padding([2], q_lengths=[2])                       # (B=1) query 2 is padding
    w = np.array([[[[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 0.0]]]])   # (B=1, H=1, 3, 3)
    want = (1.0 + _h([0.9, 0.1]) / math.log(2)) / 2
    got = dg.entropy(w, mask=mask.to_array(3, 3))
    np.testing.assert_allclose(got, [[want]], atol=1e-12)
    assert np.isfinite(dg.entropy(np.zeros((1, 2, 2)), mask=np.zeros((2, 2), bool))).all()


def test_entropy_accepts_torch_and_rejects_bad_input():
    import torch

    w = torch.full((1, 2, 2), 0.5, dtype=torch.float64)
    np.testing.assert_allclose(dg.entropy(w), [1.0])
    with pytest.raises(ValueError, match="weights must have shape"):
        dg.entropy(np.ones((2, 2)))
    with pytest.raises(TypeError, match="mask must be boolean"):
        dg.entropy(np.full((1, 2, 2), 0.5), mask=np.ones((2, 2)))
    with pytest.raises(ValueError, match="does not broadcast"):
        dg.entropy(np.full((1, 2, 2), 0.5), mask=np.ones((3, 3), bool))


# --- per-head statistics vs float64 loops ------------------------------------------------------------------------
def _loop_stats(w, sink_idx):
    """Every statistic of one head (Lq == Lk, no mask) by explicit loops over rows and keys."""
    L = w.shape[-1]
    ent = np.mean([_h(r) / math.log(L) for r in w])
    eff = np.mean([math.exp(_h(r)) for r in w])
    top1 = np.mean([max(r) for r in w])
    sink = np.mean([sum(r[j] for j in sink_idx) for r in w])
    dist = np.mean([sum(r[j] * abs(i - j) for j in range(L)) for i, r in enumerate(w)])
    prev = np.mean([w[i, i - 1] for i in range(1, L)])
    nxt = np.mean([w[i, i + 1] for i in range(L - 1)])
    same = np.mean([w[i, i] for i in range(L)])
    return ent, eff, top1, sink, dist, prev, nxt, same


def test_head_statistics_match_loops():
    rng = np.random.default_rng(1)
    w = rng.dirichlet(np.full(6, 0.5), size=(2, 3, 6))                   # (layers=2, H=3, 6, 6)
    rows = dg.head_table(w, sink_indices=(0, -1))
    assert len(rows) == 6
    for r in rows:
        want = _loop_stats(w[r.layer, r.head], (0, 5))
        got = (r.entropy, r.effective_tokens, r.top1, r.sink, r.distance, r.previous, r.next, r.same)
        np.testing.assert_allclose(got, want, atol=1e-12)
    assert "head" in dg.format_table(rows).splitlines()[0] and "L1.H2" in dg.format_table(rows)


def test_flags_follow_documented_thresholds():
    uniform = np.full((1, 4, 4), 0.25)
    sink = np.zeros((1, 4, 4))
    sink[..., 0] = 1.0
    (u,), (s,) = dg.head_table(uniform), dg.head_table(sink)
    assert u.flags == ("diffuse",) and u.type == "-"
    assert s.flags == () and s.type == "sink"                             # all on the sink: a function
    assert dg.head_table(uniform, diffuse=1.01)[0].flags == ()
    content = np.zeros((1, 10, 10))
    content[..., 5] = 1.0                                                 # every query on one content token
    (c,) = dg.head_table(content, sink_indices=(0, -1))
    assert c.functional == pytest.approx(0.3)                            # rows 4, 5, 6: previous, self, next
    assert c.type == "-" and c.flags == ("over_concentrated",)           # no function explains it: a failure
    assert dg.head_table(content, sink_indices=(0, -1), concentrated=1.01)[0].flags == ()


def test_a_head_split_between_functions_is_not_flagged():
    L = 10
    split = np.zeros((1, L, L))
    for i in range(L):                                                    # rows 0, 1 on the next token, then
        split[0, i, i + 1 if i < 2 else (0 if i % 2 == 0 else i - 1)] = 1.0   # even rows on the sink, odd on previous
    (r,) = dg.head_table(split, sink_indices=(0,))
    assert (r.sink, r.previous, r.next) == pytest.approx((0.4, 4 / 9, 2 / 9))
    assert r.type == "-" and r.top1 == 1.0 and r.functional == pytest.approx(1.0) and r.flags == ()


def test_functional_share_matches_a_loop():
    rng = np.random.default_rng(5)
    tokens = ["[CLS]", "a", "b", ",", "a", "b", "c", "[SEP]"]
    L = len(tokens)
    w = rng.dirichlet(np.ones(L), size=(1, 2, L))
    rows = dg.head_table(w, sink_indices=(0, -1), delimiters=dg.delimiter_positions(tokens), ids=tokens)
    for r in rows:
        want = []
        for i in range(L):
            keys = {0, L - 1, 3} | {j for j in (i - 1, i, i + 1) if 0 <= j < L}
            keys |= {j + 1 for j in range(i) if tokens[j] == tokens[i]}
            want.append(sum(w[0, r.head, i, j] for j in keys))
        assert r.functional == pytest.approx(np.mean(want), abs=1e-12)


def _one_hot(L, key_of_row):
    w = np.zeros((1, L, L))
    for i in range(L):
        w[0, i, key_of_row(i)] = 1.0
    return w


@pytest.mark.parametrize("key_of_row, want", [(lambda i: max(i - 1, 0), "previous-token"),
                                              (lambda i: min(i + 1, 7), "next-token"),
                                              (lambda i: i, "self"),
                                              (lambda i: 7, "sink")])
def test_specialised_heads_are_typed_not_flagged(key_of_row, want):
    (r,) = dg.head_table(_one_hot(8, key_of_row), sink_indices=(0, -1))
    assert r.top1 == 1.0 and r.type == want and r.flags == ()
    assert r.id == "L0.H0"


def test_delimiter_and_induction_heads_are_typed_against_loops():
    tokens = ["a", "b", ",", "c", "a", "b", ".", "c"]
    delims = dg.delimiter_positions(tokens)
    assert delims == [2, 6]
    L = len(tokens)
    on_comma = _one_hot(L, lambda i: 2 if i >= 2 else i)                  # rows 2.. park on the comma
    (r,) = dg.head_table(on_comma, sink_indices=(0,), delimiters=delims)
    want = np.mean([on_comma[0, i, 2] + on_comma[0, i, 6] for i in range(L)])
    assert r.delimiter == pytest.approx(want) and r.type == "delimiter" and r.flags == ()
    # induction: token at i repeats the one at j < i -> look at j + 1 (rows 4, 5, 7 have an earlier copy)
    targets = {4: 1, 5: 2, 7: 4}
    ind = _one_hot(L, lambda i: targets.get(i, max(i - 1, 0)))
    (r,) = dg.head_table(ind, ids=tokens)
    assert r.induction == pytest.approx(1.0) and r.type == "induction" and r.flags == ()
    assert dg.head_table(ind)[0].induction is None                        # no ids: not measured
    assert dg.head_table(ind, ids=list("abcdefgh"))[0].induction is None  # no repeats: not measured
    assert "induc" in dg.format_table([r]).splitlines()[0] and "L0.H0" in dg.format_table([r])


def test_head_type_takes_the_largest_function_above_threshold():
    assert dg.head_type({"previous": 0.55, "sink": 0.6}) == "sink"
    assert dg.head_type({"previous": 0.6, "sink": 0.55}) == "previous-token"
    assert dg.head_type({"previous": 0.49, "sink": 0.49}) == "-"
    assert dg.head_type({"previous": 0.3}, threshold=0.25) == "previous-token"
    assert dg.head_type({"induction": None, "same": 0.7}) == "self"


def test_head_ids_do_not_read_as_decimals():
    assert dg.head_id(1, 11) == "L1.H11" and dg.head_id(0, 9) == "L0.H9"


def test_offset_scores_on_rectangular_weights_use_bottom_right_alignment():
    w = np.array([[[0.1, 0.6, 0.3]]])                                     # one query at key position 2
    assert dg.previous_token_score(w)[0] == pytest.approx(0.6)
    assert dg.same_token_score(w)[0] == pytest.approx(0.3)
    assert dg.next_token_score(w)[0] == 0.0                               # no next key: no rows


def test_masked_statistics_skip_padded_queries():
    w = np.array([[[0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.0, 0.0, 0.0]]])
    mask = attnlab.masks.padding([2], q_lengths=[2]).to_array(3, 3)[0]   # (H=1, 3, 3)
    np.testing.assert_allclose(dg.top1_mass(w, mask), [0.7])
    np.testing.assert_allclose(dg.sink_score(w, (0,), mask), [0.4])


# --- head types --------------------------------------------------------------------------------------------------
def _loop_duplicate_induction(w, ids):
    L = len(ids)
    dup, ind = [], []
    for i in range(L):
        earlier = [j for j in range(i) if ids[j] == ids[i]]
        if earlier:
            dup.append(sum(w[i, j] for j in earlier))
        after = [j + 1 for j in range(i) if ids[j] == ids[i] and j + 1 <= i]
        if after:
            ind.append(sum(w[i, j] for j in sorted(set(after))))
    return np.mean(dup), np.mean(ind)


def test_duplicate_and_induction_scores_match_loops():
    rng = np.random.default_rng(2)
    ids = dg.repeated_random_tokens(5, 6, seed=3, prefix=[9])             # some repeats inside a half too
    L = len(ids)
    w = rng.dirichlet(np.ones(L), size=(1, 2, L)) * np.tril(np.ones((L, L)))
    w /= w.sum(-1, keepdims=True)
    for h in range(2):
        want_dup, want_ind = _loop_duplicate_induction(w[0, h], ids)
        assert dg.duplicate_token_score(w, ids)[0, h] == pytest.approx(want_dup, abs=1e-12)
        assert dg.induction_score(w, ids)[0, h] == pytest.approx(want_ind, abs=1e-12)


def test_head_types_name_an_ideal_induction_and_previous_token_head():
    n = 8
    ids = dg.repeated_random_tokens(1000, n, seed=0)
    L = 2 * n
    induction = np.zeros((L, L))
    prev = np.zeros((L, L))
    for i in range(L):
        induction[i, i - n + 1 if i >= n else 0] = 1.0
        prev[i, max(i - 1, 0)] = 1.0
    types = dg.head_types(np.stack([prev, induction])[None], ids)
    assert types[0].types == ("previous",) and types[1].types == ("induction",)
    assert types[1].induction == pytest.approx(1.0)


# --- rollout -----------------------------------------------------------------------------------------------------
def test_rollout_matches_hand_product():
    rng = np.random.default_rng(4)
    w = rng.dirichlet(np.ones(4), size=(3, 2, 4))                          # (layers=3, H=2, 4, 4)
    want = np.eye(4)
    for layer in range(3):
        a = 0.5 * w[layer].mean(0) + 0.5 * np.eye(4)
        a = a / a.sum(1, keepdims=True)
        want = a @ want
    got = dg.rollout(w)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(dg.rollout(w[:1], residual=0.0), w[0].mean(0), atol=1e-12)
    with pytest.raises(ValueError, match="residual"):
        dg.rollout(w, residual=2.0)
