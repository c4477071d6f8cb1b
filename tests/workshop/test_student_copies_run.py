"""Every student copy (`make student`: solutions removed) runs top to bottom with errors only in
the exercises' own check cells. `make test-workshop` runs this (not `make test`: pyproject's
testpaths leave this folder out), because it executes the whole course once more; `make test`
checks the same property statically (tests/test_workshop.py) and .ci/run runs both.

How student copies are made (solutions dropped, outputs cleared, the rest kept) is tested in
tests/test_scripts.py."""
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import student_copies  # noqa: E402
from course import KERNEL, MODERN_KERNEL, has_role, is_modern, lesson_paths  # noqa: E402

from fedutils.bridges.tff_workers import stop_workers  # noqa: E402

LESSONS = lesson_paths()


def execute(nb, kernel: str) -> None:
    """Run `nb` in place from lessons/ (as nbval does), keeping going after errors, and stop
    the TFF helpers its kernel started (tagged with this session's FEDUTILS_RUN_ID)."""
    started = time.time()
    try:
        NotebookClient(nb, timeout=300, kernel_name=kernel, allow_errors=True,
                       resources={"metadata": {"path": str(ROOT / "lessons")}}).execute()
    finally:
        stop_workers(since=started, run_id=os.environ["FEDUTILS_RUN_ID"])


def errors(cell) -> list:
    return [o for o in cell.get("outputs", []) if o.output_type == "error"]


def describe(index: int, cell) -> str:
    first = next((line for line in cell.source.splitlines() if line.strip()), "")
    error = errors(cell)[0]
    return f"cell {index} ({first.strip()[:60]!r}): {error.ename}: {error.evalue}"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_a_student_copy_runs_with_errors_only_in_check_cells(path):
    """A learner runs the copy without having answered anything: every check cell may fail
    (that is its job), every other cell must run, so cells after an exercise do not use the
    solution's variables (or check for them and say "complete exercise N first").

    Each copy runs on the kernel `make notebooks` runs its lesson with (lesson 15: the
    current-TF one, which `make test-workshop` registers in this environment). Cells nbval
    skips (the Colab install cell, downloads) are skipped here too."""
    nb = nbformat.read(path, as_version=4)
    kernel = MODERN_KERNEL["name"] if is_modern(nb) else KERNEL
    copy = student_copies.student_copy(nb)
    copy.cells = [c for c in copy.cells if not has_role(c, "nbval-skip")]
    assert sum(has_role(c, "check") for c in copy.cells) > 0, "the lesson has exercises"
    execute(copy, kernel)
    failed = [describe(i, c) for i, c in enumerate(copy.cells)
              if c.cell_type == "code" and errors(c) and not has_role(c, "check")]
    assert not failed, (f"{path.name}: a student copy stops outside the exercises' check cells "
                        "(does a cell after an exercise use its solution?):\n" + "\n".join(failed))
