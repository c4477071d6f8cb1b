#!/usr/bin/env python
"""Write student copies of the lessons with nbconvert: solutions removed, outputs cleared.

nbconvert's TagRemovePreprocessor drops every cell tagged `solution` and its
ClearOutputPreprocessor clears outputs and execution counts. Exercise prompts and the `check`
cells that test an answer stay: a learner adds a cell under the prompt, then runs the check (or
`make check-my-work NOTEBOOK=...`, which grades every exercise).

    python scripts/student_copies.py [--out build/student] [notebook ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbconvert import NotebookExporter
from nbconvert.preprocessors import ClearOutputPreprocessor, TagRemovePreprocessor

from course import ROOT, lesson_paths


def exporter() -> NotebookExporter:
    """A notebook-to-notebook exporter that removes solutions and clears outputs."""
    out = NotebookExporter()
    out.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={"solution"}), enabled=True)
    out.register_preprocessor(ClearOutputPreprocessor(), enabled=True)
    return out


def student_copy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of `nb` without solutions or outputs (`nb` itself is left as it is)."""
    text, _ = exporter().from_notebook_node(nbformat.from_dict(nb))
    return nbformat.reads(text, as_version=4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every lesson")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "student")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = args.notebooks or lesson_paths()
    for path in paths:
        nbformat.write(student_copy(nbformat.read(path, as_version=4)), args.out / path.name)
    print(f"wrote {len(paths)} student copies to {args.out}")
    print("In each copy, answer an exercise in a new cell under its prompt, then run the check "
          "cell below it, or grade them all: make check-my-work NOTEBOOK=<copy>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
