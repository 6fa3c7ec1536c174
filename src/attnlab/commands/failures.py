"""attnlab failure-modes: diffuse / over-concentrated heads, attention sinks and position sensitivity of a real
model, as tables and figures (docs/failure-modes.md shows the output)."""

from pathlib import Path

from ..checks import int_arg

MODEL = "all-MiniLM-L6-v2"


def register(sub):
    p = sub.add_parser("failure-modes", help="diffuse/concentrated heads, sinks, position sensitivity of a model",
                       description="Measures three failure modes of attention on the project sentences "
                                   "(attnlab/data/sentences.txt) and writes failure-heads.png, failure-sinks.png "
                                   "and failure-position.png to --out.")
    p.add_argument("--model", default=MODEL, help=f"BERT-family model name or directory (default {MODEL})")
    p.add_argument("--out", default=".", help="folder for the figures (default: the current folder)")
    p.add_argument("--limit", type=int_arg(1, 100_000), help="use only the first N sentences")
    p.add_argument("--max-phrases", type=int, default=20, help="filler phrases in the position sweep (default 20)")
    p.set_defaults(func=run)


def run(args):
    from .. import data, diagnostics, models
    from ..models import probes
    from ..viz import save

    model = models.load(args.model)
    if model.causal:
        raise ValueError(f"failure-modes reads [CLS]/[SEP] sinks of a BERT-family encoder; {args.model} is causal")
    texts = data.sentences()[: args.limit]
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)

    survey = probes.head_survey(model, texts)
    print(f"{model.name}, {survey.texts} sentences. Failure flags (diffuse: entropy >= "
          f"{diagnostics.DIFFUSE_ENTROPY}; over_concentrated: top1 >= {diagnostics.CONCENTRATED_TOP1} with no "
          f"recognised function) and sink heads (type: [CLS]+[SEP] mass >= {diagnostics.SINK_MASS}, a function, "
          f"not a failure): heads on more than half of the sentences")
    for flag in ("diffuse", "over_concentrated", "sink"):
        frac = getattr(survey, flag)
        heads = [f"{diagnostics.head_id(l, h)} ({frac[l, h]:.0%})" for l, h in zip(*(frac > 0.5).nonzero())]
        print(f"  {flag:<17} {len(heads):>2}/{frac.size}: {', '.join(heads) or '-'}")
        print(f"  {'':<17} mean over heads and sentences: {frac.mean():.1%} of (head, sentence) pairs "
              f"{'typed' if flag == 'sink' else 'flagged'}")
    print(f"wrote {save(probes.survey_figure(survey), folder / 'failure-heads.png')}")

    sinks = probes.sink_breakdown(model, texts)
    print("\nmean attention mass per layer:  " + "  ".join(f"{k}" for k in sinks))
    for layer in range(model.n_layers):
        print(f"  layer {layer}: " + "  ".join(f"{v[layer]:.3f}" for v in sinks.values()))
    print(f"wrote {save(probes.sinks_figure(sinks), folder / 'failure-sinks.png')}")

    sweep = probes.position_sweep(model, args.max_phrases)
    best = probes.best_heads(sweep)
    print("\nverb -> subject weight by distance (mean over heads per layer | per layer the head with the most weight at distance > 1):")
    print("  dist   L  uniform " + " ".join(f"   L{l}" for l in range(model.n_layers)) + " | "
          + " ".join(f"{diagnostics.head_id(l, h):<6}" for l, h in enumerate(best)))
    for i, d in enumerate(sweep.distance):
        print(f"  {d:>4.1f} {sweep.length[i]:>3.0f}  {1 / sweep.length[i]:.3f}  "
              + " ".join(f"{v:.3f}" for v in sweep.weight[i].mean(-1)) + " | "
              + " ".join(f"{sweep.weight[i, l, h]:<6.3f}" for l, h in enumerate(best)))
    print(f"wrote {save(probes.position_figure(sweep), folder / 'failure-position.png')}")
