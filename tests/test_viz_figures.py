"""Figures: pixels where they matter (blocked cells, colormap colours, tiles), numbers against oracles, labels
that do not overlap at 512 tokens, and PNG / SVG / PDF output."""

import re
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

from attnlab import masks, viz
from attnlab.viz import _figure
from attnlab.viz.masks import ALLOWED_FACE, TILE_COLORS


# --- helpers -----------------------------------------------------------------------------------------------------
def render(fig):
    """RGB pixels of ``fig`` (height, width, 3) as ints."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def pixel(fig, pixels, ax, col, row, dy=-0.35):
    """The pixel at data point (col, row + dy) of ``ax``: dy = -0.35 is the upper middle of a cell, clear of the
    cell's number and of the cross drawn in blocked cells."""
    x, y = ax.transData.transform((col, row + dy))
    return pixels[int(round(fig.canvas.get_width_height()[1] - y)), int(round(x))]


def rgb255(color):
    return np.array([round(255 * c) for c in to_rgb(color)[:3]])


def torch_weights(q, k, causal):
    """Oracle: PyTorch softmax of q k^T / sqrt(d) with -inf above the diagonal."""
    s = torch.from_numpy(q) @ torch.from_numpy(k).T / np.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.triu(torch.ones_like(s, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(s, dim=-1).numpy()


def tick_boxes(fig, axis):
    renderer = fig.canvas.get_renderer()
    labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
    return labels, [t.get_window_extent(renderer) for t in labels]


# --- heatmap -----------------------------------------------------------------------------------------------------
def test_heatmap_blocked_cells_are_grey_and_allowed_cells_have_their_colormap_colour(rng):
    q, k = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    w = torch_weights(q, k, causal=True)
    fig = viz.heatmap(w, list("abcdef"), mask=masks.causal())
    ax = fig.axes[0]
    image = ax.images[0]
    pixels = render(fig)
    blocked = rgb255(_figure.BLOCKED_FACE)
    for i in range(6):
        for j in range(6):
            got = pixel(fig, pixels, ax, j, i)
            if j > i:
                assert np.abs(got - blocked).max() <= 2, (i, j, got)
            else:
                want = np.array([round(255 * c) for c in image.cmap(image.norm(w[i, j]))[:3]])
                assert np.abs(got - want).max() <= 3, (i, j, got, want)
    assert np.abs(blocked - np.array([round(255 * c) for c in image.cmap(0.0)[:3]])).max() > 60  # not "dark"
    on_arm = pixel(fig, pixels, ax, 5 - 0.1, 0, dy=-0.1)    # the cross runs through (c - 0.1, r - 0.1)
    assert on_arm.mean() < blocked.mean() - 40


def test_heatmap_writes_numbers_in_small_matrices_and_colour_bar(rng):
    w = torch_weights(rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), causal=False)
    fig = viz.heatmap(w, ["w", "x", "y", "z"], annotate="auto")
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == sorted(f"{x:.2f}" for x in w.ravel())
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "weight"      # the colour bar
    assert not viz.heatmap(w, annotate=False).axes[0].texts


@pytest.mark.parametrize("n", [512, 100])
def test_long_inputs_get_thinned_labels_that_do_not_overlap(n, rng):
    w = rng.dirichlet(np.ones(n), size=n)
    tokens = [f"token{i % 50}" for i in range(n)]
    fig = viz.heatmap(w, tokens, mask=masks.causal())
    fig.canvas.draw()
    ax = fig.axes[0]
    for axis, lo, hi in ((ax.xaxis, "x0", "x1"), (ax.yaxis, "y0", "y1")):
        labels, boxes = tick_boxes(fig, axis)
        assert 10 <= len(labels) < n, len(labels)                              # thinned, still informative
        spans = sorted((getattr(b, lo), getattr(b, hi)) for b in boxes)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "tick labels overlap"
        first = labels[0].get_text()
        assert first.startswith("0 ") and first.endswith("token0")             # thinned labels carry the index


def test_heatmap_draws_into_a_given_axes_and_takes_torch_tensors():
    fig = _figure.new_figure(8, 4)
    left, right = fig.subplots(1, 2)
    w = torch.full((3, 3), 1 / 3)
    assert viz.heatmap(w, ax=right, title="right") is fig
    assert right.get_title(loc="left") == "right" and not left.images
    np.testing.assert_allclose(right.images[0].get_array(), np.full((3, 3), 1 / 3), rtol=1e-7)   # float32 in


def test_heatmap_checks_its_inputs():
    with pytest.raises(ValueError, match="weights must be 2-D"):
        viz.heatmap(np.ones(3))
    with pytest.raises(ValueError, match="q_tokens has 2 entries"):
        viz.heatmap(np.ones((3, 3)), ["a", "b"])
    with pytest.raises(ValueError, match=r"mask must have shape \(Lq, Lk\) = \(3, 3\)"):
        viz.heatmap(np.ones((3, 3)), mask=np.ones((2, 3), bool))
    with pytest.raises(TypeError, match="mask must be boolean"):
        viz.heatmap(np.ones((3, 3)), mask=np.ones((3, 3)))
    with pytest.raises(ValueError, match="annotate"):
        viz.heatmap(np.ones((3, 3)), annotate="yes")


# --- saving ------------------------------------------------------------------------------------------------------
def test_save_writes_valid_png_svg_and_pdf(tmp_path):
    fig = viz.heatmap(np.full((3, 3), 1 / 3), mask=masks.causal())
    png, svg, pdf = (viz.save(fig, tmp_path / f"h.{ext}") for ext in ("png", "svg", "pdf"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert ET.parse(svg).getroot().tag.endswith("svg")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Pages:\s+1$", info, re.M)
    with pytest.raises(ValueError, match=r"\.png, \.svg, \.pdf"):
        viz.save(fig, tmp_path / "h.jpg")


# --- masks -------------------------------------------------------------------------------------------------------
def test_mask_figure_cells_and_tiles_match_the_mask(tmp_path):
    mask = masks.sliding_window(2)
    fig = viz.mask_figure(mask, 10, 10, block=4)
    pixels = render(fig)
    cells_ax, tiles_ax = fig.axes[0], fig.axes[1]
    allowed, tiles = mask.to_array(10, 10), mask.blocks(10, 10, 4, 4)
    for i in range(10):
        for j in range(10):
            want = rgb255(ALLOWED_FACE if allowed[i, j] else _figure.BLOCKED_FACE)
            assert np.abs(pixel(fig, pixels, cells_ax, j, i, dy=-0.3) - want).max() <= 3, (i, j)
            want_tile = rgb255(TILE_COLORS[tiles[i // 4, j // 4]])
            assert np.abs(pixel(fig, pixels, tiles_ax, j, i, dy=0.0) - want_tile).max() <= 3, (i, j)
    assert "4 empty" in tiles_ax.get_title() or f"{(tiles == 0).sum()} empty" in tiles_ax.get_title()


def test_mask_figure_draws_both_causal_alignments_when_lq_differs_from_lk():
    fig = viz.mask_figure(masks.causal(), 3, 7)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 2 and "top-left" in titles[0] and "bottom-right" in titles[1]
    assert "6 of 21" in titles[0] and "18 of 21" in titles[1]     # 1+2+3 and 5+6+7 allowed cells
    assert len(viz.mask_figure(masks.causal(), 5, 5).axes) == 1


def test_mask_figure_accepts_arrays_and_batch_masks_and_rejects_bad_sizes():
    assert "(batch row 0)" in viz.mask_figure(masks.padding([3]), 4, 4).axes[0].get_title()
    assert viz.mask_figure(np.tri(4, dtype=bool), 4, 4).axes[0].get_title().startswith("mask")
    with pytest.raises(ValueError, match="Lq must be a positive integer"):
        viz.mask_figure(masks.causal(), 0, 4)
    with pytest.raises(ValueError, match="block must be"):
        viz.mask_figure(masks.causal(), 4, 4, block=0)


def test_causal_effect_shows_the_torch_weights_and_rows_summing_to_one(rng):
    q, k, v = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    fig = viz.causal_effect(q, k, v)
    scores_ax, masked_ax, weights_ax, out_ax = fig.axes[:4]
    w = torch_weights(q, k, causal=True)
    inside = [t for t in weights_ax.texts if t.get_position()[0] < 4.5]         # cells; the sums sit right of them
    beside = [t for t in weights_ax.texts if t.get_position()[0] > 4.5 and t.get_text() != "row\nsum"]
    numbers = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in inside}
    assert numbers == {(i, j): f"{w[i, j]:.2f}" for i in range(5) for j in range(i + 1)}
    assert sorted((round(t.get_position()[1]), t.get_text()) for t in beside) == [(i, "1.00") for i in range(5)]
    assert sum(t.get_text() == "\u2212\u221e" for t in masked_ax.texts) == 10        # the blocked cells
    out = (torch.from_numpy(w) @ torch.from_numpy(v)).numpy()
    assert sorted(t.get_text() for t in out_ax.texts) == sorted(f"{x:.2f}" for x in out.ravel())
    raw = q @ k.T / 2.0
    assert sorted(t.get_text() for t in scores_ax.texts) == sorted(f"{x:.2f}" for x in raw.ravel())


# --- heads, entropy ----------------------------------------------------------------------------------------------
def test_heads_grid_draws_every_head_with_one_colour_scale(rng):
    w = rng.dirichlet(np.ones(6), size=(2, 3, 6))                                # (layers, heads, L, L)
    fig = viz.heads_grid(w, tokens=list("abcdef"))
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 6
    for n, image in enumerate(images):
        np.testing.assert_array_equal(image.get_array(), w[n // 3, n % 3])
        assert image.norm.vmax == w.max() and image.norm.vmin == 0
    assert len([ax for ax in viz.heads_grid(w[0]).axes if ax.images]) == 3       # (heads, L, L)
    with pytest.raises(ValueError, match="weights must be 3-D or 4-D"):
        viz.heads_grid(w[0, 0])


def _entropy_oracle(w):
    """Mean over rows of -sum p log p / log(Lk), a float64 loop from the formula."""
    out = np.zeros(w.shape[:-2])
    for idx in np.ndindex(*w.shape[:-2]):
        rows = []
        for row in w[idx]:
            rows.append(-sum(p * np.log(p) for p in row if p > 0) / np.log(len(row)))
        out[idx] = np.mean(rows)
    return out


def test_entropy_figure_shows_each_heads_normalized_entropy(rng):
    w = rng.dirichlet(np.full(5, 0.4), size=(2, 3, 5))
    fig = viz.entropy_figure(w)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == [f"{x:.2f}" for x in _entropy_oracle(w).ravel()]
    uniform = viz.entropy_figure(np.full((4, 3, 3), 1 / 3))                     # (heads, L, L): one layer
    assert [t.get_text() for t in uniform.axes[0].texts] == ["1.00"] * 4


def test_entropy_figure_uses_attnlab_diagnostics(monkeypatch):
    from attnlab.viz import heads

    calls = []
    monkeypatch.setattr(heads, "entropy", lambda w, mask=None, normalized=True: calls.append(mask) or
                        np.zeros(w.shape[:-2]))
    viz.entropy_figure(np.full((2, 3, 3), 1 / 3), mask=masks.causal())
    assert len(calls) == 1 and calls[0] is not None


# --- cost --------------------------------------------------------------------------------------------------------
def test_cost_figure_draws_curves_points_and_reference_slopes():
    n = np.array([256, 512, 1024, 2048])
    predicted = {"time (s)": {"naive": (n, 1e-9 * n ** 2), "window": (n, 1e-6 * n)},
                 "memory (bytes)": {"naive": (n, 8.0 * n ** 2)}}
    measured = {"time (s)": {"naive": (n[:3], 1.1e-9 * n[:3] ** 2)}}
    fig = viz.cost_figure(predicted, measured)
    time_ax, memory_ax = fig.axes
    assert time_ax.get_xscale() == time_ax.get_yscale() == "log" and memory_ax.get_ylabel() == "memory (bytes)"
    lines = {line.get_label(): line for line in time_ax.lines}
    np.testing.assert_allclose(lines["naive (model)"].get_ydata(), 1e-9 * n ** 2)
    assert lines["naive (measured)"].get_linestyle() == "None" and lines["naive (measured)"].get_marker() == "o"
    assert lines["naive (measured)"].get_color() == lines["naive (model)"].get_color()
    refs = [line for line in time_ax.lines if line.get_label().startswith("_")]
    slopes = sorted(np.polyfit(np.log(r.get_xdata()), np.log(r.get_ydata()), 1)[0] for r in refs)
    np.testing.assert_allclose(slopes, [1.0, 2.0])
    labels = {t.get_text() for t in time_ax.texts}
    assert {"\u221d n\u00b2", "\u221d n"} <= labels
    assert len(viz.cost_figure({"naive": (n, n ** 2.0)}).axes) == 1


def test_cost_figure_rejects_what_log_axes_cannot_show():
    with pytest.raises(ValueError, match="positive"):
        viz.cost_figure({"naive": ([1, 2], [0.0, 1.0])})
    with pytest.raises(ValueError, match="same non-zero length"):
        viz.cost_figure({"naive": ([1, 2], [1.0])})
    with pytest.raises(TypeError, match="predicted must be a non-empty dict"):
        viz.cost_figure([])


def _title_text(fig, ax):
    """The Text artist of ``ax``'s title, wherever it is placed (left, centre or right)."""
    from matplotlib.text import Text

    wanted = next(t for t in (ax.get_title(loc=side) for side in ("left", "center", "right")) if t)
    return next(t for t in fig.findobj(Text) if t.get_text() == wanted)


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 4), (6, 12), (12, 12)])
def test_entropy_figure_colour_bar_clears_the_title(shape, rng):
    """The old colour bar was taller than the aspect-equal heatmap and ran up over the title."""
    w = rng.dirichlet(np.ones(5), size=(*shape, 5))                                  # (layers, heads, 5, 5)
    fig = viz.entropy_figure(w)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    bars = [a for a in [*fig.axes, *ax.child_axes] if a is not ax]
    assert len(bars) == 1
    title = _title_text(fig, ax).get_window_extent(renderer)
    bar = bars[0].get_tightbbox(renderer)                                            # bar, ticks and label
    assert title.width > 0 and not title.overlaps(bar), (title, bar)
    assert fig.bbox.y0 <= bar.y0 and bar.y1 <= fig.bbox.y1                          # (save() crops to the ink)
    assert ax.get_window_extent(renderer).y1 <= title.y0 + 1                         # the title sits above the cells


def _visible_pixels(fig, ax, line) -> int:
    """Pixels of ``line``'s colour inside ``ax`` but outside its legend: how much of the line the reader sees."""
    from matplotlib.colors import to_rgb as rgb

    pixels = render(fig)
    height = fig.canvas.get_width_height()[1]
    close = np.abs(pixels - np.array(rgb(line.get_color())) * 255).max(axis=-1) < 40   # (H, W)
    box, legend = ax.get_window_extent(), ax.get_legend().get_window_extent()
    inside = np.zeros_like(close)
    inside[int(height - box.y1):int(height - box.y0), int(box.x0):int(box.x1)] = True
    inside[int(height - legend.y1):int(height - legend.y0), int(legend.x0):int(legend.x1)] = False
    return int((close & inside).sum())


def test_cost_figure_every_curve_has_its_own_visible_style():
    """Two curves with equal values (reference and tiled, dense, compute the same cells) both show, and no two
    legend entries look alike: the old figure drew both as solid lines and the first vanished under the second."""
    n = np.array([256, 512, 1024, 2048])
    curves = {"first": (n, 1.0 * n ** 2), "same values": (n, 1.0 * n ** 2), "third": (n, 0.5 * n ** 2),
              "fourth": (n, 3.0 * n), "fifth": (n, 0.25 * n ** 2)}
    fig = viz.cost_figure(curves)
    ax = fig.axes[0]
    handles = ax.get_legend().legend_handles
    styles = {(h.get_color(), str(h.get_linestyle()), h.get_marker()) for h in handles}
    assert len(handles) == len(curves) == len(styles)
    assert len({h.get_marker() for h in handles}) == len(curves)
    assert len({h.get_linestyle() for h in handles}) == 4                             # every named dash pattern
    for line in ax.lines:
        if not line.get_label().startswith("_"):
            assert _visible_pixels(fig, ax, line) > 150, line.get_label()


def test_cost_figure_title_and_caption():
    n = [256, 512]
    fig = viz.cost_figure({"naive": (n, [1.0, 4.0])}, title="preset x", caption="why " * 200)
    fig.canvas.draw()
    assert fig.get_suptitle() == "preset x"
    caption = fig.get_supxlabel()
    assert caption.split() == ["why"] * 200 and caption.count("\n") >= 2            # wrapped to the width
    from matplotlib.text import Text

    box = next(t for t in fig.findobj(Text) if t.get_text() == caption).get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 + 1 and box.y1 <= fig.axes[0].get_window_extent().y0
