"""The sqrt(d_k) scaling experiment: the analytic softmax Jacobian equals torch autograd through attnlab.softmax,
the statistics equal float64 loops, and the quick run shows what Vaswani et al. (2017) predict."""

import json
import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.learn.experiments import scaling


def test_analytic_jacobian_equals_autograd_through_attnlab_softmax():
    scores = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    for row in scores:
        auto = torch.autograd.functional.jacobian(lambda s: attnlab.softmax(s, axis=-1), row)   # (Lk, Lk)
        p = attnlab.softmax(row.numpy())
        np.testing.assert_allclose(scaling.softmax_jacobian(p), auto.numpy(), atol=1e-12)
    batched = scaling.softmax_jacobian(attnlab.softmax(scores.numpy()))                         # (3, Lk, Lk)
    assert batched.shape == (3, 6, 6)


def test_softmax_stats_equal_float64_loops(rng):
    scores = rng.standard_normal((4, 5)) * 3
    stats = scaling.softmax_stats(scores)
    entropies, maxima, norms = [], [], []
    for row in scores:
        e = [math.exp(s - max(row)) for s in row]
        p = [x / sum(e) for x in e]
        entropies.append(-sum(x * math.log(x) for x in p))
        maxima.append(max(p))
        jac = [[p[i] * ((i == j) - p[j]) for j in range(5)] for i in range(5)]
        norms.append(math.sqrt(sum(x * x for r in jac for x in r)))
    assert math.isclose(stats["entropy"], np.mean(entropies), rel_tol=1e-12)
    assert math.isclose(stats["max_weight"], np.mean(maxima), rel_tol=1e-12)
    assert math.isclose(stats["jacobian_norm"], np.mean(norms), rel_tol=1e-12)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    return scaling.run(out=out, seed=0, quick=True, d_ks=(4, 64, 1024)), out


def test_quick_run_shows_growth_saturation_and_vanishing_gradients(quick):
    result, _ = quick
    rows = {r["d_k"]: r for r in result["rows"]}
    for d, r in rows.items():
        assert 0.75 < r["var_raw"] / d < 1.33, r          # var(q.k) = d_k for unit-variance components
        assert 0.75 < r["var_scaled"] < 1.33, r
    assert rows[4]["entropy_raw"] > rows[64]["entropy_raw"] > rows[1024]["entropy_raw"]
    assert rows[1024]["max_weight_raw"] > 0.85 > 0.2 > rows[1024]["max_weight_scaled"]
    assert rows[1024]["jacobian_norm_raw"] < 0.5 * rows[1024]["jacobian_norm_scaled"]
    scaled_entropy = [r["entropy_scaled"] for r in rows.values()]
    assert max(scaled_entropy) - min(scaled_entropy) < 0.15
    assert "1024" in result["conclusion"] and len(result["conclusion"].splitlines()) == 2


def test_quick_run_is_deterministic_and_writes_its_files(quick):
    result, out = quick
    again = scaling.run(seed=0, quick=True, d_ks=(4, 64, 1024))
    assert again["rows"] == result["rows"]
    assert scaling.run(seed=1, quick=True, d_ks=(4,))["rows"][0] != result["rows"][0]
    assert json.loads((out / "scaling.json").read_text())["rows"] == result["rows"]
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "var(q.k)" in scaling.table(result)


def test_bad_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="seed"):
        scaling.run(seed=-2)
    with pytest.raises(ValueError, match="d_ks"):
        scaling.run(d_ks=(4, 0))
    with pytest.raises(ValueError, match="n_keys"):
        scaling.run(n_keys=1)
