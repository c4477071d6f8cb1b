"""Run a lesson's own code cells in a test, so the lesson and fedutils cannot drift apart.

A test names a cell by its name tag, a cell tag in the notebook's metadata saying what the cell
holds (`dp-sgd-by-hand`, `exercise-2-check`), runs the lesson's `setup` cell first, and then
those cells, on small data it passes in by name. A name tag belongs to exactly one code cell;
`exercise-N-solution` and `exercise-N-check` cells also carry the role tag `solution` or `check`.
Role tags (scripts/course.py MARKERS) and the stamp script's tag are not names.
"""
from __future__ import annotations

import linecache
import re
import sys
from functools import lru_cache
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))
from course import MARKERS, STAMP_TAG  # noqa: E402

SETUP = "setup"
NOT_NAMES = frozenset({*MARKERS, STAMP_TAG})
EXERCISE_ROLE = re.compile(r"^exercise-\d+-(solution|check)$")


@lru_cache(maxsize=32)
def _code_cells(notebook: Path, _version: tuple) -> tuple:
    return tuple(c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code")


def code_cells(notebook: Path) -> tuple:
    """The code cells of `notebook`, read once per version of the file."""
    stat = Path(notebook).stat()
    return _code_cells(Path(notebook), (stat.st_mtime_ns, stat.st_size))


def name_tags(cell) -> list[str]:
    """The tags of `cell` that name it (not its roles)."""
    return [t for t in cell.metadata.get("tags", []) if t not in NOT_NAMES]


def tagged_cell(notebook: Path, tag: str):
    """The one code cell of `notebook` tagged `tag`; fails clearly if none or several do, or if
    an exercise cell lacks the role its name says."""
    cells = code_cells(notebook)
    found = [c for c in cells if tag in c.metadata.get("tags", [])]
    if len(found) != 1:
        names = sorted({t for c in cells for t in name_tags(c)})
        raise AssertionError(f"expected one code cell of {Path(notebook).name} tagged {tag!r}, "
                             f"found {len(found)}; its name tags: {', '.join(names)}")
    role = EXERCISE_ROLE.match(tag)
    assert not role or role.group(1) in found[0].metadata["tags"], \
        f"{Path(notebook).name}: the cell tagged {tag!r} lacks the role tag {role.group(1)!r}"
    return found[0]


def cell_source(notebook: Path, tag: str) -> str:
    """Source of the one code cell of `notebook` tagged `tag`."""
    return tagged_cell(notebook, tag).source


def exec_cells(notebook: Path, namespace: dict, *tags: str) -> dict:
    """Execute the cells tagged `tags`, in order, in `namespace` (no setup cell); return it."""
    for tag in tags:
        source, filename = cell_source(notebook, tag), f"{Path(notebook).name}[{tag}]"
        # Kept in linecache, as IPython keeps each cell's code: tracebacks show the lines, and
        # tf.function's AutoGraph can read a function's source to convert its `for` loops.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), namespace)
    return namespace


def solved(notebook: Path, namespace: dict, number: int) -> dict:
    """A copy of `namespace` after exercise `number`'s solution cell."""
    return exec_cells(notebook, dict(namespace), f"exercise-{number}-solution")


def check(notebook: Path, namespace: dict, number: int) -> None:
    """Run exercise `number`'s check cell on a copy of `namespace` (left unchanged)."""
    exec_cells(notebook, dict(namespace), f"exercise-{number}-check")


def run_cells(notebook: Path, *tags: str, **names) -> dict:
    """Run the lesson's `setup` cell, then the cells tagged `tags`, with `names` defined;
    return the resulting namespace."""
    namespace: dict = {}
    exec_cells(notebook, namespace, SETUP)
    namespace.update(names)
    return exec_cells(notebook, namespace, *tags)

