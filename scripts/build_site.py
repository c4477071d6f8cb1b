#!/usr/bin/env python
"""Build the course as static HTML pages that open from the file system, with no network.

Every lesson is rendered with its committed outputs and plots (images are embedded), links
between lessons point at the HTML pages, and an index page lists the lessons with their
measured run times. No page loads anything from the internet: MathJax, require.js and the
widget renderer are left out (widgets show their committed static picture instead).

    python scripts/build_site.py [--out build/site]
"""
from __future__ import annotations

import argparse
import html
import json
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from course import ROOT, lesson_paths, title_of
REMOTE_SCRIPT = re.compile(r'<script[^>]+src="https?://[^"]*"[^>]*>\s*</script>\s*', re.I)
REMOTE_LINK = re.compile(r'<link[^>]+href="https?://[^"]*"[^>]*>\s*', re.I)
# Inline scripts that import from the internet (nbconvert's mermaid loader) and empty loaders.
REMOTE_MODULE = re.compile(r'<script type="module">(?:(?!</script>).)*?https?://(?:(?!</script>).)*'
                           r'</script>\s*', re.S)
EMPTY_SCRIPT = re.compile(r'<script src="">\s*</script>\s*')


def render(path: Path, exporter: HTMLExporter) -> tuple[str, str]:
    nb = nbformat.read(path, as_version=4)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title_of(nb)}})
    body = REMOTE_SCRIPT.sub("", body)
    body = REMOTE_LINK.sub("", body)
    body = REMOTE_MODULE.sub("", body)
    body = EMPTY_SCRIPT.sub("", body)
    body = re.sub(r'href="(\d\d_[a-z0-9_]+)\.ipynb"', r'href="\1.html"', body)
    # The Colab badge is a remote image: keep the link, show it as text.
    body = re.sub(r'<img[^>]*src="https://colab\.research\.google\.com/assets/colab-badge\.svg"[^>]*>',
                  "Open in Colab", body)
    body = body.replace('href="../README.md#the-lessons"', 'href="index.html"')
    return title_of(nb), body


def index_page(entries: list[tuple[str, str]], timings: dict) -> str:
    seconds = {t["lesson"]: t["seconds"] for t in timings.get("lessons", [])}
    rows = "\n".join(
        f'<tr><td><a href="{html.escape(stem)}.html">{html.escape(title)}</a></td>'
        f'<td>{seconds.get(stem, "")}</td></tr>' for stem, title in entries)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Federated Learning with Python</title>
<style>body{{font-family:system-ui,sans-serif;max-width:46em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{padding:.3em .8em;border-bottom:1px solid #ddd}}</style>
</head><body>
<h1>Federated Learning with Python</h1>
<p>Fourteen hands-on lessons, rendered with their outputs. To run them, see the README of the
repository (<code>make lab</code>).</p>
<table><tr><th>lesson</th><th>run time (s)</th></tr>
{rows}
</table></body></html>
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    exporter.mathjax_url = ""
    entries = []
    for path in lesson_paths():
        title, body = render(path, exporter)
        (args.out / f"{path.stem}.html").write_text(body, encoding="utf-8")
        entries.append((path.stem, title))
    timings_file = ROOT / "lessons" / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    (args.out / "index.html").write_text(index_page(entries, timings), encoding="utf-8")
    print(f"wrote {len(entries)} lessons and index.html to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
