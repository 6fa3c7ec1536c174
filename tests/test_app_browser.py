"""The live explorer in a real browser (Debian Chromium driven by Playwright) against the running server: type
text, switch model, layer and head, compose a mask, move the temperature slider, generate; the numbers on the
page equal the library's; hostile text stays inert; no request leaves 127.0.0.1. Never skips."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab import models
from attnlab.app import App, views

from test_app import MINILM, llama_dir  # noqa: F401  (the tiny decoder fixture)

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 30000
HOSTILE = "<script>alert(1)</script> \"'><img src=x onerror=alert(2)> \u202etxet\u202c \u2028 end"


@pytest.fixture(scope="module")
def live(llama_dir):  # noqa: F811
    app = App({MINILM: models.load(MINILM), "tiny-llama": models.load(llama_dir),
               "whisper-tiny.en": models.load("whisper-tiny.en")})
    srv = app.serve()
    yield app, srv
    srv.shutdown()


@pytest.fixture(scope="module")
def page(live):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is missing at {CHROMIUM}: run `make test` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    app, srv = live
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        outside = []

        def route(r):
            if r.request.url.startswith(srv.url) or r.request.url.startswith(("data:", "blob:")):
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        ctx.route("**/*", route)
        pg = ctx.new_page()
        pg.set_default_timeout(90000)                # a busy 2-core machine: slow, never hung
        pg.dialogs, pg.errors, pg.outside = [], [], outside
        pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.goto(srv.url)
        pg.wait_for_selector("#tokens button", timeout=TIMEOUT_MS)
        yield pg
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        browser.close()


def _wait(page, expression, timeout_s=TIMEOUT_MS / 1000):
    """Poll a JS expression from Python until it is truthy.

    Not page.wait_for_function: its in-page polling evals the predicate, which the page's CSP (script-src 'self')
    forbids whenever the first check is false; page.evaluate runs through the DevTools protocol instead."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {expression}"
        page.wait_for_timeout(50)


def _run(page, text):
    page.fill("#text", text)
    with page.expect_response(lambda r: r.url.endswith("/api/attention")):
        page.click("#run")
    _wait(page, "window.attnlabApp.state.view !== null")


def _table_values(page, selector, column):
    return np.array(page.eval_on_selector_all(
        f"{selector} tr", f"rows => rows.slice(1).map(r => Number(r.children[{column}].dataset.value))"))


def test_typed_text_runs_the_model_and_the_steps_equal_the_library(page, live):
    app, _ = live
    _run(page, "The cat sat on the mat because it was tired.")
    view = views.attention_view(app.model(MINILM), "The cat sat on the mat because it was tired.", layer=0)
    assert page.eval_on_selector_all("#tokens button", "b => b.map(x => x.textContent)") == view["tokens"]
    page.select_option("#head", "2")
    page.click("#tokens button[data-i='3']")
    w = views.decode(view["weights"])[2, 3]
    np.testing.assert_allclose(_table_values(page, "#steps-table", 5), w, atol=1e-6)   # page's exp / Z
    np.testing.assert_allclose(_table_values(page, "#steps-table", 6), w, atol=1e-6)   # what the model computed
    page.click("#steps-table tr:nth-child(6)")          # key 4 (row 1 is the header)
    dot = float(page.get_attribute("#neuron-sum", "data-value"))
    np.testing.assert_allclose(dot, views.decode(view["scores"])[2, 3, 4], rtol=1e-5, atol=1e-5)
    assert "L0.H2" in page.text_content("#heat-caption")


def test_layer_switch_and_a_what_if_mask(page, live):
    app, _ = live
    text = "one two three four five six"
    page.fill("#text", text)
    page.fill("#mask", "causal&window:2")
    with page.expect_response(lambda r: r.url.endswith("/api/attention")):
        page.select_option("#layer", "3")
    _wait(page, "window.attnlabApp.state.view.layer === 3 && !!window.attnlabApp.state.view.what_if")
    assert page.is_visible("#what-if") and "what-if" in page.text_content("#what-if")
    view = views.attention_view(app.model(MINILM), text, layer=3, mask="causal&window:2")
    head = int(page.eval_on_selector("#head", "s => s.value"))
    row = page.evaluate("window.attnlabApp.state.row")
    np.testing.assert_allclose(_table_values(page, "#steps-table", 6),
                               views.decode(view["what_if"]["weights"])[head, row], atol=1e-6)
    page.fill("#mask", "")


def test_hostile_text_stays_text(page):
    _run(page, HOSTILE)
    assert page.dialogs == [] and page.errors == []
    assert page.eval_on_selector_all("#tokens button img, #tokens script", "x => x.length") == 0
    assert any("<" in t or "script" in t for t in page.eval_on_selector_all("#tokens button",
                                                                           "b => b.map(x => x.textContent)"))


def test_decoder_next_tokens_follow_the_temperature_and_generation_grows_the_cache(page, live, llama_dir):  # noqa: F811
    from transformers import LlamaForCausalLM

    page.select_option("#model", "tiny-llama")
    page.wait_for_selector("#decoder-panel:not([hidden])", timeout=TIMEOUT_MS)
    _run(page, "w5 w9 w5 w9 w7")
    page.fill("#top-k", "5")
    page.dispatch_event("#top-k", "change")
    with page.expect_response(lambda r: r.url.endswith("/api/next")):
        page.eval_on_selector("#temperature", "e => { e.value = '0.5'; e.dispatchEvent(new Event('input')); }")
    _wait(page, "document.querySelectorAll('#next-table tr').length === 5")
    hf = LlamaForCausalLM.from_pretrained(llama_dir).eval()
    with torch.no_grad():
        p = torch.softmax(hf(torch.tensor([[5, 9, 5, 9, 7]])).logits[0, -1].double() / 0.5, -1)
    shown = page.eval_on_selector_all("#next-table tr", "rows => rows.map(r => Number(r.children[1].dataset.value))")
    np.testing.assert_allclose(shown, torch.sort(p, descending=True).values[:5].numpy(), atol=1e-6)
    widths = page.eval_on_selector_all("#next-table .bar", "b => b.map(x => x.getBoundingClientRect().width)")
    np.testing.assert_allclose(widths, np.round(200 * np.array(shown)), atol=1)   # drawn (no style attributes: CSP)
    page.eval_on_selector("#temperature", "e => { e.value = '0'; e.dispatchEvent(new Event('input')); }")
    with page.expect_response(lambda r: r.url.endswith("/api/generate")):
        page.click("#generate")
    _wait(page, "document.querySelector('#kv').textContent.includes('KV cache after 6 tokens')")
    assert page.input_value("#text").count("w") == 6
    assert "1,536 bytes" in page.text_content("#kv")       # 2 (k, v) x 2 layers x 2 kv heads x 6 tokens x 8 x 4 B
    page.select_option("#model", MINILM)


def test_the_mask_language_panel_draws_the_tile_map(page):
    page.fill("#mask-spec", "causal&~keys:0")
    page.fill("#mask-n", "8")
    page.fill("#mask-block", "4")
    with page.expect_response(lambda r: r.url.endswith("/api/mask")):
        page.click("#mask-draw")
    _wait(page, "document.querySelector('#mask-info').textContent.includes('tiles of 4')")
    assert "1 empty" in page.text_content("#mask-info")


def test_the_speech_model_transcribes_a_spoken_sentence_and_draws_cross_attention(page):
    page.select_option("#model", "whisper-tiny.en")
    page.wait_for_selector("#speech-panel:not([hidden])")
    page.fill("#text", "The quick brown fox jumps over the lazy dog.")
    with page.expect_response(lambda r: r.url.endswith("/api/speech")):
        page.click("#run")
    page.locator("#transcript", has_text="quick brown fox").wait_for()      # (no string predicates: the CSP)
    assert "@" in page.text_content("#words") and page.is_hidden("#heatmap")
    assert page.evaluate("window.attnlabApp.state.speech.positions") > 50
    page.select_option("#model", MINILM)


def test_nothing_leaves_loopback(page):
    assert page.outside == []
