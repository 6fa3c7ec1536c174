"""The explorer page's masks in a real browser (Debian Chromium driven by Playwright): the page's parser and
evaluator of attnlab's one mask grammar give, for hundreds of specs (every kind, & | ~ and parentheses, odd sizes,
Lq != Lk, invalid specs), the cells of ``masks.parse(spec).to_array(Lq, Lk)`` and the error text of Python; the
weights under a typed spec are attnlab.softmax's; cross-attention refuses position masks and says why; a mask on a
model's layer is a what-if. These tests never skip."""

import random

import numpy as np
import pytest
import torch

from attnlab import masks, softmax
from attnlab.viz.explorer import CROSS_NOTE, SAME_AS_MODEL, ExplorerData, page_mask, what_if_note

from test_explorer_browser import TIMEOUT_MS, browser, open_page, step_column, table  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

# every kind of the grammar, with arguments that fit small pages (random ones use the seeds the pages ship)
ATOMS = ["full", "dense", "none", "causal", "causal:top_left", "window:0", "window:1", "window:2,1", "window:0,3",
         "window:1,0", "prefix:0", "prefix:2", "keys:0", "keys:3", "keys:99", "padding:0", "padding:4",
         "padding:9223372036854775807", "dilated:1", "dilated:2", "dilated:3", "global:0", "global:1,4",
         "global:2,2,9", "random:2,1", "random:3,2,5", "random:2,1,0"]
RANDOM_SHIPPED = ["random:2,1", "random:3,2,5"]
INVALID = [
    "", "   ", "\t\n", "causal &", "& causal", "causal)", "(causal", "((causal)", "causal causal", "~", "()",
    "causal || window:1", "foo", "Foo:1", "\u00c9", "x'\"y", "it's", "a\\b", "causal\x00", "caus\u200bal",
    "full:1", "dense:0", "none:1", "causal:a,b", "causal:TOP_LEFT", "causal:", "window", "window:", "window:1,2,3",
    "window:a", "window:-1", "window:1,", "window:1.5", "window:2:3", ":3", "prefix", "prefix:1,2", "keys:1,2",
    "padding", "document", "document:0,3", "dilated", "dilated:0", "dilated:1,2", "global", "random:1",
    "random:1,2,3,4", "random:0,1", "window:4611686018427387905", "keys:4611686018427387905",
    "dilated:4611686018427387905", "random:4611686018427387905,1", "global:9223372036854775808",
    "global:18446744073709551616", "padding:18446744073709551616,3", "padding:3,4", "padding:3,4 & padding:2",
    "padding:3 | padding:2,2", "window:\u0663", "window:\u00b2", "keys:1\uff10", "WINDOW:1 & CAUSAL", "causal\u3000&\u00a0window:1",
    "causal\x1c&\x1dkeys:2", "<img src=x onerror=alert(1)>", "random:2,1,7", "document:1,1 & causal",
    "causal & ~(window:1 | keys:2", "\U0001f600", "\u2028causal", "window:1 \u00a0| ~~keys:1",
]


def spec_pool(n, seed):
    """Random compositions of the atoms with & | ~ and parentheses."""
    rng = random.Random(seed)

    def expr(depth):
        r = rng.random()
        if depth == 0 or r < 0.35:
            return rng.choice(ATOMS)
        if r < 0.5:
            return "~" + expr(depth - 1)
        if r < 0.6:
            return f"({expr(depth - 1)})"
        return f"{expr(depth - 1)} {rng.choice('&|')} {expr(depth - 1)}"

    return [expr(3) for _ in range(n)]


def python_mask(spec, Lq, Lk, kind):
    """What the page must show for ``spec``: masks.parse(spec).to_array(Lq, Lk) cells, or Python's error text."""
    try:
        got = page_mask(spec, Lq, Lk, kind)
    except (ValueError, TypeError) as err:
        return {"error": str(err)}
    direct = np.asarray(masks.parse(spec).to_array(Lq, Lk)).reshape(Lq, Lk)   # the grammar itself, no page code
    assert np.array_equal(got.allowed, direct)
    return {"spec": got.spec, "allowed": direct.astype(int).reshape(-1).tolist()}


@pytest.fixture
def opened(open_page):  # noqa: F811
    """opened(data, name) -> the Playwright page of ``data``, with .dialogs and .errors of its own."""
    def _open(data, name="page.html"):
        p = open_page(data, name)
        p.page.dialogs, p.page.errors = p.dialogs, p.errors
        return p.page

    return _open


def toy(rng, Lq, Lk, kind=None, **kw):
    q, k, v = rng.normal(size=(2, Lq, 4)), rng.normal(size=(2, Lk, 4)), rng.normal(size=(2, Lk, 3))
    return ExplorerData.from_qkv(q, k, v, [f"q{i}" for i in range(Lq)], k_tokens=[f"k{j}" for j in range(Lk)],
                                 kind=kind, **kw)


def type_spec(page, spec):
    page.fill("[data-testid=mask-spec]", spec)
    state = "error" if "error" in python_mask(spec, *page_shape(page)) else "ok"
    page.wait_for_selector(f"body[data-mask-state={state}]", timeout=TIMEOUT_MS)


def page_shape(page):
    return (page.locator("[data-testid=q-token]").count(), page.locator("[data-testid=k-token]").count(),
            page.evaluate("() => JSON.parse(document.getElementById('attnlab-data').textContent).kind"))


SHAPES = [(5, 5, "self"), (3, 8, None), (8, 3, "causal"), (1, 6, None), (6, 1, "self"), (7, 7, None),
          (4, 9, "cross")]


@pytest.mark.parametrize("Lq,Lk,kind", SHAPES)
def test_the_page_evaluates_every_spec_as_masks_parse_does(opened, rng, Lq, Lk, kind):
    documents = [f"document:{Lk}", f"document:{Lk // 2 or 1},{Lk - Lk // 2}", f"causal & document:{Lk}"]
    specs = ATOMS + INVALID + documents + spec_pool(120, seed=Lq * 10 + Lk)
    data = toy(rng, Lq, Lk, kind, mask_specs=None if kind == "cross" else RANDOM_SHIPPED)
    page = opened(data)
    got = page.evaluate("specs => specs.map((s) => window.attnlabExplorer.maskOf(s))", specs)
    mismatches = []
    for spec, js in zip(specs, got):
        want = python_mask(spec, Lq, Lk, kind)
        if "random:2,1,7" in spec and "spec" in want:       # not shipped: the page says it cannot draw it
            want = {"error": f"mask spec {spec!r}: random:2,1,7 is drawn by NumPy's random generator, which this "
                    "offline page cannot run; it carries random:2,1,0, random:3,2,5 (ship others with "
                    "ExplorerData(mask_specs=[...]))"}
        if js != want:
            mismatches.append((spec, want, js))
    assert mismatches == [], mismatches[:3]
    errors = sum("error" in x for x in got)
    assert errors > 40 and len(specs) - errors > 8          # both outcomes are exercised at every shape
    assert page.errors == []


def test_python_repr_of_odd_text_is_the_pages(opened, rng):
    page = opened(toy(rng, 2, 2))
    texts = ["a", "it's", 'say "x"', "both ' and \"", "back\\slash", "\t\n\r\x00\x1f\x7f", "\x85\xa0\xad",
             "\u00e9\u4e2d", "\u200b\u2028\u2029\u3000", "\ufeff", "\U0001f600", "\U000e0001", "\ue000"]
    assert page.evaluate("ts => ts.map((t) => window.attnlabExplorer.pyRepr(t))", texts) == [repr(t) for t in texts]


def test_a_typed_spec_renormalizes_exactly_like_attnlab_softmax(opened, rng):
    base = np.ones((6, 6), bool)
    base[:, 5] = False                                                        # the model's own padding
    data = ExplorerData.from_qkv(rng.normal(size=(6, 4)), rng.normal(size=(6, 4)), rng.normal(size=(6, 3)),
                                 list("abcdef"), base_mask=base)
    page = opened(data)
    for spec in ("causal & window:2", "window:1,1 | global:0", "~dilated:2 & causal:top_left", "document:2,4"):
        type_spec(page, spec)
        allowed = base & masks.parse(spec).to_array(6, 6)
        want = softmax(data.scores.astype(np.float64)[0, 0], axis=-1, mask=allowed)
        s = torch.from_numpy(data.scores[0, 0].astype(np.float64)).masked_fill(torch.from_numpy(~allowed), -np.inf)
        np.testing.assert_allclose(table(page), want, rtol=0, atol=1e-12)
        np.testing.assert_allclose(table(page), torch.softmax(s, -1).nan_to_num(0.0).numpy(), rtol=0, atol=1e-12)
        assert (table(page, "allowed") == allowed).all()
        assert page.text_content("[data-testid=mask-code]") == \
            f'mask = attnlab.masks.parse("{masks.parse(spec).spec}") & the model\'s own mask'
    type_spec(page, "keys:1 & ~window:0")               # row 0 sees nothing: an empty row, zeros, never NaN
    w = table(page)
    assert (w[0] == 0).all() and np.allclose(w[1:].sum(axis=1), 1, rtol=0, atol=1e-12)
    page.click("[data-testid=q-token][data-index='0']")
    assert (step_column(page, "weight") == 0).all() and page.text_content("[data-testid=row-sum]") == "0.0000"
    assert "every key is blocked" in page.text_content("#step-formulas")
    shown = "".join(page.text_content(f"[data-testid={t}]") for t in ("steps", "weights-table", "output"))
    assert "NaN" not in shown


def test_presets_compose_with_and_or_and_not(opened, rng):
    data = toy(rng, 6, 6, mask_specs=["causal", "window:1,0", "keys:2"])
    page = opened(data)
    assert page.eval_on_selector_all("[data-testid=mask-preset]", "bs => bs.map(b => b.textContent)") == \
        ["causal", "window:1", "keys:2"]                    # presets in canonical text
    page.click("[data-testid=mask-preset][data-spec=causal]")
    page.select_option("[data-testid=mask-join]", "and")
    page.click("[data-testid=mask-preset][data-spec='window:1']")
    page.select_option("[data-testid=mask-join]", "or")
    page.click("[data-testid=mask-preset][data-spec='keys:2']")
    assert page.input_value("[data-testid=mask-spec]") == "causal & window:1 | keys:2"
    np.testing.assert_allclose(table(page), data.weights("causal & window:1 | keys:2")[0, 0], rtol=0, atol=1e-12)
    page.select_option("[data-testid=mask-join]", "andnot")
    page.click("[data-testid=mask-preset][data-spec='keys:2']")
    spec = page.input_value("[data-testid=mask-spec]")
    assert spec == "(causal & window:1 | keys:2) & ~keys:2"
    np.testing.assert_allclose(table(page), data.weights(spec)[0, 0], rtol=0, atol=1e-12)
    assert page.get_attribute("body", "data-mask") == masks.parse(spec).spec


def test_cross_attention_offers_no_position_mask_and_says_why(opened, rng):
    data = toy(rng, 3, 9, "cross", meta={"model": "whisper-tiny.en"})
    page = opened(data)
    presets = page.eval_on_selector_all("[data-testid=mask-preset]", "bs => bs.map(b => b.dataset.spec)")
    assert presets and all(page_mask(p, 3, 9, "cross") for p in presets)
    assert not any(name in p for p in presets for name in ("causal", "window", "prefix", "dilated", "global"))
    assert page.is_visible("[data-testid=cross-note]") and page.text_content("[data-testid=cross-note]") == CROSS_NOTE
    for spec in ("causal", "keys:4 & window:1", "~document:9"):
        type_spec(page, spec)
        with pytest.raises(ValueError) as err:
            page_mask(spec, 3, 9, "cross")
        assert page.text_content("[data-testid=mask-status]") == f"not applied: {err.value}"
        assert "cross-attention" in str(err.value)
        np.testing.assert_allclose(table(page), data.weights()[0, 0], rtol=0, atol=1e-12)   # nothing applied
    type_spec(page, "keys:4 | ~keys:7")
    np.testing.assert_allclose(table(page), data.weights("keys:4 | ~keys:7")[0, 0], rtol=0, atol=1e-12)
    assert page.text_content("[data-testid=mask-note]") == what_if_note("whisper-tiny.en", "keys:4 | ~keys:7")


def test_a_mask_on_a_models_layer_is_a_what_if_and_toy_scores_get_no_note(opened, rng):
    encoder = toy(rng, 5, 5, "self", meta={"model": "all-MiniLM-L6-v2"})
    page = opened(encoder, "encoder.html")
    assert page.is_hidden("[data-testid=mask-note]") and page.is_hidden("[data-testid=cross-note]")
    type_spec(page, "causal")
    note = page.text_content("[data-testid=mask-note]")
    assert note == encoder.mask_note("causal") == what_if_note("all-MiniLM-L6-v2", "causal")
    assert note.startswith("what-if:") and "not what the model computed" in note
    type_spec(page, "full")                                  # blocks nothing: the model's own weights
    assert page.text_content("[data-testid=mask-note]") == SAME_AS_MODEL == encoder.mask_note("full")
    decoder = toy(rng, 5, 5, "causal", base_mask=np.tri(5, dtype=bool), meta={"model": "SmolLM2-135M"})
    page = opened(decoder, "decoder.html")
    type_spec(page, "causal")
    assert page.text_content("[data-testid=mask-note]") == SAME_AS_MODEL
    type_spec(page, "causal & window:1")
    assert page.text_content("[data-testid=mask-note]") == what_if_note("SmolLM2-135M", "causal & window:1")
    page = opened(toy(rng, 5, 5), "toy.html")
    type_spec(page, "causal")
    assert page.is_hidden("[data-testid=mask-note]") and toy(rng, 5, 5).mask_note("causal") == ""


def test_typed_text_stays_text(opened, rng):
    page = opened(toy(rng, 4, 4, "self"))
    hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    type_spec(page, hostile)
    with pytest.raises(ValueError) as err:
        page_mask(hostile, 4, 4)
    assert page.text_content("[data-testid=mask-status]") == f"not applied: {err.value}"      # shown as text
    assert "&lt;img" in page.inner_html("[data-testid=mask-status]")
    assert page.eval_on_selector_all("img", "els => els.length") == 0
    assert page.eval_on_selector_all("script", "els => els.length") == 2                      # the page's own
    assert page.dialogs == [] and page.errors == []
