#!/usr/bin/env python
"""Write student copies of the lessons: solutions removed, outputs cleared.

A solution is a code cell whose first line is `# SOLUTION`; it becomes an empty cell that says
where to write the answer. Exercise prompts and the `# CHECK` cells that test the answer stay.

    python scripts/student_copies.py [--out build/student]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from course import ROOT, lesson_paths
PLACEHOLDER = "# Your solution here: the next cell checks it.\n"


def is_solution(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith("# SOLUTION")


def student_copy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of `nb` without solutions or outputs."""
    nb = nbformat.from_dict(nb)
    cells = []
    for cell in nb.cells:
        if is_solution(cell):
            blank = nbformat.v4.new_code_cell(PLACEHOLDER)
            blank["id"] = cell.get("id", blank["id"])
            cells.append(blank)
            continue
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    nb.cells = cells
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "student")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lessons = lesson_paths()
    for path in lessons:
        nb = student_copy(nbformat.read(path, as_version=4))
        nbformat.write(nb, args.out / path.name)
    print(f"wrote {len(lessons)} student copies to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
