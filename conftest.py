"""Session-wide test harness, for `pytest` over tests/ and over the lesson notebooks alike.

Quiet TensorFlow, tag every process this session starts (notebook kernels and the TFF
worker_binary helpers they spawn inherit FEDUTILS_RUN_ID), and stop exactly those helpers when
the session ends: nbval may kill a kernel outright, and its helper would otherwise live on.
"""
from __future__ import annotations

import importlib.util
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("FEDUTILS_RUN_ID", f"pytest-{os.getpid()}-{time.time():.0f}")


# Lesson 15 runs a Flower federation, and Flower lives in the current-TF environment only
# (protobuf >= 5): there `make test-modern` runs it under nbval. In the TFF environment, which has
# no Flower, nbval leaves it out; tests/test_notebooks.py still checks the file itself.
FLOWER_LESSONS = ["lessons/15_*.ipynb"]
collect_ignore_glob = [] if importlib.util.find_spec("flwr") else FLOWER_LESSONS


def pytest_sessionfinish(session, exitstatus):
    from fedutils.bridges.tff_workers import stop_workers

    stopped = stop_workers(run_id=os.environ["FEDUTILS_RUN_ID"])
    if stopped:
        print(f"\nconftest: stopped {stopped} TFF worker_binary helper(s) started by this run")
