"""Text written for attnlab's experiments (see sentences.txt)."""

from __future__ import annotations

from importlib import resources


def sentences() -> list[str]:
    """The project sentences: one per line of sentences.txt, '#' comment lines skipped.

    >>> len(sentences()) >= 50
    True
    """
    text = resources.files(__name__).joinpath("sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def passage() -> str:
    """A long passage of ordinary English prose (passage.txt, about 2,200 words in 20 paragraphs on unrelated
    subjects, none repeated): real text for the long-context probes. Paragraphs are separated by a blank line.

    >>> len(passage().split()) > 2000
    True
    """
    text = resources.files(__name__).joinpath("passage.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(lines).strip()
