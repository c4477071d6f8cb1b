"""Lesson 17 builds gradient inversion, a malicious-client aggregator and a backdoor trigger in
the open; these tests run the notebook's own cells (found by their name tags) and check them
against fedutils.techniques.attacks, and check that the exercises' checks accept the solutions
and reject wrong answers."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

from fedutils import models, robust
from fedutils import attacks
from lesson_code import exec_cells, run_cells

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "17_attacks_and_defences.ipynb"
DATA, SECRET, DLG = "data-splits", "secret-gradient", "dlg-by-hand"
FEDERATION, TRIGGER = "federation-and-sign-flip", "backdoor-trigger"
run = partial(exec_cells, NOTEBOOK)  # run(namespace, *tags): no setup cell


@pytest.fixture(scope="module")
def federation_ns():
    """The lesson's data, its 20-client federation (with its own agreement check) and the
    backdoor trigger cell, with the names the backdoor cell would define."""
    ns = run_cells(NOTEBOOK, DATA, SECRET, FEDERATION, TRIGGER)
    ns.update(BOOST=ns["NUM_CLIENTS"] / ns["NUM_MALICIOUS"], probe=models.create_digits_model())
    return ns


def test_dlg_by_hand_agrees_with_invert_gradient():
    ns = run_cells(NOTEBOOK, DATA, SECRET, DLG)
    model, x, y = ns["model"], ns["x_train"], ns["y_train"]
    for i in (5, 17):
        gradient = attacks.batch_gradient(model, x[i:i + 1], y[i:i + 1])
        label = np.array([np.argmin(gradient[-1])])
        mine, distance = ns["dlg_by_hand"](gradient, label, seed=1)
        theirs = attacks.invert_gradient(model, gradient, 1, seed=1)
        assert label.tolist() == theirs.labels.tolist() == [y[i]]
        for image in (mine, theirs.images):
            assert attacks.reconstruction_error(image, x[i:i + 1])[0][0] < 0.01
        np.testing.assert_allclose(mine, theirs.images, atol=0.03)


def test_sign_flip_by_hand_equals_malicious_clients_on_any_updates(federation_ns):
    by_hand, malicious = federation_ns["sign_flip_by_hand"], federation_ns["malicious"]
    rng = np.random.default_rng(0)
    updates = [[rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)]
               for _ in range(6)]
    ids = [malicious[0], 1, malicious[2], 7, 8, malicious[3]]
    counts = np.array([10, 20, 30, 40, 50, 60])
    theirs = attacks.MaliciousClients(malicious, attacks.sign_flip(5.0))(updates, counts, ids)
    for a, b in zip(by_hand(updates, counts, ids, rng), theirs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_the_trigger_by_hand_is_add_trigger(federation_ns):
    x = federation_ns["x_test"][:20]
    images = x.reshape(-1, 8, 8).copy()
    images[:, -2:, -2:] = 1.0
    np.testing.assert_array_equal(images.reshape(-1, 64), attacks.add_trigger(x))
    poisoned_x, poisoned_y = federation_ns["plant_backdoor"](x, federation_ns["y_test"][:20],
                                                             np.random.default_rng(0))
    relabelled = np.flatnonzero(np.all(poisoned_x.reshape(-1, 8, 8)[:, -2:, -2:] == 1, (1, 2)))
    assert len(relabelled) == 10 and np.all(poisoned_y[relabelled] == federation_ns["TARGET"])


def test_exercise_1_check_accepts_the_solution_and_rejects_a_wrong_answer():
    ns = run_cells(NOTEBOOK, DATA, SECRET, "exercise-1-solution")
    run(ns, "exercise-1-check")
    ns["invert_first_layer"] = lambda g: g[0][:, np.argmax(np.abs(g[1]))]  # forgot to divide
    with pytest.raises(AssertionError):
        run(ns, "exercise-1-check")


def test_exercise_2_check_accepts_the_solution_and_rejects_wrong_answers(federation_ns):
    ns = dict(federation_ns)
    run(ns, "exercise-2-solution", "exercise-2-check")
    assert ns["multi_krum_success"] < 0.1
    wrong = dict(ns, multi_krum_success=0.5)                # not the model's success
    with pytest.raises(AssertionError):
        run(wrong, "exercise-2-check")
    no_attack = ns["train"](ns["federation"](ns["plant_backdoor"], 1),
                            robust.Krum(ns["NUM_MALICIOUS"], num_selected=12), 1)
    wrong = dict(ns, multi_krum=no_attack, multi_krum_success=attacks.backdoor_success(
        ns["probe"], no_attack.final_weights, ns["x_test"], ns["y_test"], ns["TARGET"]))
    with pytest.raises(AssertionError, match="boosted"):        # the attack was left out
        run(wrong, "exercise-2-check")
