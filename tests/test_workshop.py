"""Workshop kit: no student copy (`make student`: solutions removed) uses an answer outside the
exercises' own check cells, and the instructor guide follows the timings.

A copy is checked statically here: pyflakes reads its code cells in order, as one program, and
reports every name a cell uses that no earlier cell defines. Running every copy
(tests/workshop/, `make test-workshop`, in .ci/run) also catches answers used in other ways,
but it executes the whole course once more, so `make test` leaves it to CI.

How student copies are made (solutions dropped, outputs cleared, the rest kept) is tested in
tests/test_scripts.py."""
import ast
import sys
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from pyflakes import checker, messages

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import student_copies  # noqa: E402
from course import has_role, lesson_paths  # noqa: E402

LESSONS = lesson_paths()
IPYTHON_NAMES = {"get_ipython", "display"}     # what IPython's kernel adds to builtins


def guarded_names(source: str) -> set[str]:
    """Names a cell looks up in globals() before using them ("complete exercise 1 first")."""
    if "globals()" not in source:
        return set()
    return {node.value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def undefined_names(nb) -> list[tuple[int, str]]:
    """(cell index, name) for each name a non-check code cell of `nb` uses before any cell
    defines it, reading the code cells top to bottom as IPython runs them."""
    program, owner, ipython = [], [], TransformerManager()
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        lines = ipython.transform_cell(cell.source).splitlines() or ["pass"]
        program += lines
        owner += [index] * len(lines)
    found = checker.Checker(ast.parse("\n".join(program)), builtins=IPYTHON_NAMES).messages
    missing = []
    for message in found:
        if not isinstance(message, messages.UndefinedName):
            continue
        index, name = owner[message.lineno - 1], message.message_args[0]
        cell = nb.cells[index]
        if not has_role(cell, "check") and name not in guarded_names(cell.source):
            missing.append((index, name))
    return missing


def copy_of(path: Path):
    copy = student_copies.student_copy(nbformat.read(path, as_version=4))
    copy.cells = [c for c in copy.cells if not has_role(c, "nbval-skip")]
    return copy


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_no_student_copy_uses_an_answer_outside_check_cells(path):
    """A learner runs the copy without having answered anything: check cells may fail (that is
    their job), no other cell may use a name only a solution defines, unless it checks
    globals() first and says "complete exercise N first". The full lesson is the control: it
    uses no undefined name at all."""
    assert undefined_names(nbformat.read(path, as_version=4)) == []
    copy = copy_of(path)
    assert sum(has_role(c, "check") for c in copy.cells) > 0, "the lesson has exercises"
    missing = undefined_names(copy)
    assert not missing, (f"{path.name}: cells of the student copy use names only a solution "
                         "defines: " + ", ".join(f"cell {i} uses {n!r}" for i, n in missing))


def notebook(*cells):
    """A notebook of (source, tags) code cells."""
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)}) for source, tags in cells])


def test_the_static_check_finds_an_answer_used_later_and_accepts_guards_and_magics():
    lesson = [("%matplotlib inline\nimport numpy as np\nx = np.ones(3)", ()),
              ("answer = x.sum()  # SOLUTION", ("solution",)),
              ("assert answer == 3  # CHECK", ("check",)),
              ("print(answer * 2)", ()),
              ('if "answer" in globals():\n    print(answer)\nelse:\n    print("exercise 1 first")',
               ()),
              ("!echo shell\ndisplay(x)", ())]
    assert undefined_names(notebook(*lesson)) == []
    copy = student_copies.student_copy(notebook(*lesson))
    assert undefined_names(copy) == [(2, "answer")]       # cell 3 of the lesson, not its check


def test_instructor_guide_is_generated_from_the_current_timings(run_script):
    code, output = run_script("instructor_guide.py", "--check")
    assert code == 0, output
    guide = (ROOT / "docs" / "instructor_guide.md").read_text()
    assert "## One-day schedule" in guide and "## Half-day schedule" in guide
    for path in LESSONS:
        assert nbformat.read(path, as_version=4).cells[1].source.splitlines()[0][2:] in guide
