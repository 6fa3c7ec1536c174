"""The explorer page in a real browser (Debian Chromium driven by Playwright): offline from file://, numbers read
from the DOM equal Python's, hostile text stays text, 512 tokens stay interactive. These tests never skip."""

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from attnlab import masks, scaled_dot_product_attention
from attnlab.viz.explorer import ExplorerData, demo_data, serve, write_explorer

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 20000     # generous bound: a page that hangs fails, timings are printed, not asserted


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is missing at {CHROMIUM}: run `make test`, which installs it "
                    f"(apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def open_page(browser, tmp_path):
    """open_page(data) -> page object with .page, .data, .requests (non-file requests), .dialogs, .errors."""
    contexts = []

    def _open(data, name="page.html", viewport=(1400, 1000)):
        path = write_explorer(data, tmp_path / name)
        ctx = browser.new_context(offline=True, viewport={"width": viewport[0], "height": viewport[1]})
        contexts.append(ctx)
        blocked = []

        def route(r):
            if r.request.url.startswith("file://"):
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()

        ctx.route("**/*", route)
        page = ctx.new_page()
        dialogs, errors, requests = [], [], []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith(("file://", "data:")) else requests.append(r.url))
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
        return SimpleNamespace(page=page, data=data, requests=requests + blocked, blocked=blocked,
                               dialogs=dialogs, errors=errors, path=path)

    yield _open
    for ctx in contexts:
        ctx.close()


def toy(rng, layers=2, heads=3, n=7):
    q, k = rng.normal(size=(layers, heads, n, 4)), rng.normal(size=(layers, heads, n, 4))
    v = rng.normal(size=(layers, heads, n, 3))
    return ExplorerData.from_qkv(q, k, v, [f"w{i}" for i in range(n)], title="toy")


# --- reading numbers from the DOM -------------------------------------------------------------------------------
def step_column(page, name):
    """One data attribute of every step-panel row, in key order, as floats."""
    return np.array(page.eval_on_selector_all(
        "[data-testid=step-row]", f"rows => rows.map(r => Number(r.dataset.{name}))"))


def table(page, attr="w"):
    """The all-weights table as a (Lq, Lk) array."""
    cells = page.eval_on_selector_all(
        "[data-testid=weight-cell]",
        f"cs => cs.map(c => [Number(c.dataset.q), Number(c.dataset.k), Number(c.dataset.{attr})])")
    cells = np.array(cells)
    out = np.zeros((int(cells[:, 0].max()) + 1, int(cells[:, 1].max()) + 1))
    out[cells[:, 0].astype(int), cells[:, 1].astype(int)] = cells[:, 2]
    return out


def choose_mask(page, spec):
    """Type a spec of attnlab's mask grammar into the page and wait until it applies."""
    page.fill("[data-testid=mask-spec]", spec)
    page.wait_for_selector(f"body[data-mask-state={'ok' if spec.strip() else 'none'}]", timeout=TIMEOUT_MS)


# --- tests ------------------------------------------------------------------------------------------------------
def test_page_loads_from_file_with_the_network_off_and_asks_for_nothing(open_page, rng):
    p = open_page(toy(rng))
    assert p.requests == [] and p.blocked == [] and p.errors == []
    assert p.page.eval_on_selector_all("script[src], link[href], img, iframe", "els => els.length") == 0
    assert p.page.text_content("[data-testid=title]") == "toy"
    assert p.page.title() == "toy \u00b7 attnlab explorer"


def test_clicking_a_token_selects_and_shows_its_row(open_page, rng):
    p = open_page(toy(rng))
    p.page.click("[data-testid=q-token][data-index='4']")
    selected = p.page.eval_on_selector_all("[data-testid=q-token].selected", "b => b.map(x => x.dataset.index)")
    assert selected == ["4"]
    assert p.page.get_attribute("body", "data-row") == "4"
    assert p.page.text_content("[data-testid=selected-token]") == "w4"
    outline = p.page.evaluate("""() => {            // the matrix outlines row 4 in the accent colour
        const m = document.querySelector('[data-testid=matrix]'), g = m.dataset, cs = Number(g.cell);
        const at = (y) => Array.from(m.getContext('2d').getImageData(Number(g.left) + 1, y, 1, 1).data.slice(0, 3));
        return [at(Number(g.top) + 4.5 * cs), at(Number(g.top) + 2.5 * cs)];
    }""")
    assert outline[0] == [209, 73, 91] and outline[1] != [209, 73, 91]
    np.testing.assert_allclose(step_column(p.page, "weight"), p.data.weights()[0, 0, 4], rtol=0, atol=1e-12)
    key_weights = p.page.eval_on_selector_all("[data-testid=k-token]", "s => s.map(x => Number(x.dataset.weight))")
    np.testing.assert_allclose(key_weights, p.data.weights()[0, 0, 4], rtol=0, atol=1e-12)
    p.page.keyboard.press("ArrowDown")
    assert p.page.get_attribute("body", "data-row") == "5"


def test_switching_head_and_layer_shows_the_numbers_python_computed(open_page, rng):
    p = open_page(toy(rng))
    page, want = p.page, p.data.weights()
    before = table(page)
    for layer, head in ((0, 1), (1, 2)):
        page.select_option("[data-testid=layer-select]", str(layer))
        page.select_option("[data-testid=head-select]", str(head))
        np.testing.assert_allclose(table(page), want[layer, head], rtol=0, atol=1e-12)
        np.testing.assert_allclose(step_column(page, "weight"), want[layer, head, 0], rtol=0, atol=1e-12)
    assert np.abs(table(page) - before).max() > 0.01
    box = page.locator("[data-testid=matrix]").bounding_box()               # hover: the exact number
    geometry = page.get_attribute
    cell, left, top = (float(geometry("[data-testid=matrix]", f"data-{a}")) for a in ("cell", "left", "top"))
    page.mouse.move(box["x"] + left + 2.5 * cell, box["y"] + top + 3.5 * cell)
    tip = page.locator("[data-testid=tooltip]")
    assert tip.is_visible() and (tip.get_attribute("data-q"), tip.get_attribute("data-k")) == ("3", "2")
    assert float(tip.get_attribute("data-weight")) == pytest.approx(want[1, 2, 3, 2], abs=1e-12)
    assert f"{want[1, 2, 3, 2]:.7g}"[:6] in tip.text_content()


def test_causal_toggle_zeroes_the_upper_triangle_and_rows_sum_to_one(open_page, rng):
    p = open_page(toy(rng))
    choose_mask(p.page, "causal")
    w, allowed = table(p.page), table(p.page, "allowed")
    upper = np.triu(np.ones_like(w, dtype=bool), 1)
    assert (w[upper] == 0).all() and (allowed[upper] == 0).all() and (allowed[~upper] == 1).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(w, p.data.weights(masks.causal())[0, 0], rtol=0, atol=1e-12)
    assert p.page.text_content("[data-testid=mask-code]") == 'mask = attnlab.masks.parse("causal")'


def test_window_and_padding_masks_match_attnlab_and_empty_rows_are_zero(open_page, rng):
    p = open_page(toy(rng))
    page = p.page
    choose_mask(page, "window:1,1")
    np.testing.assert_allclose(table(page), p.data.weights(masks.sliding_window(1, 1))[0, 0], rtol=0, atol=1e-12)
    choose_mask(page, "padding:3")
    np.testing.assert_allclose(table(page), p.data.weights(masks.padding([3]))[0, 0], rtol=0, atol=1e-12)
    choose_mask(page, "padding:0")                                            # every key hidden
    assert (table(page) == 0).all() and (step_column(page, "weight") == 0).all()
    outputs = page.eval_on_selector_all("[data-testid=output-value]", "s => s.map(x => Number(x.dataset.value))")
    assert outputs == [0, 0, 0]
    shown = "".join(page.text_content(f"[data-testid={t}]") for t in ("steps", "weights-table", "output"))
    assert "NaN" not in shown and page.text_content("[data-testid=row-sum]") == "0.0000"


def test_step_panel_shows_raw_scaled_masked_softmax_and_output_like_python(open_page, rng):
    p = open_page(toy(rng))
    page, data = p.page, p.data
    page.select_option("[data-testid=layer-select]", "1")
    page.select_option("[data-testid=head-select]", "2")
    choose_mask(page, "causal")
    page.click("[data-testid=q-token][data-index='3']")
    q, k, v = (x[1, 2].astype(np.float64) for x in (data.queries, data.keys, data.values))
    raw = q[3] @ k.T
    np.testing.assert_allclose(step_column(page, "raw"), raw, rtol=0, atol=1e-12)
    np.testing.assert_allclose(step_column(page, "scaled"), raw * data.scale, rtol=0, atol=1e-12)
    np.testing.assert_allclose(step_column(page, "score"), data.scores[1, 2, 3], rtol=0, atol=0)
    masked = step_column(page, "masked")
    assert np.isneginf(masked[4:]).all() and np.array_equal(masked[:4], data.scores[1, 2, 3, :4].astype(float))
    out, w = scaled_dot_product_attention(q, k, v, mask=masks.causal(), scale=data.scale, return_weights=True)
    np.testing.assert_allclose(step_column(page, "weight"), w[3], rtol=0, atol=1e-6)   # q.k*scale vs float32 scores
    np.testing.assert_allclose(step_column(page, "weight"), data.weights(masks.causal())[1, 2, 3], rtol=0, atol=1e-12)
    shown = page.eval_on_selector_all("[data-testid=output-value]", "s => s.map(x => Number(x.dataset.value))")
    np.testing.assert_allclose(shown, data.weights(masks.causal())[1, 2, 3] @ v, rtol=0, atol=1e-12)
    np.testing.assert_allclose(shown, out[3], rtol=0, atol=1e-5)


def test_the_models_own_mask_always_applies_and_cross_attention_aligns_bottom_right(open_page, rng):
    base = np.ones((6, 6), bool)
    base[:, 4:] = False
    data = ExplorerData(tokens=list("abcdef"), scores=rng.normal(size=(6, 6)), base_mask=base)
    page = open_page(data).page
    w = table(page)
    assert (w[:, 4:] == 0).all()
    np.testing.assert_allclose(w, data.weights()[0, 0], rtol=0, atol=1e-12)
    cross = ExplorerData.from_qkv(rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 2)),
                                  ["x", "y", "z"], k_tokens=list("abcde"))
    page = open_page(cross, "cross.html").page
    choose_mask(page, "causal")
    np.testing.assert_allclose(table(page), cross.weights(masks.causal())[0, 0], rtol=0, atol=1e-12)
    assert table(page, "allowed").sum() == 3 + 4 + 5


def test_hostile_text_renders_as_text_and_runs_nothing(open_page):
    tokens = ["<script>alert(1)</script>", '" onmouseover="alert(2)', "<img src=x onerror=alert(3)>", "ok"]
    data = ExplorerData(tokens=tokens, scores=np.zeros((4, 4)), title='"><script>alert(4)</script>',
                        meta={"<b onclick=alert(5)>": "</script><script>alert(6)</script>"},
                        layer_names=["<i>layer</i>"], head_names=['" onfocus="alert(7)'])
    p = open_page(data)
    page = p.page
    for i in range(4):
        page.hover(f"[data-testid=k-token][data-index='{i}']")
        page.click(f"[data-testid=q-token][data-index='{i}']")
    page.hover("[data-testid=matrix]")
    page.select_option("[data-testid=head-select]", "all")
    page.wait_for_selector("body[data-overview=done]", timeout=TIMEOUT_MS)
    page.hover("[data-testid=head-thumb]")
    assert p.dialogs == [] and p.errors == [] and p.requests == []
    assert page.eval_on_selector_all("[data-testid=q-token]", "b => b.map(x => x.textContent)") == tokens
    assert page.text_content("[data-testid=title]") == data.title
    assert page.eval_on_selector_all("img", "els => els.length") == 0
    assert page.eval_on_selector_all("script", "els => els.length") == 2
    assert page.eval_on_selector_all("[onmouseover], [onerror], [onclick], [onfocus]", "els => els.length") == 0
    assert "</script><script>alert(6)</script>" in page.text_content("[data-testid=meta]")


def test_all_heads_overview_lists_every_head_and_opens_one(open_page, rng):
    p = open_page(toy(rng))
    page = p.page
    page.select_option("[data-testid=head-select]", "all")
    page.wait_for_selector("body[data-overview=done]", timeout=TIMEOUT_MS)
    assert page.is_visible("[data-testid=overview]") and not page.is_visible("[data-testid=matrix]")
    assert page.locator("[data-testid=head-thumb]").count() == 6
    page.click("[data-testid=head-thumb][data-layer='1'][data-head='2']")
    assert page.input_value("[data-testid=head-select]") == "2"
    assert page.input_value("[data-testid=layer-select]") == "1"
    np.testing.assert_allclose(table(page), p.data.weights()[1, 2], rtol=0, atol=1e-12)


def in_page_ms(page, script):
    """Milliseconds the page spends handling ``script`` (synchronous event handlers), for the printed report."""
    return page.evaluate(f"() => {{ const t = performance.now(); {script}; return performance.now() - t; }}")


INTERACTIONS = {
    "click a token": "document.querySelector('[data-testid=q-token][data-index=\\'300\\']').click()",
    "causal mask": "const r = document.querySelector('[data-testid=mask-spec]'); r.value = 'causal'; "
                   "r.dispatchEvent(new Event('input'))",
    "change head": "const s = document.querySelector('[data-testid=head-select]'); s.value = '2'; "
                   "s.dispatchEvent(new Event('change'))",
}


def test_512_tokens_load_and_stay_interactive(open_page):
    data = demo_data(512)
    p = open_page(data, "long.html")
    page, loaded = p.page, p.page.evaluate("performance.now()") / 1000
    times = {name: in_page_ms(page, script) for name, script in INTERACTIONS.items()}
    np.testing.assert_allclose(step_column(page, "weight"), data.weights(masks.causal())[0, 2, 300], rtol=0,
                               atol=1e-12)
    start = time.perf_counter()
    page.click("[data-testid=q-token][data-index='420']", timeout=TIMEOUT_MS)       # a real click, scrolled to
    choose_mask(page, "")
    np.testing.assert_allclose(step_column(page, "weight"), data.weights()[0, 2, 420], rtol=0, atol=1e-12)
    assert "table is built up to" in page.text_content("#numbers-body")
    page.select_option("[data-testid=head-select]", "all")
    page.wait_for_selector("body[data-overview=done]", timeout=TIMEOUT_MS)
    print(f"\n512 tokens, 2 x 4 heads, {p.path.stat().st_size / 1e6:.1f} MB: ready {loaded:.2f} s after navigation; "
          + ", ".join(f"{name} {ms:.0f} ms" for name, ms in times.items())
          + f"; click, mask and the overview of 8 heads through Playwright {time.perf_counter() - start:.2f} s")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "explorer-512-overview.png"))
    assert p.errors == [] and p.requests == []


def test_minilm_sized_page_6_layers_12_heads_512_tokens(open_page, rng):
    """The real model's largest page (all-MiniLM-L6-v2 at its 512-token limit, with q, k, v of dim 32)."""
    q, k, v = (rng.normal(size=(6, 12, 512, 32)).astype(np.float32) for _ in range(3))
    data = ExplorerData.from_qkv(q, k, v, [f"t{i}" for i in range(512)])
    p = open_page(data, "minilm-sized.html")
    loaded = p.page.evaluate("performance.now()") / 1000                  # seconds from navigation to ready
    p.page.select_option("[data-testid=layer-select]", "5", timeout=TIMEOUT_MS)
    times = {name: in_page_ms(p.page, script) for name, script in INTERACTIONS.items()}
    np.testing.assert_allclose(step_column(p.page, "weight"), data.weights(masks.causal())[5, 2, 300], rtol=0,
                               atol=1e-12)
    print(f"\n6 x 12 heads, 512 tokens, {p.path.stat().st_size / 1e6:.0f} MB: ready {loaded:.2f} s after navigation; "
          + ", ".join(f"{name} {ms:.0f} ms" for name, ms in times.items()))
    assert p.errors == [] and p.requests == []


def test_screenshot_artifact(open_page):
    p = open_page(demo_data(), viewport=(1400, 1000))
    page = p.page
    page.click("[data-testid=q-token][data-index='7']")
    choose_mask(page, "causal")
    box = page.locator("[data-testid=matrix]").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.6)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_notebook_repr_renders_the_same_page_inline(browser):
    data = demo_data(6)
    ctx = browser.new_context(offline=True)
    try:
        page = ctx.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_content(data._repr_html_())
        frame = page.frame_locator("iframe")
        frame.locator("body[data-ready=true]").wait_for(timeout=TIMEOUT_MS)
        assert frame.locator("[data-testid=q-token]").count() == 6 and errors == []
    finally:
        ctx.close()


def test_served_page_loads_over_localhost(browser, tmp_path):
    path = write_explorer(demo_data(5), tmp_path / "served.html")
    server = serve(path, port=0, block=False)
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
        assert page.locator("[data-testid=q-token]").count() == 5
    finally:
        ctx.close()
        server.shutdown()
        server.server_close()
