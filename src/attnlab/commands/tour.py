"""attnlab tour: the guided journey (what ``make demo`` runs)."""

from ..learn import tour


def register(sub):
    p = sub.add_parser("tour", help="guided tour of attention, from Q/K/V to real models")
    p.add_argument("--section", help=f"run one section: {', '.join(tour.SECTIONS)}")
    p.set_defaults(func=run)


def run(args):
    tour.run(section=args.section)
