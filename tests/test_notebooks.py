"""Notebook hygiene, and proof that the nbval run over lessons/ can fail.

Every lesson itself is executed by nbval because pyproject.toml lists lessons/ in testpaths
(with --nbval-lax); these tests check what nbval does not."""
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from course import has_role  # noqa: E402

LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))
NOISE = re.compile(r"(I|W|E) tensorflow/|cpu_feature_guard|oneDNN custom operations|"
                   r"Traceback \(most recent call last\)|WARNING:absl|WARNING:tensorflow")


def run_nbval(path: Path, tmp_path: Path) -> int:
    log = tmp_path / "nbval.log"
    with open(log, "w") as out:  # a file, not a pipe: see fedutils.bridges.tff_workers
        return subprocess.run([sys.executable, "-m", "pytest", str(path), "-q",
                               "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                               "-c", str(ROOT / "pyproject.toml"),
                               # this interpreter's own kernel, in either environment
                               "--nbval-kernel-name=python3"],
                              stdout=out, stderr=subprocess.STDOUT, timeout=300).returncode


def test_nbval_fails_when_a_lesson_errors_and_passes_otherwise(tmp_path):
    good = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1 + 1)")])
    bad = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")])
    for nb in (good, bad):
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
    nbformat.write(good, tmp_path / "good.ipynb")
    nbformat.write(bad, tmp_path / "bad.ipynb")
    assert run_nbval(tmp_path / "good.ipynb", tmp_path) == 0
    assert run_nbval(tmp_path / "bad.ipynb", tmp_path) != 0


def test_lessons_are_numbered_in_order():
    numbers = [int(p.name[:2]) for p in LESSONS]
    assert numbers == list(range(1, len(numbers) + 1))


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    title = next(c for c in nb.cells if c.cell_type == "markdown"
                 and "course-stamp" not in c.metadata.get("tags", []))
    assert title.source.startswith(f"# {path.name[:2]} · "), "title cell '# NN · Title'"
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code if c.execution_count is not None]
    assert counts == list(range(1, len(code) + 1)), "outputs from one clean top-to-bottom run"
    for cell in code:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"error output in {cell.source[:60]!r}"
            text = out.get("text", "") if out.output_type == "stream" else json.dumps(
                out.get("data", {}).get("text/plain", ""))
            assert not NOISE.search(text), f"log noise in output of {cell.source[:60]!r}"
    sources = "\n".join(c.source for c in code)
    assert any(has_role(c, "solution") for c in code) and any(has_role(c, "check") for c in code), \
        "exercises with solutions and checks"
    for removed in ("tff.learning.from_keras_model(", "build_federated_averaging_process("):
        assert removed not in sources, f"removed TFF API {removed} called"


def test_lessons_are_in_sync_with_the_stamp_script(run_script):
    """Badge, Colab cell and navigation come from scripts/stamp_lessons.py and one address."""
    code, output = run_script("stamp_lessons.py", "--check")
    assert code == 0, output


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_has_badge_colab_cell_and_navigation(path):
    nb = nbformat.read(path, as_version=4)
    stamps = {c.metadata.get("stamp"): c for c in nb.cells
              if "course-stamp" in c.metadata.get("tags", [])}
    assert set(stamps) == {"header", "colab", "footer"}
    assert "colab.research.google.com/github/" in stamps["header"].source
    assert path.name in stamps["header"].source
    assert has_role(stamps["colab"], "nbval-skip")
    assert nb.cells[0] is stamps["header"] and nb.cells[-1] is stamps["footer"]
