"""Fixtures shared by the unit tests (the session harness is ../conftest.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="session")
def digits_split():
    """Digits with a stratified held-out test set, shared by the tests that need real data."""
    from fedutils import data

    x, y = data.load_digits()
    return data.train_test_split(x, y, test_fraction=0.25, seed=0)


@pytest.fixture
def run_script(tmp_path):
    """Run scripts/<name> with this interpreter and return (exit code, its output). Output goes
    to a file, not a pipe: see fedutils.course.tff_workers."""
    def run(name: str, *args: str) -> tuple[int, str]:
        log = tmp_path / f"{name}.log"
        with open(log, "w") as out:
            code = subprocess.run([sys.executable, str(SCRIPTS / name), *args], stdout=out,
                                  stderr=subprocess.STDOUT).returncode
        return code, log.read_text()
    return run
