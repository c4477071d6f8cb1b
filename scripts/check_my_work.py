#!/usr/bin/env python
"""Grade a learner's copy of a lesson as an autograder does: run it, then report each exercise.

The notebook is executed top to bottom in a fresh kernel (errors do not stop the run; the file
itself is not changed). Each `check` cell grades the exercise before it, in order: the answer is
the code the learner wrote between the exercise's prompt (the markdown cell above) and its check
(cells that the lesson itself has there, known by their cell ids, are not part of it).

- passed:         the check ran without an error;
- failed:         the check (or the answer) raised an error; its message is shown;
- not attempted:  no answer cell, or the answer still raises NotImplementedError, or the check
                  stops at a NameError (the name the exercise asks for was never defined).

    python scripts/check_my_work.py build/student/02_core_principles.ipynb [--kernel NAME]
    make check-my-work NOTEBOOK=build/student/02_core_principles.ipynb
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from course import KERNEL, LESSONS, MODERN_KERNEL, has_role, is_modern

PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"
UNANSWERED = ("NotImplementedError", "NameError")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Exercise:
    """One exercise of a notebook: its answer cells and its check cell (indices into cells)."""
    number: int
    answer: list[int]
    check: int


@dataclass
class Result:
    number: int
    status: str
    message: str = ""


def has_code(cell) -> bool:
    """Whether a code cell holds more than blank lines and comments."""
    return any(line.strip() and not line.strip().startswith("#")
               for line in cell.source.splitlines())


def lesson_cell_ids(name: str) -> set[str]:
    """Ids of the cells of lessons/<name> other than its solutions (student copies keep them):
    the code a learner did not write."""
    path = LESSONS / name
    if not path.is_file():
        return set()
    return {c.get("id") for c in nbformat.read(path, as_version=4).cells
            if not has_role(c, "solution")} - {None}


def exercises(nb, lesson_ids: set[str] = frozenset()) -> list[Exercise]:
    """The exercises of `nb`, one per check cell, in order; `lesson_ids` are cells that belong
    to the lesson, not to an answer."""
    found, start = [], 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            start = index + 1
        elif has_role(cell, "check"):
            answer = [i for i in range(start, index)
                      if nb.cells[i].cell_type == "code" and has_code(nb.cells[i])
                      and nb.cells[i].get("id") not in lesson_ids]
            found.append(Exercise(len(found) + 1, answer, index))
            start = index + 1
    return found


def error_of(cell):
    """The cell's error output, if it raised."""
    return next((o for o in cell.get("outputs", []) if o.output_type == "error"), None)


def describe(error) -> str:
    """'Name: message', or for a bare assert the line that failed."""
    if error.evalue:
        return f"{error.ename}: {error.evalue.strip().splitlines()[0]}"
    frames = [ANSI.sub("", line) for line in error.get("traceback", [])]
    failing = [m.group(1).strip() for frame in frames
               for m in re.finditer(r"^-+> *\d+ (.*)$", frame, re.M)]
    return f"{error.ename} at: {failing[-1]}" if failing else error.ename


def grade_one(nb, exercise: Exercise) -> Result:
    """Grade one exercise of an executed notebook."""
    number = exercise.number
    if not exercise.answer:
        return Result(number, NOT_ATTEMPTED, "no answer cell between the exercise and its check")
    for index in exercise.answer:
        error = error_of(nb.cells[index])
        if error is not None:
            if error.ename == "NotImplementedError":
                return Result(number, NOT_ATTEMPTED, describe(error))
            return Result(number, FAILED, "your answer raised " + describe(error))
    error = error_of(nb.cells[exercise.check])
    if error is None:
        return Result(number, PASSED)
    return Result(number, NOT_ATTEMPTED if error.ename in UNANSWERED else FAILED, describe(error))


def other_errors(nb, graded: list[Exercise]) -> list[str]:
    """Errors raised by the lesson's own cells (neither an answer nor a check)."""
    ours = {i for e in graded for i in [*e.answer, e.check]}
    return [f"cell {i + 1}: {describe(error)}" for i, cell in enumerate(nb.cells)
            if i not in ours and cell.cell_type == "code" and (error := error_of(cell))]


def execute(path: Path, kernel: str | None = None, timeout: int = 600):
    """Run the notebook at `path` in a fresh kernel, all cells even after errors; return it."""
    nb = nbformat.read(path, as_version=4)
    if kernel is None:
        kernel = MODERN_KERNEL["name"] if is_modern(nb) else KERNEL
    os.environ.setdefault("FEDUTILS_RUN_ID", f"check-my-work-{os.getpid()}-{time.time():.0f}")
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, allow_errors=True,
                            resources={"metadata": {"path": str(path.resolve().parent)}})
    try:
        client.execute()
    finally:
        from fedutils.bridges.tff_workers import stop_workers

        stop_workers(run_id=os.environ["FEDUTILS_RUN_ID"])
    return nb


def grade(path: Path, kernel: str | None = None) -> tuple[list[Result], list[str]]:
    """Execute the notebook and grade every exercise; also return the lesson cells' errors."""
    nb = execute(path, kernel)
    found = exercises(nb, lesson_cell_ids(path.name))
    return [grade_one(nb, e) for e in found], other_errors(nb, found)


def report(results: list[Result], errors: list[str]) -> str:
    lines = [f"  Exercise {r.number}  {r.status:<13}  {r.message}".rstrip() for r in results]
    if errors:
        lines += ["", "The lesson's own cells raised errors (exercises after them may fail "
                      "because of it):", *[f"  {e}" for e in errors]]
    counts = {s: sum(r.status == s for r in results) for s in (PASSED, FAILED, NOT_ATTEMPTED)}
    lines += ["", f"Score: {counts[PASSED]} of {len(results)} passed ({counts[FAILED]} failed, "
                  f"{counts[NOT_ATTEMPTED]} not attempted)"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--kernel", help="Jupyter kernel (default: the lesson's course kernel)")
    args = parser.parse_args()
    if not args.notebook.is_file():
        print(f"no such notebook: {args.notebook}", file=sys.stderr)
        return 2
    if not exercises(nbformat.read(args.notebook, as_version=4)):
        print(f"{args.notebook} has no exercise checks to grade", file=sys.stderr)
        return 2
    print(f"Running {args.notebook} from top to bottom (about as long as the lesson takes)...",
          flush=True)
    started = time.perf_counter()
    results, errors = grade(args.notebook, args.kernel)
    print(f"{args.notebook.name}, graded in {time.perf_counter() - started:.0f} s:")
    print(report(results, errors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
