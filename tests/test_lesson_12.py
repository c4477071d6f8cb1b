"""Lesson 12 (evaluation): the code the lesson writes in the open does what it says.

The lesson's cells (found by their name tags) are executed here on small data: its local
train/test split must be a proper split of every client, its federation must keep ten whole
clients out of training, its hand-written federated evaluation (per-client reports, then
weighted and unweighted aggregates) and its corrected version of the slide's pooled loop must
agree with `fedutils.evaluation.federated_evaluate`, and each exercise's check must accept the
solution and reject a wrong answer.
"""
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

import fedutils
from fedutils import data, fedavg, models, partition
from fedutils.evaluation import federated_evaluate

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "12_evaluation.ipynb"

cell = partial(lesson_code.cell_source, NOTEBOOK)
exec_cells = partial(lesson_code.exec_cells, NOTEBOOK)


@pytest.fixture(scope="module")
def lesson():
    x, y = data.load_digits()
    ns = {"np": np, "tf": tf, "partition": partition, "SimpleNamespace": SimpleNamespace,
          "x": x, "y": y, "NUM_CLIENTS": 40, "ALPHA": 0.2, "UNSEEN": 10}
    exec_cells(ns, "split-locally", "pooled-evaluation", "evaluate-on-client")
    source = cell("many-small-few-large")  # a function inside an experiment cell
    start = source.index("def many_small_few_large(")
    exec(source[start:source.index("\n\n\n", start)], ns)
    return ns


@pytest.fixture(scope="module")
def federation(lesson):
    """Twelve label-skewed clients, each with its own held-out part, and a half-trained model."""
    x, y = data.load_digits()
    parts = partition.dirichlet_partition(y[:600], 12, alpha=0.3, seed=0, min_size=4)
    train_parts, test_parts = lesson["split_locally"](parts)
    fedutils.set_seed(0)
    model = models.create_digits_model()
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(x[:300], y[:300], epochs=3, batch_size=20, verbose=0)  # imperfect on purpose
    datasets = data.make_client_datasets(x, y, test_parts, batch_size=8, seed=0)
    return parts, train_parts, test_parts, model, datasets


def test_split_locally_holds_out_part_of_every_client(lesson, federation):
    parts, train_parts, test_parts, _, _ = federation
    for whole, train, test in zip(parts, train_parts, test_parts):
        assert len(test) >= 1 and len(train) >= 1
        assert not set(train) & set(test)
        assert sorted(np.concatenate([train, test])) == sorted(whole)
        assert abs(len(test) - 0.25 * len(whole)) <= 1
    again = lesson["split_locally"](parts)
    assert all(np.array_equal(a, b) for a, b in zip(again[1], test_parts))
    tiny_train, tiny_test = lesson["split_locally"]([np.array([5, 9])], test_fraction=0.9)
    assert len(tiny_train[0]) == len(tiny_test[0]) == 1


def test_federation_keeps_ten_whole_clients_out_of_training(lesson):
    y = lesson["y"]
    for seed in (0, 1):
        fed = lesson["federation"](seed)
        assert len(fed.train) == len(fed.test) == 30 and len(fed.unseen) == 10
        everything = np.concatenate(fed.train + fed.test + fed.unseen)
        assert sorted(everything) == list(range(len(y))), "every digit once, in one place"
        parts = partition.dirichlet_partition(y, 40, alpha=0.2, seed=seed, min_size=8)
        whole = {tuple(np.sort(p)) for p in parts}
        assert all(tuple(np.sort(p)) in whole for p in fed.unseen), "unseen = whole clients"
        for train, test in zip(fed.train, fed.test):
            assert tuple(np.sort(np.concatenate([train, test]))) in whole
    first, again = lesson["federation"](0), lesson["federation"](0)
    assert all(np.array_equal(a, b) for a, b in zip(first.unseen, again.unseen))


def test_hand_written_federated_evaluation_equals_federated_evaluate(lesson, federation):
    _, _, _, model, datasets = federation
    reports = [lesson["evaluate_on_client"](model, ds) for ds in datasets]
    combined = lesson["combine_reports"](reports)
    result = federated_evaluate(model, datasets)
    np.testing.assert_allclose([r["accuracy"] for r in reports], result.accuracies, atol=1e-9)
    np.testing.assert_allclose([r["loss"] for r in reports], result.losses, rtol=1e-5)
    assert [r["num_examples"] for r in reports] == result.num_examples.tolist()
    for kind in ("weighted", "unweighted"):
        for key in ("loss", "accuracy"):
            assert np.isclose(combined[f"{kind} {key}"], getattr(result, kind)[key], rtol=1e-5)
    # The clients differ, so the two aggregates must too, and the accuracies must vary.
    assert abs(combined["weighted accuracy"] - combined["unweighted accuracy"]) > 1e-4
    assert result.accuracies.std() > 0


def test_pooled_loop_is_the_weighted_aggregate(lesson, federation):
    _, _, _, model, datasets = federation
    loss, accuracy = lesson["pooled_evaluation"](model, datasets)
    result = federated_evaluate(model, datasets)
    assert np.isclose(loss, result.weighted["loss"], rtol=1e-5)
    assert np.isclose(accuracy, result.weighted["accuracy"], rtol=1e-9)


def test_regrouping_changes_only_the_unweighted_average(lesson, federation):
    _, _, test_parts, model, datasets = federation
    x, y = data.load_digits()
    held_out = np.concatenate(test_parts)
    correct = np.argmax(model(x[held_out]).numpy(), axis=1) == y[held_out]
    grouping = lesson["many_small_few_large"](held_out[~correct], held_out[correct],
                                              small_size=2, num_large=2)
    assert sorted(np.concatenate(grouping)) == sorted(held_out)
    assert len(grouping) == max(1, (~correct).sum() // 2) + 2
    regrouped = federated_evaluate(model, data.make_client_datasets(x, y, grouping))
    original = federated_evaluate(model, datasets)
    assert np.isclose(regrouped.weighted["accuracy"], original.weighted["accuracy"])
    # Wrong answers on many small clients: most clients see only mistakes.
    assert regrouped.unweighted["accuracy"] < original.weighted["accuracy"] - 0.1


@pytest.fixture(scope="module")
def evaluated(lesson, federation):
    """The lesson's three evaluations, for two seeds, with a quickly trained model instead of
    100 rounds of FedAvg (the cell's code, run on that model)."""
    _, _, _, model, _ = federation
    ns = dict(lesson, data=data, fedavg=fedavg, federated_evaluate=federated_evaluate,
              model=model, models=models, SEEDS=(0, 1))
    ns["federations"] = {s: lesson["federation"](s) for s in ns["SEEDS"]}
    ns["original_weights"] = model.get_weights()
    shifted = [w + 0.05 for w in ns["original_weights"]]  # seed 1's "model": other weights
    ns["histories"] = {0: SimpleNamespace(final_weights=ns["original_weights"]),
                       1: SimpleNamespace(final_weights=shifted)}
    exec_cells(ns, "three-evaluations")
    return ns


def test_three_evaluations_score_the_right_examples(evaluated):
    x, y, model = evaluated["x"], evaluated["y"], evaluated["model"]
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(),
                                                    evaluated["original_weights"])), \
        "evaluating other seeds must leave the lesson's `model` (seed 0) as it was"
    scorer = models.create_digits_model()
    scorer.set_weights(evaluated["histories"][1].final_weights)
    correct = np.argmax(scorer(x).numpy(), axis=1) == y
    fed = evaluated["federations"][1]
    result = evaluated["evaluations"][1]
    for kind, parts in zip(evaluated["KINDS"], (fed.train, fed.test, fed.unseen)):
        pooled = np.concatenate(parts)
        assert result[kind].weighted["accuracy"] == pytest.approx(correct[pooled].mean())
        per_client = [correct[p].mean() for p in parts]
        assert result[kind].unweighted["accuracy"] == pytest.approx(np.mean(per_client))


solved = partial(lesson_code.solved, NOTEBOOK)
check = partial(lesson_code.check, NOTEBOOK)


def test_exercise_1_check_accepts_the_solution_and_rejects_wrong_answers(evaluated):
    ns = solved(evaluated, 1)
    check(ns, 1)
    with pytest.raises(AssertionError):
        check(dict(ns, accept_monitor=not ns["accept_monitor"]), 1)
    with pytest.raises(AssertionError):  # the gap the other way round
        check(dict(ns, gaps=-ns["gaps"]), 1)


def test_exercise_2_check_accepts_the_solution_and_rejects_wrong_answers(evaluated):
    ns = solved(evaluated, 2)
    check(ns, 2)
    with pytest.raises(AssertionError):
        check(dict(ns, gap_is_real=not ns["gap_is_real"]), 2)
    with pytest.raises(AssertionError):  # standard deviations instead of standard errors
        wrong = [np.hypot(ns["evaluations"][s][ns["KINDS"][1]].accuracies.std(ddof=1),
                          ns["evaluations"][s][ns["KINDS"][2]].accuracies.std(ddof=1))
                 for s in ns["SEEDS"]]
        check(dict(ns, standard_errors=np.array(wrong)), 2)
