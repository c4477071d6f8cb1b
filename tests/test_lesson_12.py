"""Lesson 12 (evaluation): the code the lesson writes in the open does what it says.

The lesson's cells are read from the notebook and executed here on small data: its local
train/test split must be a proper split of every client, and its hand-written federated
evaluation (per-client reports, then weighted and unweighted aggregates) and its corrected
version of the slide's pooled loop must agree with `fedutils.evaluation.federated_evaluate`.
"""
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import fedutils
from fedutils import data, models, partition
from fedutils.evaluation import federated_evaluate

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "12_evaluation.ipynb"


cell = partial(lesson_code.cell_source, NOTEBOOK, unique=True)


@pytest.fixture(scope="module")
def lesson():
    ns = {"np": np, "tf": tf}
    for marker in ("def split_locally(", "def pooled_evaluation(", "def evaluate_on_client("):
        exec(cell(marker), ns)
    source = cell("def many_small_few_large(")  # a function inside an experiment cell
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
