"""Test harness: quiet TensorFlow, keep the data cache in a temporary folder, and stop every
TFF worker_binary helper that this test session (or a notebook kernel it ran) started."""
from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Every kernel and TFF helper this session starts inherits this tag (see fedutils.workers).
os.environ.setdefault("FEDUTILS_RUN_ID", f"pytest-{os.getpid()}-{time.time():.0f}")

import pytest  # noqa: E402

def pytest_sessionfinish(session, exitstatus):
    from fedutils.workers import stop_workers

    stopped = stop_workers(run_id=os.environ["FEDUTILS_RUN_ID"])
    if stopped:
        print(f"\nconftest: stopped {stopped} TFF worker_binary helper(s) started by this run")


@pytest.fixture(scope="session")
def digits_split():
    """Digits with a stratified held-out test set, shared by the tests that need real data."""
    from fedutils import data

    x, y = data.load_digits()
    return data.train_test_split(x, y, test_fraction=0.25, seed=0)
