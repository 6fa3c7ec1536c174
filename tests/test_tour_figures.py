"""Every tour figure is drawn from the arrays the text prints: the test reads the numbers back from the
matplotlib artists and compares them with the printed matrices (the old kinds figure drew fresh random q, k, v;
the old steps figure never showed E or Z)."""

import numpy as np
import pytest

from attnlab import viz
from attnlab.learn import tour
from attnlab.learn.report import Report, plain_console
from attnlab.viz import _figure


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """Run one section; return (its printed matrices by title, its figures by file name)."""
    figures = {}
    real = _figure.save

    def keep(fig, path):
        figures[path.name] = fig
        return real(fig, path)

    monkeypatch.setattr(_figure, "save", keep)

    def run(name):
        report = Report(tmp_path, figures=True, console=plain_console())
        report.section(name, name)
        tour.SECTIONS[name](report, True)
        tables = {title: np.array([[float(c) for c in row[1:]] for row in rows])
                  for kind, payload in report.sections[-1].blocks if kind == "table"
                  for title, cols, rows in [payload] if cols and cols[0] == ""}
        return tables, figures
    return run


def image(ax):
    return np.ma.filled(ax.images[0].get_array(), 0.0)


def printed(tables, start):
    return next(v for title, v in tables.items() if title.startswith(start))


def test_kinds_causal_figure_draws_the_printed_weights(drawn):
    tables, figures = drawn("kinds")
    fig = figures["05-causal-effect.png"]
    np.testing.assert_allclose(image(fig.axes[2]), printed(tables, "causal weights, head 0"), atol=6e-4)


def test_steps_figure_shows_the_printed_e_z_and_weights(drawn):
    tables, figures = drawn("steps")
    e, z, a = (image(ax) for ax in figures["03-weights.png"].axes[:3])
    np.testing.assert_allclose(e, printed(tables, "exponentials"), rtol=6e-4)
    np.testing.assert_allclose(z, printed(tables, "normalisation"), rtol=6e-4)
    np.testing.assert_allclose(a, printed(tables, "weights"), rtol=6e-4)
    np.testing.assert_allclose(a, e / z, rtol=1e-12)


def test_mask_figures_draw_the_printed_masks(drawn):
    tables, figures = drawn("masks")
    from attnlab import masks

    for name, mask, shape in (("causal", masks.causal(), (6, 6)), ("window", masks.sliding_window(2), (6, 6)),
                              ("padding", masks.padding([4]), (6, 6)), ("kvcache", masks.causal(), (3, 6))):
        ax = figures[f"06-mask-{name}.png"].axes[-1 if name == "kvcache" else 0]
        allowed = np.asarray(mask.to_array(*shape)).reshape(shape)
        assert ax.images[0].get_array().shape == shape, name
        assert f"{int(allowed.sum())} of {allowed.size} cells allowed" in ax.get_title(), name


def test_softmax_steps_checks_its_inputs():
    with pytest.raises(ValueError, match="must share Lq"):
        viz.softmax_steps([[1.0, 1.0]], [2.0, 1.0], [[0.5, 0.5]])
