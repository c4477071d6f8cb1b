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


@pytest.fixture(scope="session")
def five_digit_clients():
    """All digits over five IID clients as ClientData, and a digits model's initial weights."""
    from fedutils import data, models, partition

    x, y = data.load_digits()
    split = data.make_client_data(x, y, partition.iid_partition(y, 5, seed=0), batch_size=20, seed=0)
    return split, models.create_digits_model().get_weights()


@pytest.fixture
def run_script(tmp_path):
    """Run scripts/<name> with this interpreter and return (exit code, its output). Output goes
    to a file, not a pipe: see fedutils.bridges.tff_workers."""
    def run(name: str, *args: str) -> tuple[int, str]:
        log = tmp_path / f"{name}.log"
        with open(log, "w") as out:
            code = subprocess.run([sys.executable, str(SCRIPTS / name), *args], stdout=out,
                                  stderr=subprocess.STDOUT).returncode
        return code, log.read_text()
    return run
