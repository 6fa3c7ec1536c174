"""A practice session: ask, read, check, give feedback, keep the score in a local JSON file.

Answers come from the prompt (``input``) or from a file, one line per answer (``--answers``). At the prompt an
answer that cannot be read, or an empty one, is asked again; ``skip`` skips a question and ``quit`` (or Ctrl-D)
ends the session, saving the score. From a file every line is final: an unreadable answer counts as wrong, an
empty line skips.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..checks import non_negative_int
from .practice import Exercise, InvalidAnswer, Verdict

DEFAULT_SCORE_FILE = Path("~/.attnlab/practice.json")


class Scorebook:
    """Totals per exercise kind and a short history, in a JSON file."""

    def __init__(self, path):
        self.path = Path(path).expanduser()
        self.data = {"totals": {}, "history": []}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ValueError(f"score file {self.path} is not valid JSON; move it away or pass --score-file")
            if not isinstance(data, dict) or not isinstance(data.get("totals"), dict):
                raise ValueError(f"score file {self.path} does not look like an attnlab score file")
            self.data = {"totals": data["totals"], "history": list(data.get("history", []))}

    def record(self, kind: str, correct: bool, seed: int) -> None:
        total = self.data["totals"].setdefault(kind, {"right": 0, "asked": 0})
        total["asked"] += 1
        total["right"] += int(correct)
        self.data["history"] = (self.data["history"] + [{"time": int(time.time()), "kind": kind, "seed": seed,
                                                          "correct": bool(correct)}])[-500:]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def summary(self) -> str:
        rows = [f"  {kind:<8} {t['right']}/{t['asked']}" for kind, t in sorted(self.data["totals"].items())]
        return "All-time score (" + str(self.path) + "):\n" + ("\n".join(rows) if rows else "  nothing yet")


class _Quit(Exception):
    pass


def _check_session(exercises, seed, read, answers, write, score_file) -> None:
    """run_session's arguments, checked before the score file is touched or anything is asked."""
    if not isinstance(exercises, (list, tuple)) or not all(isinstance(ex, Exercise) for ex in exercises):
        raise TypeError(f"exercises must be a list of practice Exercises (practice.exercises(...)), got "
                        f"{type(exercises).__name__}")
    non_negative_int(seed, "seed")
    if answers is not None and (not isinstance(answers, (list, tuple)) or
                                not all(isinstance(a, str) for a in answers)):
        raise TypeError(f"answers must be a list of answer lines (strings) or None, got {type(answers).__name__}")
    if answers is None and not callable(read):
        raise TypeError(f"read must be a function read(prompt) -> line (e.g. input) when no answers are given, got "
                        f"{type(read).__name__}")
    if not callable(write):
        raise TypeError(f"write must be a function of one text (e.g. print), got {type(write).__name__}")
    if not isinstance(score_file, (str, os.PathLike)) or not str(score_file):
        raise TypeError(f"score_file must be a file path, got {type(score_file).__name__} {score_file!r}"[:200])


def run_session(exercises, *, seed: int, read=None, answers=None, write=print, score_file=DEFAULT_SCORE_FILE):
    """Ask every part of every exercise; ``read(prompt)`` at the prompt or ``answers`` (a list of lines).

    Returns (right, asked) for this session; the score file is updated even when the session ends early.
    """
    _check_session(exercises, seed, read, answers, write, score_file)
    book = Scorebook(score_file)
    right = asked = 0
    lines = iter(answers) if answers is not None else None
    try:
        for number, ex in enumerate(exercises, 1):
            write(f"\n--- Exercise {number}/{len(exercises)}: {ex.title} ---\n{ex.setup}")
            for part in ex.parts:
                verdict = _ask(part, read, lines, write)
                if verdict is None:
                    write("(skipped)")
                    continue
                asked += 1
                right += verdict.correct
                book.record(ex.kind, verdict.correct, seed)
                write(("correct. " if verdict.correct else "wrong. ") + verdict.message)
    except _Quit:
        write("\nStopping here.")
    finally:
        book.save()
    write(f"\nThis session: {right}/{asked} right.\n{book.summary()}")
    return right, asked


def _ask(part, read, lines, write) -> Verdict | None:
    """One part: a Verdict, or None when skipped. Raises _Quit at the end of input or on "quit"."""
    prompt = f"{part.prompt}> "
    while True:
        if lines is not None:
            text = next(lines, None)
            if text is None:
                raise _Quit
            write(prompt + text)
        else:
            try:
                text = read(prompt)
            except EOFError:
                write("")
                raise _Quit from None
        text = text.strip()
        if text.lower() in ("quit", "exit", "q"):
            raise _Quit
        if text.lower() == "skip" or (not text and lines is not None):
            return None
        if not text:
            write("(empty answer: type an answer, 'skip' to skip, 'quit' or Ctrl-D to stop)")
            continue
        try:
            return part.check(text)
        except InvalidAnswer as err:
            if lines is not None:
                return Verdict(False, f"could not read the answer: {err}")
            write(f"(could not read that: {err}; try again, or 'skip')")
