"""Lesson 16 (server optimizers and client drift): the lesson's own cells, found by their name
tags, held to fedutils: FedAvgM and FedAdam written in NumPy against
`fedutils.server_optimizers`, the SCAFFOLD round written with `client_update(correction=...)`
against `run_fedavg(scaffold=True)`, the validation carve-out, the Flower defaults it quotes, and
the exercise checks (they accept the solutions and reject the tempting wrong answers)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

import fedutils
from fedutils import data, fedavg, models, server_optimizers

import lesson_code

NOTEBOOK = (Path(__file__).resolve().parent.parent / "lessons"
            / "16_server_optimizers_and_client_drift.ipynb")
METHODS = ("FedAvg", "SCAFFOLD", "FedAvgM", "FedAdam")
run = partial(lesson_code.exec_cells, NOTEBOOK)  # run(namespace, *tags): no setup cell


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(p) - np.asarray(q)))) for p, q in zip(a, b))


@pytest.fixture(scope="module")
def optimizers():
    return lesson_code.run_cells(NOTEBOOK, "server-optimizers-by-hand")


def pseudo_gradients(dtype, steps=6, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(5, 3), (3,), (3, 2)]
    grads = [[rng.normal(scale=s, size=shape).astype(dtype) for shape in shapes]
             for s in (0.1, 1.0, 0.01, 0.1, 0.001, 0.5)[:steps]]
    for g in grads:
        g[1][0] = 0.0  # a coordinate no client moved
    weights = [rng.normal(size=shape).astype(dtype) for shape in shapes]
    return weights, grads


def apply(optimizer, weights, grads):
    state = optimizer.initialize(weights)
    for g in grads:
        state, weights = optimizer.next(state, weights, g)
    return weights


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("lr, momentum", [(1.0, 0.9), (0.5, 0.0), (0.3, 0.5)])
def test_my_fedavgm_is_server_sgd_with_momentum(optimizers, dtype, tol, lr, momentum):
    weights, grads = pseudo_gradients(dtype)
    ours = optimizers["my_fedavgm"](weights, grads, lr, momentum)
    theirs = apply(server_optimizers.sgd(lr, momentum=momentum), weights, grads)
    assert max_diff(ours, theirs) < tol
    assert all(o.dtype == dtype for o in ours)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("kwargs", [dict(), dict(beta_2=0.99, epsilon=1e-3),
                                    dict(beta_1=0.5, beta_2=0.9, epsilon=1e-5)])
def test_my_fedadam_is_server_adam(optimizers, dtype, tol, kwargs):
    weights, grads = pseudo_gradients(dtype)
    ours = optimizers["my_fedadam"](weights, grads, 0.05, **kwargs)
    theirs = apply(server_optimizers.adam(0.05, **kwargs), weights, grads)
    assert max_diff(ours, theirs) < tol
    # and it is not plain SGD: the step follows Adam's normalisation
    assert max_diff(ours, apply(server_optimizers.sgd(0.05), weights, grads)) > 1e-3


def test_my_fedadam_bias_correction_first_step_moves_about_lr(optimizers):
    """Step 1 of bias-corrected Adam moves each coordinate by lr·|g|/(|g| + eps/sqrt(1-b2))."""
    weights = [np.zeros(4)]
    g = [np.array([1.0, -0.5, 1e-3, 0.0])]
    out = optimizers["my_fedadam"](weights, [g], 0.1, beta_2=0.99, epsilon=1e-3)[0]
    expected = -0.1 * g[0] / (np.abs(g[0]) + 1e-3 / np.sqrt(0.01))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)


@pytest.fixture(scope="module")
def small_clients():
    """Four label-skewed clients of unequal size (1 to 4 batches of 20)."""
    x, y = data.load_digits()
    order = np.argsort(y, kind="stable")[::4]
    sizes, ends = (15, 38, 70, 27), np.cumsum((15, 38, 70, 27))
    parts = [order[end - size:end] for end, size in zip(ends, sizes)]
    return data.make_client_data(x, y, parts, batch_size=20, seed=0)


def test_my_scaffold_round_equals_run_fedavg_scaffold(small_clients):
    ns = lesson_code.run_cells(NOTEBOOK, "scaffold-round-by-hand")
    fedutils.set_seed(0)
    model = models.create_digits_model()
    x0 = model.get_weights()
    x, c = x0, [np.zeros_like(w) for w in x0]
    c_clients = [c] * len(small_clients)
    for r in (1, 2, 3):
        chosen = fedavg.sample_clients(4, 2, 1.0, np.random.default_rng([5, r]))
        x, c, c_clients = ns["my_scaffold_round"](x, c, c_clients, chosen, small_clients, 0.2,
                                                  2, model)
    packaged = fedavg.run_fedavg(models.create_digits_model, small_clients, rounds=3,
                                 clients_per_round=2, local_epochs=2, client_lr=0.2,
                                 initial_weights=x0, seed=5, scaffold=True, progress=False)
    plain = fedavg.run_fedavg(models.create_digits_model, small_clients, rounds=3,
                              clients_per_round=2, local_epochs=2, client_lr=0.2,
                              initial_weights=x0, seed=5, progress=False)
    assert max_diff(x, packaged.final_weights) < 1e-5
    assert max_diff(x, plain.final_weights) > 1e-3
    assert any(np.any(ci[0] != 0) for ci in c_clients) and np.any(c[0] != 0)


def test_carve_validation_holds_out_each_clients_last_examples(small_clients):
    ns = lesson_code.run_cells(NOTEBOOK, "shards-federation", "validation-carve-out")
    kept, (vx, vy) = ns["carve_validation"](small_clients, fraction=0.2)
    assert [len(k) for k in kept] == [12, 31, 56, 22]
    assert len(vy) == sum(len(c) for c in small_clients) - sum(len(k) for k in kept)
    for client, part in zip(small_clients, kept):
        np.testing.assert_array_equal(part.x, client.x[:len(part)])
        assert part.batch_size == client.batch_size
    held = np.concatenate([c.x[len(k):] for c, k in zip(small_clients, kept)])
    np.testing.assert_array_equal(held, vx)


def test_lesson_validation_never_touches_the_test_set():
    ns = lesson_code.run_cells(NOTEBOOK, "shards-federation", "validation-carve-out")
    train = {row.tobytes() for row in ns["shards"].x_train}
    test = {row.tobytes() for row in ns["x_test"]}
    validation = {row.tobytes() for row in ns["validation"][0]}
    assert validation <= train and not validation & (test - train)
    assert len(ns["validation"][1]) + sum(len(c) for c in ns["tuning_clients"]) == \
        len(ns["shards"].y_train)


def test_flower_defaults_in_the_lesson_are_the_installed_flowers():
    pytest.importorskip("flwr", reason="Flower lives in the current-TF environment")
    ns = lesson_code.run_cells(NOTEBOOK, "flower-defaults")
    for module, expected in ns["FLOWER_1_39_DEFAULTS"].items():
        assert ns["installed_flower_defaults"](module) == expected


# --- exercise 1: bytes to the target ----------------------------------------------------------

def exercise_1_names(rounds: dict, per_round: dict) -> dict:
    """The names exercise 1 reads, for made-up runs: each method reaches 90% in the given
    rounds per seed and moves `per_round` bytes (down, up) each round."""
    ns = lesson_code.run_cells(NOTEBOOK, "rounds-to-target")
    results = {}
    for m in METHODS:
        curves = np.full((3, 30), 0.5)
        for s, r in enumerate(rounds[m]):
            curves[s, r - 1:] = 0.95
        results["shards", m] = fedavg.Spread([0, 1, 2], curves)
    ns.update(results=results, bytes_per_round=per_round,
              chosen_settings={m: {} for m in METHODS})
    return ns


MODEL = 19_240
SCENARIOS = {  # SCAFFOLD fastest in rounds but dearest in bytes; then cheap enough to win
    "dear": ({"FedAvg": (20, 18, 19), "SCAFFOLD": (11, 10, 12), "FedAvgM": (13, 12, 12),
              "FedAdam": (10, 11, 11)}, False, "FedAdam"),
    "cheap": ({"FedAvg": (29, 28, 30), "SCAFFOLD": (6, 5, 7), "FedAvgM": (16, 15, 16),
               "FedAdam": (15, 14, 16)}, True, "SCAFFOLD"),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_exercise_1_check_accepts_the_solution(scenario):
    rounds, scaffold_cheaper, cheapest = SCENARIOS[scenario]
    per_round = {m: (10 * MODEL * (2 if m == "SCAFFOLD" else 1),) * 2 for m in METHODS}
    ns = run(exercise_1_names(rounds, per_round), "exercise-1-solution")
    assert ns["scaffold_cheaper_than_fedavg"] is scaffold_cheaper
    assert ns["cheapest"] == cheapest
    run(ns, "exercise-1-check")


@pytest.mark.parametrize("wrong", ["rounds not bytes", "upload only", "flipped judgement"])
def test_exercise_1_check_rejects_wrong_answers(wrong):
    rounds, _, _ = SCENARIOS["dear"]
    per_round = {m: (10 * MODEL * (2 if m == "SCAFFOLD" else 1),) * 2 for m in METHODS}
    ns = run(exercise_1_names(rounds, per_round), "exercise-1-solution")
    if wrong == "rounds not bytes":  # judge by rounds: SCAFFOLD looks cheaper than FedAvg
        ns["bytes_to_target"] = dict(ns["mean_rounds"])
        ns["scaffold_cheaper_than_fedavg"] = True
    elif wrong == "upload only":
        ns["bytes_to_target"] = {m: ns["mean_rounds"][m] * per_round[m][1] for m in METHODS}
    else:
        ns["scaffold_cheaper_than_fedavg"] = not ns["scaffold_cheaper_than_fedavg"]
    with pytest.raises(AssertionError):
        run(ns, "exercise-1-check")


# --- the drift picture and exercise 2 -----------------------------------------------------------

@pytest.fixture(scope="module")
def drift():
    """The lesson's own SCAFFOLD rounds in the open and its drift measurement (real settings)."""
    return lesson_code.run_cells(NOTEBOOK, "shards-federation", "server-optimizers-by-hand",
                                 "optimizers-agree", "scaffold-round-by-hand",
                                 "scaffold-in-the-open", "drift-stats")


def test_lesson_scaffold_agrees_with_run_fedavg_and_corrects_drift(drift):
    assert max_diff(drift["x"], drift["packaged"].final_weights) < 1e-5
    table = drift["drift_table"]
    plain, corrected = table["FedAvg clients"], table["SCAFFOLD clients"]
    assert corrected["agreement"] > plain["agreement"] + 0.1
    assert corrected["between clients"] < plain["between clients"]


def test_drift_stats_by_hand(drift):
    stats = drift["drift_stats"]
    same = stats(np.array([[3.0, 4.0], [3.0, 4.0]]), np.array([1.0, 2.0]))
    assert same["from global"] == pytest.approx(5.0) and same["agreement"] == pytest.approx(1.0)
    assert same["between clients"] == pytest.approx(0.0)
    opposite = stats(np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([1.0, 1.0]))
    assert opposite["agreement"] == pytest.approx(0.0)
    assert opposite["between clients"] == pytest.approx(2.0)


def test_exercise_2_check_accepts_the_solution_and_rejects_swapped_answers(drift):
    ns = run(dict(drift), "exercise-2-solution")
    assert (ns["raises_agreement"], ns["shortens_updates"]) == ("SCAFFOLD", "FedProx")
    run(dict(ns), "exercise-2-check")
    for wrong in [dict(raises_agreement="FedProx"), dict(shortens_updates="SCAFFOLD")]:
        with pytest.raises(AssertionError):
            run(dict(ns, **wrong), "exercise-2-check")
