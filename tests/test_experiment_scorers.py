"""The additive vs dot-product experiment: what it times is what it claims, the memory follows the (n, n, A)
hidden tensor, and the accuracy comes unchanged from the bottleneck results (no timing assertions)."""

import json

import numpy as np
import pytest

from attnlab.learn.experiments import bottleneck as bn
from attnlab.learn.experiments import scorers

TINY = bn.Config(max_len=8, embed=4, hidden=8, attn_dim=4, batch=4, steps=3, test_per_length=2)


@pytest.fixture(scope="module")
def with_bottleneck(tmp_path_factory):
    out = tmp_path_factory.mktemp("scorers")
    bottleneck = bn.run(out=out, seed=0, config=TINY, progress=False)
    return scorers.run(out=out, seed=0, ns=(16, 32), ds=(8,)), bottleneck, out


def test_rows_cover_every_size_with_consistent_ratios(with_bottleneck):
    result, _, _ = with_bottleneck
    assert [(r["n"], r["d"]) for r in result["rows"]] == [(16, 8), (32, 8)]
    for r in result["rows"]:
        assert r["dot_s"] > 0 and r["additive_s"] > 0
        assert r["time_ratio"] == pytest.approx(r["additive_s"] / r["dot_s"])
        assert r["additive_peak_bytes"] >= r["n"] * r["n"] * r["d"] * 4   # the (n, n, A) float32 tanh tensor
        assert r["dot_peak_bytes"] >= r["n"] * r["n"] * 4                 # the (n, n) float32 scores


def test_inputs_are_float32_with_a_equal_to_d(rng):
    x = scorers.inputs(6, 4, rng)
    assert all(a.dtype == np.float32 for a in x.values())
    assert x["w_q"].shape == x["w_k"].shape == (4, 4) and x["w_v"].shape == (4,)


def test_accuracy_is_read_from_the_bottleneck_json(with_bottleneck):
    result, bottleneck, out = with_bottleneck
    acc = result["accuracy"]
    assert acc["file"] == str(out / "bottleneck.json")
    for name in ("none", "additive", "dot"):
        m = bottleneck["models"][name]
        assert acc[name]["longest_bucket"] == m["buckets"][-1]
        assert acc[name]["mean_token_accuracy"] == pytest.approx(np.mean(m["per_length"]["token_accuracy"]))
    assert "bottleneck task" in scorers.table(result)
    assert json.loads((out / "scorers.json").read_text())["accuracy"] == acc
    assert (out / "scorers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "additive attention took" in scorers.conclusion(result)


def test_missing_or_wrong_bottleneck_results_are_said(tmp_path):
    result = scorers.run(out=tmp_path, ns=(8,), ds=(4,))
    assert result["accuracy"] is None and "no bottleneck results at" in result["accuracy_note"]
    assert "no bottleneck results" in scorers.table(result)
    with pytest.raises(FileNotFoundError, match="attnlab experiment bottleneck"):
        scorers.run(ns=(8,), ds=(4,), bottleneck=tmp_path / "missing.json")
    wrong = tmp_path / "scaling.json"
    wrong.write_text(json.dumps({"experiment": "scaling"}))
    with pytest.raises(ValueError, match="scaling"):
        scorers.run(ns=(8,), ds=(4,), bottleneck=wrong)


def test_bad_sizes_and_seed_raise():
    with pytest.raises(ValueError, match="ns"):
        scorers.run(ns=(0,), ds=(4,))
    with pytest.raises(ValueError, match="seed"):
        scorers.run(seed=-1)
