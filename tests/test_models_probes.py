"""Failure-mode probes on all-MiniLM-L6-v2 against direct computations from the model's attention weights."""

import numpy as np
import pytest

from attnlab import cli, data, diagnostics, models
from attnlab.models import probes

TEXTS = data.sentences()[:2]


@pytest.fixture(scope="module")
def minilm():
    return models.load("all-MiniLM-L6-v2")


def test_head_survey_counts_flags(minilm):
    survey = probes.head_survey(minilm, TEXTS)
    want = np.zeros((6, 12))
    for text in TEXTS:
        for r in diagnostics.head_table(minilm.attentions(text)[1], sink_indices=(0, -1)):
            want[r.layer, r.head] += "sink" in r.flags
    np.testing.assert_allclose(survey.sink, want / 2)
    assert survey.diffuse.shape == (6, 12) and survey.texts == 2


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
