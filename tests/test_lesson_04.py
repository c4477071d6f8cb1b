"""Lesson 04 writes the client update from scratch, counts FedSGD's and FedAvg's rounds to a
target and measures drift; these tests run the lesson's own cells (found by their name tags)
on small data and hold them to fedutils.fedavg and to hand computations, and check that
the exercises' checks accept the solutions and reject wrong answers."""
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "04_client_side.ipynb"

run_cells = partial(lesson_code.run_cells, NOTEBOOK)
exec_cells = partial(lesson_code.exec_cells, NOTEBOOK)


@pytest.fixture(scope="module")
def small(digits_split):
    """A few small, uneven digits clients, the global model's weights and a fresh model."""
    import fedutils
    from fedutils import data, models, partition

    x_train, _, y_train, _ = digits_split
    parts = partition.dirichlet_partition(y_train[:400], 4, alpha=0.5, seed=3)
    datasets = data.make_client_datasets(x_train[:400], y_train[:400], parts, batch_size=16,
                                         seed=1)
    fedutils.set_seed(1)
    model = models.create_digits_model()
    return {"datasets": datasets, "model": model, "weights": model.get_weights()}


def max_difference(a, b) -> float:
    return max(float(np.max(np.abs(p - q))) for p, q in zip(a, b))


def test_slide_optimizer_per_batch_loses_momentum(small):
    ns = run_cells("slide-client-update", model=small["model"],
                   global_weights=small["weights"], iid_datasets=small["datasets"], LR=0.1)
    # The lesson's claims: without state the two loops agree; a fresh momentum optimizer per
    # batch is plain SGD; momentum that persists across batches gives other weights.
    assert ns["max_difference"](ns["run"](ns["slide_client_update"], 0.0), ns["plain"]) == 0.0
    assert ns["max_difference"](ns["slide_momentum"], ns["plain"]) < 1e-7
    assert ns["max_difference"](ns["slide_momentum"], ns["true_momentum"]) > 1e-3


def test_my_client_update_agrees_with_fedutils(small):
    from fedutils import fedavg

    ns = run_cells("slide-client-update", "my-client-update", model=small["model"],
                   global_weights=small["weights"], iid_datasets=small["datasets"], LR=0.1)
    model = small["model"]
    for ds in small["datasets"][:2]:
        model.set_weights(small["weights"])
        weights, count, loss = ns["my_client_update"](model, ds, epochs=3, learning_rate=0.05)
        model.set_weights(small["weights"])
        reference = fedavg.client_update(model, ds, epochs=3, learning_rate=0.05)
        assert count == reference.num_examples == sum(int(b["y"].shape[0]) for b in ds)
        assert max_difference(weights, reference.weights) < 1e-6
        assert abs(loss - reference.metrics["loss"]) < 1e-6


def test_proximal_solution_agrees_with_fedutils(small):
    from fedutils import fedavg

    ns = run_cells("slide-client-update", "exercise-1-solution", model=small["model"],
                   global_weights=small["weights"], shard_datasets=small["datasets"],
                   iid_datasets=small["datasets"], LR=0.1)
    model, start = small["model"], small["weights"]
    anchor = [w * 0.9 for w in start]  # a global model other than the starting point
    model.set_weights(start)
    weights, count, loss = ns["my_prox_client_update"](model, small["datasets"][1], epochs=2,
                                                       learning_rate=0.1, mu=0.3,
                                                       global_weights=anchor)
    model.set_weights(start)
    reference = fedavg.client_update(model, small["datasets"][1], epochs=2, learning_rate=0.1,
                                     proximal_mu=0.3, global_weights=anchor)
    assert count == reference.num_examples
    assert abs(loss - reference.metrics["loss"]) < 1e-6
    assert max_difference(weights, reference.weights) < 1e-6


def test_drift_stats_and_updates_after_measure_what_the_lesson_says(small):
    from fedutils import data, fedavg

    ns = run_cells("drift-stats", global_weights=small["weights"], LR=0.1)
    drift_stats = ns["drift_stats"]
    counts = np.array([1.0, 3.0])
    same = drift_stats(np.array([[3.0, 4.0], [3.0, 4.0]]), counts)
    assert same["from global"] == pytest.approx(5.0)
    assert same["between clients"] == pytest.approx(0.0)
    assert same["agreement"] == pytest.approx(1.0)
    opposite = drift_stats(np.array([[3.0, 4.0], [-1.0, -4.0 / 3.0]]), counts)
    assert opposite["norm of average"] == pytest.approx(0.0, abs=1e-12)  # 1*d + 3*(-d/3) = 0
    assert opposite["between clients"] == pytest.approx(np.hypot(4.0, 16.0 / 3.0))
    # updates_after: every client trained alone from the global weights, as client_update does
    clients = data.as_client_data(small["datasets"][:3])
    for epochs in (1, 3):
        deltas = ns["updates_after"](clients, epochs)
        model = small["model"]
        for client, delta in zip(clients, deltas):
            model.set_weights(small["weights"])
            reference = fedavg.client_update(model, client, epochs=epochs, learning_rate=0.1)
            expected = ns["flatten"](reference.weights) - ns["flatten"](small["weights"])
            np.testing.assert_allclose(delta, expected, atol=2e-6)
    prox = ns["updates_after"](clients[:1], 2, proximal_mu=0.5)[0]
    model.set_weights(small["weights"])
    reference = fedavg.client_update(model, clients[0], epochs=2, learning_rate=0.1,
                                     proximal_mu=0.5)
    np.testing.assert_allclose(prox, ns["flatten"](reference.weights)
                               - ns["flatten"](small["weights"]), atol=2e-6)


def test_fedsgd_round_is_one_full_batch_gradient_step_on_any_split(small):
    """FedSGD as the lesson builds it (batched(..., None), one epoch) = one step of gradient
    descent on all the clients' examples pooled, written here with GradientTape."""
    import tensorflow as tf

    from fedutils import data, fedavg, models

    ns = run_cells("rounds-to-target")
    clients = data.as_client_data(small["datasets"])
    x = np.concatenate([c.x for c in clients])
    y = np.concatenate([c.y for c in clients])
    model = small["model"]
    model.set_weights(small["weights"])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, model(x)))
    grads = tape.gradient(loss, model.trainable_variables)
    by_hand = [w - 0.5 * g.numpy() for w, g in zip(small["weights"], grads)]
    fedsgd = fedavg.run_fedavg(models.create_digits_model, ns["batched"](clients, None),
                               rounds=1, client_lr=0.5, initial_weights=small["weights"],
                               progress=False).final_weights
    assert max_difference(fedsgd, by_hand) < 1e-6
    # another split of the same examples: the same FedSGD round
    order = np.random.default_rng(0).permutation(len(y))
    other = data.make_client_data(x, y, np.array_split(order, 2), batch_size=7, seed=0)
    again = fedavg.run_fedavg(models.create_digits_model, ns["batched"](other, None), rounds=1,
                              client_lr=0.5, initial_weights=small["weights"],
                              progress=False).final_weights
    assert max_difference(again, fedsgd) < 1e-6


def test_rounds_to_target_is_the_first_round_at_the_target(small, digits_split):
    from fedutils import data, fedavg, models

    x_train, x_test, y_train, y_test = digits_split
    ns = run_cells("rounds-to-target")
    ns.update(TARGET=0.5, MAX_ROUNDS={"FedSGD": 4})
    clients = data.as_client_data(small["datasets"])
    found = ns["rounds_to_target"]("FedAvg E=1 B=20", clients, 0.3, (x_test, y_test), seed=1)
    import fedutils
    fedutils.set_seed(1)
    history = fedavg.run_fedavg(models.create_digits_model, ns["batched"](clients, 20), rounds=30,
                                client_lr=0.3, eval_data=(x_test, y_test), seed=1, progress=False)
    accuracy = np.array(history["accuracy"])
    assert found == int(np.argmax(accuracy >= 0.5)) + 1 and accuracy[found - 2] < 0.5
    ns["TARGET"] = 1.01  # never reached
    assert ns["rounds_to_target"]("FedSGD", clients, 0.3, (x_test, y_test), seed=1) == np.inf


def test_exercise_2_check_accepts_the_solution_and_rejects_a_wrong_scale(small, digits_split):
    x_train, _, y_train, _ = digits_split
    names = dict(model=small["model"], global_weights=small["weights"], x_train=x_train,
                 y_train=y_train, BATCH_SIZE=20, LR=0.1, iid_datasets=small["datasets"])
    ns = run_cells("slide-client-update", "drift-stats", **names)
    solved = run_cells("slide-client-update", "drift-stats", "exercise-2-solution",
                       "exercise-2-check", **names)
    assert 0 < solved["relative_difference"] < 1
    answer = {k: solved[k] for k in ("weighted_update", "updates", "counts")}
    with pytest.raises(AssertionError):  # max |difference| is not the asked-for scale
        run_cells("slide-client-update", "drift-stats", "exercise-2-check", **names, **answer,
                  relative_difference=ns["max_difference"](solved["weighted_update"],
                                                           solved["plain_update"]))


def test_exercise_3_check_accepts_the_solution_and_rejects_a_wrong_verdict(small):
    names = dict(global_weights=small["weights"], LR=0.1, NUM_CLIENTS=10)
    ns = run_cells("drift-stats", **names)
    ns.update(EPOCH_POINTS=(1, 5), SEEDS=(0, 1))  # a smaller drift experiment
    exec_cells(ns, "drift-experiment", "exercise-3-solution", "exercise-3-check")
    assert ns["prox_distance"].mean < ns["at"](ns["spread"]["2 digits per client", "from global"],
                                              5).mean
    ns["agree_more"] = not ns["agree_more"]
    with pytest.raises(AssertionError):
        exec_cells(ns, "exercise-3-check")
