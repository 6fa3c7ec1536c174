"""Why scale by sqrt(d_k): ``attnlab experiment scaling``.

Vaswani et al. (2017, section 3.2.1, footnote 4): if the components of q and k are independent with mean 0 and
variance 1, then q . k = sum_i q_i k_i has mean 0 and variance d_k. Large scores push the softmax into its
saturated corner, where one weight is ~1 and the gradient ~0. Dividing by sqrt(d_k) keeps the variance at 1.

For each d_k this experiment draws unit-variance queries (Nq, d_k) and keys (Lk, d_k) and measures, without and
with the scaling:

- the variance of the scores q . k (and q . k / sqrt(d_k));
- the softmax's mean row entropy (nats; ln Lk is uniform, 0 is one-hot) and mean largest weight;
- the mean Frobenius norm of the softmax Jacobian d p / d s = diag(p) - p p^T, which carries every gradient from
  the weights back to the scores: it is 0 at a one-hot p (a saturated softmax passes no gradient).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ...budget import check as check_budget
from ...checks import int_list, non_negative_int, positive_int
from . import check_run
from ...diagnostics import row_entropy
from ...scores import dot, scaled_dot
from ...softmax import softmax

D_KS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)


def softmax_jacobian(p):
    """Jacobian of the softmax at output p: J[..., i, j] = d p_i / d s_j = p_i (delta_ij - p_j).

    p (..., n) -> J (..., n, n).

    >>> softmax_jacobian(np.array([0.5, 0.5]))
    array([[ 0.25, -0.25],
           [-0.25,  0.25]])
    """
    p = np.asarray(p, dtype=np.float64)
    eye = np.eye(p.shape[-1])
    return p[..., :, None] * (eye - p[..., None, :])           # (..., n, n)


def softmax_stats(scores) -> dict:
    """Entropy, largest weight and Jacobian norm of softmax(scores) (Nq, Lk), each averaged over the rows."""
    p = softmax(scores, axis=-1)                                 # (Nq, Lk)
    jac = softmax_jacobian(p)                                    # (Nq, Lk, Lk)
    return {"entropy": float(row_entropy(p[None], normalized=False).mean()),
            "max_weight": float(p.max(axis=-1).mean()),
            "jacobian_norm": float(np.sqrt((jac ** 2).sum(axis=(-2, -1))).mean())}


def measure(d_k: int, n_queries: int, n_keys: int, rng: np.random.Generator) -> dict:
    """One row of the table: statistics of raw (q . k) and scaled (q . k / sqrt(d_k)) scores."""
    q = rng.standard_normal((n_queries, d_k))                    # (Nq, D) unit variance
    k = rng.standard_normal((n_keys, d_k))                       # (Lk, D)
    raw, scaled = dot(q, k), scaled_dot(q, k)                    # (Nq, Lk)
    row = {"d_k": d_k, "var_raw": float(raw.var()), "var_scaled": float(scaled.var())}
    for name, scores in (("raw", raw), ("scaled", scaled)):
        row.update({f"{key}_{name}": value for key, value in softmax_stats(scores).items()})
    return row


def run(out=None, seed: int = 0, quick: bool = False, d_ks=D_KS, n_keys: int = 64) -> dict:
    """Measure every d_k in ``d_ks``; write scaling.json and scaling.png to ``out``; return the results."""
    out, quick = check_run(out, quick)
    non_negative_int(seed, "seed")
    if not isinstance(d_ks, (list, tuple)):
        raise TypeError(f"d_ks must be a list of positive integers, got {type(d_ks).__name__} {d_ks!r}"[:200])
    d_ks = tuple(int_list(tuple(d_ks), "d_ks"))
    positive_int(n_keys, "n_keys", minimum=2)
    n_queries = 128 if quick else 1024
    # per d_k: q, k (float64), the raw and scaled scores, and softmax's (Nq, Lk, Lk) Jacobian with its square
    check_budget(8 * (n_queries + n_keys) * max(d_ks) + 8 * n_queries * n_keys * (4 + 3 * n_keys),
                 f"the scaling experiment at d_k up to {max(d_ks)} with {n_keys} keys",
                 instead="use fewer keys or smaller d_k")
    rng = np.random.default_rng(seed)
    rows = [measure(d, n_queries, n_keys, rng) for d in d_ks]
    result = {"experiment": "scaling", "seed": seed, "n_queries": n_queries, "n_keys": n_keys,
              "uniform": {"entropy": math.log(n_keys), "max_weight": 1 / n_keys},
              "rows": rows}
    result["conclusion"] = conclusion(result)
    if out is not None:
        result["files"] = write(result, Path(out))
    return result


def table(result: dict) -> str:
    head = (f"{'d_k':>5} | {'var(q.k)':>9} {'scaled':>7} | {'entropy':>7} {'scaled':>7} | {'max w':>6} "
            f"{'scaled':>6} | {'|J|':>7} {'scaled':>7}")
    rows = [head, "-" * len(head)]
    for r in result["rows"]:
        rows.append(f"{r['d_k']:>5} | {r['var_raw']:>9.2f} {r['var_scaled']:>7.3f} | {r['entropy_raw']:>7.3f} "
                    f"{r['entropy_scaled']:>7.3f} | {r['max_weight_raw']:>6.3f} {r['max_weight_scaled']:>6.3f} | "
                    f"{r['jacobian_norm_raw']:>7.4f} {r['jacobian_norm_scaled']:>7.4f}")
    u = result["uniform"]
    rows.append(f"{result['n_queries']} queries x {result['n_keys']} keys; a uniform row has entropy "
                f"{u['entropy']:.3f} nats and max weight {u['max_weight']:.4f}; "
                f"|J| is the Frobenius norm of diag(p) - p p^T")
    return "\n".join(rows)


def conclusion(result: dict) -> str:
    """The two-line conclusion, with the measured numbers of the smallest and largest d_k."""
    rows = result["rows"]
    lo, hi = rows[0], rows[-1]

    def span(key, digits=2):
        return f"{min(r[key] for r in rows):.{digits}f}-{max(r[key] for r in rows):.{digits}f}"

    return (f"Without scaling var(q.k) grows with d_k ({lo['var_raw']:.1f} at d_k={lo['d_k']}, "
            f"{hi['var_raw']:.0f} at d_k={hi['d_k']}): the softmax saturates (max weight {lo['max_weight_raw']:.2f} "
            f"-> {hi['max_weight_raw']:.2f}, entropy {lo['entropy_raw']:.2f} -> {hi['entropy_raw']:.2f} nats) and "
            f"its gradient vanishes (|J| {lo['jacobian_norm_raw']:.3f} -> {hi['jacobian_norm_raw']:.3f}).\n"
            f"With 1/sqrt(d_k) the variance stays {span('var_scaled')}, the entropy {span('entropy_scaled')} nats "
            f"(uniform {result['uniform']['entropy']:.2f}) and |J| {span('jacobian_norm_scaled', 3)} at every d_k "
            f"from {lo['d_k']} to {hi['d_k']}.")


def write(result: dict, out: Path) -> list[str]:
    """scaling.json and scaling.png in ``out``; returns the file names."""
    out.mkdir(parents=True, exist_ok=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    d = [r["d_k"] for r in result["rows"]]
    u = result["uniform"]
    panels = (("var", "variance of the scores", None), ("entropy", "softmax entropy (nats)", u["entropy"]),
              ("max_weight", "largest softmax weight", u["max_weight"]),
              ("jacobian_norm", "|d softmax / d scores| (Frobenius)", None))
    for ax, (key, title, uniform) in zip(axes, panels):
        ax.plot(d, [r[f"{key}_raw"] for r in result["rows"]], "o-", color="#d62728", label="q . k")
        ax.plot(d, [r[f"{key}_scaled"] for r in result["rows"]], "s-", color="#1f77b4",
                label="q . k / sqrt(d_k)")
        if uniform is not None:
            ax.axhline(uniform, color="grey", ls=":", label="uniform weights")
        ax.set(xscale="log", xlabel="d_k", title=title)
        ax.set_xticks(d, [str(x) for x in d])
        ax.grid(alpha=0.3)
    axes[3].set_ylim(bottom=0)
    axes[0].plot(d, d, color="grey", ls=":", label="d_k")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[1].legend()
    fig.suptitle(f"Why divide by sqrt(d_k): unit-variance q, k; {result['n_queries']} queries x "
                 f"{result['n_keys']} keys, seed {result['seed']}")
    names = ["scaling.json", "scaling.png"]
    fig.savefig(out / names[1], dpi=130)
    (out / names[0]).write_text(json.dumps({**result, "files": names}, indent=1))
    return names
