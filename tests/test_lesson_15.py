"""Lesson 15 (from simulation to deployment): the lesson's own cells against Flower and fedutils.

The federation itself (processes, gRPC, the crash) is tested in tests/test_federation.py and by
nbval running the notebook; here the exercise checks must accept the solutions and reject the
classic wrong answers: an unweighted mean, epsilon with amplification Flower does not apply,
and compressing the weights instead of the update. Flower lives in the current-TF environment.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lesson_code

pytest.importorskip("flwr", reason="Flower lives in the current-TF environment "
                    "(make test-modern)")

NOTEBOOK = (Path(__file__).resolve().parent.parent / "lessons"
            / "15_from_simulation_to_deployment.ipynb")


def run(namespace: dict, marker: str) -> dict:
    exec(compile(lesson_code.cell_source(NOTEBOOK, marker), marker, "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def lesson() -> dict:
    """Setup and the weighted-mean demonstration (no federation is started)."""
    return lesson_code.run_cells(NOTEBOOK, "fake_weights = [[")


def test_flower_fedavg_demo_shows_the_weighted_not_the_unweighted_mean(lesson):
    assert lesson["gap_weighted"] < 1e-6 < 0.1 < lesson["gap_unweighted"]


def test_exercise_1_check_accepts_the_solution_and_rejects_the_unweighted_mean(lesson):
    ns = run(dict(lesson), "by_hand = [")
    run(ns, "for mine, theirs in zip(by_hand")
    ns["by_hand"] = [np.mean([w[i] for w in ns["fake_weights"]], axis=0) for i in range(2)]
    with pytest.raises(AssertionError):
        run(ns, "for mine, theirs in zip(by_hand")


def test_exercise_2_check_accepts_the_solution_and_rejects_amplified_epsilon(lesson):
    ns = run(dict(lesson), "eps_flower = accountant")
    assert ns["eps_flower"] == pytest.approx(ns["eps_fedutils"], rel=1e-9)
    run(ns, "reference = dp_accounting.rdp.RdpAccountant()")
    # Counting amplification from sampling 10 of 1,000 is not what Flower's accountant does.
    ns["eps_fedutils"] = ns["privacy"].compute_epsilon(1.2, 0.01, 200, 1e-5)
    with pytest.raises(AssertionError):
        run(ns, "reference = dp_accounting.rdp.RdpAccountant()")


def test_exercise_3_check_accepts_the_solution_and_rejects_compressed_weights(lesson):
    ns = run(dict(lesson), "def encode_update(")
    run(ns, "record = encode_update(")
    ArrayRecord, compression = ns["ArrayRecord"], ns["compression"]

    def encode_weights(global_weights, new_weights, ratio):   # the slide-7 bug: weights
        arrays = []
        for n in new_weights:
            flat = n.ravel()
            keep = np.argsort(-np.abs(flat))[:compression.num_kept(flat.size, ratio)]
            arrays += [flat[keep].astype(np.float32), keep.astype(np.int32)]
        return ArrayRecord(arrays)

    ns["encode_update"] = encode_weights
    with pytest.raises(AssertionError):
        run(ns, "record = encode_update(")


def test_encoding_sends_far_fewer_bytes_than_dense(lesson):
    ns = run(dict(lesson), "def encode_update(")
    run(ns, "record = encode_update(")
    assert ns["sent"] < ns["dense"] / 5
