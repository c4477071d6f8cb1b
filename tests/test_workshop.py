"""Workshop kit: student copies without solutions, and the static site."""
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import build_site  # noqa: E402
import student_copies  # noqa: E402

LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))


def first_exercise(nb) -> int:
    return next(i for i, c in enumerate(nb.cells)
                if c.cell_type == "code" and c.source.lstrip().startswith(
                    ("# SOLUTION", student_copies.PLACEHOLDER.strip())))


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_student_copy_has_no_solution_and_keeps_the_rest(path):
    original = nbformat.read(path, as_version=4)
    copy = student_copies.student_copy(original)
    nbformat.validate(copy)
    sources = [c.source for c in copy.cells]
    assert not any(s.lstrip().startswith("# SOLUTION") for s in sources)
    assert sum(s.lstrip().startswith("# CHECK") for s in sources) == sum(
        c.source.lstrip().startswith("# CHECK") for c in original.cells) > 0
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in copy.cells if c.cell_type == "code")
    # Everything before the first exercise is the lesson itself, which nbval runs in full.
    stop = first_exercise(original)
    assert first_exercise(copy) == stop
    assert sources[:stop] == [c.source for c in original.cells[:stop]]
    assert len(copy.cells) == len(original.cells)


def test_a_student_copy_runs_up_to_its_first_exercise(tmp_path):
    """Executes the copy of the quickest lesson for real, up to its first exercise."""
    if not LESSONS:
        pytest.skip("no lessons yet")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "student_copies.py"),
                    "--out", str(tmp_path)], check=True, stdout=subprocess.DEVNULL)
    copy = nbformat.read(tmp_path / LESSONS[1 if len(LESSONS) > 1 else 0].name, as_version=4)
    copy.cells = copy.cells[:first_exercise(copy)]
    client = NotebookClient(copy, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "lessons")}})
    client.execute()
    errors = [o for c in copy.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors


def test_site_is_offline_and_linked(tmp_path):
    if not LESSONS:
        pytest.skip("no lessons yet")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_site.py"), "--out",
                    str(tmp_path)], check=True, stdout=subprocess.DEVNULL)
    pages = sorted(tmp_path.glob("*.html"))
    assert {p.stem for p in pages} == {p.stem for p in LESSONS} | {"index"}
    for page in pages:
        text = page.read_text()
        # Links to papers and to Colab are fine; nothing may be *loaded* from the web.
        assert not re.search(r'src="https?://', text), f"{page.name} loads from the web"
        assert not re.search(r'<link[^>]+href="https?://', text), f"{page.name} loads a stylesheet"
        assert not re.search(r'import [^;]*from "https?://', text), f"{page.name} imports from the web"
        assert not re.search(r'href="\d\d_[a-z0-9_]+\.ipynb"', text), \
            f"{page.name} links to a notebook instead of a page"
    index = (tmp_path / "index.html").read_text()
    assert all(f'href="{p.stem}.html"' in index for p in LESSONS)
    first = (tmp_path / f"{LESSONS[0].stem}.html").read_text()
    assert "data:image/png;base64" in first, "plots are embedded"


def test_instructor_guide_is_generated_from_the_current_timings(run_script):
    code, output = run_script("instructor_guide.py", "--check")
    assert code == 0, output
    guide = (ROOT / "docs" / "instructor_guide.md").read_text()
    assert "## One-day schedule" in guide and "## Half-day schedule" in guide
    for path in LESSONS:
        assert nbformat.read(path, as_version=4).cells[1].source.splitlines()[0][2:] in guide
