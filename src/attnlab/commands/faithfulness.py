"""attnlab faithfulness: does attention rank tokens the way interventions do? (Kendall tau / Spearman rho)"""

import json
from pathlib import Path

import numpy as np

from ..checks import int_arg

MODEL = "all-MiniLM-L6-v2"


def register(sub):
    p = sub.add_parser("faithfulness", help="attention / rollout vs leave-one-out and gradient x input",
                       description="Ranks the content tokens of each project sentence (attnlab/data/"
                                   "sentences.txt) by last-layer attention, rollout, leave-one-out and gradient x "
                                   "input, and reports Kendall tau and Spearman rho for every method pair. "
                                   "Runs the model in float64 (finite differences need it).")
    p.add_argument("--model", default=MODEL, help=f"BERT-family sentence encoder (default {MODEL})")
    p.add_argument("--sentences", help="a text file, one sentence per line (default: the project sentences)")
    p.add_argument("--limit", type=int_arg(1, 100_000), help="use only the first N sentences")
    p.add_argument("--out", help="folder for faithfulness.png and faithfulness.json")
    p.set_defaults(func=run)


def run(args):
    from .. import data, faithfulness, models

    from ..progress import Status

    texts = _texts(args.sentences, data)[: args.limit]
    folder = Path(args.out) if args.out else None
    if folder is not None:                 # an unusable --out fails now, not after a minute of computing
        folder.mkdir(parents=True, exist_ok=True)
    with Status("attnlab faithfulness") as status:
        status.step(f"loading {args.model} (float64)")
        model = models.load(args.model, dtype=np.float64)
        result = faithfulness.compare(model, texts, progress=lambda i, n, _: status.step(
            f"sentence {i + 1}/{n}: attention, rollout, leave-one-out, gradient x input"))
    print(f"{model.name}: {len(texts)} sentences, importance of content tokens ([CLS]/[SEP] excluded)\n")
    print(result.table())
    loo = result.pair("attention_cls", "leave_one_out").tau
    print(f"\nJain & Wallace (2019), BiLSTM attention vs leave-one-out: Kendall tau ~0 to 0.5. Here (transformer, "
          f"last-layer [CLS] attention vs leave-one-out): mean {loo.mean():.2f}, {np.mean(loo < 0.5):.0%} of "
          f"sentences below 0.5")
    mismatches = result.mismatches()
    print(f"\nmost-attended token ([CLS], last layer) != most influential token (leave-one-out): "
          f"{len(mismatches)}/{len(texts)} sentences")
    for text, attended, influential in mismatches:
        print(f"  attended {attended!r:<14} influential {influential!r:<14} {text}")
    if args.out:
        from ..viz import save

        print(f"wrote {save(faithfulness.figure(result), folder / 'faithfulness.png')}")
        summary = {"model": model.name, "sentences": len(texts),
                   "pairs": [dict(p.summary(), top1_same=result.top1_agreement(p.a, p.b)) for p in result.pairs],
                   "mismatches": [{"text": t, "attended": a, "influential": i} for t, a, i in mismatches]}
        path = folder / "faithfulness.json"
        path.write_text(json.dumps(summary, indent=1), encoding="utf-8")
        print(f"wrote {path}")


def _texts(path, data):
    if path is None:
        return data.sentences()
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    texts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not texts:
        raise ValueError(f"{path} has no sentences (one per line expected)")
    return texts
