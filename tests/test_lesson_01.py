"""Lesson 01 trains "alone" with one round whose aggregator keeps every update, compares pooled,
local-only and FedAvg training over repeated splits, and wraps the model for TFF; these tests
run the lesson's own cells (found by their name tags) on small data and hold them to
fedutils, and check that each exercise's check accepts the solution and rejects a wrong answer.
"""
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "01_introduction.ipynb"

run_cells = partial(lesson_code.run_cells, NOTEBOOK)


@pytest.fixture(scope="module")
def iris():
    import fedutils
    from fedutils import data, models, partition

    x, y = data.load_iris_binary()
    x_train, x_test, y_train, y_test = data.train_test_split(x, y, test_fraction=0.3, seed=1)
    parts = partition.dirichlet_partition(y_train, 3, alpha=1.0, seed=2)
    clients = data.make_client_data(x_train, y_train, parts, batch_size=8, seed=3)
    fedutils.set_seed(2)
    model = models.create_keras_model()
    return {"x": x, "y": y, "clients": clients, "x_test": x_test, "y_test": y_test,
            "model": model, "x_train": x_train, "y_train": y_train}


@pytest.fixture(scope="module")
def compared(iris):
    """The lesson's `compare` on its first split, with 4 epochs (2 rounds of 2) and 3 shops."""
    ns = run_cells("train-alone-and-fedavg", "compare-over-splits", model=iris["model"],
                   x=iris["x"], y=iris["y"], NUM_CLIENTS=3, BATCH_SIZE=8, LR=0.1)
    ns.update(EPOCHS=4, LOCAL_EPOCHS=2)  # read by train_alone and train_fedavg when called
    return ns, ns["compare"](0)


def test_slide_model_warns_exactly_on_keras_3():
    """The lesson prints Keras 3's warning as a string where Keras 2 is silent: the string must
    be what Keras 3 really says (this runs in both test environments)."""
    ns = run_cells("keras3-warning")
    keras_major = int(ns["version"]("keras").split(".")[0])
    if keras_major >= 3:
        assert ns["caught"] == [ns["KERAS3_WARNING"]]
    else:
        assert ns["caught"] == []
    ns = run_cells("course-model-no-warning")  # the fix: no warning on either version
    assert [w for w in ns["caught"] if issubclass(w.category, UserWarning)] == []


def test_train_alone_is_local_training(iris):
    """One round whose aggregator keeps every update = each client's client_update alone; and
    FedAvg with one client and one round of all epochs is the same training."""
    from fedutils import fedavg

    ns = run_cells("train-alone-and-fedavg", model=iris["model"])
    ns["EPOCHS"] = 3
    model, start = iris["model"], ns["initial_weights"]
    alone = ns["train_alone"](iris["clients"][:2], 0.05)
    for client, weights in zip(iris["clients"][:2], alone):
        model.set_weights(start)
        reference = fedavg.client_update(model, client.dataset(), epochs=3, learning_rate=0.05)
        for w, r in zip(weights, reference.weights):
            np.testing.assert_allclose(w, r, rtol=1e-5, atol=1e-6)
    ns["LOCAL_EPOCHS"] = 3
    one_round = ns["train_fedavg"](iris["clients"][:1], 0.05)
    for w, r in zip(one_round, alone[0]):
        np.testing.assert_allclose(w, r, rtol=1e-5, atol=1e-6)


def test_compare_scores_each_way_of_training_on_its_own_split(iris, compared):
    import fedutils
    from fedutils import data, fedavg, models, partition

    ns, result = compared
    x_tr, x_te, y_tr, y_te = data.train_test_split(iris["x"], iris["y"], test_fraction=0.3,
                                                   seed=0)
    fedutils.set_seed(0)
    start = models.create_keras_model().get_weights()
    for a, b in zip(result["start"], start):
        np.testing.assert_array_equal(a, b)
    model = iris["model"]
    skew = partition.dirichlet_partition(y_tr, 3, alpha=0.5, seed=0)
    assert result["skewed"]["sizes"].tolist() == [len(p) for p in skew]
    shops = data.make_client_data(x_tr, y_tr, skew, batch_size=8, seed=0)
    for k, shop in enumerate(shops):
        model.set_weights(start)
        trained = fedavg.client_update(model, shop.dataset(), epochs=4, learning_rate=0.1)
        accuracy = fedavg.evaluate_weights(model, trained.weights, x_te, y_te)[1]
        assert result["skewed"]["alone"][k] == pytest.approx(accuracy, abs=1e-9)
    history = fedavg.run_fedavg(models.create_keras_model, shops, rounds=2, local_epochs=2,
                                client_lr=0.1, initial_weights=start, eval_data=(x_te, y_te),
                                progress=False)
    assert result["skewed"]["fedavg"] == pytest.approx(history["accuracy"][-1], abs=1e-9)
    assert 0.0 <= result["pooled"] <= 1.0 and len(result["IID"]["alone"]) == 3


def test_exercise_1_check_accepts_the_solution_and_rejects_a_wrong_answer(iris, compared):
    from fedutils import data, partition

    ns, result = compared
    x_tr, x_te, y_tr, y_te = data.train_test_split(iris["x"], iris["y"], test_fraction=0.3,
                                                   seed=0)
    skew_parts = partition.dirichlet_partition(y_tr, 3, alpha=0.5, seed=0)
    names = dict(model=iris["model"], results=[result], skew_parts=skew_parts,
                 skew_datasets=data.make_client_datasets(x_tr, y_tr, skew_parts, batch_size=8,
                                                         seed=0),
                 x_test=x_te, y_test=y_te, x_train=x_tr, y_train=y_tr, EPOCHS=4, LR=0.1)
    solved = run_cells("exercise-1-solution", "exercise-1-check", **names)
    from fedutils import fedavg

    model = iris["model"]  # holds the weights the solution trained
    assert solved["my_accuracy"] == fedavg.evaluate_weights(model, model.get_weights(), x_te,
                                                            y_te)[1]
    with pytest.raises(AssertionError):
        run_cells("exercise-1-check", **names,
                  my_accuracy=solved["my_accuracy"] + 1 / len(y_te), called_virginica=0)


def fake_results():
    """Five splits of two shops each, with made-up accuracies (enough for exercises 2 and 3)."""
    rng = np.random.default_rng(0)
    return [{"pooled": 0.95, "IID": {"fedavg": 0.9, "alone": rng.uniform(0.6, 0.9, 2),
                                     "sizes": np.array([30, 31])},
             "skewed": {"fedavg": 0.85 + 0.01 * s, "alone": rng.uniform(0.3, 0.9, 2),
                        "sizes": np.array([10 + s, 50])}} for s in range(5)]


def test_exercise_2_check_accepts_the_solution_and_rejects_a_wrong_answer():
    names = dict(results=fake_results(), SEEDS=range(5), NUM_CLIENTS=2)
    solved = run_cells("exercise-2-solution", "exercise-2-check", **names)
    assert solved["gains"].shape == (5, 2)
    with pytest.raises(AssertionError):  # the wrong sign: alone minus FedAvg
        run_cells("exercise-2-check", **names, gains=-solved["gains"])


def test_exercise_3_check_accepts_the_solution_and_rejects_a_wrong_answer():
    from fedutils import fedavg

    values = {("IID", "gain"): [0.03, 0.05, 0.04, 0.02, 0.06],   # clearly above zero
              ("IID", "gap"): [-0.04, 0.04, 0.07, -0.04, 0.02],  # noise
              ("skewed", "gain"): [0.1, 0.6, 0.4, -0.05, 0.6],
              ("skewed", "gap"): [0.0, 0.02, 0.05, -0.04, 0.02]}
    differences = {key: fedavg.over_seeds(lambda s, v=v: v[s], range(5))
                   for key, v in values.items()}
    solved = run_cells("exercise-3-solution", "exercise-3-check", differences=differences)
    assert solved["real"] == {("IID", "gain"): True, ("IID", "gap"): False,
                              ("skewed", "gain"): True, ("skewed", "gap"): False}
    wrong = {**solved["real"], ("IID", "gap"): True}  # "pooling wins", from noise
    with pytest.raises(AssertionError):
        run_cells("exercise-3-check", differences=differences, real=wrong)


def test_tff_wrapping_matches_fedutils_and_rejects_the_slide_spec(iris):
    from fedutils import fedavg, models, tff_bridge

    if not tff_bridge.tff_available():
        pytest.skip(tff_bridge.TFF_MISSING_NOTE)
    import tensorflow as tf

    datasets = [c.dataset() for c in iris["clients"]]
    ns = run_cells("tff-model-fn", iid_datasets=datasets, model=iris["model"])
    assert ns["tff_loss"] == pytest.approx(ns["our_loss"], rel=1e-5)
    # the lesson's model_fn and fedutils.tff_bridge's give the same model on the same batch
    spec = datasets[0].element_spec
    batch = next(iter(datasets[1]))
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
    with pytest.raises(TypeError, match="has no len"):  # the message the lesson explains
        tff.learning.models.from_keras_model(
            models.create_keras_model(), loss=tf.keras.losses.BinaryCrossentropy(),
            input_spec=tf.TensorSpec(shape=[None, 4], dtype=tf.float32))
