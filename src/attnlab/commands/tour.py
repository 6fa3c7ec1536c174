"""attnlab tour: the guided journey (what ``make demo`` runs)."""

from ..learn import tour


def register(sub):
    p = sub.add_parser("tour", help="guided tour of attention, from the bottleneck to real model heads")
    p.add_argument("--section", help=f"run one section: {', '.join(tour.SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer samples")
    p.add_argument("--no-figures", action="store_true", help="write no figures (the report is still written)")
    p.add_argument("--out", default="attnlab-tour", help="output folder (default ./attnlab-tour/)")
    p.set_defaults(func=run)


def run(args):
    tour.run(section=args.section, quick=args.quick, figures=not args.no_figures, out_dir=args.out)
