"""attnlab cheatsheet: one PDF page whose text holds the formula and the shapes; shapes from running the code."""

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab.cli import main
from attnlab.learn import cheatsheet

ROOT = Path(__file__).resolve().parents[1]


def test_shapes_come_from_running_the_layer_and_match_torch():
    steps = {s.name: s for s in cheatsheet.shape_steps()}
    expected = {"x": "(B, Lq, d_model)", "context": "(B, Lk, d_model)", "q": "(B, H, Lq, Dh)",
                "k, v": "(B, G, Lk, Dh)", "scores": "(B, H, Lq, Lk)", "mask": "(Lq, Lk)",
                "weights": "(B, H, Lq, Lk)", "heads": "(B, H, Lq, Dh)", "concat": "(B, Lq, d_model)",
                "output": "(B, Lq, d_model)"}
    assert {n: s.symbols for n, s in steps.items()} == expected
    e = cheatsheet.EXAMPLE
    q = torch.zeros(e["B"], e["H"], e["Lq"], e["Dh"])
    kv = torch.zeros(e["B"], e["G"], e["Lk"], e["Dh"])
    out = torch.nn.functional.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)   # the oracle's shapes
    assert steps["heads"].shape == tuple(out.shape) and steps["k, v"].shape == tuple(kv.shape)


def test_pdf_is_one_page_with_formula_and_shapes(tmp_path):
    pdf = tmp_path / "sheet.pdf"
    assert main(["cheatsheet", "--out", str(pdf)]) == 0
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert "Pages:           1" in info
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert cheatsheet.FORMULA in text
    for shape in ("(B, H, Lq, Dh)", "(B, G, Lk, Dh)", "(B, H, Lq, Lk)", "(B, Lq, d_model)"):
        assert shape in text
    for needle in ("causal", "sliding_window(2)", "padding([4])", "MQA", "GQA", "KV cache per token",
                   "4 B H Lq Lk Dh"):
        assert needle in text
    for label, value in cheatsheet.COST_FORMULAS:           # every cost label stands clear of its value
        assert re.search(re.escape(label) + r"  +" + re.escape(value.split()[0]), text), label


def test_png_draws_the_masks(tmp_path):
    import matplotlib.image as mpimg

    png = tmp_path / "sheet.png"
    assert main(["cheatsheet", "--out", str(png)]) == 0
    img = mpimg.imread(png)[..., :3]
    assert img.shape[0] > 1000 and img.shape[1] > 1500
    dark = np.all(np.abs(img - np.array([8, 81, 156]) / 255) < 0.03, axis=-1).sum()    # "may attend" cells
    assert dark > 5000


def test_markdown_in_docs_is_up_to_date(tmp_path):
    md = tmp_path / "sheet.md"
    assert main(["cheatsheet", "--out", str(md)]) == 0
    fresh = md.read_text()
    assert cheatsheet.FORMULA in fresh and "| weights | softmax over the keys | `(B, H, Lq, Lk)` |" in fresh
    assert (ROOT / "docs" / "cheatsheet.md").read_text() == fresh, \
        "docs/cheatsheet.md is stale: run attnlab cheatsheet --out docs/cheatsheet.md"


@pytest.mark.parametrize("bad", ["sheet.docx", "sheet"])
def test_bad_suffix_is_one_line_exit_2(bad, tmp_path, capsys):
    assert main(["cheatsheet", "--out", str(tmp_path / bad)]) == 2
    assert "must end in .pdf, .png or .md" in capsys.readouterr().err
