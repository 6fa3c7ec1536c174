"""`attnlab mask` and `attnlab plot`: text drawings on stdout, pictures where --out says (or the default)."""

import json

import numpy as np
import pytest

from attnlab import masks
from attnlab.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_mask_causal_prints_the_drawing_and_writes_the_default_png(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "mask", "causal", "--n", "8")
    assert code == 0
    assert masks.causal().show(8, 8) in out
    assert "wrote mask-causal.png" in out
    assert (tmp_path / "mask-causal.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, mask, shape", [
    (["window", "--n", "16", "--left", "3"], masks.sliding_window(3), (16, 16)),
    (["causal", "--lq", "3", "--lk", "7", "--align", "top_left"], masks.causal("top_left"), (3, 7)),
    (["prefix", "--n", "6", "--prefix", "2"], masks.prefix_lm(2), (6, 6)),
    (["document", "--n", "5", "--docs", "0,0,1,1,1"], masks.document([0, 0, 1, 1, 1]), (5, 5)),
    (["global", "--n", "6", "--tokens", "0,3"], masks.global_tokens([0, 3]), (6, 6)),
    (["padding", "--n", "5", "--length", "3"], masks.padding([3]), (5, 5)),
])
def test_mask_kinds_with_parameters(argv, mask, shape, tmp_path, capsys):
    out_file = tmp_path / "m.svg"
    code, out, _ = run(capsys, "mask", *argv, "--block", "2", "--out", str(out_file))
    assert code == 0 and mask.show(*shape) in out
    assert out_file.read_text().lstrip().startswith("<?xml")


def test_mask_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    code, out, err = run(capsys, "mask", "causal", "--out", str(tmp_path / "m.jpg"))
    assert code == 2 and not out and err.count("\n") == 1 and ".png, .svg, .pdf" in err
    code, _, err = run(capsys, "mask", "document", "--docs", "a,b")
    assert code == 2 and "--docs must be comma-separated integers" in err


@pytest.mark.parametrize("figure", ["heatmap", "causal", "heads", "entropy", "cost"])
def test_plot_writes_each_figure(figure, tmp_path, capsys):
    out_file = tmp_path / f"{figure}.pdf"
    code, out, _ = run(capsys, "plot", figure, "--out", str(out_file))
    assert code == 0 and f"wrote {out_file}" in out
    assert out_file.read_bytes().startswith(b"%PDF-")


def test_plot_reads_given_data(tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.full((2, 3, 3), 1 / 3))
    code, _, _ = run(capsys, "plot", "heads", "--weights", str(tmp_path / "w.npy"), "--out", str(tmp_path / "h.png"))
    assert code == 0
    spec = {"predicted": {"naive": [[256, 512], [1.0, 4.0]]}, "measured": {"naive": [[256, 512], [1.1, 3.9]]}}
    (tmp_path / "cost.json").write_text(json.dumps(spec))
    code, _, _ = run(capsys, "plot", "cost", "--data", str(tmp_path / "cost.json"), "--out", str(tmp_path / "c.png"))
    assert code == 0
    code, _, err = run(capsys, "plot", "heatmap", "--weights", str(tmp_path / "missing.npy"),
                       "--out", str(tmp_path / "x.png"))
    assert code == 2 and "no such file" in err


@pytest.mark.parametrize("preset", ["gpt2", "llama-2-70b"])
def test_plot_cost_names_its_preset_and_explains_where_curves_meet(preset, tmp_path, monkeypatch, capsys):
    """The old figure had no title, and causal equal to dense below n = 1024 went unexplained; the caption's
    numbers are read off attnlab.cost, checked here against the estimates."""
    from attnlab import cost, viz

    figures = []
    monkeypatch.setattr(viz, "save", lambda fig, path: figures.append(fig) or path)
    code, _, _ = run(capsys, "plot", "cost", "--preset", preset, "--out", str(tmp_path / "c.png"))
    assert code == 0
    fig, = figures
    cfg = cost.get_preset(preset)
    assert f"preset {preset}" in fig.get_suptitle() and cfg.name in fig.get_suptitle()
    caption = " ".join(fig.get_supxlabel().split())
    flops = {line.get_label(): line.get_ydata() for line in fig.axes[0].lines if not line.get_label().startswith("_")}
    dense, causal = flops["tiled, dense (model)"], flops["tiled, causal (model)"]
    np.testing.assert_array_equal(flops["reference, dense (model)"], dense)
    assert "reference, dense and tiled, dense coincide" in caption
    if preset == "gpt2":      # 12 heads: n <= 1024 runs batched on 128 x 128 tiles, wholly blocked ones skipped
        assert (causal < dense).all() and "Up to n =" not in caption
        assert [cost.estimate(preset, n, mask="causal").block_k for n in (256, 512, 1024, 2048)] == [128] * 3 + [256]
        assert "At n = 256, 512, 1024 a masked call runs in the batched regime" in caption
        assert "At n = 1024 \"tiled, window:255\" lies on the dense curve: the tiles are 1024 queries" in caption
        return
    last = int(fig.axes[0].lines[0].get_xdata()[np.flatnonzero(causal == dense)[-1]])
    at = cost.estimate(preset, last, mask="causal")
    assert f"Up to n = {last} \"tiled, causal\"" in caption
    assert f"the tiles are {at.block_q} queries x {at.block_k} keys there" in caption
    assert (causal[-1] / dense[-1]) < 0.6                          # beyond, the skipped tiles show
