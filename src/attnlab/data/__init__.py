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
