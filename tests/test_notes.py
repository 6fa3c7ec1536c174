"""docs/notes and docs/integrations: every ```python block runs (in order, one namespace per page); printed results
keep their shape. Every .md in docs/integrations is picked up (one page per integration), docs/notes/README.md is
the notes' index.

A ```text block after a ```python block is what that block printed on the development machine; one after a line
"Printed by the snippets above" is what all blocks so far printed. Numbers may differ between machines (timings,
last digits), so the check compares the text with every number replaced by '#': a renamed field, a changed format, a
missing line or a snippet that no longer prints the same thing fails the test.
"""

import contextlib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
NOTES = DOCS / "notes"
INTEGRATIONS = DOCS / "integrations"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in [*NOTES.glob("*.md"), *INTEGRATIONS.glob("*.md")]
               if p.name != "README.md")
BLOCK = re.compile(r"```(python|text)\n(.*?)```", re.S)
NUMBER = re.compile(r"[-+]?(\d+(,\d{3})*(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def shape_of(text: str) -> list[str]:
    return [" ".join(NUMBER.sub("#", line).split()) for line in text.strip().splitlines()]


def test_every_note_is_there():
    names = {p.name for p in NOTES.glob("*.md")}
    assert {"self-cross-causal.md", "additive-vs-dot.md", "scaling.md", "local-sparse.md", "mqa.md", "gqa.md",
            "flashattention.md"} <= names
    index = (NOTES / "README.md").read_text()
    assert all(name in index for name in names - {"README.md"})


def test_every_integration_page_is_there():
    assert {"dtypes.md", "flex.md", "jax.md"} <= {p.name for p in INTEGRATIONS.glob("*.md")}


@pytest.mark.parametrize("note", PAGES)
def test_snippets_run_and_print_what_the_note_says(note):
    text = (DOCS / note).read_text()
    namespace, printed_so_far, last_end, last_output, checked = {}, "", None, None, 0
    blocks = list(BLOCK.finditer(text))
    assert any(m.group(1) == "python" for m in blocks), f"{note} has no runnable snippet"
    for i, m in enumerate(blocks):
        kind, body = m.groups()
        if kind == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(body, f"{note} block {i}", "exec"), namespace)
            last_output, last_end = out.getvalue(), m.end()
            printed_so_far += last_output
            continue
        if last_end is None:
            continue
        if "Printed by the snippets above" in text[last_end:m.start()]:
            assert shape_of(body) == shape_of(printed_so_far), f"{note}: the printed summary (block {i}) changed"
        else:
            assert shape_of(body) == shape_of(last_output), f"{note}: output of the snippet before block {i} changed"
        checked += 1
    assert checked >= 1, f"{note}: no printed result is checked"
