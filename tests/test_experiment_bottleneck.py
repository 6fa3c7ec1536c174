"""The bottleneck experiment: gradients flow through attnlab on torch tensors, the task and bookkeeping match loop
oracles, runs are deterministic, and the quick run shows attention beating the fixed vector on long inputs."""

import json
import math

import numpy as np
import pytest
import torch

from attnlab import additive_attention, scaled_dot_product_attention
from attnlab.learn.experiments import bottleneck as bn

TINY = bn.Config(max_len=8, embed=4, hidden=8, attn_dim=4, batch=4, steps=3, test_per_length=2)


# --- gradients through attnlab's array-API path ------------------------------------------------------------------
def _leaves(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]


def _grads(fn, leaves):
    out = fn(*leaves)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    grads = [x.grad.clone() for x in leaves]
    for x in leaves:
        x.grad = None
    return out.detach(), grads


def test_additive_attention_gradients_equal_the_formula_in_torch():
    # Bahdanau et al. 2015 eq. 6 written directly in torch is the oracle
    def oracle(q, k, v, w_q, w_k, w_v):
        hidden = torch.tanh((q @ w_q.T)[..., :, None, :] + (k @ w_k.T)[..., None, :, :])   # (B, Lq, Lk, A)
        return torch.softmax(hidden @ w_v, dim=-1) @ v

    leaves = _leaves((2, 3, 5), (2, 4, 6), (2, 4, 7), (8, 5), (8, 6), (8,))
    out, grads = _grads(lambda *x: additive_attention(*x), leaves)
    ref, ref_grads = _grads(oracle, leaves)
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, r)


def test_scaled_dot_product_gradients_equal_torch():
    leaves = _leaves((2, 3, 5), (2, 4, 5), (2, 4, 7), seed=1)
    out, grads = _grads(lambda *x: scaled_dot_product_attention(*x), leaves)
    ref, ref_grads = _grads(torch.nn.functional.scaled_dot_product_attention, leaves)
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_model_parameters_get_gradients_through_attnlab():
    for kind in ("additive", "dot"):
        torch.manual_seed(0)
        model = bn.Seq2Seq(kind, TINY)
        src, tgt = bn.sample(torch.Generator().manual_seed(0), 3, 6, TINY.vocab)
        torch.nn.functional.cross_entropy(model(src, tgt).reshape(-1, TINY.vocab), tgt.reshape(-1)).backward()
        scorer = (model.w_q, model.w_k, model.w_v) if kind == "additive" else (model.to_q.weight, model.to_k.weight)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in scorer), kind


# --- the task and the bookkeeping ----------------------------------------------------------------------------------
def test_translate_reverses_and_maps_each_symbol():
    src = torch.randint(0, 16, (5, 9), generator=torch.Generator().manual_seed(2))
    expected = [[(3 * s + 1) % 16 for s in reversed(row)] for row in src.tolist()]
    assert bn.translate(src, 16).tolist() == expected
    assert sorted((3 * s + 1) % 16 for s in range(16)) == list(range(16))      # a bijection: no ambiguity


def test_buckets_of_ten_with_the_longest_length_in_the_last():
    cfg = bn.Config()
    labels = {L: bn.bucket_of(L, cfg) for L in range(5, 61)}
    assert labels[5] == labels[9] == "5-9"
    assert labels[10] == labels[19] == "10-19"
    assert labels[50] == labels[59] == labels[60] == "50-60"
    assert len(set(labels.values())) == 6
    assert {bn.bucket_of(L, bn.QUICK) for L in range(5, 31)} == {"5-9", "10-19", "20-30"}


def test_shapes_and_greedy_weights_are_distributions():
    torch.manual_seed(0)
    src, tgt = bn.sample(torch.Generator().manual_seed(1), 3, 7, TINY.vocab)
    for kind in bn.MODELS:
        model = bn.Seq2Seq(kind, TINY)
        assert model(src, tgt).shape == (3, 7, TINY.vocab)
        pred, weights = model.greedy(src)
        assert pred.shape == (3, 7)
        if kind == "none":
            assert weights is None
        else:
            assert weights.shape == (3, 7, 7)
            torch.testing.assert_close(weights.sum(-1), torch.ones(3, 7))


def test_tiny_runs_are_deterministic_given_the_seed(tmp_path):
    a = bn.run(seed=3, config=TINY, progress=False)
    b = bn.run(out=tmp_path, seed=3, config=TINY, progress=False)
    c = bn.run(seed=4, config=TINY, progress=False)
    for r in (a, b, c):
        r.pop("timing"), r.pop("files", None)
    assert a == b
    assert a["models"]["additive"]["curve"] != c["models"]["additive"]["curve"]


def test_bad_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="attention must be one of"):
        bn.Seq2Seq("lstm", TINY)
    with pytest.raises(ValueError, match="seed"):
        bn.run(seed=-1, config=TINY)
    with pytest.raises(ValueError, match="min_len <= max_len"):
        bn.run(config=bn.with_overrides(TINY, min_len=9))
    with pytest.raises(ValueError, match="steps"):
        bn.run(config=bn.with_overrides(TINY, steps=0))
    with pytest.raises(TypeError, match="Config"):
        bn.run(config={"steps": 3})


# --- the quick run: the robust claim -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bottleneck")
    return bn.run(out=out, seed=0, quick=True, progress=False), out


def test_quick_run_attention_beats_the_fixed_vector_on_the_longest_inputs(quick):
    result, _ = quick
    none = bn.longest_bucket(result, "none")
    assert none["lengths"] == "20-30"
    for kind in ("additive", "dot"):
        assert bn.longest_bucket(result, kind)["token_accuracy"] > none["token_accuracy"] + 0.1, bn.table(result)


def test_quick_run_buckets_and_alignment_agree_with_the_raw_numbers(quick):
    result, _ = quick
    for m in result["models"].values():
        per = m["per_length"]
        for bucket in m["buckets"]:
            lo, hi = map(int, bucket["lengths"].split("-"))
            idx = [i for i, L in enumerate(per["length"]) if lo <= L <= hi]
            tokens = sum(per["token_accuracy"][i] * per["length"][i] for i in idx)   # correct tokens / n
            assert math.isclose(bucket["token_accuracy"], tokens / sum(per["length"][i] for i in idx), rel_tol=1e-6)
            assert math.isclose(bucket["exact_match"], float(np.mean([per["exact_match"][i] for i in idx])),
                                rel_tol=1e-6)
    a = result["alignment"]
    L = len(a["source"])
    for kind in ("additive", "dot"):
        w = a[kind]["weights"]
        def mass(offset):
            return sum(w[t][L - 1 - t + offset] for t in range(L) if 0 <= L - 1 - t + offset < L) / L

        assert math.isclose(a[kind]["anti_diagonal_mass"], mass(0), abs_tol=1e-4)
        assert math.isclose(a[kind]["best_offset_mass"], max(mass(k) for k in range(-2, 3)), abs_tol=1e-4)
        assert math.isclose(a[kind]["best_offset_mass"], mass(a[kind]["best_offset"]), abs_tol=1e-4)
        entropy = np.mean([-sum(p * math.log(p) for p in row if p > 0) for row in w])
        assert math.isclose(a[kind]["mean_entropy_nats"], entropy, abs_tol=1e-3)


def test_quick_run_writes_json_and_figures(quick):
    result, out = quick
    assert result["files"] == ["bottleneck.json", "bottleneck_accuracy.png", "bottleneck_alignment.png",
                               "bottleneck_training.png"]
    saved = json.loads((out / "bottleneck.json").read_text())
    assert saved["models"]["dot"]["buckets"] == result["models"]["dot"]["buckets"]
    for name in result["files"][1:]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
