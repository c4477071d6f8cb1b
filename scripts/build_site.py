#!/usr/bin/env python
"""Build the course as a Jupyter Book (build/site/index.html), from the executed lessons.

Nothing is executed: the pages show the outputs committed by `make notebooks`. The book's
configuration and table of contents are generated here, from the lesson list (scripts/course.py)
and the repository address in pyproject.toml, so a new lesson appears by itself:

- a sidebar in two parts (COURSE_PARTS), full-text search, and on every lesson page a Colab
  launch button and a download button (.ipynb);
- the stamped header and footer cells are left out (the book has its own navigation and launch
  button; the footer's "Course map" link points into the repository), the Colab install cell is
  hidden (the downloaded notebook keeps it);
- MathJax is served from the site itself (jupyter-server-mathjax ships it), so the pages,
  formulas included, read offline.

Jupyter Book 1.x (Sphinx, installed by pip) and not 2.x: 2.x needs Node.js and, more to the
point, fetches its site theme from the web at build time, which an offline room cannot do.

    python scripts/build_site.py [--out build/site] [--source build/site-source]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

from course import COURSE_PARTS, ROOT, STAMP_TAG, lesson_paths, part_of, title_of
from stamp_lessons import repository

TITLE = "Federated Learning with Python"
COLAB = "https://colab.research.google.com"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def mathjax_dir() -> Path:
    """MathJax 2, as shipped by the jupyter-server-mathjax package."""
    import jupyter_server_mathjax

    return Path(jupyter_server_mathjax.__file__).parent / "static"


def book_config(repo: str) -> dict:
    """The book's _config.yml: no execution, the repository and its Colab launch button."""
    return {
        "title": TITLE,
        "author": "the course authors",
        "only_build_toc_files": True,
        "execute": {"execute_notebooks": "off"},
        "repository": {"url": repo, "path_to_book": "lessons", "branch": "main"},
        "launch_buttons": {"colab_url": COLAB, "notebook_interface": "jupyterlab"},
        "html": {"use_repository_button": True, "home_page_in_navbar": True},
        "sphinx": {"config": {
            # Copied to the site as it is, outside _static (whose scripts Jupyter Book adds to
            # every page). jupyter-server-mathjax's MathJax 2: HTML-CSS output, STIX web fonts.
            "html_extra_path": ["_extra"],
            "mathjax_path": "../mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full",
            # Typeset the formulas (class "math") inside myst-nb's mathjax_ignore sections.
            "mathjax2_config": {
                "HTML-CSS": {"availableFonts": [], "webFont": "STIX-Web", "imageFont": None},
                "tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]],
                            "processClass": "math", "ignoreClass": "tex2jax_ignore|mathjax_ignore"},
            },
            "html_show_copyright": False,
            # Links inside a cell's displayed markdown (lesson 14's course map) become .html.
            "nb_render_markdown_format": "myst",
        }},
    }


def book_toc(lessons: list[Path]) -> dict:
    """The book's _toc.yml: the index, then one captioned part per COURSE_PARTS entry."""
    parts = []
    for caption, _ in COURSE_PARTS:
        files = [p.stem for p in lessons if part_of(p) == caption]
        if files:
            parts.append({"caption": caption, "chapters": [{"file": f} for f in files]})
    return {"format": "jb-book", "root": "index", "parts": parts}


def index_page(lessons: list[Path], titles: dict[str, str], seconds: dict[str, float]) -> str:
    """The home page: what the course is, then each part's lessons and their run times."""
    lines = [f"# {TITLE}", "",
             f"{len(lessons)} hands-on lessons in federated learning, shown with the outputs of "
             "one clean run (nothing runs when this site is built). Each lesson page has a "
             "launch button (the rocket) that opens it in Colab, and a download button for the "
             "notebook. To run the lessons on your own machine, see the README of the "
             "repository (`make lab`).", ""]
    for caption, _ in COURSE_PARTS:
        members = [p for p in lessons if part_of(p) == caption]
        if not members:
            continue
        lines += [f"## {caption}", "", "| lesson | one run takes |", "|---|---:|"]
        lines += [f"| [{titles[p.stem]}]({p.name}) | "
                  f"{f'{seconds[p.stem]:.0f} s' if p.stem in seconds else ''} |" for p in members]
        lines.append("")
    return "\n".join(lines)


def page_notebook(path: Path):
    """The lesson as the site shows it: stamped header and footer out, Colab cell hidden, and no
    saved widget state (a slider needs a kernel; with the state, myst-nb would load the widget
    manager from a CDN on every page)."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    cells = []
    for cell in nb.cells:
        role = cell.metadata.get("stamp") if STAMP_TAG in cell.metadata.get("tags", []) else None
        if role in ("header", "footer"):
            continue
        if role == "colab":
            cell.metadata["tags"] = [*cell.metadata["tags"], "remove-cell"]
        for output in cell.get("outputs", []):
            output.get("data", {}).pop(WIDGET_VIEW, None)
        cells.append(cell)
    nb.cells = cells
    return nb


def stage(source: Path, lessons: list[Path]) -> None:
    """Write the book's sources: config, table of contents, index and the lessons."""
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    timings_file = ROOT / "lessons" / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    seconds = {t["lesson"]: t["seconds"] for t in timings.get("lessons", [])}
    titles = {}
    for path in lessons:
        nb = page_notebook(path)
        titles[path.stem] = title_of(nb)
        nbformat.write(nb, source / path.name)
    (source / "_config.yml").write_text(yaml.safe_dump(book_config(repository()),
                                                       sort_keys=False, allow_unicode=True))
    (source / "_toc.yml").write_text(yaml.safe_dump(book_toc(lessons), sort_keys=False,
                                                    allow_unicode=True))
    (source / "index.md").write_text(index_page(lessons, titles, seconds))
    shutil.copytree(mathjax_dir(), source / "_extra" / "mathjax")


def build(source: Path, out: Path) -> None:
    """Sphinx, configured by Jupyter Book, from `source` into `out`."""
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "jupyter-book"), "config", "sphinx", str(source)], check=True,
                   stdout=subprocess.DEVNULL)
    if out.exists():
        shutil.rmtree(out)
    subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-d",
                    str(source / "_doctrees"), str(source), str(out)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    parser.add_argument("--source", type=Path, default=ROOT / "build" / "site-source",
                        help="where the book's generated sources go")
    args = parser.parse_args()
    lessons = lesson_paths()
    stage(args.source, lessons)
    build(args.source, args.out)
    print(f"wrote a Jupyter Book of {len(lessons)} lessons to {args.out} "
          f"(open {args.out / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
