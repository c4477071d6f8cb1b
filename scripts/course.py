"""The course's constants and small tools, in one place for every script (and the benchmark):
where the lessons are and what they are called, the kernels they run on, a memory sampler."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"
LESSON_GLOB = "[0-9][0-9]_*.ipynb"
KERNEL = "fl-course"   # the TFF environment's kernel (Makefile: KERNEL)
# A lesson saved with this kernel (15: Flower needs protobuf >= 5) runs in the current-TF
# environment, whose kernel `make lab` registers beside the course's (Makefile: MODERN_KERNEL).
MODERN_KERNEL = {"name": "fl-course-modern",
                 "display_name": "Python 3 (FL course, Keras 3 + Flower)", "language": "python"}
STAMP_TAG = "course-stamp"   # cells written by scripts/stamp_lessons.py (badge, Colab, links)
DEFAULT_KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                      "language": "python"}
# A cell's role is a cell tag: `solution` (student copies drop it), `check` (asserts on the
# exercise before it), and nbval's own `nbval-skip` and `nbval-check-output`. A notebook written
# with first-line markers instead (an instructor's, say) is converted by scripts/tag_cells.py,
# which moves each marker below to its tag; the tools read tags only.
MARKERS = {"solution": "# SOLUTION", "check": "# CHECK", "nbval-skip": "# NBVAL_SKIP",
           "nbval-check-output": "# NBVAL_CHECK_OUTPUT"}


# The course's two parts (the site's sidebar): lessons numbered up to 14 follow the slides;
# later ones go beyond them.
COURSE_PARTS = [("Part I · The slides", 14), ("Part II · Beyond the slides", 99)]


def part_of(path: Path) -> str:
    """The caption of the part that lesson `path` (NN_name.ipynb) belongs to."""
    number = int(path.name[:2])
    return next(caption for caption, last in COURSE_PARTS if number <= last)


def lesson_paths() -> list[Path]:
    """Every lesson notebook, in course order."""
    return sorted(LESSONS.glob(LESSON_GLOB))


def title_of(nb) -> str:
    """A lesson's title: its first markdown heading '# NN · Title', without the '# '."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and STAMP_TAG not in cell.metadata.get("tags", []):
            first = cell.source.splitlines()[0] if cell.source else ""
            if first.startswith("# "):
                return first[2:].strip()
    raise SystemExit("a lesson needs a title cell '# NN · Title'")


def first_line(cell) -> str:
    """A cell's first non-blank line, stripped."""
    return next((line.strip() for line in cell.source.splitlines() if line.strip()), "")


def has_role(cell, tag: str) -> bool:
    """Whether a cell carries the role tag `tag` (one of MARKERS)."""
    return tag in cell.metadata.get("tags", [])


def is_modern(nb) -> bool:
    """Whether a lesson runs on the current-TF kernel (it is saved with that kernel)."""
    return nb.metadata.get("kernelspec", {}).get("name") == MODERN_KERNEL["name"]


class PeakMemory(threading.Thread):
    """Samples the resident memory of a process tree every 50 ms and keeps the peak.

    `pid` gives the root process (a function, because a kernel's pid is known only once it
    has started); None means this process."""

    def __init__(self, pid: Optional[Callable[[], int]] = None):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        import psutil

        while not self.done.wait(0.05):
            try:
                proc = psutil.Process(self.pid() if self.pid else None)
                rss = proc.memory_info().rss + sum(
                    c.memory_info().rss for c in proc.children(recursive=True))
                self.peak = max(self.peak, rss)
            except Exception:
                continue
