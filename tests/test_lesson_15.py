"""Lesson 15 (from simulation to deployment): the lesson's own cells against Flower and fedutils.

The federation itself (processes, gRPC, the crash, the clean-up) is tested in
tests/test_federation.py and by nbval running the notebook. Here: the lesson's in-the-open
code equals fedutils (the nodes' FedAvg loop equals `run_fedavg` through `federation.simulate`,
the NumPy client equals `client_update`), the seed study runs, and each exercise check accepts
the solution and rejects the classic wrong answer: a timeout from pooled or extreme step times,
epsilon with amplification Flower does not apply, and compressing the weights instead of the
update. Flower lives in the current-TF environment.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

import lesson_code

pytest.importorskip("flwr", reason="Flower lives in the current-TF environment "
                    "(make test-modern)")

NOTEBOOK = (Path(__file__).resolve().parent.parent / "lessons"
            / "15_from_simulation_to_deployment.ipynb")


run = partial(lesson_code.exec_cells, NOTEBOOK)  # run(namespace, *tags): no setup cell


@pytest.fixture(scope="module")
def lesson() -> dict:
    """Setup, the NumPy-vs-client_update check, the weighted-mean demonstration and the
    lesson's FedAvg loop (no federation is started)."""
    return lesson_code.run_cells(NOTEBOOK, "numpy-client-agrees", "weighted-mean-demo",
                                 "fedavg-on-devices")


def test_the_numpy_client_agrees_with_client_update(lesson):
    assert lesson["gap"] < 1e-6


def test_flower_fedavg_demo_shows_the_weighted_not_the_unweighted_mean(lesson):
    assert lesson["gap_weighted"] < 1e-6 < 0.1 < lesson["gap_unweighted"]


@pytest.mark.parametrize("lost", [None, 2])
def test_the_lessons_fedavg_loop_equals_run_fedavg(lesson, lost):
    federation = lesson["federation"]
    history, data = lesson["fedavg_on_devices"](0, lost=lost, lost_from=2)
    reference = federation.simulate(3, rounds=3, seed=0, lost_client=lost, lost_from_round=2)
    for got, want in zip(history[-1][1], reference.final_weights):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    expected = [[0, 1, 2]] * 3 if lost is None else [[0, 1, 2], [0, 1], [0, 1]]
    assert [members for members, _ in history] == expected
    # all nodes' held-out data together is the whole test set: the same accuracy
    x, y = lesson["held_out"](data, [0, 1, 2])
    accuracy = federation.device_evaluate(history[-1][1], x, y)[1]
    assert abs(accuracy - reference.accuracy[-1]) <= 1 / len(y) + 1e-12


def test_the_seed_study_compares_five_seeds(lesson):
    ns = run(dict(lesson), "cost-of-losing-client-2")
    values = ns["spread"].values
    assert values.shape == (5, 4) and np.all((values > 0.3) & (values < 1))
    # the client that was lost loses most, on average over the seeds
    assert (values[:, 2] - values[:, 3]).mean() > (values[:, 0] - values[:, 1]).mean()


def test_exercise_1_check_accepts_the_solution_and_rejects_pooled_or_extreme_timeouts(lesson):
    ns = run(dict(lesson), "exercise-1-setup", "exercise-1-solution", "exercise-1-check")
    steps = ns["step_seconds"]
    for wrong in (np.quantile(steps, 0.9), steps.mean(), 2 * np.median(steps), steps.max()):
        ns["chosen_timeout"] = float(wrong)
        with pytest.raises(AssertionError):
            run(ns, "exercise-1-check")


def test_exercise_2_check_accepts_the_solution_and_rejects_amplified_epsilon(lesson):
    ns = run(dict(lesson), "exercise-2-solution")
    assert ns["eps_flower"] == pytest.approx(ns["eps_fedutils"], rel=1e-9)
    run(ns, "exercise-2-check")
    # Counting amplification from sampling 10 of 1,000 is not what Flower's accountant does.
    ns["eps_fedutils"] = ns["privacy"].compute_epsilon(1.2, 0.01, 200, 1e-5)
    with pytest.raises(AssertionError):
        run(ns, "exercise-2-check")


def test_exercise_3_check_accepts_the_solution_and_rejects_compressed_weights(lesson):
    ns = run(dict(lesson), "exercise-3-solution", "exercise-3-check")
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
        run(ns, "exercise-3-check")


def test_encoding_sends_far_fewer_bytes_than_dense(lesson):
    ns = run(dict(lesson), "exercise-3-solution", "exercise-3-check")
    assert ns["sent"] < ns["dense"] / 5
