"""Lesson 05 (server aggregation): the code the lesson writes in the open does what it says.

The lesson's cells (found by their name tags) are executed here: its two means must equal
`fedutils.fedavg.server_aggregate`, its unweighted aggregator must make `run_fedavg` take the
plain mean, relabelling hidden units must leave the network's function unchanged, a one-step
weighted round must equal a gradient step on the pooled data, and problem 2's federation must be
what it says for every seed. The exercises' checks must accept the solution and reject a wrong
answer. (The lesson itself asserts that TFF's weighted and unweighted FedAvg take the same step
as run_fedavg with the matching mean.)
"""
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import fedutils
from fedutils import data, fedavg, models

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "05_server_aggregation.ipynb"

cell = partial(lesson_code.cell_source, NOTEBOOK)


@pytest.fixture(scope="module")
def lesson():
    ns = lesson_code.exec_cells(NOTEBOOK, {"np": np, "tf": tf, "fedavg": fedavg},
                                "slide-server-aggregate", "unweighted-mean")
    # The permutation and pooled-step cells also run an experiment: take only their functions.
    for tag in ("permute-hidden-units", "pooled-gradient-step"):
        source = cell(tag)
        exec(source[:source.index("\n\n\n")], ns)
    return ns


@pytest.fixture(scope="module")
def clients():
    """Three clients' weights of unequal sizes, as after one round of local training."""
    rng = np.random.default_rng(0)
    shapes = [(64, 64), (64,), (64, 10), (10,)]
    return ([[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(3)],
            [5, 300, 40])


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(a, b))


def test_both_means_equal_server_aggregate(lesson, clients):
    weights, counts = clients
    assert max_diff(lesson["slide_server_aggregate"](weights),
                    fedavg.server_aggregate(weights)) < 1e-6
    assert max_diff(lesson["weighted_server_aggregate"](weights, counts),
                    fedavg.server_aggregate(weights, counts)) < 1e-6
    # The sizes differ a lot, so the two means must differ too.
    assert max_diff(fedavg.server_aggregate(weights), fedavg.server_aggregate(weights, counts)) > 0.1


def test_unweighted_aggregator_is_the_plain_mean(lesson, clients):
    weights, counts = clients
    mean = lesson["unweighted_mean"](weights, np.array(counts), [0, 1, 2], None)
    assert max_diff(mean, fedavg.server_aggregate(weights)) < 1e-6


def test_unweighted_aggregator_in_run_fedavg(lesson):
    x, y = data.load_digits()
    parts = [np.arange(5), np.arange(5, 200)]
    datasets = data.make_client_datasets(x, y, parts, batch_size=20, seed=0)
    fedutils.set_seed(0)
    initial = models.create_digits_model().get_weights()
    run = fedavg.run_fedavg(models.create_digits_model, datasets, rounds=1,
                            aggregator=lesson["unweighted_mean"], initial_weights=initial,
                            progress=False)
    model, local = models.create_digits_model(), []
    for ds in datasets:
        model.set_weights(initial)
        local.append(fedavg.client_update(model, ds, epochs=1, learning_rate=0.1).weights)
    assert max_diff(run.final_weights, fedavg.server_aggregate(local)) < 1e-5
    assert max_diff(run.final_weights, fedavg.server_aggregate(local, [5, 195])) > 1e-3


def test_permuting_hidden_units_keeps_the_function(lesson):
    fedutils.set_seed(1)
    model = models.create_digits_model()
    weights = model.get_weights()
    weights[1] = np.random.default_rng(1).normal(size=64).astype(np.float32)  # distinct biases
    order = np.random.default_rng(2).permutation(64)
    shuffled = lesson["permute_hidden_units"](weights, order)
    x = data.load_digits()[0][:50]
    model.set_weights(weights)
    before = model(x).numpy()
    model.set_weights(shuffled)
    np.testing.assert_allclose(model(x).numpy(), before, atol=1e-6)
    assert max_diff(shuffled, weights) > 0.1
    assert max_diff(lesson["permute_hidden_units"](shuffled, np.argsort(order)), weights) == 0


def test_one_step_weighted_round_is_a_pooled_gradient_step(lesson):
    x, y = data.load_digits()
    parts = [np.arange(7), np.arange(7, 90), np.arange(90, 130)]
    datasets = data.make_client_datasets(x, y, parts, batch_size=100, seed=0)  # one batch each
    fedutils.set_seed(0)
    model = models.create_digits_model()
    initial = model.get_weights()
    one_step = []
    for ds in datasets:
        model.set_weights(initial)
        one_step.append(fedavg.client_update(model, ds, epochs=1, learning_rate=0.1).weights)
    pooled = lesson["pooled_gradient_step"](model, initial, x[:130], y[:130], 0.1)
    assert max_diff(fedavg.server_aggregate(one_step, [7, 83, 40]), pooled) < 1e-5
    assert max_diff(fedavg.server_aggregate(one_step), pooled) > 1e-3


def test_federation_parts_deals_small_and_large_clients(lesson):
    """Problem 2's federation for any seed: disjoint parts covering the training digits; the
    small clients hold only 0/1/7 when skewed, random digits in the control."""
    x, y = data.load_digits()
    x_train, _, y_train, _ = data.train_test_split(x, y, test_fraction=0.25, seed=0)
    ns = dict(lesson, y_train=y_train, SMALL_LABELS=(0, 1, 7), NUM_SMALL=20, SMALL_SIZE=5,
              NUM_LARGE=5)
    source = cell("small-and-large-clients")
    source = source[source.index("def federation_parts("):]
    exec(source[:source.index("\n\n\n")], ns)
    for seed in (0, 3):
        for skewed in (True, False):
            parts = ns["federation_parts"](seed, skewed)
            everything = np.concatenate(parts)
            assert len(parts) == 25 and len(everything) == len(y_train)
            assert len(np.unique(everything)) == len(y_train)
            assert all(len(p) == 5 for p in parts[:20])
            small_labels = np.isin(y_train[np.concatenate(parts[:20])], (0, 1, 7))
            assert small_labels.all() if skewed else not small_labels.all()
    assert not np.array_equal(ns["federation_parts"](0)[0], ns["federation_parts"](1)[0])


def exercise_check(number: int, **names):
    """Run exercise `number`'s check cell with `names` as the learner's."""
    lesson_code.exec_cells(NOTEBOOK, {"np": np, "fedavg": fedavg, **names},
                           f"exercise-{number}-check")


def test_exercise_1_check_accepts_the_solution_and_rejects_averaged_weights(clients):
    weights, counts = clients
    rng = np.random.default_rng(3)
    initial = [w + rng.normal(0, 0.1, w.shape).astype(np.float32) for w in weights[0]]
    local = [[w + rng.normal(0, 0.1, w.shape).astype(np.float32) for w in initial]
             for _ in range(3)]
    by_hand = fedavg.server_aggregate(local, counts)
    updates = [[w - g for w, g in zip(c, initial)] for c in local]
    via = [g + d for g, d in zip(initial, fedavg.server_aggregate(updates, counts))]
    from_updates = [g + sum(u[t] for u in updates) / 30 for t, g in enumerate(initial)]
    from_weights = [sum(c[t] for c in local) / 30 for t in range(len(initial))]
    names = dict(by_hand=by_hand, initial_weights=initial, local_weights=local,
                 max_diff=max_diff, via_updates=via)
    exercise_check(1, from_updates=from_updates, from_weights=from_weights, **names)
    with pytest.raises(AssertionError):   # the two swapped
        exercise_check(1, from_updates=from_weights, from_weights=from_updates, **names)


def test_exercise_2_check_accepts_a_cap_and_rejects_the_plain_weighted_mean():
    history = fedavg.History(rounds=[{"round": r, "accuracy": 0.9} for r in range(1, 31)])
    names = dict(capped_runs=[history] * 3, SEEDS=(0, 1, 2), ROUNDS=30)

    def capped_mean(updates, num_examples, client_ids, rng):
        return fedavg.server_aggregate(updates, np.minimum(num_examples, 50))

    def weighted_mean(updates, num_examples, client_ids, rng):
        return fedavg.server_aggregate(updates, num_examples)

    exercise_check(2, capped_mean=capped_mean, **names)
    with pytest.raises(AssertionError):
        exercise_check(2, capped_mean=weighted_mean, **names)
    with pytest.raises(AssertionError):   # one run is not a result over seeds
        exercise_check(2, capped_mean=capped_mean, **dict(names, capped_runs=[history]))
