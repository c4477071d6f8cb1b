"""Sliders that work for a learner and stay out of the way of headless runs.

Lessons let a learner move a parameter and watch a plot change (`ipywidgets.interact`). A
widget needs a browser: when a notebook is executed headless (nbval in `make test`, `make
notebooks`), nothing renders it, and nbclient sometimes never sees such a cell finish
(jupyter/nbclient#312), which would hang the run. Those runs set FEDUTILS_RUN_ID (see
fedutils.bridges.tff_workers); there, `interact` prints one line instead of building the controls. Each
lesson draws its plot once, statically, before the slider, so nothing is lost.
"""
from __future__ import annotations

import os
from typing import Any, Callable

NOTE = "(Run this cell in JupyterLab or Colab: sliders appear, and the figure they redraw below them.)"


def headless() -> bool:
    """True inside the course's own headless runs (tests, `make notebooks`)."""
    return bool(os.environ.get("FEDUTILS_RUN_ID"))


def interact(function: Callable[..., Any], **controls: Any) -> Any:
    """`ipywidgets.interact(function, **controls)` in a live notebook; a one-line note in a
    headless run or where ipywidgets is not installed."""
    if not callable(function):
        raise TypeError(f"function must be callable, got {type(function).__name__}")
    if headless():
        print(NOTE)
        return None
    try:
        import ipywidgets
    except ImportError:
        print(NOTE.replace("Run this cell", "Install ipywidgets and run this cell"))
        return None
    return ipywidgets.interact(function, **controls)
