"""attnlab practice: exercises generated from a seed, checked, with feedback at the first wrong step."""

from pathlib import Path


def register(sub):
    from ..learn.practice import KINDS

    p = sub.add_parser("practice", help="exercises checked by the computer (softmax, masks, shapes, cost, ...)")
    p.add_argument("--kind", action="append", choices=list(KINDS),
                   help="exercise kind (repeat for several; default: one of each)")
    p.add_argument("--count", type=int, help="number of exercises (default: one per kind)")
    p.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same exercises (default 0)")
    p.add_argument("--answers", help="file with one answer per line: run without prompting")
    p.add_argument("--score-file", default="~/.attnlab/practice.json",
                   help="where the score is kept (default ~/.attnlab/practice.json)")
    p.add_argument("--show-solutions", action="store_true", help="print the exercises with their solutions")
    p.set_defaults(func=run)


def run(args):
    from ..learn import practice, session

    exercises = practice.exercises(args.seed, args.kind, args.count)
    if args.show_solutions:
        for ex in exercises:
            print(f"--- {ex.title} ---\n{ex.setup}")
            for part in ex.parts:
                print(f"{part.prompt}: {part.solution}")
        return 0
    answers = None
    if args.answers is not None:
        path = Path(args.answers)
        if not path.is_file():
            raise FileNotFoundError(f"--answers: no such file {args.answers!r}")
        answers = path.read_text().splitlines()
    session.run_session(exercises, seed=args.seed, read=input, answers=answers, score_file=args.score_file)
    return 0
