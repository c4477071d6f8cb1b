#!/usr/bin/env python
"""Run lessons as a Colab learner does, and fail on any error or any stderr output.

`make test-colab` runs this with .venv-colab's Python: Python 3.12 and the newest TensorFlow
(Keras 3), ipywidgets as Colab has it, and the notebook runner; no requirements file. Then:

1. fedutils goes in as the lessons' Colab cell installs it, `fedutils[colab]`, non-editable,
   from a copy of this checkout (Colab installs it from the repository; this runs offline);
2. each lesson is copied to a temporary folder outside the checkout and run there with nbclient,
   without the course's environment settings (TF_CPP_MIN_LOG_LEVEL, TF_ENABLE_ONEDNN_OPTS), so
   fedutils alone must keep the outputs clean;
3. any error output, or any text a cell writes to stderr, fails the run.

    .venv-colab/bin/python scripts/colab_run.py lessons/01_introduction.ipynb ...
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
# What the Makefile exports for the course's own runs; Colab sets none of them.
COURSE_SETTINGS = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "PYTHONPATH",
                   "FEDUTILS_RUN_ID")


def install_fedutils(workdir: Path) -> str:
    """Install fedutils[colab] from a copy of the checkout (no build files left in it); return
    where the installed package lives."""
    source = workdir / "fedutils-source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "fedutils", source / "fedutils",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "uninstall", "--quiet", "--yes", "fedutils"], check=True)
    subprocess.run([*pip, "install", "--quiet", f"{source}[colab]"], check=True)
    where = subprocess.run([sys.executable, "-c", "import fedutils; print(fedutils.__file__)"],
                           cwd=workdir, check=True, capture_output=True, text=True).stdout.strip()
    if Path(where).resolve().is_relative_to(ROOT / "fedutils"):
        raise SystemExit(f"fedutils imports from the checkout ({where}), not the installed copy")
    return where


def problems(nb) -> list[str]:
    """Every error output and every stderr output of an executed notebook."""
    found = []
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.output_type == "error":
                found.append(f"cell {index + 1}: {out.ename}: {out.evalue}")
            elif out.output_type == "stream" and out.name == "stderr":
                found.append(f"cell {index + 1} wrote to stderr:\n    "
                             + out.text.strip().replace("\n", "\n    "))
    return found


def run(path: Path, workdir: Path, timeout: int) -> tuple[float, list[str]]:
    """Run a copy of the lesson in `workdir` with this environment's kernel."""
    copy = workdir / path.name
    shutil.copy2(path, copy)
    nb = nbformat.read(copy, as_version=4)
    started = time.perf_counter()
    # IPC, not TCP: the kernel is local, and ipykernel 7 warns on stderr about plain-text TCP.
    kernel = KernelManager(kernel_name="python3", transport="ipc", ip=str(workdir / "kernel-ipc"))
    try:
        NotebookClient(nb, km=kernel, timeout=timeout, allow_errors=True,
                       resources={"metadata": {"path": str(workdir)}}).execute()
    finally:  # nbclient stops only the kernels it started itself
        if kernel.has_kernel:
            kernel.shutdown_kernel(now=True)
    return time.perf_counter() - started, problems(nb)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    for name in COURSE_SETTINGS:
        os.environ.pop(name, None)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="colab-") as tmp:
        workdir = Path(tmp)
        print(f"fedutils[colab] installed at {install_fedutils(workdir)}", flush=True)
        for path in args.notebooks:
            seconds, found = run(path.resolve(), workdir, args.timeout)
            print(f"{path.stem:<32} {seconds:6.1f} s  "
                  + ("clean" if not found else f"{len(found)} problem(s)"), flush=True)
            for line in found:
                print("  " + line)
            failed += bool(found)
    print(f"{len(args.notebooks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
