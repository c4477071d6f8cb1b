"""`make check-my-work` (scripts/check_my_work.py) grades a learner's copy like an autograder:
each check cell grades the exercise before it as passed, failed (with the check's message) or
not attempted. Tested on a small notebook that meets every case, and on lesson 02's student
copy, as made by `make student`, without and with the solutions pasted back in."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import check_my_work  # noqa: E402
import student_copies  # noqa: E402
from course import has_role  # noqa: E402

LESSON = ROOT / "lessons" / "02_core_principles.ipynb"
KERNEL = "python3"   # this interpreter's kernel, in either environment
md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell


def tagged(source: str, tag: str):
    cell = code(source)
    cell.metadata["tags"] = [tag]
    return cell


def grade(nb, tmp_path: Path, name: str = "copy.ipynb"):
    path = tmp_path / name
    nbformat.write(nb, path)
    return check_my_work.grade(path, KERNEL)


def test_every_outcome_on_a_small_notebook(tmp_path):
    """Every way an exercise can end; its checks carry the `check` tag."""
    nb = nbformat.v4.new_notebook(cells=[
        md("# 99 · A small lesson"), code("import math"),
        md("**Exercise 1.** Set x to 2."), code("x = 2"),
        tagged("assert x == 2, 'x should be 2'", "check"),
        md("**Exercise 2.** Set y to 4."), code("y = 3"),
        tagged("assert y == 4, f'y is {y}, expected 4'", "check"),
        md("**Exercise 3.** Set z to 1."),
        tagged("assert z == 1", "check"),
        md("**Exercise 4.** Set w."), code("raise NotImplementedError()"),
        tagged("assert w", "check"),
        md("**Exercise 5.** Set v."), code("v = 1 / 0"),
        tagged("assert v", "check"),
        md("**Exercise 6.** Set u."), code("# your answer here\n"),
        tagged("assert u", "check"),
        md("**Exercise 7.** Set t to [2]."), code("t = [1]"),
        tagged("assert t == [2]", "check"),
        md("**Exercise 8.** Name it s."), code("S = 1"),
        tagged("assert s == 1", "check"),
    ])
    results, errors = grade(nb, tmp_path)
    got = [(r.number, r.status, r.message) for r in results]
    assert got == [
        (1, "passed", ""),
        (2, "failed", "AssertionError: y is 3, expected 4"),
        (3, "not attempted", "no answer cell between the exercise and its check"),
        (4, "not attempted", "NotImplementedError at: raise NotImplementedError()"),
        (5, "failed", "your answer raised ZeroDivisionError: division by zero"),
        (6, "not attempted", "no answer cell between the exercise and its check"),
        (7, "failed", "AssertionError at: assert t == [2]"),
        (8, "not attempted", "NameError: name 's' is not defined"),
    ]
    assert errors == []
    report = check_my_work.report(results, errors)
    assert report.splitlines()[-1] == "Score: 1 of 8 passed (3 failed, 4 not attempted)"


def test_an_error_in_the_lesson_itself_is_reported_beside_the_exercises(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        code("import a_module_that_does_not_exist"), md("**Exercise 1.**"), code("x = 1"),
        tagged("assert x == 1", "check")])
    results, errors = grade(nb, tmp_path)
    assert [r.status for r in results] == ["passed"]
    assert errors == ["cell 1: ModuleNotFoundError: No module named "
                      "'a_module_that_does_not_exist'"]


def solutions_pasted_back(original, copy):
    """The student copy with each of the lesson's solution cells inserted above its check."""
    solutions = [[] for _ in check_my_work.exercises(original)]
    number = 0
    for cell in original.cells:
        if cell.cell_type == "code" and has_role(cell, "check"):
            number += 1
        elif cell.cell_type == "code" and has_role(cell, "solution"):
            solutions[number].append(code(cell.source))
    cells, number = [], 0
    for cell in copy.cells:
        if cell.cell_type == "code" and has_role(cell, "check"):
            cells += solutions[number]
            number += 1
        cells.append(cell)
    copy.cells = cells
    return copy


def test_lesson_02_student_copy_without_and_with_the_solutions(tmp_path):
    original = nbformat.read(LESSON, as_version=4)
    copy = student_copies.student_copy(original)
    count = len(check_my_work.exercises(original))
    assert count >= 2 and len(check_my_work.exercises(copy)) == count
    path = tmp_path / LESSON.name
    nbformat.write(copy, path)
    log = tmp_path / "check.log"
    with open(log, "w") as out:   # the command a learner runs (a file, not a pipe)
        code_ = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_my_work.py"),
                                str(path), "--kernel", KERNEL], stdout=out,
                               stderr=subprocess.STDOUT, timeout=600).returncode
    output = log.read_text()
    assert code_ == 0, output
    assert output.count("not attempted  no answer cell") == count, output
    assert f"Score: 0 of {count} passed (0 failed, {count} not attempted)" in output

    results, errors = grade(solutions_pasted_back(original, copy), tmp_path, "solved.ipynb")
    assert [r.status for r in results] == ["passed"] * count, results
    assert errors == []


def test_the_command_refuses_what_it_cannot_grade(tmp_path):
    empty = tmp_path / "empty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[code("1")]), empty)
    for target, expected in (("missing.ipynb", "no such notebook"),
                             (empty, "has no exercise checks")):
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_my_work.py"),
                              str(target)], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path)
        assert run.returncode == 2 and expected in run.stderr, run.stderr
