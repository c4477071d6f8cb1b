#!/usr/bin/env python
"""Stamp the shared cells into every lesson, idempotently, from one place.

Each lesson gets, generated here and nowhere else:
- a header cell: the "Open in Colab" badge and previous/next links;
- a Colab-only set-up cell (tagged `nbval-skip`) right after the title, which installs the
  course helpers from the repository when the notebook runs on Colab and does nothing elsewhere;
- a footer cell with previous/next links.
The repository's address is read from pyproject.toml ([project.urls] Repository), the one place
that holds it. Running the script twice changes nothing; `--check` exits 1 when a lesson is out
of sync (tests/test_stamp.py runs it).

    python scripts/stamp_lessons.py           # rewrite lessons/NN_*.ipynb in place
    python scripts/stamp_lessons.py --check   # report lessons out of sync, change nothing
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

from course import ROOT, is_modern, lesson_paths, title_of
from course import STAMP_TAG as TAG


def repository() -> str:
    """The GitHub address from pyproject.toml, e.g. https://github.com/owner/name."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^Repository\s*=\s*"(https://github\.com/[^"]+?)/?"', text, re.M)
    if not match:
        raise SystemExit("pyproject.toml needs [project.urls] Repository = \"https://github.com/…\"")
    return match.group(1)


def link(path: Path, title: str) -> str:
    return f"[{title}]({path.name})"


def header(repo: str, path: Path, prev, nxt) -> str:
    slug = repo.removeprefix("https://github.com/")
    badge = (f'<a href="https://colab.research.google.com/github/{slug}/blob/main/lessons/'
             f'{path.name}" target="_parent"><img '
             'src="https://colab.research.google.com/assets/colab-badge.svg" '
             'alt="Open In Colab"/></a>')
    return f"{badge}\n\n{navigation(prev, nxt)}"


def navigation(prev, nxt) -> str:
    parts = [f"← {link(*prev)}" if prev else "", "[Course map](../README.md#the-lessons)",
             f"{link(*nxt)} →" if nxt else ""]
    return " · ".join(p for p in parts if p)


def colab_cell(repo: str, extras: str = "colab") -> str:
    """The Colab install cell's source (the cell carries nbval's `nbval-skip` tag)."""
    return "\n".join([
        "# Colab only: install the course helpers (fedutils) and the data packages they use.",
        "# Elsewhere this cell does nothing: `make lab` has installed everything already.",
        "import subprocess, sys",
        'if "google.colab" in sys.modules:',
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"--quiet\",",
        f'                    "fedutils[{extras}] @ git+{repo}"], check=True)',
    ])


def stamped(nb: nbformat.NotebookNode, repo: str, path: Path, prev, nxt) -> nbformat.NotebookNode:
    """The notebook with its stamp cells removed and then freshly inserted."""
    old = {c.metadata.get("stamp"): c for c in nb.cells if TAG in c.metadata.get("tags", [])}
    cells = [c for c in nb.cells if TAG not in c.metadata.get("tags", [])]

    def make(kind: str, role: str, source: str, tags: tuple[str, ...] = ()):
        cell = old.get(role)
        if cell is None or cell.cell_type != kind:
            cell = (nbformat.v4.new_markdown_cell(source) if kind == "markdown"
                    else nbformat.v4.new_code_cell(source))
            cell["id"] = f"stamp-{role}"
        cell.source = source
        cell.metadata["tags"] = [TAG, *tags]
        cell.metadata["stamp"] = role
        return cell

    title_index = next(i for i, c in enumerate(cells) if c.cell_type == "markdown")
    # A lesson saved with the current-TF kernel (15) needs Flower on Colab too.
    extras = "colab,flower" if is_modern(nb) else "colab"
    colab = make("code", "colab", colab_cell(repo, extras), ("nbval-skip",))
    cells.insert(title_index + 1, colab)
    cells.insert(0, make("markdown", "header", header(repo, path, prev, nxt)))
    cells.append(make("markdown", "footer", "---\n\n" + navigation(prev, nxt)))
    nb.cells = cells
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report, do not write")
    args = parser.parse_args()
    repo = repository()
    paths = lesson_paths()
    notebooks = [nbformat.read(p, as_version=4) for p in paths]
    titles = [(p, title_of(nb)) for p, nb in zip(paths, notebooks)]
    stale = []
    for i, (path, nb) in enumerate(zip(paths, notebooks)):
        before = nbformat.writes(nb)
        prev = titles[i - 1] if i > 0 else None
        nxt = titles[i + 1] if i + 1 < len(titles) else None
        after = nbformat.writes(stamped(nb, repo, path, prev, nxt))
        if after != before:
            stale.append(path.name)
            if not args.check:
                path.write_text(after if after.endswith("\n") else after + "\n")
    if args.check:
        if stale:
            print("out of sync with scripts/stamp_lessons.py (run it, then `make notebooks`): "
                  + ", ".join(stale))
            return 1
        print(f"all {len(paths)} lessons in sync")
        return 0
    print(f"stamped {len(stale)} of {len(paths)} lessons" + (": " + ", ".join(stale) if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
