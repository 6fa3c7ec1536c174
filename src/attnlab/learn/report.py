"""Where the tour writes: the terminal (rich tables, coloured matrices) and an ``index.html`` report beside the
figures, built from the same blocks so the two never differ.

Every piece of text that reaches the HTML goes through ``html.escape``; figures are referenced by relative file
name, so the folder can be moved or zipped and still opens offline.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._format import sig

CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
pre { background: #f6f6f6; padding: .6em .8em; overflow-x: auto; font-size: 13px; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
caption { text-align: left; font-weight: 600; padding: .3em 0; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
.next { background: #eef6ee; border-left: 4px solid #4a4; padding: .4em .8em; font-family: monospace; }
.missing { background: #fff4e5; border-left: 4px solid #e90; padding: .4em .8em; }
nav li { display: inline; margin-right: 1em; }
"""


@dataclass
class Section:
    name: str
    title: str
    blocks: list = field(default_factory=list)   # (kind, payload) in order


class Report:
    """Collects the tour's output; prints each block as it comes and writes ``index.html`` at the end.

    ``console``: a rich Console (None: a plain one is made). ``out_dir``: where figures and the report go, or
    None to write nothing (``--no-figures`` still writes the report, with no images).
    """

    def __init__(self, out_dir: Path | None, *, figures: bool = True, console=None):
        from rich.console import Console

        self.console = console or Console(highlight=False)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.figures = figures and self.out_dir is not None
        self.sections: list[Section] = []
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    # --- blocks ---------------------------------------------------------------------------------------------
    def section(self, name: str, title: str) -> None:
        from rich.rule import Rule

        self.sections.append(Section(name, title))
        self.console.print(Rule(f"[bold]{len(self.sections)}. {title}[/bold]", style="cyan"))

    def _add(self, kind, payload):
        self.sections[-1].blocks.append((kind, payload))

    def say(self, text: str) -> None:
        self._add("text", text)
        self.console.print(text, markup=False)

    def code(self, text: str) -> None:
        self._add("pre", text)
        self.console.print(text, markup=False, style="dim")

    def table(self, title: str, columns, rows) -> None:
        from rich.table import Table

        rows = [[str(c) for c in row] for row in rows]
        self._add("table", (title, [str(c) for c in columns], rows))
        self.console.print(title, style="bold", markup=False)
        t = Table(header_style="bold")
        for i, c in enumerate(columns):
            t.add_column(str(c), justify="left" if i == 0 else "right")
        for row in rows:
            t.add_row(*row)
        self.console.print(t)

    def matrix(self, title: str, values, row_labels=None, col_labels=None, *, heat: bool = False) -> None:
        """A matrix with 4 significant digits; ``heat`` colours cells by value (weights in [0, 1])."""
        from rich.table import Table
        from rich.text import Text

        a = np.atleast_2d(np.asarray(values, dtype=np.float64))
        rows_l = row_labels or [str(i) for i in range(a.shape[0])]
        cols_l = col_labels or [str(j) for j in range(a.shape[1])]
        cells = [[sig(x) for x in row] for row in a]
        self._add("table", (title, [""] + list(cols_l), [[r] + c for r, c in zip(rows_l, cells)]))
        self.console.print(title, style="bold", markup=False)
        t = Table(header_style="bold", show_edge=False, pad_edge=False)
        t.add_column("")
        for c in cols_l:
            t.add_column(str(c), justify="right")
        for label, row, vals in zip(rows_l, cells, a):
            t.add_row(str(label), *[Text(c, style=_heat_style(x) if heat else "") for c, x in zip(row, vals)])
        self.console.print(t)

    def figure(self, filename: str, make) -> None:
        """Save the Figure ``make()`` returns as ``filename`` (PNG) in the output folder; skipped, and said so,
        with --no-figures."""
        if not self.figures:
            return
        from ..viz import save

        fig = make()
        path = save(fig, self.out_dir / filename)
        self._add("image", filename)
        self.console.print(f"  figure: {path}", style="green", markup=False)

    def image(self, filename: str) -> None:
        """An image another function already wrote into the output folder."""
        if not (self.out_dir / filename).is_file():
            raise FileNotFoundError(f"expected the figure {self.out_dir / filename}")
        self._add("image", filename)
        self.console.print(f"  figure: {self.out_dir / filename}", style="green", markup=False)

    def link(self, filename: str, text: str) -> None:
        """A link to a page another function wrote into the output folder (the explorer)."""
        if not (self.out_dir / filename).is_file():
            raise FileNotFoundError(f"expected the page {self.out_dir / filename}")
        self._add("link", (filename, text))
        self.console.print(f"  page: {self.out_dir / filename}  ({text})", style="green", markup=False)

    def missing(self, what: str, how: str) -> None:
        """A dependency this part needs is not installed: say so (never a silent skip)."""
        text = f"{what} not installed: {how}"
        self._add("missing", text)
        self.console.print(f"  [skipped] {text}", style="yellow", markup=False)

    def next(self, call: str) -> None:
        self._add("next", call)
        self.console.print(f"Next: {call}", style="bold green", markup=False)

    # --- the HTML page -------------------------------------------------------------------------------------
    def write_html(self) -> Path | None:
        if self.out_dir is None:
            return None
        e = html.escape
        parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                 "<title>attnlab tour</title>", f"<style>{CSS}</style></head><body>",
                 "<h1>attnlab tour</h1><p>Attention from the fixed-vector bottleneck to real model heads, "
                 "every number computed by attnlab on this machine.</p><nav><ol>"]
        parts += [f'<li><a href="#{e(s.name)}">{e(s.title)}</a></li>' for s in self.sections]
        parts.append("</ol></nav>")
        for n, s in enumerate(self.sections, 1):
            parts.append(f'<section id="{e(s.name)}"><h2>{n}. {e(s.title)}</h2>')
            parts += [_block_html(kind, payload) for kind, payload in s.blocks]
            parts.append("</section>")
        parts.append("</body></html>")
        path = self.out_dir / "index.html"
        path.write_text("\n".join(parts), encoding="utf-8")
        return path


def _block_html(kind, payload) -> str:
    e = html.escape
    if kind == "text":
        return "".join(f"<p>{e(p)}</p>" for p in payload.split("\n\n"))
    if kind == "pre":
        return f"<pre>{e(payload)}</pre>"
    if kind == "table":
        title, columns, rows = payload
        head = "".join(f"<th>{e(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><caption>{e(title)}</caption><tr>{head}</tr>{body}</table>"
    if kind == "image":
        return f'<img src="{e(payload)}" alt="{e(payload)}">'
    if kind == "link":
        return f'<p><a href="{e(payload[0])}">{e(payload[1])}</a></p>'
    if kind == "missing":
        return f'<p class="missing">{e(payload)}</p>'
    if kind == "next":
        return f'<p class="next">Next: {e(payload)}</p>'
    raise AssertionError(f"unknown block kind {kind!r}")



def _heat_style(x: float) -> str:
    """White to blue by value in [0, 1]; dark text stays readable."""
    if not np.isfinite(x):
        return "dim"
    t = float(np.clip(x, 0.0, 1.0))
    r, g, b = (int(255 - t * (255 - c)) for c in (66, 133, 244))
    return f"black on #{r:02x}{g:02x}{b:02x}"


def plain_console(width: int = 110):
    """A rich Console writing plain text into a buffer (tests, ``out=`` callers)."""
    from rich.console import Console

    return Console(file=io.StringIO(), width=width, color_system=None, highlight=False)
