"""Training through attnlab's kernel: ``attnlab experiment train``.

The same small causal transformer is trained twice from the same initial weights on the same batches: once with
attention computed by attnlab's tiled kernel through the PyTorch autograd bridge
(``attnlab.integrations.torch.flash_attention``: forward ``attnlab.flash_attention``, backward
``attnlab.flash_attention_backward``, which recomputes the weights tile by tile from the log-sum-exp), once with
``torch.nn.functional.scaled_dot_product_attention``. Everything else is the same PyTorch code, so the two loss
curves can only differ by the float32 rounding of the two attention implementations.

    task:   induction (copying): a sequence of T/2 random symbols, then the same symbols again; the loss is on the
            second half, where predicting symbol t+1 needs attention to find the earlier copy of symbol t and read
            the one after it ("A B ... A -> B", Olsson et al. 2022). Chance is 1/V.
    model:  2 pre-norm blocks, d = 64, 4 query heads sharing 2 key/value heads (GQA), learned positions.

A third run is the control: torch's own SDPA again, through its "math" backend (the composed operations) instead
of its fused CPU kernel. Two float32 implementations of the same formula round differently, and training amplifies
any difference once the model starts to learn (each step's update depends on the last), so the curves agree to
rounding for the first steps and then drift apart; the control shows how fast that happens between torch's own
two kernels.

Reported: the loss curves, the largest difference and the first step where it exceeds DIVERGED, against SDPA, for
attnlab and for the control; the final loss and second-half accuracy of each; the time each run took (the only
values that change between runs).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ... import masks
from ...checks import non_negative_int
from ...integrations.torch import flash_attention
from . import check_run

IMPLS = {"attnlab": "attnlab tiled kernel (autograd bridge)", "sdpa": "torch scaled_dot_product_attention",
         "math": "torch SDPA, math backend (control)"}
DIVERGED = 1e-3                 # a loss difference this large is no longer rounding


@dataclass(frozen=True)
class Config:
    vocab: int = 16             # V symbols
    length: int = 32            # T, two copies of T/2 symbols
    d_model: int = 64
    heads: int = 4              # query heads
    kv_heads: int = 2           # key/value heads (GQA: 2 query heads per key/value head)
    layers: int = 2
    batch: int = 32
    steps: int = 400
    lr: float = 3e-3
    threads: int = 1            # torch's threads for the rest of the model (attnlab's kernel picks its own)


QUICK = Config(steps=120, batch=16, length=24)


def sample(gen: torch.Generator, cfg: Config) -> torch.Tensor:
    """(batch, T) sequences: T/2 random symbols, then the same symbols again."""
    half = torch.randint(0, cfg.vocab, (cfg.batch, cfg.length // 2), generator=gen)
    return torch.cat([half, half], dim=1)


class Block(nn.Module):
    """Pre-norm transformer block; attention by ``attend(q, k, v)`` with q (B, H, T, Dh), k/v (B, G, T, Dh)."""

    def __init__(self, cfg: Config, attend):
        super().__init__()
        self.cfg, self.attend = cfg, attend
        self.dh = cfg.d_model // cfg.heads
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.q = nn.Linear(cfg.d_model, cfg.heads * self.dh)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.kv_heads * self.dh)
        self.o = nn.Linear(cfg.heads * self.dh, cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                 nn.Linear(4 * cfg.d_model, cfg.d_model))

    def forward(self, x):
        B, T, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(B, T, self.cfg.heads, self.dh).transpose(1, 2)                  # (B, H, T, Dh)
        k, v = self.kv(h).view(B, T, 2, self.cfg.kv_heads, self.dh).permute(2, 0, 3, 1, 4)  # (B, G, T, Dh) each
        a = self.attend(q.contiguous(), k.contiguous(), v.contiguous())                     # (B, H, T, Dh)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, -1))
        return x + self.mlp(self.norm2(x))


class Model(nn.Module):
    def __init__(self, cfg: Config, attend):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(cfg.length, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg, attend) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.vocab)

    def forward(self, tokens):                                   # (B, T) -> logits (B, T, V)
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))


def attention_fn(impl: str):
    """Causal GQA attention on (B, H, T, Dh) queries and (B, G, T, Dh) keys/values."""
    if impl == "attnlab":
        causal = masks.causal()
        return lambda q, k, v: flash_attention(q, k, v, causal)
    sdpa = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    if impl == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def math(q, k, v):
            with sdpa_kernel(SDPBackend.MATH):
                return sdpa(q, k, v)
        return math
    return sdpa


def train(impl: str, cfg: Config, seed: int) -> dict:
    """Train one model; the initial weights and every batch come from ``seed`` alone."""
    torch.manual_seed(seed)
    model = Model(cfg, attention_fn(impl))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed + 1)
    half = cfg.length // 2
    losses, start = [], time.perf_counter()
    for _ in range(cfg.steps):
        tokens = sample(gen, cfg)
        logits = model(tokens[:, :-1])                                               # (B, T - 1, V)
        second = logits[:, half - 1:]                                                # predicts tokens half..T-1
        loss = nn.functional.cross_entropy(second.reshape(-1, cfg.vocab), tokens[:, half:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    with torch.no_grad():
        tokens = sample(torch.Generator().manual_seed(seed + 2), replace(cfg, batch=256))
        pred = model(tokens[:, :-1])[:, half - 1:].argmax(-1)
        accuracy = float((pred == tokens[:, half:]).float().mean())
    return {"label": IMPLS[impl], "loss": losses, "accuracy": accuracy, "seconds": round(seconds, 2)}


MAX_STEPS = 100_000      # training steps per run: more would run for days on a CPU


def run(out=None, seed: int = 0, quick: bool = False, config: Config | None = None) -> dict:
    """Train with both attention implementations and compare; write train.json and train.png to ``out``."""
    out, quick = check_run(out, quick)
    seed = non_negative_int(seed, "seed")
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be a train.Config, got {type(config).__name__}")
    cfg = config if config is not None else (QUICK if quick else Config())
    if cfg.steps > MAX_STEPS:
        raise ValueError(f"steps must be at most {MAX_STEPS} training steps per run (the default is "
                         f"{Config().steps}), got {cfg.steps}")
    if cfg.steps < 1 or cfg.length < 4 or cfg.length % 2 or cfg.heads % cfg.kv_heads or cfg.d_model % cfg.heads:
        raise ValueError(f"invalid configuration {cfg}: steps >= 1, an even length >= 4, heads a multiple of "
                         f"kv_heads, d_model a multiple of heads")
    threads = torch.get_num_threads()
    torch.set_num_threads(min(cfg.threads, threads))
    try:
        with torch.random.fork_rng(devices=[]):
            runs = {impl: train(impl, cfg, seed) for impl in IMPLS}
    finally:
        torch.set_num_threads(threads)
    result = {"seed": seed, "config": asdict(cfg), "runs": runs, "chance_loss": math.log(cfg.vocab),
              "against_sdpa": {impl: compare(runs[impl]["loss"], runs["sdpa"]["loss"]) for impl in ("attnlab", "math")}}
    if out is not None:
        result["files"] = write(result, Path(out))
    return result


def compare(a, b) -> dict:
    """How two loss curves differ: per step, the largest difference, and the first step (1-based) where it
    exceeds DIVERGED (None: never)."""
    diff = [abs(x - y) for x, y in zip(a, b)]
    first = next((i + 1 for i, d in enumerate(diff) if d > DIVERGED), None)
    return {"difference": diff, "max": max(diff), "first_step_above": first}


def table(result: dict) -> str:
    cfg = result["config"]
    lines = [f"induction task, {cfg['layers']} layers, {cfg['heads']} query / {cfg['kv_heads']} key-value heads, "
             f"T = {cfg['length']}, {cfg['steps']} steps of {cfg['batch']} (seed {result['seed']})",
             f"{'attention':42} {'first loss':>10} {'final loss':>10} {'accuracy':>9} {'seconds':>8}"]
    for r in result["runs"].values():
        lines.append(f"{r['label']:42} {r['loss'][0]:10.4f} {r['loss'][-1]:10.4f} {r['accuracy']:9.3f} "
                     f"{r['seconds']:8.2f}")
    for impl, c in result["against_sdpa"].items():
        above = "never" if c["first_step_above"] is None else f"from step {c['first_step_above']}"
        lines.append(f"{result['runs'][impl]['label']} vs torch SDPA: largest loss difference {c['max']:.2e}, "
                     f"above {DIVERGED:g} {above}")
    lines.append(f"chance loss ln V = {result['chance_loss']:.3f}")
    return "\n".join(lines)


def write(result: dict, out: Path) -> list[str]:
    """train.json and train.png (both loss curves in one plot, their difference below) in ``out``."""
    from ...viz import new_figure, save                      # matplotlib only when figures are asked for

    out.mkdir(parents=True, exist_ok=True)
    fig = new_figure(8, 5.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    steps = range(1, result["config"]["steps"] + 1)
    styles = {"attnlab": dict(color="#d62728", lw=2.4), "sdpa": dict(color="#1f77b4", lw=1.0, ls="--"),
              "math": dict(color="#2ca02c", lw=0.8, ls=":")}
    for impl, r in result["runs"].items():
        top.plot(steps, r["loss"], label=f"{r['label']} (final {r['loss'][-1]:.4f})", **styles[impl])
    top.axhline(result["chance_loss"], color="grey", ls=":", lw=1, label="chance (ln V)")
    top.set(ylabel="training loss (cross-entropy)", yscale="log",
            title="The same model trained through attnlab's kernel and through torch SDPA")
    top.legend(loc="lower left")
    for impl, c in result["against_sdpa"].items():
        bottom.plot(steps, c["difference"], color=styles[impl]["color"], lw=1,
                    label=f"{result['runs'][impl]['label']} - SDPA")
    bottom.set(xlabel="training step", ylabel="|loss difference|")
    bottom.legend(loc="upper left", fontsize="small")
    bottom.set_yscale("symlog", linthresh=1e-7)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    save(fig, out / "train.png")
    (out / "train.json").write_text(json.dumps({**result, "files": ["train.json", "train.png"]}, indent=1))
    return ["train.json", "train.png"]
