"""Lesson 01 trains "alone" with a one-client, one-round FedAvg, scores by hand, and wraps the
model for TFF; these tests run the lesson's own cells (found by what they define) on small data
and hold them to fedutils."""
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "01_introduction.ipynb"


lesson_cell = partial(lesson_code.cell_source, NOTEBOOK)
run_cells = partial(lesson_code.run_cells, NOTEBOOK)


@pytest.fixture(scope="module")
def iris():
    import fedutils
    from fedutils import data, models, partition

    x, y = data.load_iris_binary()
    x_train, x_test, y_train, y_test = data.train_test_split(x, y, test_fraction=0.3, seed=1)
    parts = partition.dirichlet_partition(y_train, 3, alpha=1.0, seed=2)
    datasets = data.make_client_datasets(x_train, y_train, parts, batch_size=8, seed=3)
    fedutils.set_seed(2)
    model = models.create_keras_model()
    return {"datasets": datasets, "x_test": x_test, "y_test": y_test, "model": model}


def test_train_alone_is_local_training(iris):
    """One client, one round of run_fedavg = client_update for the same epochs."""
    from fedutils import fedavg

    ns = run_cells("def train_alone(", model=iris["model"], x_test=iris["x_test"],
                   y_test=iris["y_test"])
    model, start = iris["model"], ns["initial_weights"]
    for ds in iris["datasets"][:2]:
        loss, accuracy = ns["train_alone"](ds, epochs=3)
        model.set_weights(start)
        result = fedavg.client_update(model, ds, epochs=3, learning_rate=ns["LR"])
        ref_loss, ref_accuracy = fedavg.evaluate_weights(model, result.weights, iris["x_test"],
                                                         iris["y_test"])
        assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
        assert accuracy == ref_accuracy


def test_accuracy_by_hand_equals_evaluate_weights(iris):
    from fedutils import fedavg

    model = iris["model"]
    ns = run_cells("my_accuracy =", model=model, initial_weights=model.get_weights(),
                   skew_datasets=iris["datasets"], EPOCHS=3, LR=0.05, x_test=iris["x_test"],
                   y_test=iris["y_test"])
    expected = fedavg.evaluate_weights(model, model.get_weights(), iris["x_test"],
                                       iris["y_test"])[1]
    assert ns["my_accuracy"] == expected


def test_tff_wrapping_matches_fedutils_and_rejects_the_slide_spec(iris):
    from fedutils import fedavg, models, tff_bridge

    if not tff_bridge.tff_available():
        pytest.skip(tff_bridge.TFF_MISSING_NOTE)
    import tensorflow as tf

    ns = run_cells("def model_fn(", iid_datasets=iris["datasets"], model=iris["model"])
    assert ns["tff_loss"] == pytest.approx(ns["our_loss"], rel=1e-5)
    # the lesson's model_fn and fedutils.tff_bridge's give the same model on the same batch
    spec = iris["datasets"][0].element_spec
    batch = next(iter(iris["datasets"][1]))
    losses = []
    for model_fn in (ns["model_fn"], tff_bridge.tff_model_fn(models.create_keras_model, spec)):
        wrapped = model_fn()
        for variable, weight in zip(wrapped.trainable_variables, iris["model"].get_weights()):
            variable.assign(weight)
        losses.append(float(wrapped.forward_pass(batch, training=False).loss))
    probabilities = iris["model"](batch["x"])
    ours = float(np.mean(fedavg.per_example_loss(iris["model"], batch["y"], probabilities)))
    assert losses == pytest.approx([ours, ours], rel=1e-5)
    tff = tff_bridge.import_tff()
    with pytest.raises((TypeError, ValueError)):
        tff.learning.models.from_keras_model(
            models.create_keras_model(), loss=tf.keras.losses.BinaryCrossentropy(),
            input_spec=tf.TensorSpec(shape=[None, 4], dtype=tf.float32))
