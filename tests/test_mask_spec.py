"""One mask-spec grammar: the same spec (``attnlab.masks.SPEC_GRAMMAR``) allows the same cells in the cost model,
``attnlab explain``, ``attnlab plot heatmap --mask``, ``attnlab mask`` and ``attnlab.masks.parse``; the oracle is
a float64-free loop over the grammar's own definition of each spec."""

import argparse

import numpy as np
import pytest

from attnlab import cost, masks
from attnlab.commands import mask as mask_cmd
from attnlab.commands import plot as plot_cmd
from attnlab.learn import explain

# spec -> may query i (bottom-right aligned, Lq == Lk here) attend to key j, written from SPEC_GRAMMAR's table
ORACLES = {
    "window:2": lambda i, j: i - 2 <= j <= i,                         # keys p-L .. p: up to 3 keys
    "causal&window:2": lambda i, j: i - 2 <= j <= i,
    "window:1,1": lambda i, j: i - 1 <= j <= i + 1,
    "causal": lambda i, j: j <= i,
    "window:0 | global:0": lambda i, j: j == i or i == 0 or j == 0,
}


def _mask_args(spec):
    """The arguments ``attnlab mask SPEC`` is run with, from the command's own parser."""
    parser = argparse.ArgumentParser()
    mask_cmd.register(parser.add_subparsers())
    return parser.parse_args(["mask", spec])


@pytest.mark.parametrize("spec", list(ORACLES))
@pytest.mark.parametrize("n", [1, 4, 7])
def test_every_command_reads_a_spec_the_same_way(spec, n):
    want = np.array([[ORACLES[spec](i, j) for j in range(n)] for i in range(n)])
    parsed = masks.parse(spec).to_array(n, n)
    explained, _ = explain.parse_mask(spec, n, n)
    plotted = plot_cmd.demo_mask(spec).to_array(n, n)
    drawn = mask_cmd.build(_mask_args(spec), n).to_array(n, n)
    for got in (parsed, explained, plotted, drawn):
        np.testing.assert_array_equal(got, want)
    assert cost.allowed_cells(n, n, spec) == int(want.sum())
    assert cost.estimate(cost.model_config(head_dim=4, n_heads=1), n, mask=spec).allowed_cells == int(want.sum())


def test_window_2_lets_rows_see_1_2_3_3_keys_everywhere():
    # the disagreement of issue 13 item 4: cost saw [1 2 2 2], explain [1 2 3 3], plot a symmetric window
    rows = [1, 2, 3, 3]
    assert masks.parse("window:2").to_array(4, 4).sum(axis=1).tolist() == rows
    assert explain.parse_mask("window:2", 4, 4)[0].sum(axis=1).tolist() == rows
    assert plot_cmd.demo_mask("window:2").to_array(4, 4).sum(axis=1).tolist() == rows
    assert cost.allowed_cells(4, 4, "window:2") == sum(rows)


def test_a_bad_spec_fails_the_same_way_everywhere():
    for parse in (masks.parse, cost.parse_mask, plot_cmd.demo_mask, lambda s: explain.parse_mask(s, 2, 2),
                  lambda s: mask_cmd.build(_mask_args(s), 2)):
        with pytest.raises(masks.MaskSpecError, match="window takes"):
            parse("window:x")


def test_the_commands_take_a_spec_on_the_command_line(tmp_path, capsys):
    from attnlab.cli import main

    assert main(["mask", "causal & window:2", "--n", "5", "--out", str(tmp_path / "m.svg")]) == 0
    assert masks.parse("causal & window:2").show(5, 5) in capsys.readouterr().out
    assert main(["plot", "heatmap", "--mask", "window:1,1", "--out", str(tmp_path / "h.svg")]) == 0
    assert (tmp_path / "h.svg").read_text().lstrip().startswith("<?xml")
    capsys.readouterr()
    assert main(["cost", "--n-heads", "2", "--head-dim", "8", "--seq", "4", "--mask", "causal & window:2"]) == 0
    out = capsys.readouterr().out
    assert "mask causal & window:2 (56.2% of cells allowed)" in out                   # 9 of 16 cells
    assert main(["explain", "--q", "1;1;1;1", "--k", "1;1;1;1", "--v", "1;2;3;4", "--mask", "window:2"]) == 0
    assert main(["plot", "heatmap", "--mask", "window", "--out", str(tmp_path / "x.svg")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "window takes 1 to 2 argument(s)" in err
    assert main(["mask", "causal & window:2", "--align", "top_left"]) == 2
    assert "--align applies to a bare KIND" in capsys.readouterr().err
