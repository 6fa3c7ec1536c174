"""Every tour figure is drawn from the arrays the text prints: the test reads the numbers back from the
matplotlib artists and compares them with the printed matrices (the old kinds figure drew fresh random q, k, v;
the old steps figure never showed E or Z); the Whisper figure is read back into the word table it sits beside."""

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


def test_whisper_cross_figure_draws_the_arrays_of_the_word_table(monkeypatch, tmp_path):
    """The speech part of the model section prints each word's times and draws the cross-attention they were read
    from: the word times are read again here, by the rule of the formula (argmax over the audio positions of the
    speech, kept monotone, 20 ms a position; a word starts at its first token and ends at its last), from the
    weights the figure shows, and the figure's word marks sit at the printed starts."""
    figures = {}
    real = _figure.save
    monkeypatch.setattr(_figure, "save", lambda fig, path: figures.setdefault(path.name, fig) and real(fig, path))
    report = Report(tmp_path, figures=True, console=plain_console())
    report.section("model", "model")
    tour._speech(report)
    (cols, rows), = [(c, r) for kind, payload in report.sections[-1].blocks if kind == "table"
                     for title, c, r in [payload] if title.startswith("each word's time")]
    assert cols == ["word", "starts at (s)", "ends at (s)"] and len(rows) >= 5
    fig = figures["11-whisper-cross.png"]
    top, bottom = fig.axes[:2]
    shown = np.asarray(top.images[0].get_array(), dtype=np.float64)                   # (tokens, speech positions)
    tokens = [t.get_text() for t in top.get_yticklabels()]
    assert shown.shape[0] == len(tokens) and shown.shape[1] <= 1500
    assert shown.min() >= 0 and shown.sum(axis=1).max() <= 1 + 1e-6   # a row's weights over the speech part of 30 s

    peak = np.zeros(len(tokens), dtype=np.int64)
    for i in range(len(tokens)):                                                      # argmax, kept monotone
        row_max = max(range(shown.shape[1]), key=lambda j: shown[i, j])
        peak[i] = max(row_max, peak[i - 1] if i else 0)
    words = []
    for token, at in zip(tokens, peak * 0.02):
        if token.startswith("<|") or not token.strip():
            continue
        if not words or token.startswith(" "):
            words.append([token.strip(), at, at])
        else:
            words[-1][0] += token
            words[-1][2] = at
    assert [[w, f"{s:.2f}", f"{e:.2f}"] for w, s, e in words] == [list(map(str, r)) for r in rows]

    marks = [line.get_xdata()[0] for line in bottom.lines]
    labels = [t.get_text() for t in bottom.texts]
    assert labels == [r[0] for r in rows]
    np.testing.assert_allclose(marks, [float(r[1]) for r in rows], atol=0.005)
