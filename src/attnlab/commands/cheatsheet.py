"""attnlab cheatsheet: one page (PDF, PNG or Markdown) generated from the code."""


def register(sub):
    p = sub.add_parser("cheatsheet", help="one-page cheat sheet: formula, shapes, masks, MHA/MQA/GQA, cost")
    p.add_argument("--out", default="cheatsheet.pdf", help="cheatsheet.pdf | .png | .md (default cheatsheet.pdf)")
    p.set_defaults(func=run)


def run(args):
    from ..learn import cheatsheet

    path = cheatsheet.write(args.out)
    print(f"wrote {path.resolve()}")
