"""The live explorer's server and views: numbers against independent computations (transformers, torch, the
formula), and the server's limits (loopback only, only its own files, bounded threads, idle timeouts, sizes)."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from attnlab import masks, models
from attnlab.app import App, views
from attnlab.app.server import BoundedServer, Reply

MINILM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny random Llama (GQA: 4 query heads over 2 key/value heads) with a word-level tokenizer."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, rope_theta=500.0)
    folder = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(cfg).eval().save_pretrained(folder, safe_serialization=True)
    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    tok.decoder = decoders.WordPiece()                 # joins words with spaces
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def app(llama_dir):
    return App({MINILM: models.load(MINILM), "tiny-llama": models.load(llama_dir)})


@pytest.fixture(scope="module")
def server(app):
    srv = app.serve(idle_timeout=1.0)
    yield srv
    srv.shutdown()


def _post(url, path, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + path.lstrip("/"), data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _get(url, path):
    try:
        with urllib.request.urlopen(url + path.lstrip("/"), timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# --- numbers ----------------------------------------------------------------------------------------------------
def test_attention_view_is_what_the_model_computed_and_what_transformers_computes(app):
    from transformers import AutoModel, AutoTokenizer

    view = views.attention_view(app.model(MINILM), "The cat sat on the mat.", layer=2)
    folder = models.minilm_path()
    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    enc = tok("The cat sat on the mat.", return_tensors="pt")
    with torch.no_grad():
        ref = hf(**enc, output_attentions=True).attentions[2][0].double().numpy()       # (H, L, L)
    assert view["tokens"] == tok.convert_ids_to_tokens(enc["input_ids"][0])
    w = views.decode(view["weights"])
    np.testing.assert_allclose(w, ref, atol=2e-6)
    s = views.decode(view["scores"])                     # pre-mask scores: their softmax is the weights
    np.testing.assert_allclose(torch.softmax(torch.tensor(s, dtype=torch.float64), -1).numpy(), ref, atol=2e-6)
    q, k = views.decode(view["queries"]), views.decode(view["keys"])
    np.testing.assert_allclose(q @ np.swapaxes(k, -1, -2) * view["scale"], s, rtol=1e-4, atol=1e-5)
    assert "what_if" not in view and len(view["diagnostics"]) == view["heads"] == 12


def test_a_what_if_mask_renormalizes_the_scores_and_says_so(app):
    view = views.attention_view(app.model(MINILM), "one two three four five", layer=0, mask="causal&window:2")
    s = torch.tensor(views.decode(view["scores"]), dtype=torch.float64)
    L = s.shape[-1]
    i, j = np.indices((L, L))
    allowed = (j <= i) & (j >= i - 2)                    # the grammar's window:2: the key itself and 2 before
    ref = torch.softmax(s.masked_fill(~torch.tensor(allowed), -torch.inf), -1).numpy()
    np.testing.assert_allclose(views.decode(view["what_if"]["weights"]), ref, atol=1e-6)
    assert (views.decode(view["what_if"]["allowed"]) > 0.5).tolist() == allowed.tolist()
    assert "what-if" in view["what_if"]["note"] and "not what the model computed" in view["what_if"]["note"]


def test_next_token_probabilities_match_transformers(app, llama_dir):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(llama_dir).eval()
    ids = torch.tensor([[5, 9, 5, 9, 7]])
    with torch.no_grad():
        logits = hf(ids).logits[0, -1].double()
    for temperature in (0.5, 1.0, 1.7):
        r = views.next_tokens(app.model("tiny-llama"), "w5 w9 w5 w9 w7", temperature, top_k=5)
        p = torch.softmax(logits / temperature, -1)
        top = torch.argsort(p, descending=True)[:5]
        assert r["ids"] == top.tolist()
        np.testing.assert_allclose(r["probabilities"], p[top].numpy(), atol=1e-6)
    greedy = views.next_tokens(app.model("tiny-llama"), "w5 w9 w5 w9 w7", 0.0, top_k=3)
    assert greedy["ids"][0] == int(torch.argmax(logits)) and greedy["probabilities"][0] == 1.0


def test_next_tokens_are_shown_as_the_text_they_write(llama_dir, tmp_path):
    """Byte-level BPE names a token "Ġw5"; the next-token table shows " w5", what the token adds to the text."""
    import shutil

    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel

    folder = tmp_path / "bytelevel"
    shutil.copytree(llama_dir, folder)
    tok = Tokenizer(WordLevel({f"\u0120w{i}": i for i in range(64)}, unk_token="\u0120w0"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    r = views.next_tokens(models.load(folder), "w5 w9 w5 w9 w7", 1.0, top_k=4)
    assert all(t.startswith("\u0120") for t in r["tokens"])
    assert r["texts"] == [" " + t[1:] for t in r["tokens"]]


def test_generate_appends_the_greedy_token_and_counts_the_cache(app, llama_dir):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(llama_dir).eval()
    r = views.generate_step(app.model("tiny-llama"), "w5 w9 w5", temperature=0.0)
    with torch.no_grad():
        best = int(hf(torch.tensor([[5, 9, 5]])).logits[0, -1].argmax())
    assert r["ids"][r["chosen"]] == best and r["text"].split()[-1] == f"w{best}"
    # 2 (k and v) x 2 layers x 2 key/value heads x 4 tokens x head dim 8 x 4 bytes; MHA would have 4 kv heads
    assert r["kv_cache"] == {"length": 4, "bytes": 2 * 2 * 2 * 4 * 8 * 4, "mha_bytes": 2 * 2 * 4 * 4 * 8 * 4, "measured": True,
                             "itemsize": 4}


def test_mask_view_is_the_grammar_and_the_tile_map():
    r = views.mask_view("causal&~keys:0", 8, 4)
    m = masks.parse("causal&~keys:0")
    assert (views.decode(r["allowed"]) > 0.5).tolist() == np.asarray(m.to_array(8, 8)).tolist()
    assert r["tiles"] == np.asarray(m.blocks(8, 8, 4, 4)).tolist()
    assert sum(r["tile_counts"].values()) == 4 and r["tile_counts"]["empty"] == 1


def test_text_longer_than_the_context_is_refused_with_the_numbers(app):
    with pytest.raises(ValueError, match=r"40 tokens long.* at most 32"):
        views.attention_view(app.model("tiny-llama"), " ".join(["w1"] * 40))


# --- the server -------------------------------------------------------------------------------------------------
def test_pages_and_routes_carry_the_security_policy(server):
    for path in ("/", "/app.js", "/app.css", "/api/models"):
        status, headers, body = _get(server.url, path)
        assert status == 200, path
        assert "default-src 'none'" in headers["Content-Security-Policy"] and "connect-src 'self'" in \
            headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
    page = _get(server.url, "/")[2].decode()
    assert "http://" not in page and "https://" not in page          # nothing loads from anywhere else
    assert json.loads(_get(server.url, "/api/models")[2])["default"] == MINILM


@pytest.mark.parametrize("path", ["/../../etc/passwd", "/static/app.js", "/app.js/../__init__.py",
                                  "/%2e%2e/%2e%2e/etc/passwd", "/server.py", "/api/../app/__init__.py"])
def test_no_file_outside_the_assets_is_served(server, path):
    status, _, body = _get(server.url, path)
    assert status == 404 and b"root:" not in body and b"import" not in body


def test_bad_requests_get_clear_errors(server):
    status, _, body = _post(server.url, "/api/attention", None, raw=b"{not json")
    assert status == 400 and "must be JSON" in json.loads(body)["error"]
    status, _, body = _post(server.url, "/api/attention", {"model": MINILM, "text": "   "})
    assert status == 400 and "empty" in json.loads(body)["error"]
    status, _, body = _post(server.url, "/api/attention", {"model": MINILM, "text": "a", "mask": "causal&&"})
    assert status == 400 and json.loads(body)["error"].startswith("mask:")
    status, _, body = _post(server.url, "/api/mask", {"spec": "causal", "n": 10**6})
    assert status == 400 and "n must be an integer in [1, 512]" in json.loads(body)["error"]
    with socket.create_connection(server.server_address[:2], timeout=10) as s:   # a body past the limit
        s.sendall(b"POST /api/attention HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.0 413")                         # refused before it is read
    assert _get(server.url, "/api/attention")[0] == 405


def test_only_loopback_binds_unless_asked(app):
    with pytest.raises(ValueError, match="loopback"):
        app.serve("0.0.0.0", 0)
    with pytest.raises(ValueError, match="port must be an integer in"):
        app.serve("127.0.0.1", 70000)


def _threads():
    return threading.active_count()


def test_idle_connections_cost_no_thread_and_are_closed(server):
    before = _threads()
    idle = [socket.create_connection(server.server_address[:2]) for _ in range(200)]
    try:
        time.sleep(0.3)
        status, _, _ = _get(server.url, "/api/models")                    # still answered at once
        assert status == 200
        assert _threads() <= before + 4                                   # the pool's fixed workers at most
        deadline = time.monotonic() + 10
        while server.open_connections() > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.open_connections() == 0                            # closed after idle_timeout (1 s)
        assert idle[0].recv(1) == b""                                     # the server hung up
    finally:
        for s in idle:
            s.close()


def test_a_hundred_concurrent_requests_are_all_answered_with_bounded_threads(server):
    before = _threads()
    peak = [before]

    def one(i):
        peak[0] = max(peak[0], _threads())
        return _post(server.url, "/api/mask", {"spec": "causal&window:3", "n": 16 + i % 5, "block": 4})[0]

    with ThreadPoolExecutor(max_workers=100) as ex:
        statuses = list(ex.map(one, range(100)))
    assert statuses == [200] * 100
    assert peak[0] <= before + 100 + 4                                    # the clients' 100 + the pool's 4


def test_the_server_routes_are_a_whitelist():
    srv = BoundedServer({("GET", "/"): lambda q: Reply(b"hi", "text/plain")}).start()
    try:
        assert _get(srv.url, "/")[2] == b"hi"
        assert _get(srv.url, "/x")[0] == 404
    finally:
        srv.shutdown()


# --- the command ------------------------------------------------------------------------------------------------
def _attnlab():
    return [shutil.which("attnlab") or sys.executable, *([] if shutil.which("attnlab") else ["-m", "attnlab"])]


def test_serve_refuses_a_public_bind_and_an_unknown_model_in_one_line():
    for extra, needle in ((["--host", "0.0.0.0"], "loopback"), (["--model", "nope"], "model must be one of")):
        r = subprocess.run(_attnlab() + ["serve", "--port", "0", *extra], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr


def test_serve_starts_and_stops_cleanly_on_ctrl_c():
    p = subprocess.Popen(_attnlab() + ["serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        line = p.stdout.readline()
        assert "attnlab live explorer at http://127.0.0.1:" in line, line + p.stderr.read()
        url = line.split(" at ")[1].split()[0]
        assert _get(url, "/")[0] == 200
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0 and "stopped" in out and "Traceback" not in err, err
    finally:
        if p.poll() is None:
            p.kill()


def test_speech_view_is_the_models_own_transcript_and_alignment(tmp_path):
    from attnlab.models import audio
    from attnlab.models.whisper import align_words, cross_attention_map

    whisper = models.load("whisper-tiny.en")
    view = views.speech_view(whisper, say="The quick brown fox jumps over the lazy dog.")
    wav = audio.say("The quick brown fox jumps over the lazy dog.", tmp_path / "fox.wav")
    r = whisper.transcribe(wav, record=True)
    assert view["transcript"] == r.text.strip() and view["tokens"] == r.tokens
    assert [w["start"] for w in view["words"]] == [w.start for w in align_words(whisper, r)]
    np.testing.assert_allclose(views.decode(view["cross"]), cross_attention_map(whisper, r)[:, :view["positions"]],
                               atol=1e-7)
    one = views.speech_view(whisper, wav_b64=__import__("base64").b64encode(wav.read_bytes()).decode(), layer=3,
                            head=0)
    np.testing.assert_allclose(views.decode(one["cross"]), cross_attention_map(whisper, r, [(3, 0)])[:, :one["positions"]],
                               atol=1e-7)
    with pytest.raises(views.RequestError, match="either say"):
        views.speech_view(whisper)
    with pytest.raises(views.RequestError, match="base64"):
        views.speech_view(whisper, wav_b64="not base64!!")
