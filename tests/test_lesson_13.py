"""Lesson 13 (future directions): what the lesson builds in the open behaves like fedutils, and
its exercise checks accept the solutions and reject wrong answers.

The tests run the notebook's own cells (named by their tags) on small settings:
the multiply-add count against a hand count; the private digits split into pool, validation and
test; the head trained on features computed once against `create_transfer_model`; the bytes
each transfer arm sends; the FedPer round and Ditto's personal step written with
`client_update` against `fedutils.personalization`; the per-client split of the
personalization section; and the two exercises on made-up results.
"""
from __future__ import annotations

import ast
from functools import partial
from pathlib import Path

import matplotlib
import numpy as np
import pytest

import lesson_code

matplotlib.use("Agg")
NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "13_future_directions.ipynb"

run = partial(lesson_code.exec_cells, NOTEBOOK)  # run(namespace, *tags): no setup cell


@pytest.fixture(scope="module")
def transfer() -> dict:
    """The lesson's namespace after its setup, data, pretraining and features cells (the
    MobileNetV2 cells and the experiments are left out)."""
    namespace = lesson_code.run_cells(NOTEBOOK, "private-digits-split", "pretrain-base",
                                      "transfer-model", "features-once", "transfer-run")
    import matplotlib.pyplot as plt

    plt.close("all")
    return namespace


def test_multiply_adds_counts_by_hand():
    import tensorflow as tf

    layers = tf.keras.layers
    namespace = lesson_code.run_cells(NOTEBOOK)
    source = lesson_code.cell_source(NOTEBOOK, "multiply-adds")
    functions = [node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)]
    exec(compile(ast.Module(functions, type_ignores=[]), "multiply-adds", "exec"), namespace)
    small = tf.keras.Sequential([tf.keras.Input(shape=(8, 8, 1)), layers.Conv2D(32, 3),
                                 layers.MaxPooling2D(), layers.Flatten(), layers.Dense(5)])
    assert namespace["multiply_adds"](small) == 6 * 6 * 32 * 9 * 1 + 288 * 5
    depthwise = tf.keras.Sequential([tf.keras.Input(shape=(5, 5, 3)),
                                     layers.DepthwiseConv2D(3), layers.Conv2D(4, 1)])
    assert namespace["multiply_adds"](depthwise) == 3 * 3 * 3 * 9 + 3 * 3 * 4 * 3


def rows(images) -> list:
    """The images as a sorted list of pixel tuples: a multiset that ignores order."""
    return sorted(tuple(np.ravel(img).tolist()) for img in images)


def test_private_digits_split_into_pool_validation_and_test(transfer):
    ns = transfer
    assert len(ns["y_pool"]) + len(ns["y_val"]) + len(ns["y_test"]) == len(ns["y_private"])
    assert rows(np.concatenate([ns["x_pool"], ns["x_val"], ns["x_test"]])) == rows(
        ns["x_private"])
    assert set(np.unique(ns["y"][~ns["public"]])) == {5, 6, 7, 8, 9}
    assert set(np.unique(ns["y_private"])) == {0, 1, 2, 3, 4}
    clients = ns["transfer_clients"](ns["x_pool"], seed=1)
    assert len(clients) == ns["NUM_CLIENTS"]
    assert all(len(c) == ns["PER_CLIENT"] for c in clients)
    picked = np.random.default_rng(1).choice(len(ns["y_pool"]),
                                             ns["NUM_CLIENTS"] * ns["PER_CLIENT"], replace=False)
    assert rows(np.concatenate([c.x for c in clients])) == rows(ns["x_pool"][picked])


def test_head_on_features_trains_exactly_what_the_transfer_model_trains(transfer):
    from fedutils.data import make_client_data
    from fedutils.fedavg import client_update, server_aggregate
    from fedutils.models import create_transfer_model

    ns = transfer
    base, parts = ns["base"], np.array_split(np.arange(12), 3)
    transfer_model = create_transfer_model(base, num_classes=5)
    head = ns["head_fn"]()
    start = head.get_weights()
    base_before = [w.copy() for w in base.get_weights()]
    pixels = make_client_data(ns["x_pool"], ns["y_pool"], parts, batch_size=3, seed=0)
    feats = make_client_data(ns["features"]["pool"], ns["y_pool"], parts, batch_size=3, seed=0)
    via_transfer, via_head, counts = [], [], []
    for ds_pixels, ds_features in zip(pixels, feats):
        transfer_model.layers[-1].set_weights(start)
        result = client_update(transfer_model, ds_pixels, epochs=2, learning_rate=0.3)
        via_transfer.append(transfer_model.layers[-1].get_weights())
        counts.append(result.num_examples)
        head.set_weights(start)
        via_head.append(client_update(head, ds_features, epochs=2, learning_rate=0.3).weights)
    for a, b in zip(server_aggregate(via_transfer, counts), server_aggregate(via_head, counts)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for before, after in zip(base_before, base.get_weights()):
        np.testing.assert_array_equal(before, after)  # the frozen base never moved


def test_each_arm_sends_its_model_both_ways_and_starts_where_it_says(transfer, monkeypatch):
    from fedutils import fedavg

    ns = transfer
    ns["ROUNDS"] = 2
    seen = {}
    real = fedavg.run_fedavg

    def spy(model_fn, clients, **kwargs):
        seen["start"] = kwargs["initial_weights"]
        return real(model_fn, clients, **kwargs)

    head_bytes, full_bytes = 4 * (288 * 5 + 5), 4 * (9 * 32 + 32 + 288 * 5 + 5)
    for arm, per_client in [("frozen base", head_bytes), ("from scratch", full_bytes),
                            ("pretrained start", full_bytes)]:
        monkeypatch.setattr(fedavg, "run_fedavg", spy)
        history = ns["transfer_run"](arm, 0.1, seed=0, evaluate_on="val")
        monkeypatch.undo()
        assert len(history) == 2
        for r in history.rounds:
            assert r["download_bytes"] == r["upload_bytes"] == r["num_clients"] * per_client
        if arm == "pretrained start":
            for a, b in zip(seen["start"][:2], ns["base"].get_weights()):
                np.testing.assert_array_equal(a, b)
        else:
            assert seen["start"] is None


@pytest.fixture(scope="module")
def personal() -> dict:
    """The personalization section's split and the FedPer and Ditto rounds written in the open."""
    namespace = lesson_code.run_cells(NOTEBOOK, "personal-split", "fedper-ditto-by-hand",
                                      SEEDS=(0,))
    import matplotlib.pyplot as plt

    plt.close("all")
    return namespace


def test_each_client_splits_into_train_validation_and_test(personal):
    from fedutils.partition import dirichlet_partition

    ns = personal
    clients, train_parts = ns["personal_split"](1)
    parts = dirichlet_partition(ns["y10"], ns["P_CLIENTS"], alpha=ns["ALPHA"], seed=1,
                                min_size=50)
    for k, part in enumerate(parts):
        sizes = [len(clients[name][k]) for name in ("train", "val", "test")]
        assert sizes[2] == int(round(0.25 * len(part)))
        assert sizes[1] == int(round(0.2 * (len(part) - sizes[2])))
        # the three splits hold exactly this client's images, each once
        together = np.concatenate([clients[name][k].x for name in ("train", "val", "test")])
        assert rows(together) == rows(ns["x10"][part])
        assert rows(clients["train"][k].x) == rows(ns["x10"][train_parts[k]])


def test_fedper_and_ditto_in_the_open_equal_fedutils(personal):
    from fedutils import fedavg, models, personalization

    ns = personal
    clients = [c for c in ns["personal_split"](2)[0]["train"][:4]]
    fedutils_set_seed(5)
    start = models.create_digits_model().get_weights()
    model = models.create_digits_model()
    body, heads = start[:2], [start[2:]] * 4
    w, personal_weights = start, [start] * 4
    for r in (1, 2):
        chosen = fedavg.sample_clients(4, 2, 1.0, np.random.default_rng([7, r]))
        body, heads = ns["my_fedper_round"](body, heads, clients, chosen, 0.2, 1, model)
        w, personal_weights = ns["my_ditto_round"](w, personal_weights, clients, chosen, 0.2,
                                                   1, 0.5, model)
    common = dict(rounds=2, clients_per_round=2, client_lr=0.2, initial_weights=start, seed=7)
    fedper = personalization.run_fedper(models.create_digits_model, clients, **common)
    ditto = personalization.run_ditto(models.create_digits_model, clients, lam=0.5, **common)
    for k in range(4):
        for a, b in zip(body + heads[k], fedper.personal_weights[k]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        for a, b in zip(personal_weights[k], ditto.personal_weights[k]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(w, ditto.shared_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def fedutils_set_seed(seed):
    import fedutils

    fedutils.set_seed(seed)


# --- the exercises, on made-up results ------------------------------------------------------

def exercise_one(**overrides) -> dict:
    """Exercise 1's inputs: validation curves (sweep), test curves and bytes per round."""
    from fedutils.fedavg import History, Spread

    arms = ("from scratch", "pretrained start", "frozen base")
    val = {"from scratch": [0.2, 0.5, 0.6, 0.7, 0.8],
           "pretrained start": [0.6, 0.7, 0.75, 0.74, 0.9],
           "frozen base": [0.5, 0.65, 0.78, 0.79, 0.95]}
    namespace = {
        "np": np, "ARMS": arms, "ROUNDS": 5, "SEEDS": (0, 1),
        "chosen_lr": {arm: 0.3 for arm in arms},
        "sweep": {(arm, 0.3): History([{"round": r + 1, "accuracy": a}
                                        for r, a in enumerate(val[arm])]) for arm in arms},
        "round_bytes": {"from scratch": 100, "pretrained start": 100, "frozen base": 80},
        "curves": {arm: Spread([0, 1], np.array([val[arm], val[arm]])[:, ::-1])
                   for arm in arms},
        "BUDGET": 320}
    namespace.update(overrides)
    return namespace


def test_exercise_one_check_accepts_the_solution():
    namespace = exercise_one()
    run(namespace, "exercise-1-solution", "exercise-1-check")
    # 320 bytes: three rounds of the full model (best 0.75), four of the head (best 0.79)
    assert (namespace["budget_arm"], namespace["budget_rounds"]) == ("frozen base", 4)


@pytest.mark.parametrize("arm, rounds, why", [
    ("frozen base", 5, "more bytes than the budget"),        # the 0.95 does not fit
    ("pretrained start", 3, "best accuracy within the budget"),  # counted per round, not bytes
    ("frozen base", 1, "best accuracy within the budget"),   # chosen on the test curves
])
def test_exercise_one_check_rejects_wrong_choices(arm, rounds, why):
    namespace = exercise_one(budget_arm=arm, budget_rounds=rounds)
    with pytest.raises(AssertionError, match=why):
        run(namespace, "exercise-1-check")


def exercise_two(**overrides) -> dict:
    """Exercise 2's inputs: per-client validation and test accuracies of two methods."""
    val = {("local fine-tuning", 0): np.array([1.0, 0.9, 0.8, 0.95]),
           ("global FedAvg", 0): np.array([1.0, 0.95, 0.7, 0.9])}
    test = {("local fine-tuning", 0): np.array([0.9, 1.0, 0.9, 0.6]),
            ("global FedAvg", 0): np.array([0.8, 0.9, 0.7, 0.9])}
    namespace = {"np": np, "P_CLIENTS": 4, "val_acc": val, "test_acc": test}
    namespace.update(overrides)
    return namespace


def test_exercise_two_check_accepts_the_solution():
    namespace = exercise_two()
    run(namespace, "exercise-2-solution", "exercise-2-check")
    np.testing.assert_array_equal(namespace["use_personal"], [False, False, True, True])
    assert namespace["gated_test"] == pytest.approx((0.8 + 0.9 + 0.9 + 0.6) / 4)
    assert namespace["gating_helps"] is False


@pytest.mark.parametrize("use_personal, gated_test, helps, why", [
    ([True, False, True, True], 0.8, False, "keep the global model on a tie"),  # >= on ties
    ([True, True, True, False], 0.95, True, "decide on the validation"),        # chose by test
    ([False, False, True, True], 0.9, False, "gated_test"),                     # wrong mean
    ([False, False, True, True], 0.8, True, "gating_helps"),                     # wrong verdict
])
def test_exercise_two_check_rejects_wrong_answers(use_personal, gated_test, helps, why):
    namespace = exercise_two(use_personal=np.array(use_personal), gated_test=gated_test,
                             gating_helps=helps)
    with pytest.raises(AssertionError, match=why):
        run(namespace, "exercise-2-check")
