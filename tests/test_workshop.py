"""Workshop kit: every student copy (`make student`: solutions removed) runs top to bottom with
errors only in the exercises' own check cells, and the instructor guide follows the timings.

How student copies are made (solutions dropped, outputs cleared, the rest kept) is tested in
tests/test_scripts.py; here they are executed."""
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import student_copies  # noqa: E402
from course import KERNEL, MODERN_KERNEL, has_role, is_modern, lesson_paths  # noqa: E402

from fedutils.bridges.tff_workers import stop_workers  # noqa: E402

LESSONS = lesson_paths()


def kernel_of(nb) -> str:
    """The kernel `make notebooks` runs a lesson with: its own environment's."""
    return MODERN_KERNEL["name"] if is_modern(nb) else KERNEL


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
def test_a_student_copy_runs_with_errors_only_in_check_cells(path, request):
    """A learner runs the copy without having answered anything: every check cell may fail
    (that is its job), every other cell must run, so cells after an exercise do not use the
    solution's variables (or check for them and say "complete exercise N first").

    One environment per lesson: the one `make notebooks` runs it in (its saved kernel), i.e. the
    pytest session whose nbval kernel is that kernel. The TFF environment (kernel fl-course)
    runs lessons 01-14 and 16 on, the current-TF one (fl-course-modern) lesson 15, the only one
    that needs Flower. So `make test` runs each copy once, not once per environment: the check
    costs one run of the course, and missing solutions fail the same way in both environments.
    Cells nbval skips (the Colab install cell, downloads) are skipped here too."""
    nb = nbformat.read(path, as_version=4)
    kernel = kernel_of(nb)
    session_kernel = request.config.getoption("nbval_kernel_name", default=None) or KERNEL
    if kernel != session_kernel:
        pytest.skip(f"{path.stem} runs on the {kernel} kernel: the pytest session of that "
                    f"environment runs its student copy (this one runs {session_kernel})")
    copy = student_copies.student_copy(nb)
    copy.cells = [c for c in copy.cells if not has_role(c, "nbval-skip")]
    assert sum(has_role(c, "check") for c in copy.cells) > 0, "the lesson has exercises"
    execute(copy, kernel)
    failed = [describe(i, c) for i, c in enumerate(copy.cells)
              if c.cell_type == "code" and errors(c) and not has_role(c, "check")]
    assert not failed, (f"{path.name}: a student copy stops outside the exercises' check cells "
                        "(does a cell after an exercise use its solution?):\n" + "\n".join(failed))


def test_instructor_guide_is_generated_from_the_current_timings(run_script):
    code, output = run_script("instructor_guide.py", "--check")
    assert code == 0, output
    guide = (ROOT / "docs" / "instructor_guide.md").read_text()
    assert "## One-day schedule" in guide and "## Half-day schedule" in guide
    for path in LESSONS:
        assert nbformat.read(path, as_version=4).cells[1].source.splitlines()[0][2:] in guide
