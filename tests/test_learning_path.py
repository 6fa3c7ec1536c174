"""docs/learning-path.md, the walk through the study guide's 15 to-do items: every item there in the guide's order
with a score of at least 4/5 (the summary table agreeing with each section), every command it tells a learner to
run still parses with attnlab's own parser, and its script prints what the page says (the rules of test_notes)."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from attnlab.cli import build_parser
from test_notes import BLOCK, shape_of

PAGE = Path(__file__).resolve().parents[1] / "docs" / "learning-path.md"
TEXT = PAGE.read_text()
ITEMS = [   # the study guide's to-do list, in its order: Learn, Practice, Build
    "Understand queries, keys, values, scores, and normalized attention weights",
    "Learn why attention solved the fixed-vector bottleneck in early Seq2Seq models",
    "Study self-attention, cross-attention, and causal attention as distinct information-flow patterns",
    "Understand why scaling stabilizes dot-product attention",
    "Learn why full attention becomes expensive as sequence length grows",
    "Work through a tiny attention example by hand and compute the softmax weights",
    "Draw a toy attention matrix and mark which entries are blocked by a causal mask",
    "Explain in your own words how multi-head attention differs from single-head attention",
    "Compare additive attention and dot-product attention in one paragraph",
    "Estimate how attention cost changes when sequence length doubles",
    "Create a small script that computes scaled dot-product attention for toy vectors",
    "Build a visualization that shows how a causal mask changes the attention matrix",
    "Write a short note explaining when self-attention and cross-attention are used",
    "Summarize one long-context efficiency idea such as sparse attention, MQA, GQA, or FlashAttention",
    "Make a one-page cheat sheet of the attention formula, shapes, and mask types",
]


def sections() -> dict[int, str]:
    parts = re.split(r"^### (\d+)\. ", TEXT, flags=re.M)
    return {int(n): body for n, body in zip(parts[1::2], parts[2::2])}


def test_every_item_in_order_at_4_of_5_or_better():
    found = sections()
    assert sorted(found) == list(range(1, 16))
    table = {int(n): int(s) for n, s in re.findall(r"^\| (\d+) \|.*\| (\d)/5 \|$", TEXT, flags=re.M)}
    assert sorted(table) == list(range(1, 16))
    for n, title in enumerate(ITEMS, 1):
        body = found[n]
        assert body.startswith(title + "\n"), n
        scores = re.findall(r"Score\s+(\d)/5", body)
        assert len(scores) == 1, f"item {n} must give one score"
        assert int(scores[0]) == table[n] >= 4, n
        assert "What it checks:" in body and "```" in body, n
        if int(scores[0]) < 5:                         # a score below 5 says exactly what keeps it there
            assert re.search(r"Score\s+4/5:\s+\S", body), n
        assert "```\nattnlab " in body or "```python\n" in body, f"item {n} names no command to run"


def fenced_blocks():
    """(language, lines) of every fenced block, fences paired in order (a bare fence has language "")."""
    block, lang = None, ""
    for line in TEXT.splitlines():
        if line.startswith("```"):
            if block is None:
                block, lang = [], line[3:].strip()
            else:
                yield lang, block
                block = None
        elif block is not None:
            block.append(line)
    assert block is None, "an unclosed fence"


def commands():
    for lang, lines in fenced_blocks():
        if lang == "" and lines and all(line.startswith("attnlab ") for line in lines):
            yield from lines


@pytest.mark.parametrize("line", sorted(set(commands())))
def test_every_command_parses(line):
    """Parse only (nothing runs): a renamed subcommand or option fails here before a learner meets it."""
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert args.command == shlex.split(line)[1]


def test_the_script_prints_what_the_page_says():
    namespace, checked, last = {}, 0, None
    for m in BLOCK.finditer(TEXT):
        kind, body = m.groups()
        if kind == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(body, f"{PAGE.name} python block", "exec"), namespace)
            last = out.getvalue()
        elif last is not None:
            assert shape_of(body) == shape_of(last)
            checked += 1
    assert checked == 1
    assert "attnlab equals the formula: True" in last and "torch equals the formula:   True" in last
