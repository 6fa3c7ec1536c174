"""Failure-mode probes on all-MiniLM-L6-v2 against direct computations from the model's attention weights."""

import numpy as np
import pytest

from attnlab import cli, data, diagnostics, models
from attnlab.models import probes

TEXTS = data.sentences()[:2]


@pytest.fixture(scope="module")
def minilm():
    return models.load("all-MiniLM-L6-v2")


def test_head_survey_counts_flags_and_sink_types(minilm):
    survey = probes.head_survey(minilm, TEXTS)
    want_sink, want_diffuse = np.zeros((6, 12)), np.zeros((6, 12))
    for text in TEXTS:
        w = minilm.attentions(text)[1]                                        # (layers, H, L, L)
        L = w.shape[-1]
        sink = w[..., [0, L - 1]].sum(-1).mean(-1)                            # mass on [CLS] + [SEP]
        prev = np.mean([w[..., i, i - 1] for i in range(1, L)], axis=0)
        nxt = np.mean([w[..., i, i + 1] for i in range(L - 1)], axis=0)
        want_sink += (sink >= 0.5) & (sink >= prev) & (sink >= nxt)
        p = np.where(w > 0, w, 1.0)
        want_diffuse += (-(w * np.log(p)).sum(-1) / np.log(L)).mean(-1) >= diagnostics.DIFFUSE_ENTROPY
    np.testing.assert_allclose(survey.sink, want_sink / 2)
    np.testing.assert_allclose(survey.diffuse, want_diffuse / 2)
    assert survey.over_concentrated.shape == (6, 12) and survey.texts == 2
    assert survey.over_concentrated[0, 2] == 0 and survey.sink.sum() > 0     # L0.H2 is a previous-token head


def test_sink_breakdown_conserves_mass(minilm):
    parts = probes.sink_breakdown(minilm, TEXTS)
    np.testing.assert_allclose(sum(parts.values()), 1.0, atol=1e-5)
    want = np.mean([minilm.attentions(t)[1][:, :, :, 0].mean(axis=(1, 2)) for t in TEXTS], axis=0)
    np.testing.assert_allclose(parts["[CLS]"], want, atol=1e-6)


def test_position_sweep_reads_verb_to_subject(minilm):
    template = (("The keys", "keys", "are", "on the kitchen table."),)
    sweep = probes.position_sweep(minilm, 2, templates=template)
    tokens, w = minilm.attentions("The keys to the cabinet are on the kitchen table.")
    assert tokens[2] == "keys" and tokens[6] == "are"
    np.testing.assert_allclose(sweep.weight[1], w[:, :, 6, 2])
    np.testing.assert_allclose(sweep.distance, [1, 4, 7])
    with pytest.raises(ValueError, match="max_phrases"):
        probes.position_sweep(minilm, 0)


def test_failure_modes_command(tmp_path, capsys):
    argv = ["failure-modes", "--limit", "2", "--max-phrases", "1", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "over_concentrated" in out and "verb -> subject" in out
    for name in ("failure-heads.png", "failure-sinks.png", "failure-position.png"):
        assert (tmp_path / name).stat().st_size > 1000
