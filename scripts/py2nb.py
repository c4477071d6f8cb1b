#!/usr/bin/env python
"""Authoring aid: turn a percent-format Python file into a notebook (no outputs).

    # %% [markdown]
    # # 01 · Title
    # %%
    print("a code cell")

    python scripts/py2nb.py source.py lessons/NN_name.ipynb
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

MARKER = re.compile(r"^# %%(?P<md> \[markdown\])?\s*$")


def convert(text: str) -> nbformat.NotebookNode:
    cells, kind, lines = [], None, []

    def flush():
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(re.sub(r"^# ?", "", ln) for ln in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(body))
        elif kind == "code" and body:
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.splitlines():
        match = MARKER.match(line)
        if match:
            flush()
            kind, lines = ("markdown" if match.group("md") else "code"), []
        else:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    source, target = map(Path, sys.argv[1:3])
    nbformat.write(convert(source.read_text()), target)
    print(f"wrote {target}")
