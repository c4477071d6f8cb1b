#!/usr/bin/env python
"""Move the lessons' first-line markers to cell tags, the notebook standard.

    # SOLUTION            -> tag solution            (student copies drop the cell)
    # CHECK               -> tag check               (the exercise's self-check)
    # NBVAL_SKIP          -> tag nbval-skip          (nbval's own tags)
    # NBVAL_CHECK_OUTPUT  -> tag nbval-check-output

A code cell whose first non-blank line is a marker loses that line (and the blank lines next to
it) and gains the tag, once. Running the script again changes nothing. `--check` changes nothing
and exits 1 naming the notebooks that still use a marker (a test runs it after the migration).

    python scripts/tag_cells.py [notebook ...]           # default: every lesson, in place
    python scripts/tag_cells.py --check [notebook ...]
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import nbformat

from course import MARKERS, first_line, lesson_paths

TAG_OF = {marker: tag for tag, marker in MARKERS.items()}


def leading_marker(cell) -> str | None:
    """The tag whose marker is this code cell's first non-blank line, if any."""
    if cell.cell_type != "code":
        return None
    return TAG_OF.get(first_line(cell))


def retag(cell) -> list[str]:
    """Move every leading marker of `cell` to its tags; return the tags it moved."""
    moved = []
    while (tag := leading_marker(cell)) is not None:
        lines = cell.source.split("\n")
        marker_line = next(i for i, line in enumerate(lines) if line.strip())
        cell.source = "\n".join(lines[marker_line + 1:]).lstrip("\n")
        tags = cell.metadata.setdefault("tags", [])
        if tag not in tags:
            tags.append(tag)
        moved.append(tag)
    return moved


def markers_in(nb, skip_tag: str | None = None) -> Counter:
    """How many cells of `nb` still start with each marker (cells tagged `skip_tag` aside)."""
    return Counter(tag for cell in nb.cells
                   if skip_tag not in cell.metadata.get("tags", [])
                   and (tag := leading_marker(cell)) is not None)


def convert(nb) -> Counter:
    """Retag every cell of `nb` in place; return how many markers of each kind moved."""
    return Counter(tag for cell in nb.cells for tag in retag(cell))


def write(nb, path: Path) -> None:
    text = nbformat.writes(nb)
    path.write_text(text if text.endswith("\n") else text + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every lesson")
    parser.add_argument("--check", action="store_true", help="report, do not write")
    args = parser.parse_args()
    paths = args.notebooks or lesson_paths()
    pending = {}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        found = markers_in(nb)
        if not found:
            continue
        pending[path.name] = found
        if not args.check:
            convert(nb)
            write(nb, path)

    def summary(counts: Counter) -> str:
        return ", ".join(f"{MARKERS[tag]} x{n}" for tag, n in sorted(counts.items()))

    if args.check:
        if pending:
            print("first-line markers still in use (run scripts/tag_cells.py):")
            for name, found in pending.items():
                print(f"  {name}: {summary(found)}")
            return 1
        print(f"all {len(paths)} notebooks use cell tags")
        return 0
    for name, found in pending.items():
        print(f"{name}: moved {summary(found)} to tags")
    print(f"retagged {len(pending)} of {len(paths)} notebooks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
