"""The course's tooling scripts: first-line markers to cell tags (scripts/tag_cells.py, for a
notebook written with markers; every lesson uses tags), student copies by nbconvert's
preprocessors, the stamp script, and the Jupyter Book site.

Everything here works on copies: lessons/ itself is never written."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import build_site  # noqa: E402
import stamp_lessons  # noqa: E402
import student_copies  # noqa: E402
import tag_cells  # noqa: E402
from course import MARKERS, has_role, lesson_paths, part_of, title_of  # noqa: E402

LESSONS = lesson_paths()
md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell


def tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def roles(nb) -> list[tuple[int, str]]:
    return [(i, tag) for i, c in enumerate(nb.cells) for tag in MARKERS if has_role(c, tag)]


def test_tag_cells_moves_each_marker_to_its_tag_once():
    nb = nbformat.v4.new_notebook(cells=[
        md("# SOLUTION\nmarkdown is left alone"),
        code("\n# SOLUTION\n\nx = 1\n"),
        code("# NBVAL_SKIP\n# CHECK\nassert x == 1"),
        code("# NBVAL_CHECK_OUTPUT\nprint(x)  # NBVAL_SKIP later on is no marker"),
        code("y = 2\n# CHECK"),
    ])
    nb.cells[2].metadata["tags"] = ["keep-me"]
    assert tag_cells.convert(nb) == {"solution": 1, "check": 1, "nbval-skip": 1,
                                     "nbval-check-output": 1}
    assert [c.source for c in nb.cells] == [
        "# SOLUTION\nmarkdown is left alone", "x = 1\n", "assert x == 1",
        "print(x)  # NBVAL_SKIP later on is no marker", "y = 2\n# CHECK"]
    assert [tags(c) for c in nb.cells] == [[], ["solution"], ["keep-me", "nbval-skip", "check"],
                                           ["nbval-check-output"], []]
    assert not tag_cells.convert(nb) and not tag_cells.markers_in(nb)


def with_markers(nb):
    """`nb` as it was written before the tags: each role tag of a code cell back as its
    first-line marker, in the order of the tags."""
    for cell in nb.cells:
        found = [t for t in tags(cell) if t in MARKERS]
        if cell.cell_type == "code" and found:
            cell.source = "".join(MARKERS[t] + "\n" for t in found) + cell.source
            cell.metadata["tags"] = [t for t in tags(cell) if t not in MARKERS]
    return nb


def test_every_lesson_uses_cell_tags(run_script):
    status, output = run_script("tag_cells.py", "--check")
    assert status == 0 and f"all {len(LESSONS)} notebooks use cell tags" in output, output


def test_tag_cells_turns_the_lessons_written_with_markers_back_into_the_lessons(tmp_path,
                                                                                run_script):
    copies = [tmp_path / p.name for p in LESSONS]
    for path, copy in zip(LESSONS, copies):
        nbformat.write(with_markers(nbformat.read(path, as_version=4)), copy)
    assert run_script("tag_cells.py", "--check", *map(str, copies))[0] == 1
    first = run_script("tag_cells.py", *map(str, copies))
    assert first[0] == 0, first[1]
    written = {p.name: p.read_bytes() for p in copies}
    for path, copy in zip(LESSONS, copies):
        lesson, nb = nbformat.read(path, as_version=4), nbformat.read(copy, as_version=4)
        assert roles(nb) == roles(lesson), f"{path.name}: a cell lost or gained a role"
        assert [c.source for c in nb.cells] == [c.source for c in lesson.cells], path.name
        assert [sorted(tags(c)) for c in nb.cells] == [sorted(tags(c)) for c in lesson.cells]
        assert not tag_cells.markers_in(nb), path.name
        nbformat.validate(nb)
    assert run_script("tag_cells.py", "--check", *map(str, copies))[0] == 0
    assert run_script("tag_cells.py", *map(str, copies))[0] == 0
    assert {p.name: p.read_bytes() for p in copies} == written, "a second run changed a file"


def test_tag_cells_check_names_the_lessons_that_still_use_markers(tmp_path, run_script):
    nb = nbformat.v4.new_notebook(cells=[code("# CHECK\nassert True")])
    nbformat.write(nb, tmp_path / "99_marked.ipynb")
    status, output = run_script("tag_cells.py", "--check", str(tmp_path / "99_marked.ipynb"))
    assert status == 1 and "99_marked.ipynb: # CHECK x1" in output


def run_nbval(path: Path, tmp_path: Path) -> int:
    log = tmp_path / "nbval.log"
    with open(log, "w") as out:   # a file, not a pipe: see fedutils.bridges.tff_workers
        return subprocess.run([sys.executable, "-m", "pytest", str(path), "-q", "-p",
                               "no:cacheprovider", "--rootdir", str(ROOT), "-c",
                               str(ROOT / "pyproject.toml"), "--nbval-kernel-name=python3"],
                              stdout=out, stderr=subprocess.STDOUT, timeout=300).returncode


def test_nbval_honours_the_tags_as_it_did_the_markers(tmp_path):
    """After the migration nbval must still skip `nbval-skip` cells and compare the output of
    `nbval-check-output` cells (the course runs it with --nbval-lax)."""
    def notebook(printed: str):
        nb = nbformat.v4.new_notebook(cells=[
            code("# NBVAL_SKIP\n1 / 0"), code("# NBVAL_CHECK_OUTPUT\nprint(6 * 7)")])
        nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
        nb.cells[1].execution_count = 1
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        tag_cells.convert(nb)
        assert [tags(c) for c in nb.cells] == [["nbval-skip"], ["nbval-check-output"]]
        return nb

    nbformat.write(notebook("42\n"), tmp_path / "right.ipynb")
    nbformat.write(notebook("41\n"), tmp_path / "wrong.ipynb")
    assert run_nbval(tmp_path / "right.ipynb", tmp_path) == 0
    assert run_nbval(tmp_path / "wrong.ipynb", tmp_path) != 0


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_student_copy_drops_solutions_clears_outputs_and_keeps_the_rest(path):
    original = nbformat.read(path, as_version=4)
    before = nbformat.writes(original)
    copy = student_copies.student_copy(original)
    assert nbformat.writes(original) == before, "the lesson itself is left as it was"
    nbformat.validate(copy)
    kept = [c for c in original.cells if not has_role(c, "solution")]
    assert len(kept) < len(original.cells), "the lesson has solutions"
    assert [c.source for c in copy.cells] == [c.source for c in kept]
    assert [c.get("id") for c in copy.cells] == [c.get("id") for c in kept]
    assert not any(has_role(c, "solution") for c in copy.cells)
    assert sum(has_role(c, "check") for c in copy.cells) > 0
    assert all(not c.outputs and c.execution_count is None
               for c in copy.cells if c.cell_type == "code")


def test_the_stamped_colab_cell_is_tagged_nbval_skip():
    nb = nbformat.v4.new_notebook(cells=[md("# 01 · A lesson"), code("assert True")])
    repo = stamp_lessons.repository()
    stamped = stamp_lessons.stamped(nb, repo, LESSONS[0], None, (LESSONS[1], "next"))
    colab = next(c for c in stamped.cells if c.metadata.get("stamp") == "colab")
    assert not colab.source.startswith("# NBVAL") and tags(colab) == ["course-stamp", "nbval-skip"]
    assert has_role(colab, "nbval-skip") and "google.colab" in colab.source


def test_the_site_configuration_comes_from_the_lesson_list_and_pyproject():
    toc = build_site.book_toc(LESSONS)
    assert toc["root"] == "index"
    assert [part["caption"] for part in toc["parts"]] == list(dict.fromkeys(map(part_of,
                                                                               LESSONS)))
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert files == [p.stem for p in LESSONS]
    first = toc["parts"][0]
    assert first["caption"] == "Part I · The slides"
    assert [c["file"][:2] for c in first["chapters"]] == [f"{n:02d}" for n in range(1, 15)]
    config = build_site.book_config(stamp_lessons.repository())
    assert config["repository"]["url"] == stamp_lessons.repository()
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["execute"]["execute_notebooks"] == "off"
    titles = {p.stem: title_of(nbformat.read(p, as_version=4)) for p in LESSONS}
    index = build_site.index_page(LESSONS, titles, {})
    assert "Fourteen" not in index and index.count("](") == len(LESSONS)
    assert index.splitlines()[2].startswith(f"{len(LESSONS)} hands-on lessons")


def test_the_site_builds_offline_with_every_lesson(tmp_path, run_script):
    status, output = run_script("build_site.py", "--out", str(tmp_path / "site"),
                                "--source", str(tmp_path / "source"))
    assert status == 0, output
    site = tmp_path / "site"
    pages = {p.stem for p in site.glob("*.html")}
    assert {p.stem for p in LESSONS} | {"index", "search"} <= pages
    for page in site.glob("*.html"):
        text = page.read_text()
        # Links to papers, Colab and GitHub are fine; nothing may be *loaded* from the web.
        assert not re.search(r'<script[^>]+src="https?://', text), f"{page.name} loads a script"
        assert not re.search(r'<img[^>]+src="https?://', text), f"{page.name} loads an image"
        assert not re.search(r'<link[^>]+rel="stylesheet"[^>]+href="https?://', text), page.name
    assert (site / "mathjax" / "MathJax.js").exists() and (site / "searchindex.js").exists()
    assert list((site / "_images").glob("*.png")), "the lessons' plots"
    assert {p.name for p in (site / "_sources").glob("*.ipynb")} >= {p.name for p in LESSONS}
    lesson_links = re.compile(r'href="\d\d_[a-z_]+\.ipynb"')
    for page in site.glob("*.html"):  # links between lessons point at their pages
        assert not lesson_links.search(page.read_text()), f"{page.name} links to a notebook"
