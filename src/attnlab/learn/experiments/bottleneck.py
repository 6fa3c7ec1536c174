"""The fixed-vector bottleneck: ``attnlab experiment bottleneck``.

Bahdanau, Cho & Bengio (2015, Fig. 2) showed that an RNN encoder-decoder that squeezes the whole source sentence
into one vector translates worse and worse as sentences get longer, while the same network with attention holds
up. This experiment reproduces that shape on a synthetic task small enough to train on a laptop CPU:

    task:    target = reverse(source), each symbol s mapped to (3 s + 1) mod V      (V = 16 symbols)
    lengths: 5..60, training batches of one random length each, fresh random sequences at every step
    models:  the same GRU encoder-decoder three times; only the context c_t the output layer sees differs
             none      c_t = the encoder's final states             (the fixed vector; Cho et al. 2014)
             additive  c_t = additive_attention(s_t, h, h)          (Bahdanau et al. 2015, eq. 6)
             dot       c_t = scaled_dot_product_attention(W_q s_t, W_k h, h)   (Vaswani et al. 2017, eq. 1)

Both attention models call attnlab's own reference functions on torch tensors (the array-API path), so the
gradients that train them flow through attnlab. The decoder attends from its state s_t after reading the previous
target symbol and combines [s_t; c_t] in the output layer (Luong et al. 2015's "global attention" without input
feeding): the whole teacher-forced target runs through one GRU call, which keeps training fast on a CPU.

Testing decodes greedily (each prediction is fed back), for exactly as many steps as the source is long, and
scores token accuracy and exact match per source length. Every random draw comes from ``seed``; the three models
see the same initial weights where they share parameters and the same training batches.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...api import additive_attention, scaled_dot_product_attention
from ...checks import flag, non_negative_int
from . import check_run
from ...diagnostics import row_entropy

MODELS = {"none": "no attention (fixed vector)", "additive": "additive (Bahdanau)",
          "dot": "scaled dot-product"}


@dataclass(frozen=True)
class Config:
    vocab: int = 16            # V source/target symbols
    min_len: int = 5
    max_len: int = 60
    embed: int = 32            # E
    hidden: int = 64           # per encoder direction; the decoder state has 2 * hidden
    attn_dim: int = 32         # A, the additive scorer's hidden size and the dot-product q/k size
    batch: int = 64
    steps: int = 1000          # training batches per model
    lr: float = 3e-3
    test_per_length: int = 32  # test sequences at every length min_len..max_len
    threads: int = 1           # one thread: with tiny matrices a second one mostly waits on the first


QUICK = Config(max_len=30, hidden=48, batch=32, steps=250, test_per_length=12)


# --- the task --------------------------------------------------------------------------------------------------
def translate(src: torch.Tensor, vocab: int) -> torch.Tensor:
    """The deterministic source -> target mapping: reverse, then s -> (3 s + 1) mod V (a bijection, 3 is odd).

    >>> translate(torch.tensor([[0, 1, 2]]), 16).tolist()
    [[7, 4, 1]]
    """
    return (3 * torch.flip(src, dims=(-1,)) + 1) % vocab


def sample(gen: torch.Generator, n: int, length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random source sequences of one ``length`` and their targets, both (n, length) int64."""
    src = torch.randint(0, vocab, (n, length), generator=gen)
    return src, translate(src, vocab)


# --- the models ------------------------------------------------------------------------------------------------
class Seq2Seq(nn.Module):
    """GRU encoder-decoder; ``attention`` is "none", "additive" or "dot" and decides only the context c_t."""

    def __init__(self, attention: str, cfg: Config):
        super().__init__()
        if attention not in MODELS:
            raise ValueError(f"attention must be one of {', '.join(MODELS)}, got {attention!r}")
        V, E, H, A = cfg.vocab, cfg.embed, cfg.hidden, cfg.attn_dim
        self.attention, self.vocab = attention, V
        self.src_embed = nn.Embedding(V, E)
        self.encoder = nn.GRU(E, H, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * H, 2 * H)                 # encoder final states -> decoder initial state
        self.tgt_embed = nn.Embedding(V + 1, E)               # index V is the start symbol
        self.decoder = nn.GRU(E, 2 * H, batch_first=True)
        self.readout = nn.Sequential(nn.Linear(4 * H, 2 * H), nn.Tanh(), nn.Linear(2 * H, V))
        if attention == "additive":                           # w_q (A, 2H), w_k (A, 2H), w_v (A,)
            self.w_q = nn.Parameter(torch.randn(A, 2 * H) / (2 * H) ** 0.5)
            self.w_k = nn.Parameter(torch.randn(A, 2 * H) / (2 * H) ** 0.5)
            self.w_v = nn.Parameter(torch.randn(A) / A ** 0.5)
        elif attention == "dot":
            self.to_q = nn.Linear(2 * H, A, bias=False)
            self.to_k = nn.Linear(2 * H, A, bias=False)

    def encode(self, src):
        """src (B, Ls) -> encoder states h (B, Ls, 2H), the fixed vector (B, 2H), decoder start state (1, B, 2H)."""
        h, last = self.encoder(self.src_embed(src))           # last (2, B, H): forward and backward final states
        fixed = torch.cat([last[0], last[1]], dim=-1)          # (B, 2H)
        return h, fixed, torch.tanh(self.bridge(fixed))[None]

    def context(self, s, h, fixed):
        """Decoder states s (B, Lt, 2H) -> context c (B, Lt, 2H) and weights (B, Lt, Ls) (None without attention)."""
        if self.attention == "none":
            return fixed[:, None, :].expand(-1, s.shape[1], -1), None
        if self.attention == "additive":
            return additive_attention(s, h, h, self.w_q, self.w_k, self.w_v, return_weights=True)
        return scaled_dot_product_attention(self.to_q(s), self.to_k(h), h, return_weights=True)

    def step_logits(self, prev, h, fixed, state):
        """Previous target symbols prev (B, Lt) -> logits (B, Lt, V), weights, last decoder state."""
        s, state = self.decoder(self.tgt_embed(prev), state)   # (B, Lt, 2H)
        c, weights = self.context(s, h, fixed)
        return self.readout(torch.cat([s, c], dim=-1)), weights, state

    def forward(self, src, tgt):
        """Teacher forcing: logits (B, Lt, V) for every target position given the true previous symbols."""
        h, fixed, state = self.encode(src)
        start = torch.full_like(tgt[:, :1], self.vocab)
        logits, _, _ = self.step_logits(torch.cat([start, tgt[:, :-1]], dim=1), h, fixed, state)
        return logits

    @torch.no_grad()
    def greedy(self, src):
        """Decode len(src) symbols, feeding back each prediction: predictions (B, Ls), weights (B, Ls, Ls) or None."""
        h, fixed, state = self.encode(src)
        prev = torch.full_like(src[:, :1], self.vocab)
        outputs, rows = [], []
        for _ in range(src.shape[1]):
            logits, weights, state = self.step_logits(prev, h, fixed, state)
            prev = logits.argmax(dim=-1)                        # (B, 1)
            outputs.append(prev)
            rows.append(weights)
        return torch.cat(outputs, dim=1), None if rows[0] is None else torch.cat(rows, dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- training and testing --------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, every quarter otherwise)."""

    def __init__(self, total: int, label: str, enabled: bool = True, width: int = 24):
        self.total, self.label, self.enabled, self.width = total, label, enabled, width
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.perf_counter()

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        final = done == self.total
        if self.tty and not final and now - self.last < 0.1:
            return
        if not self.tty and not final and 4 * done // self.total == 4 * (done - 1) // self.total:
            return
        self.last = now
        filled = round(self.width * done / self.total)
        line = (f"{self.label:<10} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} "
                f"{note} {now - self.start:5.1f}s")
        sys.stderr.write(("\r" + line if self.tty else line + "\n") + ("\n" if final and self.tty else ""))
        sys.stderr.flush()


def train(model: Seq2Seq, cfg: Config, seed: int, progress: bool = True) -> dict:
    """Adam on fresh random batches (one random length each); returns the training curve (every 20 steps)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    bar = Progress(cfg.steps, model.attention, progress)
    curve = {"step": [], "loss": [], "token_accuracy": []}
    losses, hits, tokens = [], 0, 0
    model.train()
    for step in range(1, cfg.steps + 1):
        length = int(torch.randint(cfg.min_len, cfg.max_len + 1, (1,), generator=gen))
        src, tgt = sample(gen, cfg.batch, length, cfg.vocab)
        logits = model(src, tgt)                                # (B, L, V)
        loss = nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        hits += int((logits.argmax(-1) == tgt).sum())
        tokens += tgt.numel()
        if step % 20 == 0 or step == cfg.steps:
            curve["step"].append(step)
            curve["loss"].append(float(np.mean(losses)))
            curve["token_accuracy"].append(hits / tokens)
            losses, hits, tokens = [], 0, 0
        bar.update(step, f"loss {loss.item():.3f}")
    return curve


def make_test_set(cfg: Config, seed: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``test_per_length`` sequences at every length, from a generator the training batches never use."""
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    return {L: sample(gen, cfg.test_per_length, L, cfg.vocab) for L in range(cfg.min_len, cfg.max_len + 1)}


def bucket_of(length: int, cfg: Config) -> str:
    """Length buckets of ten (5-9, 10-19, ..., 50-60): the last one takes max_len in."""
    lo = max(cfg.min_len, 10 * (min(length, cfg.max_len - 1) // 10))
    hi = min(cfg.max_len, 10 * (lo // 10) + 9)
    return f"{lo}-{cfg.max_len if hi == cfg.max_len - 1 else hi}"


def evaluate(model: Seq2Seq, tests: dict, cfg: Config) -> dict:
    """Greedy decoding on the test set: token accuracy and exact match per length and per bucket."""
    model.eval()
    per_length = {"length": [], "token_accuracy": [], "exact_match": []}
    counts: dict[str, np.ndarray] = {}                        # bucket -> [right tokens, tokens, right seqs, seqs]
    for L, (src, tgt) in tests.items():
        correct = model.greedy(src)[0] == tgt                  # (n, L)
        whole = correct.all(dim=1)                              # (n,)
        per_length["length"].append(L)
        per_length["token_accuracy"].append(float(correct.float().mean()))
        per_length["exact_match"].append(float(whole.float().mean()))
        bucket = counts.setdefault(bucket_of(L, cfg), np.zeros(4))
        bucket += [int(correct.sum()), correct.numel(), int(whole.sum()), whole.numel()]
    buckets = [{"lengths": k, "token_accuracy": float(c[0] / c[1]), "exact_match": float(c[2] / c[3])}
               for k, c in counts.items()]
    return {"per_length": per_length, "buckets": buckets}


def anti_diagonal_mass(weights: np.ndarray, offset: int = 0) -> float:
    """Mean weight that output step t puts on source position L-1-t+offset (0 when that is outside the source).

    Reversal's alignment is the anti-diagonal (offset 0); a model may also read symbol L-1-t from a neighbouring
    encoder state, whose GRU has just read it (offset +1) or is about to (offset -1).

    >>> anti_diagonal_mass(np.array([[0.0, 1.0], [0.9, 0.1]]))
    0.95
    """
    L, Ls = weights.shape
    cols = Ls - 1 - np.arange(L) + offset                       # (L,)
    inside = (cols >= 0) & (cols < Ls)
    return float(weights[np.arange(L)[inside], cols[inside]].sum() / L)


def alignment(model: Seq2Seq, src: torch.Tensor) -> dict:
    """Weights of one greedy decode of ``src`` (1, L), their mass on the anti-diagonal (and on the best of the
    offsets -2..2), and the mean row entropy."""
    pred, weights = model.greedy(src)
    w = weights[0].numpy().astype(np.float64)                  # (Lt, Ls)
    masses = {k: anti_diagonal_mass(w, k) for k in range(-2, 3)}
    best = max(masses, key=masses.get)
    return {"weights": w.round(5).tolist(), "prediction": pred[0].tolist(), "anti_diagonal_mass": masses[0],
            "best_offset": best, "best_offset_mass": masses[best],
            "mean_entropy_nats": float(row_entropy(w[None], normalized=False).mean())}


# --- the experiment --------------------------------------------------------------------------------------------
def run(out=None, seed: int = 0, quick: bool = False, config: Config | None = None, progress: bool = True) -> dict:
    """Train the three models, test them per source length, write bottleneck.json and the figures to ``out``.

    ``config`` overrides the default (or the ``quick``) configuration. Returns the results dict (also saved as
    JSON); ``timing`` holds the only values that change from run to run.
    """
    out, quick = check_run(out, quick)
    progress = flag(progress, "progress")
    cfg = config if config is not None else (QUICK if quick else Config())
    _check(cfg, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(cfg.threads, threads))
    try:
        with torch.random.fork_rng(devices=[]):                # the caller's global torch RNG is left as it was
            result = _run(cfg, seed, progress)
    finally:
        torch.set_num_threads(threads)
    if out is not None:
        result["files"] = write(result, Path(out))
    return result


MAX_STEPS = 100_000      # training batches per model: more would run for days on a CPU


def _check(cfg: Config, seed: int) -> None:
    if not isinstance(cfg, Config):
        raise TypeError(f"config must be a bottleneck.Config, got {type(cfg).__name__}")
    non_negative_int(seed, "seed")
    if not 1 <= cfg.min_len <= cfg.max_len:
        raise ValueError(f"lengths must satisfy 1 <= min_len <= max_len, got {cfg.min_len}..{cfg.max_len}")
    if min(cfg.steps, cfg.batch, cfg.test_per_length, cfg.threads) < 1:
        raise ValueError(f"steps, batch, test_per_length and threads must be >= 1, got {cfg}")
    if cfg.steps > MAX_STEPS:
        raise ValueError(f"steps must be at most {MAX_STEPS} training batches per model (the default is "
                         f"{Config().steps}), got {cfg.steps}")


def _run(cfg: Config, seed: int, progress: bool) -> dict:
    tests = make_test_set(cfg, seed)
    example_len = min(cfg.max_len, max(cfg.min_len, 24))
    example = tests[example_len][0][:1]                         # (1, L) the alignment example
    result = {"experiment": "bottleneck", "seed": seed, "config": asdict(cfg),
              "task": f"target = reverse(source) with s -> (3 s + 1) mod {cfg.vocab}",
              "models": {}, "alignment": {"source": example[0].tolist(),
                                          "target": translate(example, cfg.vocab)[0].tolist()},
              "timing": {"threads": torch.get_num_threads()}}
    for name in MODELS:
        torch.manual_seed(seed)                                 # same initial weights for the shared layers
        model = Seq2Seq(name, cfg)
        start = time.perf_counter()
        curve = train(model, cfg, seed, progress)
        result["timing"][f"{name}_train_s"] = round(time.perf_counter() - start, 2)
        result["models"][name] = {"label": MODELS[name], "parameters": count_parameters(model), "curve": curve,
                                  **evaluate(model, tests, cfg)}
        if name != "none":
            result["alignment"][name] = alignment(model, example)
    return result


def longest_bucket(result: dict, model: str) -> dict:
    return result["models"][model]["buckets"][-1]


def table(result: dict) -> str:
    """Token accuracy / exact match per length bucket, one column per model."""
    models = result["models"]
    head = f"{'source length':>13} | " + " | ".join(f"{models[m]['label']:^27}" for m in models)
    sub = f"{'':>13} | " + " | ".join(f"{'token acc':>12} {'exact':>14}" for _ in models)
    rows = [head, sub, "-" * len(head)]
    for i, bucket in enumerate(models["none"]["buckets"]):
        cells = [f"{models[m]['buckets'][i]['token_accuracy']:>12.3f} {models[m]['buckets'][i]['exact_match']:>14.3f}"
                 for m in models]
        rows.append(f"{bucket['lengths']:>13} | " + " | ".join(cells))
    params = ", ".join(f"{m} {models[m]['parameters']:,}" for m in models)
    a = result["alignment"]
    align = ", ".join(f"{m} {a[m]['anti_diagonal_mass']:.2f} (best offset {a[m]['best_offset']:+d}: "
                      f"{a[m]['best_offset_mass']:.2f})" for m in models if m != "none")
    rows.append(f"parameters: {params}")
    rows.append(f"attention on the anti-diagonal, length-{len(a['source'])} example: {align}")
    return "\n".join(rows)


# --- output files ------------------------------------------------------------------------------------------------
def write(result: dict, out: Path) -> list[str]:
    """bottleneck.json and three PNGs in ``out``; returns the file names."""
    out.mkdir(parents=True, exist_ok=True)
    from matplotlib.figure import Figure                      # matplotlib only when figures are asked for

    names = ["bottleneck.json", "bottleneck_accuracy.png", "bottleneck_alignment.png", "bottleneck_training.png"]
    for name, draw, size in zip(names[1:], (_accuracy_figure, _alignment_figure, _training_figure),
                                ((10, 4), (12, 6.2), (10, 4))):
        fig = Figure(figsize=size, layout="constrained")
        draw(fig, result)
        fig.savefig(out / name, dpi=130)
    (out / names[0]).write_text(json.dumps({**result, "files": names}, indent=1))
    return names


COLORS = {"none": "#7f7f7f", "additive": "#d62728", "dot": "#1f77b4"}


def _accuracy_figure(fig, result):
    """Accuracy vs source length, the shape of Bahdanau et al. (2015) Fig. 2."""
    axes = fig.subplots(1, 2)
    for ax, key, title in zip(axes, ("token_accuracy", "exact_match"),
                              ("token accuracy (greedy decoding)", "exact match (whole sequence right)")):
        for name, m in result["models"].items():
            ax.plot(m["per_length"]["length"], m["per_length"][key], color=COLORS[name], label=m["label"], lw=1.6)
        ax.set(xlabel="source length", title=title, ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0].axhline(1 / result["config"]["vocab"], color="grey", ls=":", lw=1, label="chance")
    axes[0].legend(loc="center right")
    cfg = result["config"]
    fig.suptitle(f"Fixed vector vs attention on reverse-and-map, trained on lengths {cfg['min_len']}-"
                 f"{cfg['max_len']} ({cfg['steps']} batches of {cfg['batch']}, seed {result['seed']})")


def _alignment_figure(fig, result):
    """Weights of the alignment example, source symbols as a..p and output symbols as A..P."""
    from ...viz.weights import heatmap

    a = result["alignment"]
    src = [chr(ord("a") + s) for s in a["source"]]
    axes = fig.subplots(1, 2)
    for ax, name in zip(axes, ("additive", "dot")):
        pred = [chr(ord("A") + s) for s in a[name]["prediction"]]
        shift = "" if a[name]["best_offset"] == 0 else f" shifted by {a[name]['best_offset']:+d}"
        heatmap(np.array(a[name]["weights"]), q_tokens=pred, k_tokens=src, annotate=False, ax=ax,
                title=f"{name}: {a[name]['best_offset_mass']:.2f} of the weight on the anti-diagonal{shift}")
        ax.set(xlabel="source symbol (key)", ylabel="predicted output symbol (query)")
    fig.suptitle("Where each output step looks (one test sequence): reversing puts the weight on the "
                 "anti-diagonal")


def _training_figure(fig, result):
    axes = fig.subplots(1, 2)
    for name, m in result["models"].items():
        axes[0].plot(m["curve"]["step"], m["curve"]["loss"], color=COLORS[name], label=m["label"])
        axes[1].plot(m["curve"]["step"], m["curve"]["token_accuracy"], color=COLORS[name], label=m["label"])
    axes[0].set(yscale="log", xlabel="training batch", title="training loss (cross-entropy, teacher forcing)")
    axes[1].set(xlabel="training batch", title="training token accuracy (teacher forcing)", ylim=(0, 1.02))
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(loc="lower right")


def with_overrides(cfg: Config, **changes) -> Config:
    """``cfg`` with some fields changed (None values are ignored), validated by ``run``."""
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})
