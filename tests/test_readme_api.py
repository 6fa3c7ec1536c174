"""The README's API table names only what exists: every code name in it resolves to an attribute of attnlab (a
function, class or module, as the row says)."""

import importlib
import inspect
import re
from pathlib import Path

import attnlab

README = Path(__file__).resolve().parents[1] / "README.md"
NAME = re.compile(r"^\.?[A-Za-z_][\w.]*(\(.*\))?$")


def _rows():
    text = README.read_text()
    table = text[text.index("## The public API"):].split("\n\n", 2)[1]
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        yield [re.findall(r"`([^`]+)`", c) for c in cells]


def _resolve(dotted, owners):
    """The object ``dotted`` names: from attnlab, from one of the row's modules, or on one of its objects."""
    method = dotted.startswith(".")    # ".to_array": on what the row's functions return, or in the row's module
    dotted = dotted.split("(")[0].lstrip(".").removeprefix("attnlab.")
    bases = [attnlab, *owners]
    if method:
        bases = owners + [c for m in owners if inspect.ismodule(m) for _, c in inspect.getmembers(m, inspect.isclass)]
    for base in bases:
        obj = base
        try:
            for part in dotted.split("."):
                obj = getattr(obj, part) if hasattr(obj, part) else importlib.import_module(f"{obj.__name__}.{part}")
            return obj
        except (AttributeError, ImportError, TypeError):
            continue
    return None


def test_every_name_in_the_api_table_exists():
    missing, checked = [], 0
    for name_cell, what_cell in _rows():
        owners = []
        for span in name_cell + [s for s in what_cell if NAME.match(s) and "=" not in s]:
            for name in re.split(r"\s*\\?\|\s*|,\s*(?![^(]*\))", span):
                if not NAME.match(name) or name.startswith('"'):
                    continue
                obj = _resolve(name, owners)
                if obj is None:
                    missing.append(name)
                    continue
                checked += 1
                owners.append(obj if inspect.ismodule(obj) or inspect.isclass(obj) else inspect.getmodule(obj))
    assert checked > 40
    assert not missing, f"the README's API table names what does not exist: {missing}"


def test_the_explorer_is_named_as_the_module_it_is():
    text = README.read_text()
    assert "module `attnlab.viz.explorer`" in text
    assert inspect.ismodule(_resolve("attnlab.viz.explorer", []))
