#!/usr/bin/env python
"""Execute lesson notebooks in place, in order, with nbclient, and measure each run.

nbclient runs each notebook top to bottom with the lesson's course kernel (saved with fresh
outputs, execution counts 1, 2, 3, ...). This script adds only what nbclient (and papermill)
lack: each lesson's wall time and its kernel's peak memory, written with --timings to
lessons/timings.json and lessons/TIMINGS.md (the README and the instructor guide show them),
and the stopping of every TFF worker_binary helper the kernels started.

    python scripts/run_notebooks.py lessons/*.ipynb [--timings] [--no-save]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

from fedutils.bridges.tff_workers import stop_workers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from course import (DEFAULT_KERNELSPEC, KERNEL, MODERN_KERNEL, ROOT, PeakMemory,  # noqa: E402
                    is_modern, lesson_paths)

def run(path: Path, save: bool, timeout: int) -> dict:
    """Execute one lesson with nbclient; return its wall time and peak kernel memory."""
    nb = nbformat.read(path, as_version=4)
    modern = is_modern(nb)
    client = NotebookClient(nb, timeout=timeout,
                            kernel_name=MODERN_KERNEL["name"] if modern else KERNEL,
                            resources={"metadata": {"path": str(path.parent)}})
    # The kernel's pid exists once nbclient has started it; until then the sampler waits.
    monitor = PeakMemory(lambda: client.km.provisioner.process.pid)
    monitor.start()
    started = time.perf_counter()
    try:
        client.execute()
    finally:
        seconds = time.perf_counter() - started
        monitor.done.set()
        stop_workers(run_id=os.environ["FEDUTILS_RUN_ID"])
    nb.metadata["kernelspec"] = MODERN_KERNEL if modern else DEFAULT_KERNELSPEC
    if save:
        nbformat.write(nb, path)
    return {"lesson": path.stem, "seconds": round(seconds, 1),
            "peak_memory_mb": round(monitor.peak / 2**20)}


def write_timings(results: list[dict]) -> None:
    machine = f"{platform.machine()}, {psutil.cpu_count()} cores, Python {platform.python_version()}"
    (ROOT / "lessons" / "timings.json").write_text(json.dumps(
        {"machine": machine, "lessons": results}, indent=1) + "\n")
    total = sum(r["seconds"] for r in results)
    lines = ["# Lesson timings", "",
             f"Measured by `make timings` (one clean top-to-bottom run of each lesson) on {machine}.",
             "Repeated runs on the same machine differ by up to a third per lesson, as the host's "
             "speed drifts: compare lessons within one run.",
             "", "| lesson | seconds | peak kernel memory (MB) |", "|---|---:|---:|"]
    lines += [f"| {r['lesson']} | {r['seconds']:.0f} | {r['peak_memory_mb']} |" for r in results]
    lines += [f"| **whole course** | **{total:.0f}** ({total / 60:.1f} min) | |", ""]
    (ROOT / "lessons" / "TIMINGS.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="lessons to run (default: every lesson, in order)")
    parser.add_argument("--timings", action="store_true", help="write lessons/TIMINGS.md")
    parser.add_argument("--no-save", action="store_true", help="do not write outputs back")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("FEDUTILS_RUN_ID", f"notebooks-{os.getpid()}-{time.time():.0f}")
    results = []
    for path in sorted(args.notebooks) or lesson_paths():
        result = run(path, save=not args.no_save, timeout=args.timeout)
        print(f"{result['lesson']:<32} {result['seconds']:6.1f} s  "
              f"{result['peak_memory_mb']:5d} MB", flush=True)
        results.append(result)
    if args.timings:
        write_timings(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
