"""``attnlab experiment cost`` (cost_doubling.run): a quick smoke run writes its JSON and PNG; the non-timing parts
are deterministic given the seed; the model's predicted ratios are the n^2 / n story."""

import json

import numpy as np
import pytest

from attnlab.learn.experiments import cost_doubling


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cost")
    lines = []
    return cost_doubling.run(out=out, seed=3, quick=True, echo=lines.append), out, lines


def test_quick_run_writes_json_and_png(quick_run):
    result, out, lines = quick_run
    assert set(result) >= {"experiment", "config", "sizes", "rows", "ratios", "conclusion", "files"}
    assert result["sizes"] == [64, 128, 256]
    assert len(result["rows"]) == 3 * len(cost_doubling.VARIANTS)
    assert len(result["ratios"]) == 2 * len(cost_doubling.VARIANTS)
    saved = json.loads((out / "cost.json").read_text())
    assert saved["rows"] == result["rows"] and saved["config"]["seed"] == 3
    assert result["files"] == ["cost.json", "cost.png"]
    assert (out / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("quadruples" in line for line in lines) and any("cost.json" in line for line in lines)
    for row in result["rows"]:
        assert row["time_s"] > 0 and row["peak_bytes"] > 0 and len(row["time_runs_s"]) >= 5


def test_predictions_tell_the_n_squared_story(quick_run):
    ratios = {(r["variant"], r["n"]): r for r in quick_run[0]["ratios"]}
    assert ratios[("naive", 128)]["predicted_time_ratio"] == 4.0
    assert ratios[("naive", 128)]["predicted_memory_ratio"] == pytest.approx(4.0, rel=0.01)
    assert ratios[("naive-window", 128)]["predicted_time_ratio"] == 4.0      # the naive path ignores the window
    assert ratios[("tiled", 128)]["predicted_time_ratio"] == 4.0
    assert ratios[("window", 128)]["predicted_time_ratio"] == pytest.approx(2.0, rel=0.1)
    assert ratios[("tiled", 128)]["predicted_memory_ratio"] < 2.01


def test_memory_is_deterministic_given_the_seed():
    kwargs = dict(heads=2, head_dim=16, window=16, block=32, seed=5)
    first, second = cost_doubling.measure("naive-window", [96, 96], **kwargs)
    assert first["peak_bytes"] == pytest.approx(second["peak_bytes"], rel=0.01)   # a few Python objects vary
    assert first["predicted_peak_bytes"] == second["predicted_peak_bytes"]
    q1, _, _ = cost_doubling.inputs(8, 2, 4, seed=5)
    q2, _, _ = cost_doubling.inputs(8, 2, 4, seed=5)
    np.testing.assert_array_equal(q1, q2)


@pytest.mark.parametrize("kwargs, message", [(dict(n=0), "n must be"), (dict(window=-1), "window must be"),
                                             (dict(heads=1.5), "heads must be")])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cost_doubling.run(out=tmp_path, echo=lambda *_: None, **kwargs)


def test_unknown_variant():
    with pytest.raises(ValueError, match="variant must be one of"):
        cost_doubling.attention_call("sparse", None, None, None, window=4, block=4)
