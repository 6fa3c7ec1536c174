"""attnlab.faithfulness: rank correlations vs scipy, importances vs Hugging Face BertModel + torch autograd."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from scipy import stats

from attnlab import data, faithfulness as fa, models

TEXT = "The dog chased a red ball."


@pytest.fixture(scope="module")
def minilm64():
    return models.load("all-MiniLM-L6-v2", dtype=np.float64)


@pytest.fixture(scope="module")
def hf64():
    from transformers import BertModel

    return BertModel.from_pretrained(str(models.minilm_path()), attn_implementation="eager").double().eval()


def test_rank_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 20):
        x = rng.integers(0, 4, n).astype(float)          # many ties
        y = rng.normal(size=n)
        if len(set(x)) == 1:
            x[0] += 1
        assert fa.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert fa.spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    np.testing.assert_allclose(fa.rankdata([3, 1, 3, 2]), stats.rankdata([3, 1, 3, 2]))
    with pytest.raises(ValueError, match="constant"):
        fa.kendall_tau([1, 1, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="1-D of one length"):
        fa.spearman_rho([1, 2], [1, 2, 3])


def _hf_embedding(hf, ids=None, words=None):
    """Mean-pooled, normalized sentence embedding from Hugging Face's BertModel (one unpadded sequence)."""
    out = hf(input_ids=ids, inputs_embeds=words).last_hidden_state.mean(dim=1)
    return torch.nn.functional.normalize(out, dim=-1)


def test_importances_match_transformers_and_autograd(minilm64, hf64):
    imp = fa.importance(minilm64, TEXT)
    ids = minilm64.tokenize(TEXT)
    assert imp.tokens == ["the", "dog", "chased", "a", "red", "ball", "."]
    t_ids = torch.from_numpy(ids)[None]
    with torch.no_grad():
        out = hf64(input_ids=t_ids, output_attentions=True)
        last = out.attentions[-1][0].mean(0).numpy()                         # (L, L)
        full = _hf_embedding(hf64, ids=t_ids)[0]
        loo = [1 - float(_hf_embedding(hf64, ids=torch.cat([t_ids[:, :i], t_ids[:, i + 1:]], 1))[0] @ full)
               for i in range(1, len(ids) - 1)]
    np.testing.assert_allclose(imp.scores["attention_cls"], last[0, 1:-1], atol=1e-10)
    np.testing.assert_allclose(imp.scores["attention_mean"], last.mean(0)[1:-1], atol=1e-10)
    np.testing.assert_allclose(imp.scores["leave_one_out"], loo, rtol=1e-6, atol=1e-12)
    words = hf64.embeddings.word_embeddings(t_ids).detach()                    # (1, L, d)
    n = len(ids) - 2
    tangents = torch.zeros((n,) + words.shape[1:], dtype=words.dtype)            # one row per content token
    for k in range(n):
        tangents[k, k + 1] = words[0, k + 1]
    _, jvp = torch.func.jvp(lambda w: _hf_embedding(hf64, words=w), (words.repeat(n, 1, 1),), (tangents,))
    np.testing.assert_allclose(imp.scores["grad_input"], jvp.detach().norm(dim=-1).numpy(), rtol=1e-5)


def test_compare_builds_the_table_and_mismatches(minilm64):
    texts = data.sentences()[:3]
    agreement = fa.compare(minilm64, texts)
    assert len(agreement.pairs) == 15
    pair = agreement.pair("leave_one_out", "attention_cls")
    assert pair.tau.shape == pair.rho.shape == (3,)
    s = agreement.sentences[0]
    assert pair.tau[0] == pytest.approx(stats.kendalltau(s.scores["attention_cls"],
                                                         s.scores["leave_one_out"]).statistic)
    assert "tau mean" in agreement.table()
    for text, attended, influential in agreement.mismatches():
        assert attended != influential and text in texts
    fig = fa.figure(agreement)
    assert len(fig.axes) >= 2


def test_importance_rejects_decoders_and_too_short_texts(minilm64):
    with pytest.raises(ValueError, match="at least 3 content tokens"):
        fa.importance(minilm64, "Hi.")
    with pytest.raises(TypeError, match="BERT-family"):
        fa.importance(object(), TEXT)


def test_project_sentences():
    s = data.sentences()
    assert len(s) >= 50 and len(set(s)) == len(s)


def test_faithfulness_command(tmp_path, capsys):
    import json

    from attnlab import cli

    sentences = tmp_path / "s.txt"
    sentences.write_text("# two sentences\nThe dog chased a red ball.\nA storm knocked out the power.\n")
    assert cli.main(["faithfulness", "--sentences", str(sentences), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 sentences" in out and "Jain & Wallace" in out
    summary = json.loads((tmp_path / "faithfulness.json").read_text())
    assert len(summary["pairs"]) == 15 and (tmp_path / "faithfulness.png").stat().st_size > 1000
