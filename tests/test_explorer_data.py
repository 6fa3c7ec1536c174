"""The explorer's data and page (no browser): shapes, exact float32 transport, escaping, serving, the CLI."""

import base64
import html
import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import attnlab
from attnlab import masks
from attnlab.cli import main
from attnlab.viz import explorer
from attnlab.viz.explorer import ExplorerData


def data_block(page):
    """The JSON in the page's data block, parsed the way the page does (JSON.parse of the element's text)."""
    m = re.search(r'<script type="application/json" id="attnlab-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def f32(b64):
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


def test_from_qkv_scores_are_q_dot_k_times_scale(rng):
    q, k, v = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, 3, 6, 4)), rng.normal(size=(2, 3, 6, 2))
    data = ExplorerData.from_qkv(q, k, v, list("abcde"), k_tokens=list("uvwxyz"))
    assert data.shape == (2, 3, 5, 6) and data.scale == 0.5
    want = np.einsum("lhqd,lhkd->lhqk", q, k) * 0.5
    np.testing.assert_allclose(data.scores, want.astype(np.float32), rtol=0, atol=0)
    assert data.scores.dtype == np.float32 and data.queries.dtype == np.float32


def test_weights_are_the_torch_softmax_of_the_stored_scores_under_any_mask(rng):
    scores = rng.normal(size=(2, 3, 7, 7))
    base = np.ones((7, 7), bool)
    base[:, 5:] = False                                                          # the model's own padding
    data = ExplorerData(tokens=list("abcdefg"), scores=scores, base_mask=base)
    for mask in (None, masks.causal(), masks.sliding_window(1, 1)):
        allowed = base & (np.ones((7, 7), bool) if mask is None else mask.to_array(7, 7))
        s = torch.from_numpy(data.scores.astype(np.float64)).masked_fill(torch.from_numpy(~allowed), float("-inf"))
        want = torch.softmax(s, -1).nan_to_num(0.0).numpy()                   # fully masked rows: 0, not NaN
        np.testing.assert_allclose(data.weights(mask), want, rtol=0, atol=1e-15)
    fully = data.weights(masks.padding([0]))                                   # every key hidden: zeros, no NaN
    assert np.array_equal(fully, np.zeros_like(fully))


def test_the_page_carries_exact_float32_values_and_every_field(rng):
    q, k, v = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 2))
    data = ExplorerData.from_qkv(q, k, v, ["x", "y", "z"], meta={"seed": 3}, base_mask=np.tri(3, dtype=bool))
    payload = data_block(explorer.explorer_html(data))
    assert payload["format"] == "attnlab-explorer/1"
    assert (payload["layers"], payload["heads"], payload["Lq"], payload["Lk"], payload["D"], payload["Dv"]) == \
        (1, 1, 3, 3, 4, 2)
    np.testing.assert_array_equal(f32(payload["scores"][0][0]), data.scores[0, 0].ravel())
    np.testing.assert_array_equal(f32(payload["values"][0][0]), v.astype(np.float32).ravel())
    assert base64.b64decode(payload["base_mask"]["shared"]) == np.tri(3, dtype=np.uint8).tobytes()
    assert payload["meta"] == [["seed", "3"]] and payload["q_tokens"] == payload["k_tokens"] == ["x", "y", "z"]


def test_user_text_cannot_break_out_of_the_data_block():
    evil = ["</script><script>alert(1)</script>", '" onmouseover="alert(2)', "<!--", "&amp;", "\u2028"]
    data = ExplorerData(tokens=evil, scores=np.zeros((5, 5)), title="</script><img src=x onerror=alert(3)>",
                        meta={"<b>": "</script>"})
    page = explorer.explorer_html(data)
    block = re.search(r'id="attnlab-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in block and ">" not in block and "&" not in block
    payload = data_block(page)
    assert payload["q_tokens"] == evil and payload["title"] == data.title
    assert page.count("<script") == 2 and "onerror" not in page.replace(block, "")


def test_page_is_self_contained_and_locked_down():
    page = explorer.explorer_html(explorer.demo_data())
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp and "sha256-" in csp


def test_repr_html_is_the_same_page_in_a_sandboxed_iframe():
    data = explorer.demo_data(5)
    frame = data._repr_html_()
    assert frame.startswith('<iframe srcdoc="') and 'sandbox="allow-scripts"' in frame
    srcdoc = re.search(r'srcdoc="([^"]*)"', frame).group(1)
    assert html.unescape(srcdoc) == explorer.explorer_html(data)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="tokens has 2 entries but the scores need 3"):
        ExplorerData(tokens=["a", "b"], scores=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="k_tokens is required"):
        ExplorerData(tokens=["a", "b"], scores=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="scores must be finite"):
        ExplorerData(tokens=["a"], scores=np.full((1, 1), -np.inf))
    with pytest.raises(TypeError, match="base_mask must be boolean"):
        ExplorerData(tokens=["a"], scores=np.zeros((1, 1)), base_mask=np.ones((1, 1)))
    with pytest.raises(ValueError, match="queries and keys come together"):
        ExplorerData(tokens=["a"], scores=np.zeros((1, 1)), queries=np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"scores must have shape"):
        ExplorerData(tokens=["a"], scores=np.zeros(1))
    with pytest.raises(TypeError, match="data must be an ExplorerData"):
        explorer.explorer_html({"tokens": []})


def test_serve_answers_on_a_free_local_port_and_stops(tmp_path):
    page = explorer.explorer_html(explorer.demo_data(4))
    server = explorer.serve(page, port=0, block=False)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.read().decode() == page and r.headers["Content-Type"].startswith("text/html")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(FileNotFoundError):
        explorer.serve(tmp_path / "missing.html", port=0, block=False)


def test_explore_demo_cli_writes_the_page(tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["explore", "--demo", "--n", "12", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert data_block(out.read_text())["Lq"] == 12


def test_explore_text_without_the_model_package_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "attnlab.models", None)                   # import attnlab.models fails
    monkeypatch.delattr(attnlab, "models", raising=False)                      # even when imported earlier
    code = main(["explore", "--text", "hello", "--out", str(tmp_path / "p.html")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install" in err and "--demo" in err
    assert not (tmp_path / "p.html").exists()                                   # no silent toy fallback


def test_explore_text_runs_the_real_model(tmp_path, capsys):
    out = tmp_path / "real.html"
    assert main(["explore", "--text", "The cat sat.", "--out", str(out)]) == 0
    payload = data_block(out.read_text())
    assert payload["q_tokens"][0] == "[CLS]" and payload["q_tokens"][-1] == "[SEP]"
    assert (payload["layers"], payload["heads"], payload["D"]) == (6, 12, 32)
    assert payload["kind"] == "self" and "all-MiniLM-L6-v2 was not trained" in payload["masks"]["what_if"][0]


def test_explore_serve_binds_localhost_on_a_free_port_and_stops(tmp_path):
    out = tmp_path / "page.html"
    proc = subprocess.Popen([sys.executable, "-m", "attnlab", "explore", "--demo", "--out", str(out), "--serve",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # Ctrl-C as in a
    #                                                   terminal, even if this run was started with SIGINT ignored
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        url = re.search(r"serving (http://127\.0\.0\.1:\d+/)", lines[1]).group(1)
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read().decode() == out.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    assert proc.returncode == 130


# --- masks: the one grammar, the page's refusals, the what-if sentence ---------------------------------------------
def test_page_mask_is_the_grammars_array_plus_the_pages_two_refusals():
    for spec, Lq, Lk in (("causal & window:2", 5, 5), ("window:1,1 | global:0", 3, 7), ("document:3,4 & causal", 4, 7),
                         ("~dilated:2 | keys:1", 6, 2), ("padding:3", 4, 4), ("prefix:2", 5, 5)):
        got = explorer.page_mask(spec, Lq, Lk, "self")
        assert got.spec == masks.parse(spec).spec
        assert np.array_equal(got.allowed, np.asarray(masks.parse(spec).to_array(Lq, Lk)).reshape(Lq, Lk))
    with pytest.raises(ValueError, match=r"'keys:2 & causal': causal compares query and key positions, but this is "
                                         r"cross-attention"):
        explorer.page_mask("keys:2 & causal", 3, 9, "cross")
    assert explorer.page_mask("keys:2 | ~padding:5", 3, 9, "cross").allowed.sum() == 3 * 6
    with pytest.raises(ValueError, match="this page shows one sequence, so padding takes one length here, got 2"):
        explorer.page_mask("padding:3,4", 4, 4)
    with pytest.raises(masks.MaskSpecError, match="unknown mask 'windw'"):
        explorer.page_mask("windw:3", 4, 4)


def test_every_kind_of_page_offers_presets_that_fit_and_ships_their_random_blocks(rng):
    for Lq, Lk, kind in ((1, 1, None), (2, 9, "self"), (9, 2, "causal"), (18, 18, None), (5, 1500, "cross")):
        specs = explorer.default_mask_specs(Lq, Lk, kind)
        assert len(specs) >= 3 and all(explorer.page_mask(s, Lq, Lk, kind) for s in specs)
        if kind == "cross":
            assert not any(w in s for s in specs for w in ("causal", "window", "prefix", "global", "random"))
    data = ExplorerData(tokens=list("abcdefgh"), scores=rng.normal(size=(8, 8)),
                        mask_specs=["causal & random:2,1", "random:3,2,5 | window:1,0"])
    block = data_block(explorer.explorer_html(data))["masks"]
    assert block["presets"] == ["causal & random:2,1", "random:3,2,5 | window:1"]
    assert block["grammar"] == masks.SPEC_GRAMMAR and block["key_only"] == list(explorer.KEY_ONLY)
    assert sorted(block["random"]) == ["random:2,1,0", "random:3,2,5"]
    for key, (b, n, seed) in (("random:2,1,0", (2, 1, 0)), ("random:3,2,5", (3, 2, 5))):
        shipped = np.frombuffer(base64.b64decode(block["random"][key]), np.uint8).reshape(8, 8)
        assert np.array_equal(shipped, masks.random_blocks(b, n, seed).to_array(8, 8))
    assert block["what_if"] is None and block["cross"] is None                 # toy scores: no model to what-if
    with pytest.raises(masks.MaskSpecError, match="unknown mask"):
        ExplorerData(tokens=["a"], scores=np.zeros((1, 1)), mask_specs=["causl"])
    with pytest.raises(ValueError, match="kind must be one of"):
        ExplorerData(tokens=["a"], scores=np.zeros((1, 1)), kind="encoder")


def test_a_mask_on_a_models_layer_is_a_what_if_in_the_live_apps_words(rng):
    from attnlab.app import views

    enc = ExplorerData(tokens=list("abcd"), scores=rng.normal(size=(4, 4)), kind="self", meta={"model": "M"})
    assert enc.mask_note("causal") == views.what_if_note("M", "causal") == (
        "what-if: M was not trained with the mask 'causal'; these weights re-normalize its scores under it, they "
        "are not what the model computed")
    assert enc.mask_note("full") == explorer.SAME_AS_MODEL
    dec = ExplorerData(tokens=list("abcd"), scores=rng.normal(size=(4, 4)), base_mask=np.tri(4, dtype=bool))
    assert dec.kind is None and dec.mask_note("causal") == ""                 # toy scores: no note
    parts = type("Parts", (), {"tokens": list("abcd"), "scores": rng.normal(size=(1, 2, 4, 4)), "queries": None,
                               "keys": None, "values": None, "scale": 0.5, "meta": {"model": "D"},
                               "base_mask": np.tri(4, dtype=bool)})
    dec = ExplorerData.from_parts(parts)
    assert dec.kind == "causal" and dec.mask_note("causal") == explorer.SAME_AS_MODEL
    assert dec.mask_note("window:1").startswith("what-if: D was not trained with the mask 'window:1'")
    parts.base_mask = None
    assert ExplorerData.from_parts(parts).kind == "self"
    block = data_block(explorer.explorer_html(dec))["masks"]
    assert block["what_if"][0] + "'window:1'" + block["what_if"][1] == dec.mask_note("window:1")


def test_weights_under_a_spec_are_attnlab_softmax_and_empty_rows_are_zero(rng):
    data = ExplorerData(tokens=list("abcde"), scores=rng.normal(size=(2, 5, 5)))
    for spec in ("causal & window:1", "keys:1 & ~window:0", "~full"):
        allowed = masks.parse(spec).to_array(5, 5)
        s = torch.from_numpy(data.scores.astype(np.float64)).masked_fill(torch.from_numpy(~allowed), float("-inf"))
        want = torch.softmax(s, -1).nan_to_num(0.0).numpy()
        np.testing.assert_allclose(data.weights(spec), want, rtol=0, atol=1e-15)
        assert not np.isnan(data.weights(spec)).any()
    assert (data.weights("~full") == 0).all() and (data.weights("keys:1 & ~window:0")[0, :, 0] == 0).all()
