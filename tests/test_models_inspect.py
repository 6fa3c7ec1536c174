"""attnlab inspect: table, figures and explorer page from the real model."""

import json
import re

import pytest

from attnlab import cli

SENTENCE = "The cat sat on the mat because it was tired."


def _rows(out):
    """{head id: the table row's fields} of inspect's printed table."""
    return {line.split()[0]: line.split() for line in out.splitlines() if re.match(r"\s*L\d+\.H\d+ ", line)}


def _payload(path):
    page = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'id="attnlab-data">(.*?)</script>', page, re.S).group(1))


def test_inspect_prints_table_and_writes_outputs(tmp_path, capsys):
    assert cli.main(["inspect", "The cat sat on the mat.", "--layer", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0:[CLS] 1:the 2:cat" in out
    rows = _rows(out)
    assert sorted(rows) == sorted(f"L0.H{h}" for h in range(12))     # layer 0, every head, named L0.Hh
    for name in ("heatmap.png", "heads.png", "entropy.png", "explorer.html"):
        assert (tmp_path / name).stat().st_size > 1000
    html = (tmp_path / "explorer.html").read_text(encoding="utf-8")
    assert "all-MiniLM-L6-v2" in html and "<script" in html


def test_a_previous_token_head_is_typed_and_not_flagged(capsys):
    """The issue's case: MiniLM L0.H2 (previous-token score 1.00) was flagged over_concentrated."""
    assert cli.main(["inspect", SENTENCE, "--layer", "0", "--head", "2"]) == 0
    out = capsys.readouterr().out
    (row,) = _rows(out).values()
    assert row[0] == "L0.H2" and float(row[6]) >= 0.99                # prev column
    assert row[-2:] == ["previous-token", "-"]                       # type, no failure flag
    assert "over_concentrated" not in row


def test_inspect_names_every_head_unambiguously(capsys):
    assert cli.main(["inspect", SENTENCE]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 72 and "L1.H11" in rows and "L0.H9" in rows
    assert rows["L1.H8"][-2] == "next-token"                         # the next-token head, typed too


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_inspect_refuses_empty_text_with_one_line(text, capsys):
    assert cli.main(["inspect", text]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "non-empty text" in err and "Traceback" not in err


def test_layer_and_head_carry_to_the_tables_and_the_page(tmp_path, capsys):
    assert cli.main(["inspect", SENTENCE, "--layer", "3", "--head", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert list(_rows(out)) == ["L3.H5"] and "showing L3.H5" in out
    data = _payload(tmp_path / "explorer.html")
    assert data["layers"] == 1 and data["layer_names"] == ["layer 3"]
    assert data["start"] == [0, 5]                                    # opens at that head of its one layer
    assert data["kind"] == "self" and data["masks"]["what_if"]      # an encoder: a mask on it is a what-if
    meta = dict(data["meta"])
    assert meta["layers"] == "this page holds layer 3 only (the model has 6)"
    assert "layer 3 of 6" in data["title"]


def test_without_a_selection_the_page_holds_every_layer(tmp_path, capsys):
    long = SENTENCE + " The committee postponed the vote until everyone had read the long report."
    assert cli.main(["inspect", long, "--out", str(tmp_path)]) == 0
    data = _payload(tmp_path / "explorer.html")
    assert data["layers"] == 6 and data["start"] == [0, 0] and dict(data["meta"])["layers"] == "6"
    assert data["title"].endswith("\u2026") and data["title"].split(": ", 1)[1][:-1] in long   # cut at a word
    assert long[len(data["title"].split(": ", 1)[1]) - 1] == " "


def test_a_long_step_shows_a_status_on_stderr_only(monkeypatch, capsys):
    from attnlab import progress

    monkeypatch.setattr(progress, "SHOW_AFTER", 0.0)
    assert cli.main(["inspect", SENTENCE, "--layer", "0", "--head", "2"]) == 0
    captured = capsys.readouterr()
    assert "attnlab inspect: running all-MiniLM-L6-v2" in captured.err
    assert "attnlab inspect:" not in captured.out


def test_inspect_long_text_limit(tmp_path, capsys):
    text = "one two three " * 200                                       # 600 tokens + [CLS]/[SEP]
    assert cli.main(["inspect", text]) == 2
    assert "at most 512" in capsys.readouterr().err
    assert cli.main(["inspect", text, "--truncate", "--layer", "5", "--head", "3"]) == 0
    out = capsys.readouterr().out
    assert "512 tokens" in out and list(_rows(out)) == ["L5.H3"]


def test_explorer_of_a_long_text_keeps_one_layer(capsys):
    from types import SimpleNamespace

    import numpy as np

    from attnlab.commands.inspect import _explorer_layers

    assert _explorer_layers(SimpleNamespace(scores=np.zeros((6, 12, 20, 20))), 0) == list(range(6))
    assert _explorer_layers(SimpleNamespace(scores=np.zeros((6, 12, 300, 300))), 4) == [4]
    assert "holds layer 4 only" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [(["--head", "1"], "--head needs --layer"),
                                           (["--layer", "6"], "--layer must be in 0..5")])
def test_inspect_bad_selection(argv, message, capsys):
    assert cli.main(["inspect", "Hello there.", *argv]) == 2
    assert message in capsys.readouterr().err
