"""docs/notebooks/ run end to end (nbclient, a real Jupyter kernel), and the inline explorer view saved in a
notebook's output renders in Chromium with the network blocked. Never skips."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "docs" / "notebooks").glob("*.ipynb"))
CHROMIUM = "/usr/bin/chromium"


def _execute(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def _outputs(nb, mime="text/plain"):
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o["text"])
            elif mime in o.get("data", {}):
                out.append(o["data"][mime])
    return "\n".join(out)


def test_there_is_a_notebook_per_part_of_the_guide():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS[:4], ids=lambda p: p.stem)
def test_notebook_runs(path):
    nb = _execute(path)
    text = _outputs(nb)
    assert "Error" not in text and "Traceback" not in text
    if path.name.startswith("02"):
        assert "may attend" in _outputs(nb, "text/html")             # the Mask displayed itself
    if path.name.startswith("04"):
        assert "attention plan" in _outputs(nb, "text/html")         # the Plan displayed itself


def test_the_real_model_notebook_and_its_inline_view_offline(tmp_path):
    nb = _execute(NOTEBOOKS[4])
    html = _outputs(nb, "text/html")
    assert "<iframe srcdoc=" in html and "http://" not in html and "https://" not in html   # no CDN
    page = tmp_path / "inline.html"
    page.write_text(f"<!doctype html><html><body>{html}</body></html>")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                   "--disable-background-networking"])
        ctx = browser.new_context(offline=True)
        outside = []
        ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file://", "about:", "data:"))
                  else (outside.append(r.request.url), r.abort()))
        pg = ctx.new_page()
        pg.goto(page.as_uri())
        frame = pg.frame_locator("iframe")
        frame.locator("body[data-ready=true]").wait_for(timeout=30000)
        tokens = frame.locator("[data-testid=q-token]").all_text_contents()
        browser.close()
    assert outside == []
    assert any("cat" in t for t in tokens), tokens[:20]
