"""attnlab inspect: table, figures and explorer page from the real model."""

import pytest

from attnlab import cli


def test_inspect_prints_table_and_writes_outputs(tmp_path, capsys):
    assert cli.main(["inspect", "The cat sat on the mat.", "--layer", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0:[CLS] 1:the 2:cat" in out
    lines = [line for line in out.splitlines() if line.startswith("    0 ")]
    assert len(lines) == 12                                           # layer 0, every head
    assert "over_concentrated" in lines[2]                            # head 0.2 is a previous-token head
    for name in ("heatmap.png", "heads.png", "entropy.png", "explorer.html"):
        assert (tmp_path / name).stat().st_size > 1000
    html = (tmp_path / "explorer.html").read_text(encoding="utf-8")
    assert "all-MiniLM-L6-v2" in html and "<script" in html


def test_inspect_long_text_limit(tmp_path, capsys):
    text = "one two three " * 200                                       # 600 tokens + [CLS]/[SEP]
    assert cli.main(["inspect", text]) == 2
    assert "at most 512" in capsys.readouterr().err
    assert cli.main(["inspect", text, "--truncate", "--layer", "5", "--head", "3"]) == 0
    out = capsys.readouterr().out
    assert "512 tokens" in out and len([x for x in out.splitlines() if x.startswith("    5    3")]) == 1


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
