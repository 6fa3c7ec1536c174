"""What the live explorer shows, computed by the library: one function per panel, JSON-ready dicts out.

Every number the page prints comes from here (the page draws, it does not compute), so a test can compare the
page with the library directly. Arrays travel as float32, little-endian, base64 (exact float32, about 5.3
characters per number), with their shape beside them.

- ``attention_view``: run a model on a text once; the chosen layer's pre-mask scores, weights under the model's
  own mask and (what-if) under a mask the user composed in the grammar, queries/keys/values for the step and
  neuron panels, per-head diagnostics, and small previews of every head for the model view.
- ``next_tokens`` / ``generate_step``: a decoder's next-token distribution with temperature and top-k; one greedy
  or sampled token appended, with the key/value cache the model holds at the new length.
- ``mask_view``: a mask spec drawn cell by cell and as the kernel's tile map (which tiles it skips).
- ``cost_view``: FLOPs, score-matrix bytes, tiled peak memory and the KV cache at a length n.
"""

from __future__ import annotations

import base64
from dataclasses import asdict

import numpy as np

from .. import diagnostics, masks
from ..softmax import softmax
from ..viz.explorer import what_if_note
from .server import RequestError

MAX_TEXT_CHARS = 20_000          # a request's text; the model's own context limit applies after tokenizing
ALL_LAYERS_CELLS = 64 * 64       # above L*L cells, the model view previews only the chosen layer
PREVIEW = 24                     # side of a head's preview in the model view (max-pooled)
MAX_MASK_N = 512                 # mask_view draws at most n x n cells
MAX_TOP_K = 100


def encode(x) -> dict:
    """An array as {"shape": [...], "b64": float32 little-endian base64}."""
    a = np.ascontiguousarray(np.asarray(x, dtype="<f4"))
    return {"shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode(d: dict) -> np.ndarray:
    """The inverse of ``encode`` (for tests and for clients written in Python)."""
    return np.frombuffer(base64.b64decode(d["b64"]), dtype="<f4").reshape(d["shape"])


def text_of(payload: dict, key: str = "text") -> str:
    text = payload.get(key)
    if not isinstance(text, str):
        raise RequestError(f"{key} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise RequestError(f"{key} is empty: type some text")
    if len(text) > MAX_TEXT_CHARS:
        raise RequestError(f"{key} is {len(text)} characters; the app takes at most {MAX_TEXT_CHARS}", 413)
    return text


def int_of(payload: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = payload.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def float_of(payload: dict, key: str, default: float, lo: float, hi: float) -> float:
    value = payload.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise RequestError(f"{key} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def mask_of(spec, Lq: int, Lk: int) -> np.ndarray | None:
    """A user's mask spec (the library's grammar) as a bool (Lq, Lk) array; None or "" means no extra mask."""
    if spec in (None, ""):
        return None
    if not isinstance(spec, str):
        raise RequestError(f"mask must be a mask spec string such as 'causal&window:4', got {type(spec).__name__}")
    try:
        return np.asarray(masks.parse(spec).to_array(Lq, Lk), dtype=bool)
    except masks.MaskSpecError as err:
        raise RequestError(f"mask: {err}") from err


def _pool(w: np.ndarray, size: int) -> np.ndarray:
    """Max-pool the last two axes to at most size x size, so a one-cell diagonal stays visible."""
    Lq, Lk = w.shape[-2:]
    rows = np.array_split(np.arange(Lq), min(size, Lq))
    cols = np.array_split(np.arange(Lk), min(size, Lk))
    return np.stack([np.stack([w[..., r[0]:r[-1] + 1, c[0]:c[-1] + 1].max(axis=(-1, -2)) for c in cols], -1)
                     for r in rows], -2)


def checked_ids(model, text: str, room: int = 0):
    """The token ids of ``text``, refused with the numbers when they (plus ``room`` new tokens) exceed the
    model's context."""
    ids = model.tokenize(text)
    if len(ids) + room > model.max_length:
        raise RequestError(f"the text is {len(ids)} tokens long; {model.name} takes at most "
                           f"{model.max_length - room} here (its context is {model.max_length}): shorten it", 413)
    return ids


def attention_view(model, text: str, layer: int = 0, mask: str | None = None) -> dict:
    """One pass of ``model`` over ``text``: everything the attention panels show for ``layer``."""
    parts = model.attention_parts(checked_ids(model, text))
    n_layers, H, L, _ = parts.scores.shape
    if not 0 <= layer < n_layers:
        raise RequestError(f"layer must be in [0, {n_layers - 1}], got {layer}")
    base = parts.base_mask
    extra = mask_of(mask, L, L)
    allowed = np.ones((L, L), bool) if base is None else np.asarray(base, bool)
    scores = parts.scores[layer]                                               # (H, L, L), before any mask
    weights = parts.weights[layer]                                             # (H, L, L): what the model computed
    view = {"model": model.name, "family": model.family, "causal": bool(model.causal), "tokens": parts.tokens,
            "layers": n_layers, "heads": H, "kv_heads": int(parts.meta.get("kv_heads", H)), "layer": layer,
            "scale": parts.scale, "scores": encode(scores), "weights": encode(weights),
            "model_mask": encode(allowed), "queries": encode(parts.queries[layer]),
            "keys": encode(parts.keys[layer]), "values": encode(parts.values[layer])}
    if extra is not None:                          # a what-if: the model was not trained with this mask
        what_if = allowed & extra
        view["what_if"] = {"mask": mask, "allowed": encode(what_if),
                           "weights": encode(softmax(scores.astype(np.float64), axis=-1, mask=what_if)),
                           "note": what_if_note(model.name, mask)}          # the offline page's sentence too
    stats = diagnostics.head_table(parts.weights, mask=None if base is None else allowed)
    view["diagnostics"] = [_jsonable(asdict(row)) for row in stats if row.layer == layer]
    all_layers = L * L <= ALL_LAYERS_CELLS
    shown = parts.weights if all_layers else parts.weights[layer:layer + 1]
    view["previews"] = {"layers": list(range(n_layers)) if all_layers else [layer], "size": min(PREVIEW, L),
                        "weights": encode(_pool(shown, PREVIEW))}
    if not all_layers:
        view["notice"] = (f"{L} tokens: the model view previews layer {layer} only (every layer is shown up to "
                          f"{int(ALL_LAYERS_CELLS ** 0.5)} tokens); pick another layer to see its heads")
    return view


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    if temperature == 0:                                                       # greedy: all mass on the argmax
        p = np.zeros_like(logits, dtype=np.float64)
        p[int(np.argmax(logits))] = 1.0
        return p
    return softmax(logits.astype(np.float64) / temperature)


def _check_decoder(model):
    if not getattr(model, "causal", False):
        raise RequestError(f"{model.name} is an encoder: it does not predict a next token (pick a decoder)")


def _texts(model, ids) -> list[str]:
    """Each token as the text it writes (" Paris", not byte-level BPE's "ĠParis")."""
    tok = getattr(model, "tokenizer", None)
    return [tok.decode([int(i)]) for i in ids] if tok is not None else model.token_strings(ids)


def _top(model, logits: np.ndarray, temperature: float, top_k: int, length: int) -> dict:
    p = _probabilities(np.asarray(logits, dtype=np.float64), temperature)
    top = np.argsort(-p, kind="stable")[:top_k]
    return {"model": model.name, "temperature": temperature, "top_k": top_k, "length": int(length),
            "tokens": model.token_strings(top), "texts": _texts(model, top), "ids": top.tolist(),
            "probabilities": p[top].tolist(),
            "logits": np.asarray(logits, dtype=np.float64)[top].tolist()}


def next_tokens(model, text: str, temperature: float = 1.0, top_k: int = 10) -> dict:
    """A decoder's distribution over the next token after ``text``: the top_k tokens and their probabilities
    under softmax(logits / temperature) (temperature 0: greedy)."""
    _check_decoder(model)
    ids = checked_ids(model, text, room=1)
    return _top(model, model.logits(ids)[-1], temperature, top_k, len(ids))


def kv_cache_bytes(model, length: int) -> dict:
    """The key/value cache a decoder holds after ``length`` tokens, from its layers' shapes, beside what
    multi-head attention with one key/value head per query head would hold (see ``generate_step`` for the
    measured version)."""
    itemsize = np.dtype(getattr(model, "dtype", np.float32)).itemsize
    per = [(a.n_kv_heads, a.n_heads, a.d_model // a.n_heads) for a in model.attn]
    kv = sum(2 * g * length * dh * itemsize for g, _, dh in per)
    mha = sum(2 * h * length * dh * itemsize for _, h, dh in per)
    return {"length": length, "bytes": kv, "mha_bytes": mha, "itemsize": itemsize, "measured": False}


def generate_step(model, text: str, temperature: float = 0.0, top_k: int = 10, seed: int = 0) -> dict:
    """Append one token to ``text`` (greedy at temperature 0, else sampled from the top_k with ``seed``).

    A model with a KV cache (``new_caches``/``step``) runs the prompt once into its caches, then the chosen token
    as one decode step; the cache bytes are then read off the caches' arrays (and an MHA-sized copy of them)."""
    _check_decoder(model)
    ids = checked_ids(model, text, room=1)
    caches = model.new_caches() if hasattr(model, "new_caches") and hasattr(model, "step") else None
    logits = model.step(ids[None, :], caches)[0, -1] if caches is not None else model.logits(ids)[-1]
    nxt = _top(model, logits, temperature, top_k, len(ids))
    if temperature == 0:
        choice = 0
    else:
        p = np.asarray(nxt["probabilities"])
        choice = int(np.random.default_rng(seed).choice(len(p), p=p / p.sum()))
    new_ids = np.concatenate([ids, [nxt["ids"][choice]]])
    if caches is not None:
        from ..models.generation import mha_equivalent_bytes
        model.step(new_ids[None, -1:], caches)                               # the new token enters the cache
        kv = {"length": int(len(new_ids)), "bytes": int(sum(c.nbytes for c in caches)),
              "mha_bytes": int(mha_equivalent_bytes(caches, model.n_heads)),
              "itemsize": int(np.dtype(getattr(model, "dtype", np.float32)).itemsize), "measured": True}
    else:
        kv = kv_cache_bytes(model, len(new_ids))
    token = nxt["tokens"][choice]
    return {**nxt, "chosen": choice, "token": token, "text": _detokenize(model, new_ids, text, token),
            "kv_cache": kv}


def _detokenize(model, ids, text, token) -> str:
    """``text`` with the new last token of ``ids`` appended as the tokenizer writes it (the suffix its decoding
    of ids gains over its decoding of ids[:-1]: byte-level BPE keeps the leading space, SentencePiece its "▁")."""
    decode_ = getattr(model.tokenizer, "decode", None)
    if callable(decode_):
        before, after = decode_(list(map(int, ids[:-1]))), decode_(list(map(int, ids)))
        if after.startswith(before):
            return text + after[len(before):]
    return text + token


def mask_view(spec: str, n: int, block: int = 4) -> dict:
    """The mask ``spec`` at n x n: its cells and its tile map at ``block`` (what the kernel skips)."""
    if not isinstance(spec, str) or not spec.strip():
        raise RequestError("spec must be a mask spec such as 'causal&window:4'")
    try:
        m = masks.parse(spec)
    except masks.MaskSpecError as err:
        raise RequestError(f"spec: {err}") from err
    cells = np.asarray(m.to_array(n, n), dtype=bool)
    tiles = np.asarray(m.blocks(n, n, block, block))
    counts = {name: int((tiles == code).sum()) for name, code in
              (("empty", masks.EMPTY), ("partial", masks.PARTIAL), ("full", masks.FULL))}
    return {"spec": spec, "name": m.name, "n": n, "block": block, "allowed": encode(cells),
            "tiles": tiles.astype(int).tolist(), "tile_counts": counts,
            "allowed_fraction": float(cells.mean()) if cells.size else 0.0,
            "skipped_fraction": counts["empty"] / max(1, tiles.size)}


def cost_view(model, n: int, mask: str = "dense") -> dict:
    """What attention costs ``model``'s shapes at length n (one sequence): from attnlab.cost and the planner."""
    from .. import cost
    a = model.attn[0]
    cfg = cost.model_config(n_heads=a.n_heads, n_kv_heads=a.n_kv_heads, d_model=a.d_model,
                            n_layers=len(model.attn), name=model.name)
    c = cost.estimate(cfg, n, dtype="float32", mask=mask)
    out = c.to_dict()
    out["kv_cache"] = kv_cache_bytes(model, n)
    out["table"] = c.table()
    return out


MAX_AUDIO_BYTES = 2_000_000      # an uploaded WAV (about 60 s of 16 kHz 16-bit mono)


def speech_view(model, *, say: str | None = None, wav_b64: str | None = None, layer: int | None = None,
                head: int | None = None) -> dict:
    """A speech model (Whisper) on a sentence spoken by espeak-ng or an uploaded WAV (base64): the transcript,
    the word alignment, the log-mel spectrogram of the speech and the cross-attention over it: the alignment
    heads' mean (layer None) or one decoder layer's heads (one head when ``head`` is given)."""
    import tempfile
    from pathlib import Path

    from ..models import audio
    from ..models.whisper import SECONDS_PER_POSITION, align_words, cross_attention_map

    if (say is None) == (wav_b64 is None):
        raise RequestError("give either say (a sentence to speak) or wav (a WAV file, base64)")
    with tempfile.TemporaryDirectory(prefix="attnlab-app-") as tmp:
        if say is not None:
            path = audio.say(text_of({"say": say}, "say"), Path(tmp) / "speech.wav")
        else:
            try:
                raw = base64.b64decode(wav_b64, validate=True)
            except (ValueError, TypeError) as err:
                raise RequestError(f"wav must be base64: {err}") from None
            if len(raw) > MAX_AUDIO_BYTES:
                raise RequestError(f"the WAV is {len(raw)} bytes; the app takes at most {MAX_AUDIO_BYTES}", 413)
            path = Path(tmp) / "upload.wav"
            path.write_bytes(raw)
        r = model.transcribe(path, record=True)
    seconds = r.meta["seconds"]
    speech = max(1, int(np.ceil(seconds / SECONDS_PER_POSITION)))
    if layer is None:
        cross = cross_attention_map(model, r)[:, :speech]                      # (new, speech)
        shown = "the alignment heads' mean"
    else:
        if not 0 <= layer < len(model.decoder):
            raise RequestError(f"layer must be in [0, {len(model.decoder) - 1}], got {layer}")
        heads = [(layer, h) for h in (range(model.H) if head is None else [head])]
        if head is not None and not 0 <= head < model.H:
            raise RequestError(f"head must be in [0, {model.H - 1}], got {head}")
        cross = cross_attention_map(model, r, heads)[:, :speech]
        shown = f"decoder layer {layer}, " + ("mean of its heads" if head is None else f"head {head}")
    words = align_words(model, r)
    return {"model": model.name, "transcript": r.text.strip(), "tokens": r.tokens, "seconds": seconds,
            "positions": speech, "seconds_per_position": SECONDS_PER_POSITION, "shown": shown,
            "cross": encode(cross), "mel": encode(r.meta["mel"][:, :2 * speech]),
            "words": [{"text": w.text, "start": w.start, "end": w.end} for w in words],
            "layers": len(model.decoder), "heads": model.H}
