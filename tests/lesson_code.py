"""Run a lesson's own code cells in a test, so the lesson and fedutils cannot drift apart.

A test names a cell by a marker it contains (a function it defines, a comment), runs the lesson's
setup cell first, and then those cells, on small data it passes in by name.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
SETUP_MARKER = "fedutils.set_seed(0)"


def cell_source(notebook: Path, marker: str, unique: bool = False) -> str:
    """Source of the first code cell of `notebook` that contains `marker` (with `unique`, of
    the only one: a marker that matches two cells fails instead of picking one)."""
    cells = nbformat.read(notebook, as_version=4).cells
    found = [c.source for c in cells if c.cell_type == "code" and marker in c.source]
    assert found, f"no code cell of {notebook.name} contains {marker!r}"
    assert not unique or len(found) == 1, \
        f"expected one cell of {notebook.name} with {marker!r}, found {len(found)}"
    return found[0]


def run_cells(notebook: Path, *markers: str, **names) -> dict:
    """Run the lesson's setup cell, then the cells holding `markers`, with `names` defined;
    return the resulting namespace."""
    namespace: dict = {}
    exec(compile(cell_source(notebook, SETUP_MARKER), "setup", "exec"), namespace)
    namespace.update(names)
    for marker in markers:
        exec(compile(cell_source(notebook, marker), f"{notebook.name}: {marker}", "exec"),
             namespace)
    return namespace
