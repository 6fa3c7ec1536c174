"""The offline attention explorer: one self-contained HTML page (no network, opens from file://).

``ExplorerData`` holds what the page shows: tokens, the scaled scores of every layer and head *before* masking
(the page recomputes the softmax under the mask the learner types), an optional base mask the model itself applied
(padding), and optionally the queries, keys and values for the step panel.

Masks on the page are specs of the library's one grammar (``attnlab.masks.SPEC_GRAMMAR``, e.g.
"causal & window:3"). The page has no server, so it carries a small parser and evaluator of that grammar
(explorer.js) whose every result (allowed cells, canonical text, error message) is tested equal to
``page_mask`` here, which is ``masks.parse(spec).to_array(Lq, Lk)`` plus the page's own refusals: on a
cross-attention page (``kind="cross"``) only key-only masks (``KEY_ONLY``) are allowed, since queries and keys are
different sequences; the page shows one sequence, so padding takes one length. The one kind JavaScript cannot
evaluate is ``random`` (NumPy's generator): its key blocks are computed here and shipped for the specs offered
(``mask_specs``), and the page refuses other seeds with a message that says so. ``explorer_html(data)`` renders the
page, ``write_explorer(data, path)`` writes it, ``serve(page, port)`` serves it on 127.0.0.1.

How the data travels: one ``<script type="application/json">`` block, read with ``JSON.parse`` (never pasted into
code), every ``<``, ``>`` and ``&`` escaped as ``\\u003c``-style escapes so no text can close the block. The big
arrays are float32, little-endian, base64-encoded, one string per (layer, head): exact float32 values at 5.3
characters per number (a decimal JSON list with 6 significant digits needs about 10), decoded lazily per head by the
page. The page's Content-Security-Policy allows only its own inline script and style (by hash) and no requests at
all, so it cannot load anything even by mistake. User text (tokens, title, meta) is inserted with ``textContent``.

>>> import numpy as np
>>> data = ExplorerData.from_qkv(np.eye(3), np.eye(3), np.eye(3), ["a", "b", "c"])
>>> data.scores.shape, data.weights(mask=None).sum(-1).round(6).tolist()
((1, 1, 3, 3), [[[1.0, 1.0, 1.0]]])
>>> "<script type=\\"application/json\\" id=\\"attnlab-data\\">" in explorer_html(data)
True
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .. import masks as masks_mod
from ..record import KINDS
from .._array import as_array, default_scale, to_numpy
from ..budget import check as check_budget
from ..checks import non_negative_int, positive_int, real
from ..scores import scaled_dot
from ..softmax import softmax

FORMAT = "attnlab-explorer/1"
_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


@dataclass
class ExplorerData:
    """Everything the explorer page shows, checked and normalized to (layers, heads, ...) arrays.

    tokens: labels of the query positions, and of the key positions too unless ``k_tokens`` is given (cross
        attention: ``tokens`` are the queries, ``k_tokens`` the keys).
    scores: scaled attention logits before masking, (Lq, Lk), (heads, Lq, Lk) or (layers, heads, Lq, Lk);
        stored as float32, exactly what the page receives.
    base_mask: bool, True = may attend, (Lq, Lk) or (heads | layers x heads, Lq, Lk): the mask the model applied
        (padding); the page always applies it on top of the mask the learner picks.
    queries, keys: (..., Lq, D) / (..., Lk, D) for the raw dot products of the step panel; values (..., Lk, Dv)
        for its weighted sum. Leading dims broadcast to (layers, heads). Stored as float32, like the scores.
    scale: the factor that turned q.k into the scores (1/sqrt(D) by default when queries are given).
    title, layer_names, head_names, meta: text shown in the page (always as text, never as markup).
    start: (layer, head) indices into the page's own layers and heads where it opens (default (0, 0)).
    kind: what the layers are, as in ``attnlab.record``: "self" (an encoder), "causal" (a decoder's
        self-attention) or "cross" (queries from one sequence, keys from another: no query sits at a key position,
        so masks that compare positions are refused). None: toy scores, not a model's (a mask is then not a
        what-if about a model).
    mask_specs: the mask specs the page offers as presets (default: one per idea that fits ``kind`` and the
        lengths, ``default_mask_specs``); each is checked with ``page_mask``, and the key blocks of the random
        masks among them are shipped (JavaScript cannot run NumPy's generator).
    """

    tokens: list
    scores: np.ndarray
    base_mask: np.ndarray | None = None
    queries: np.ndarray | None = None
    keys: np.ndarray | None = None
    values: np.ndarray | None = None
    scale: float | None = None
    title: str = "attention explorer"
    layer_names: list | None = None
    head_names: list | None = None
    meta: dict = field(default_factory=dict)
    k_tokens: list | None = None
    start: tuple[int, int] = (0, 0)
    kind: str | None = None
    mask_specs: list | None = None

    def __post_init__(self):
        self.scores = _as_4d(self.scores, "scores", float_=True).astype(np.float32)
        n_layers, n_heads, Lq, Lk = self.scores.shape
        self.tokens = _texts(self.tokens, Lq, "tokens")
        self.k_tokens = _texts(self.k_tokens if self.k_tokens is not None else
                               (self.tokens if Lq == Lk else None), Lk, "k_tokens")
        self.base_mask = None if self.base_mask is None else _mask_4d(self.base_mask, self.scores.shape)
        lead = (n_layers, n_heads)
        self.queries = _vectors(self.queries, "queries", lead, Lq)
        self.keys = _vectors(self.keys, "keys", lead, Lk)
        self.values = _vectors(self.values, "values", lead, Lk)
        if (self.queries is None) != (self.keys is None):
            raise ValueError("queries and keys come together (the step panel shows their dot products); "
                             "give both or neither")
        if self.queries is not None and self.queries.shape[-1] != self.keys.shape[-1]:
            raise ValueError(f"keys have dim {self.keys.shape[-1]} but queries have {self.queries.shape[-1]}")
        if self.scale is None and self.queries is not None:
            self.scale = default_scale(self.queries.shape[-1])
        self.scale = real(self.scale, "scale", allow_none=True)
        self.title = str(self.title)
        self.layer_names = _texts(self.layer_names, n_layers, "layer_names") if self.layer_names is not None \
            else [f"layer {i}" for i in range(n_layers)]
        self.head_names = _texts(self.head_names, n_heads, "head_names") if self.head_names is not None \
            else [f"head {i}" for i in range(n_heads)]
        if not isinstance(self.meta, dict):
            raise TypeError(f"meta must be a dict of label -> text, got {type(self.meta).__name__}")
        self.meta = {str(k): str(v) for k, v in self.meta.items()}
        layer, head = (int(x) for x in self.start)
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"start must be a (layer, head) of the page's {n_layers} layers x {n_heads} heads, "
                             f"got {tuple(self.start)}")
        self.start = (layer, head)
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} or None (toy scores), got {self.kind!r}")
        if self.mask_specs is None:
            self.mask_specs = default_mask_specs(Lq, Lk, self.kind)
        if isinstance(self.mask_specs, str) or not hasattr(self.mask_specs, "__iter__"):
            raise TypeError(f"mask_specs must be a list of mask specs, got {type(self.mask_specs).__name__}")
        self.mask_specs = [page_mask(spec, Lq, Lk, self.kind).spec for spec in self.mask_specs]

    @classmethod
    def from_qkv(cls, q, k, v, tokens, *, k_tokens=None, scale=None, base_mask=None, title="attention explorer",
                 layer_names=None, head_names=None, meta=None, kind=None, mask_specs=None):
        """Build the data from toy vectors: scores = q.k * scale computed with ``attnlab.scores.scaled_dot``.

        q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) with optional leading (heads) or (layers, heads) axes.
        """
        q, k, v = (to_numpy(as_array(x, name)) for x, name in ((q, "q"), (k, "k"), (v, "v")))
        if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
            raise ValueError(f"q, k, v must be at least 2-D (positions, dim), got {q.shape}, {k.shape}, {v.shape}")
        if q.shape[-1] != k.shape[-1]:
            raise ValueError(f"keys have dim {k.shape[-1]} but queries have {q.shape[-1]} (q {q.shape}, k {k.shape})")
        scale = default_scale(q.shape[-1]) if scale is None else real(scale, "scale")
        return cls(tokens=tokens, scores=scaled_dot(q, k, scale), base_mask=base_mask, queries=q, keys=k,
                   values=v, scale=scale, title=title, layer_names=layer_names, head_names=head_names,
                   meta={} if meta is None else meta, k_tokens=k_tokens, kind=kind, mask_specs=mask_specs)

    @classmethod
    def from_parts(cls, parts, *, title=None, kind=None):
        """Build the data from an object with ``tokens, scores, base_mask, queries, keys, values, scale`` and
        ``meta`` attributes, such as ``attnlab.models``' ``model.attention_parts(text)``. ``kind`` defaults to
        ``kind_of_mask(parts.base_mask)``: a model's parts are a model's, never toy scores."""
        meta = dict(getattr(parts, "meta", {}) or {})
        return cls(tokens=parts.tokens, scores=parts.scores, base_mask=parts.base_mask, queries=parts.queries,
                   keys=parts.keys, values=parts.values, scale=parts.scale, meta=meta,
                   title=title or str(meta.get("model", "attention explorer")),
                   kind=kind or kind_of_mask(parts.base_mask))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(layers, heads, Lq, Lk)."""
        return self.scores.shape

    def allowed(self, mask=None) -> np.ndarray:
        """Where each query may attend under ``mask`` (a spec of the mask grammar as the page evaluates it
        (``page_mask``), a Mask, a bool array or None) and the base mask; shape broadcastable to
        (layers, heads, Lq, Lk)."""
        Lq, Lk = self.scores.shape[-2:]
        out = np.ones((1, 1, Lq, Lk), bool) if self.base_mask is None else self.base_mask
        if mask is None:
            return out
        if isinstance(mask, str):
            return out & page_mask(mask, Lq, Lk, self.kind).allowed
        extra = mask.to_array(Lq, Lk) if isinstance(mask, masks_mod.Mask) else np.asarray(mask)
        if extra.dtype != bool:
            raise TypeError(f"mask must be an attnlab.masks.Mask or a bool array, got dtype {extra.dtype}")
        return out & extra

    def weights(self, mask=None) -> np.ndarray:
        """The weights the page shows under ``mask``: ``attnlab.softmax`` of the stored scores (float64),
        blocked cells 0, fully masked rows 0. Shape (layers, heads, Lq, Lk)."""
        return softmax(self.scores.astype(np.float64), axis=-1, mask=self.allowed(mask))

    def mask_note(self, spec: str, layer: int = 0, head: int = 0) -> str:
        """What the page says beside the weights of (layer, head) under ``spec``: on a model's page a mask that
        blocks a cell the model attended to is a what-if (``what_if_note``, the live app's sentence); one that
        blocks nothing more leaves the model's own weights; toy scores get no note."""
        if self.kind is None:
            return ""
        Lq, Lk = self.scores.shape[-2:]
        base = np.broadcast_to(self.allowed(None), self.scores.shape)[layer, head]             # (Lq, Lk)
        extra = page_mask(spec, Lq, Lk, self.kind).allowed
        if (base & ~extra).any():
            return what_if_note(self.meta.get("model", self.title), spec)
        return SAME_AS_MODEL

    def to_json(self) -> str:
        """The page's data block: JSON, with every character that could end a <script> block escaped."""
        text = json.dumps(self._payload(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        for ch, escaped in _ESCAPES.items():   # these only occur inside JSON strings, where \uXXXX is the same
            text = text.replace(ch, escaped)
        return text

    def _payload(self) -> dict:
        n_layers, n_heads, Lq, Lk = self.scores.shape
        return {
            "format": FORMAT, "title": self.title, "meta": [[k, v] for k, v in self.meta.items()],
            "q_tokens": self.tokens, "k_tokens": self.k_tokens, "layers": n_layers, "heads": n_heads,
            "Lq": Lq, "Lk": Lk, "scale": self.scale, "layer_names": self.layer_names,
            "head_names": self.head_names, "start": list(self.start),
            "scores": _per_head(self.scores, np.float32),
            "base_mask": None if self.base_mask is None else _mask_payload(self.base_mask, self.scores.shape),
            "D": None if self.queries is None else int(self.queries.shape[-1]),
            "Dv": None if self.values is None else int(self.values.shape[-1]),
            "queries": None if self.queries is None else _per_head(self.queries, np.float32),
            "keys": None if self.keys is None else _per_head(self.keys, np.float32),
            "values": None if self.values is None else _per_head(self.values, np.float32),
            "kind": self.kind, "masks": self._mask_payload(),
        }

    def _mask_payload(self) -> dict:
        """What the page's mask parser needs from Python: the grammar's text, the key-only kinds, the presets,
        the key blocks of their random masks, and the what-if sentence split around the spec."""
        Lq, Lk = self.scores.shape[-2:]
        random = {}
        for spec in self.mask_specs:
            for name, ints in _atoms(spec):
                if name == "random":
                    block, n_random, seed = (ints + [0])[:3]
                    grid = masks_mod.random_blocks(block, n_random, seed).to_array(Lq, Lk)
                    random[f"random:{block},{n_random},{seed}"] = _b64(grid, np.uint8)
        before, after = WHAT_IF.split("{mask}")
        model = self.meta.get("model", self.title)
        return {"grammar": masks_mod.SPEC_GRAMMAR, "key_only": list(KEY_ONLY), "presets": self.mask_specs,
                "random": random, "what_if": None if self.kind is None else [before.format(model=model), after],
                "same_as_model": SAME_AS_MODEL, "cross": CROSS_NOTE if self.kind == "cross" else None}

    def _repr_html_(self) -> str:
        """Inline display in notebooks: the same offline page in a sandboxed iframe (scripts only)."""
        return (f'<iframe srcdoc="{html.escape(explorer_html(self), quote=True)}" sandbox="allow-scripts" '
                f'style="width:100%;height:760px;border:1px solid #ddd" title="attnlab explorer"></iframe>')


# --- masks on the page --------------------------------------------------------------------------------------
KEY_ONLY = ("full", "dense", "none", "keys", "padding")   # kinds that read key positions only
WHAT_IF = ("what-if: {model} was not trained with the mask {mask}; these weights re-normalize its scores under "
           "it, they are not what the model computed")
SAME_AS_MODEL = ("this mask blocks nothing the model's own mask allows: these are the weights the model computed")
CROSS_NOTE = ("cross-attention: the queries and the keys are two different sequences (e.g. decoder tokens and audio "
              "frames), so no query sits at a key position; masks that compare positions (causal, window, prefix, "
              "dilated, global, document, random) are not offered, key-only ones (keys:N, padding:N) are")


def what_if_note(model: str, mask: str) -> str:
    """The sentence beside weights re-normalized under a mask the model did not compute with (the live app and
    the offline page say the same).

    >>> what_if_note("all-MiniLM-L6-v2", "causal")[:64]
    "what-if: all-MiniLM-L6-v2 was not trained with the mask 'causal'"
    """
    return WHAT_IF.format(model=model, mask=repr(mask))


@dataclass(frozen=True)
class PageMask:
    """A spec as the page evaluates it: its canonical text and the (Lq, Lk) cells it allows."""

    spec: str
    allowed: np.ndarray


def page_mask(spec, Lq: int, Lk: int, kind: str | None = None) -> PageMask:
    """``masks.parse(spec).to_array(Lq, Lk)`` as the offline page evaluates it (explorer.js is tested equal,
    cell for cell and error for error). The page refuses, after the grammar's own errors, a mask that compares
    query and key positions on a cross-attention page and a padding of several batch rows (it shows one).

    >>> page_mask("causal & window:1", 3, 3).allowed.astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    >>> page_mask("causal", 2, 5, "cross")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: mask spec 'causal': causal compares query and key positions, but this is cross-attention (...
    """
    mask = masks_mod.parse(spec)
    if kind == "cross":
        for name, _ in _atoms(mask.spec):
            if name not in KEY_ONLY:
                raise ValueError(f"mask spec {spec!r}: {name} compares query and key positions, but this is "
                                 f"cross-attention (queries and keys are two different sequences); use only "
                                 f"{', '.join(KEY_ONLY)} here")
    if mask.batch not in (None, 1):
        raise ValueError(f"mask spec {spec!r}: this page shows one sequence, so padding takes one length here, "
                         f"got {mask.batch}")
    return PageMask(mask.spec, np.asarray(mask.to_array(Lq, Lk), dtype=bool).reshape(Lq, Lk))


def _atoms(canonical: str) -> list[tuple[str, list[int]]]:
    """(name, integer arguments) of each mask in a canonical spec (``Mask.spec``), in reading order."""
    out = []
    for word in re.split(r"[\s&|~()]+", canonical):
        if word:
            name, _, rest = word.partition(":")
            out.append((name, [int(a) for a in rest.split(",")] if rest and name != "causal" else []))
    return out


def default_mask_specs(Lq: int, Lk: int, kind: str | None = None) -> list[str]:
    """The presets a page offers: one spec per mask idea of the grammar that fits ``kind`` and the lengths."""
    if kind == "cross":
        return [f"keys:{max(1, Lk // 2)}", f"padding:{max(1, Lk - Lk // 4)}", "~keys:1"]
    third, block = max(1, Lk // 3), max(1, Lk // 4)
    specs = ["causal", "window:2,2", "causal & window:3", f"prefix:{third}", "window:1,1 | global:0",
             "causal & ~dilated:2", f"padding:{max(1, Lk - 2)}", f"window:1,1 | global:0 | random:{block},1"]
    if 2 <= Lk and Lq <= Lk:
        specs.insert(5, f"document:{Lk // 2},{Lk - Lk // 2} & causal")
    return specs


def kind_of_mask(base_mask) -> str:
    """"causal" when a model's own (Lq, Lk) mask is exactly the bottom-right causal mask, else "self"."""
    if base_mask is None:
        return "self"
    arr = np.asarray(base_mask, bool)
    Lq, Lk = arr.shape[-2:]
    return "causal" if bool((arr == masks_mod.causal().to_array(Lq, Lk)).all()) else "self"


def short_title(text: str, limit: int = 60) -> str:
    """``text`` on one line, cut at a word boundary to at most ``limit`` characters with "…" (never mid-word;
    a single word longer than ``limit`` is cut and marked).

    >>> short_title("The cat sat on the mat because it was tired.", 30)
    'The cat sat on the mat because…'
    >>> short_title("The cat sat on the mat because it was tired.", 27)
    'The cat sat on the mat…'
    """
    one_line = " ".join(str(text).split())
    if len(one_line) <= limit:
        return one_line
    head = one_line[:limit]
    if one_line[limit] == " ":
        cut = head                                          # the cut falls between two words
    elif " " in head:
        cut = head.rsplit(" ", 1)[0]                        # drop the word the cut would split
    else:
        cut = head[: limit - 1]                             # one long word: cut it, the mark says so
    return cut.rstrip(" ,;:.-") + "\u2026"


def attention_view(model, text, layer: int | None = None, *, max_layers_tokens: int = 128) -> ExplorerData:
    """A model's attention on ``text`` as explorer data, which notebooks display inline (offline: the page's
    script and style are inlined in a sandboxed iframe, no CDN). ``model``: any ``attnlab.models`` model;
    ``layer``: one layer only (default: every layer up to ``max_layers_tokens`` tokens, else layer 0, said in
    the title)."""
    parts = model.attention_parts(text)
    n_layers, _, L, _ = parts.scores.shape
    if layer is None and L > max_layers_tokens:
        layer = 0
    chosen = list(range(n_layers)) if layer is None else [layer]
    if layer is not None and not 0 <= layer < n_layers:
        raise ValueError(f"layer must be in [0, {n_layers - 1}], got {layer}")
    title = model.name if layer is None else f"{model.name}: layer {layer} of {n_layers}"
    return ExplorerData(tokens=parts.tokens, scores=parts.scores[chosen], base_mask=parts.base_mask,
                        queries=parts.queries[chosen], keys=parts.keys[chosen], values=parts.values[chosen],
                        scale=parts.scale, title=title, layer_names=[f"L{i}" for i in chosen], meta=parts.meta,
                        kind="causal" if getattr(model, "causal", False) else "self")


# --- normalization --------------------------------------------------------------------------------------------
def _as_4d(x, name, float_=False) -> np.ndarray:
    arr = to_numpy(as_array(x, name))
    if arr.ndim not in (2, 3, 4):
        raise ValueError(f"{name} must have shape (Lq, Lk), (heads, Lq, Lk) or (layers, heads, Lq, Lk), "
                         f"got {arr.shape}")
    if float_ and not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if float_ and not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (pass blocked cells as base_mask, not as -inf scores)")
    return arr.reshape((1,) * (4 - arr.ndim) + arr.shape)


def _mask_4d(mask, shape) -> np.ndarray:
    arr = _as_4d(mask, "base_mask")
    if arr.dtype != bool:
        raise TypeError(f"base_mask must be boolean (True = may attend), got dtype {arr.dtype}")
    try:
        np.broadcast_shapes(arr.shape, shape)
        if arr.shape[-2:] != shape[-2:]:
            raise ValueError
    except ValueError:
        raise ValueError(f"base_mask of shape {arr.shape} does not fit scores of shape {shape}") from None
    return arr


def _vectors(x, name, lead, length):
    if x is None:
        return None
    arr = to_numpy(as_array(x, name)).astype(np.float32)   # what the page receives
    if arr.ndim not in (2, 3, 4) or arr.shape[-2] != length:
        raise ValueError(f"{name} must have shape (..., {length}, dim) with up to two leading axes "
                         f"(layers, heads), got {arr.shape}")
    try:
        return np.broadcast_to(arr.reshape((1,) * (4 - arr.ndim) + arr.shape), lead + arr.shape[-2:])
    except ValueError:
        raise ValueError(f"{name} of shape {arr.shape} does not broadcast to (layers, heads) = {lead}") from None


def _texts(items, n, name) -> list[str]:
    if items is None:
        raise ValueError(f"{name} is required when the query and key lengths differ")
    if isinstance(items, str) or not hasattr(items, "__len__"):
        raise TypeError(f"{name} must be a list of strings, got {type(items).__name__}")
    if len(items) != n:
        raise ValueError(f"{name} has {len(items)} entries but the scores need {n}")
    return [str(t) for t in items]


def _b64(arr: np.ndarray, dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def _per_head(arr: np.ndarray, dtype) -> list[list[str]]:
    """[[base64 of arr[l, h]] for each head] for each layer."""
    return [[_b64(arr[l, h], dtype) for h in range(arr.shape[1])] for l in range(arr.shape[0])]


def _mask_payload(mask: np.ndarray, shape) -> dict:
    """A base mask once when it is the same for every layer and head, else per head (uint8 0/1)."""
    if (mask == mask[:1, :1]).all():
        return {"shared": _b64(mask[0, 0], np.uint8)}
    return {"per_head": _per_head(np.broadcast_to(mask, shape), np.uint8)}


# --- the page -------------------------------------------------------------------------------------------------
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def explorer_html(data: ExplorerData) -> str:
    """The whole page as one string: HTML, CSS, JavaScript and data inline; it makes no requests."""
    if not isinstance(data, ExplorerData):
        raise TypeError(f"data must be an ExplorerData, got {type(data).__name__}")
    style, script = _asset("explorer.css"), _asset("explorer.js")
    csp = (f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    page = _asset("explorer.html")
    for marker, value in (("/*ATTNLAB-CSP*/", csp), ("/*ATTNLAB-STYLE*/", style), ("/*ATTNLAB-SCRIPT*/", script)):
        if page.count(marker) != 1:
            raise RuntimeError(f"explorer template must contain {marker} exactly once")
        page = page.replace(marker, value)
    head, tail = page.split("/*ATTNLAB-DATA*/")
    return head + data.to_json() + tail


def page_bytes(data: ExplorerData) -> int:
    """An estimate of what ``explorer_html(data)`` allocates: PAGE_BYTES_PER_VALUE per number it embeds."""
    values = data.scores.size + sum(0 if x is None else x.size for x in (data.queries, data.keys, data.values))
    return PAGE_BYTES_PER_VALUE * values


def write_explorer(data: ExplorerData, path) -> Path:
    """Write the explorer page to ``path`` (UTF-8) and return the path."""
    path = Path(path)
    path.write_text(explorer_html(data), encoding="utf-8")
    return path


def serve(path_or_html, port: int = 8000, host: str = "127.0.0.1", *, block: bool = True,
          idle_timeout: float = 10.0, max_connections: int = 64):
    """Serve one page at ``http://host:port/`` (``port=0`` picks a free port) on 127.0.0.1.

    ``path_or_html``: a path to an HTML file, or the page itself (a string starting with "<"). With
    ``block=True`` this serves until Ctrl-C; with ``block=False`` it returns the running server (its
    ``server_address`` holds the port; call ``shutdown()`` and ``server_close()`` to stop it).

    It runs on the live explorer's bounded server (``attnlab.app.server.BoundedServer``): a fixed pool of
    threads, a connection idle for ``idle_timeout`` seconds is closed, at most ``max_connections`` are open,
    only loopback addresses are bound. A port in use raises OSError (errno EADDRINUSE) before anything is served.
    """
    from ..app.server import BoundedServer, Reply

    page = _page_bytes(path_or_html)
    reply = lambda query: Reply(page, "text/html; charset=utf-8")                    # noqa: E731
    server = BoundedServer({("GET", "/"): reply, ("GET", "/index.html"): reply}, host, port, workers=2,
                           max_connections=max_connections, idle_timeout=idle_timeout, request_timeout=idle_timeout)
    if not block:
        return server.start()
    try:
        server.serve_forever()
    finally:
        server.shutdown()
    return server


def _page_bytes(path_or_html) -> bytes:
    if isinstance(path_or_html, str) and path_or_html.lstrip().startswith("<"):
        return path_or_html.encode("utf-8")
    if not isinstance(path_or_html, (str, Path)):
        raise TypeError(f"path_or_html must be a path or an HTML string, got {type(path_or_html).__name__}")
    path = Path(path_or_html)
    if not path.is_file():
        raise FileNotFoundError(f"no page to serve at {str(path)!r}")
    return path.read_bytes()


# --- the demo -------------------------------------------------------------------------------------------------
DEMO_TEXT = "the cat sat on the mat because it was tired and the dog next door barked at it"


DEMO_BYTES_PER_PAIR = 128   # bytes demo_data allocates per (query, key) pair: 8 heads of float64 scores and their
                            # float32 copy (tracemalloc: 118 at n = 512)
PAGE_BYTES_PER_VALUE = 24   # bytes explorer_html allocates per float it embeds: base64 text, JSON, escapes, the
                            # page (tracemalloc: 18-21 per score at n = 256-512)


def demo_data(n_tokens: int | None = None, seed: int = 0) -> ExplorerData:
    """Seeded toy vectors, 2 layers x 4 heads, built so that layer 0's heads do recognisable things.

    Layer 0: head 0 attends to the previous token, head 1 to the first token (a "sink"), head 2 to the same
    word, head 3 is random. Layer 1: random queries and keys at temperatures 0.5, 1, 2 and 4 (from diffuse to
    sharp). D = 32, Dv = 4. ``n_tokens`` repeats the demo sentence to that length (512 for a long input).

    >>> demo_data().shape
    (2, 4, 18, 18)
    """
    words = DEMO_TEXT.split()
    n = len(words) if n_tokens is None else positive_int(n_tokens, "n_tokens")
    seed = non_negative_int(seed, "seed")
    check_budget(DEMO_BYTES_PER_PAIR * n * n, f"the explorer demo at {n} tokens (2 layers x 4 heads of {n} x {n} "
                 f"scores)", instead="use fewer tokens")
    tokens = [words[i % len(words)] for i in range(n)]
    rng = np.random.default_rng(seed)
    D, Dv, sharp = 32, 4, 6.0 * np.sqrt(32)      # sharp: a matching pair scores about 6 after 1/sqrt(D)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    pos = unit(rng.normal(size=(n + 1, D)))                                        # near-orthogonal positions
    vocab = {w: unit(rng.normal(size=D)) for w in sorted(set(words))}
    emb = np.stack([vocab[t] for t in tokens])                                    # (n, D)
    sink = np.zeros((n, D))
    sink[0] = unit(rng.normal(size=D))
    noise = lambda scale: scale * rng.normal(size=(n, D)) / np.sqrt(D)
    # query i carries position i and key j position j + 1: they match when j = i - 1 (previous token)
    q0 = np.stack([sharp * pos[:n], sharp * np.broadcast_to(sink[0], (n, D)) + noise(1.0), sharp * emb,
                   rng.normal(size=(n, D))])                                      # (4, n, D)
    k0 = np.stack([pos[1:], sink + noise(0.3), emb, rng.normal(size=(n, D))])      # (4, n, D)
    temps = np.array([0.5, 1.0, 2.0, 4.0])[:, None, None]
    q1, k1 = temps * rng.normal(size=(4, n, D)), rng.normal(size=(4, n, D))
    v = rng.normal(size=(2, 4, n, Dv))
    return ExplorerData.from_qkv(np.stack([q0, q1]), np.stack([k0, k1]), v, tokens,
                                 title=f"attnlab demo: toy vectors, {n} tokens",
                                 meta={"seed": seed, "layer 0": "head 0 previous token, head 1 first-token sink, "
                                       "head 2 same word, head 3 random",
                                       "layer 1": "random q, k at temperatures 0.5, 1, 2, 4"})
