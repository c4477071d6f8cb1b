"""Lesson 03 (the TFF environment): the code the lesson writes in the open does what it says.

The lesson's own cells (found by their name tags) are executed here on small data: its TFF
loop (`make_model_fn`, `build_process`, `tff_fedavg_loop`) must train the same model as
`fedutils.fedavg.run_fedavg`, with the slide's server optimizer and with server momentum; the
slide's Keras optimizer must be rejected as the lesson says; exercise 1's check must accept the
solution and reject wrong answers.
"""
from functools import partial
from pathlib import Path

import nbformat
import numpy as np
import pytest
import tensorflow as tf
import fedutils
from fedutils import data, fedavg, models, partition, server_optimizers, tff_bridge

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "03_tff_environment.ipynb"
needs_tff = pytest.mark.skipif(
    not tff_bridge.tff_available(),
    reason="TensorFlow Federated is not installed (it needs Python < 3.12 and TensorFlow 2.14)")

run_cells = partial(lesson_code.exec_cells, NOTEBOOK)  # run_cells(namespace, *tags)


@needs_tff
def test_lesson_tff_loop_trains_the_same_model_as_run_fedavg():
    tff = tff_bridge.import_tff()
    ns = run_cells({"tff": tff, "tf": tf, "np": np, "models": models,
                    "fedavg": fedavg, "CLIENT_LR": 0.1, "SERVER_LR": 1.0},
                   "tff-model-fn-and-process", "tff-fedavg-loop")
    x, y = data.load_digits()
    order = np.random.default_rng(1).permutation(len(y))
    parts = [order[:13], order[13:60], order[60:90]]  # unequal clients, partial last batches
    datasets = data.make_client_datasets(x, y, parts, batch_size=20, seed=0)
    x_test, y_test = x[order[100:300]], y[order[100:300]]
    fedutils.set_seed(0)
    initial = models.create_digits_model().get_weights()

    process = ns["build_process"](datasets[0].element_spec)
    state, records, first_metrics = ns["tff_fedavg_loop"](process, datasets, initial, 2,
                                                          x_test, y_test)
    ours = fedavg.run_fedavg(models.create_digits_model, datasets, rounds=2, client_lr=0.1,
                             initial_weights=initial,
                             eval_data=(x_test, y_test), progress=False)
    theirs = list(process.get_model_weights(state).trainable)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(theirs, ours.final_weights))
    print(f"lesson 03 TFF loop vs run_fedavg, 2 rounds: max weight difference {diff:.1e}")
    assert diff < 1e-5
    assert [r["num_examples"] for r in records] == ours["num_examples"] == [90, 90]
    np.testing.assert_allclose([r["train_loss"] for r in records], ours["train_loss"],
                               atol=1e-5)
    np.testing.assert_allclose([r["accuracy"] for r in records], ours["accuracy"], atol=1e-9)
    assert set(first_metrics) >= {"client_work", "aggregator", "finalizer"}
    assert records[1]["train_loss"] < records[0]["train_loss"]


@needs_tff
def test_lesson_server_momentum_matches_fedutils_and_keras_optimizer_is_rejected(capsys):
    tff = tff_bridge.import_tff()
    x, y = data.load_digits()
    datasets = data.make_client_datasets(x[:120], y[:120], [range(0, 50), range(50, 120)],
                                         batch_size=20, seed=0)
    ns = run_cells({"tff": tff, "tf": tf, "np": np, "models": models, "fedavg": fedavg,
                    "CLIENT_LR": 0.1, "SERVER_LR": 1.0, "tff_bridge": tff_bridge,
                    "client_datasets": datasets},
                   "tff-model-fn-and-process", "tff-fedavg-loop", "slide-keras-optimizer")
    assert "rejects the slide's Keras optimizer: AttributeError: 'function' object has no " \
           "attribute 'initialize'" in capsys.readouterr().out
    fedutils.set_seed(0)
    initial = models.create_digits_model().get_weights()
    process = ns["build_process"](datasets[0].element_spec,
                                  server_optimizer=tff.learning.optimizers.build_sgdm(
                                      learning_rate=0.5, momentum=0.9))
    state, _, _ = ns["tff_fedavg_loop"](process, datasets, initial, 3, x[200:300], y[200:300])
    ours = fedavg.run_fedavg(models.create_digits_model, datasets, rounds=3, client_lr=0.1,
                             server_optimizer=server_optimizers.sgd(0.5, momentum=0.9),
                             initial_weights=initial, progress=False)
    theirs = list(process.get_model_weights(state).trainable)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(theirs, ours.final_weights)) < 1e-5


def exercise_1(**overrides):
    """The lesson's exercise 1 set-up on its data (digits, ten clients), with `overrides`."""
    x, y = data.load_digits()
    x_train, _, y_train, _ = data.train_test_split(x, y, test_fraction=0.25, seed=0)
    names = {"x_train": x_train, "y_train": y_train, "NUM_CLIENTS": 10, "BATCH_SIZE": 20,
             "CLIENT_LR": 0.1, "np": np, "data": data, "partition": partition,
             "fedavg": fedavg, "models": models, "server_optimizers": server_optimizers,
             "fedutils": fedutils}
    ns = run_cells(names, "exercise-1-setup")
    ns.update(overrides)
    return ns


def test_exercise_1_check_accepts_the_solution_and_rejects_wrong_answers():
    ns = run_cells(exercise_1(EXERCISE_ROUNDS=2, EXERCISE_SEEDS=(0, 1)), "exercise-1-solution",
                   "exercise-1-check")
    spreads, best = ns["server_lr_accuracy"], ns["best_server_lr"]
    assert best == max(spreads, key=lambda lr: spreads[lr].mean)
    worst = min(spreads, key=lambda lr: spreads[lr].mean)
    assert worst != best
    # the solution's runs are run_fedavg with the server's SGD at that learning rate
    fedutils.set_seed(1)
    reference = fedavg.run_fedavg(models.create_digits_model, ns["fit_clients"], rounds=2,
                                  client_lr=0.1, server_optimizer=server_optimizers.sgd(2.0),
                                  eval_data=(ns["x_val"], ns["y_val"]), seed=1, progress=False)
    assert spreads[2.0].values[1] == pytest.approx(reference["accuracy"][-1], abs=1e-9)
    for wrong in ({"best_server_lr": worst},
                  {"server_lr_accuracy": {lr: s for lr, s in spreads.items() if lr != 0.5}}):
        with pytest.raises(AssertionError):
            run_cells({**ns, **wrong}, "exercise-1-check")


def test_migration_table_names_every_replacement():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for current in ["tff.learning.algorithms.build_weighted_fed_avg",
                    "tff.learning.models.from_keras_model",
                    "tff.learning.optimizers.build_sgdm(learning_rate=",
                    "LearningProcessOutput", "tff.learning.algorithms.build_fed_eval",
                    "--no-deps", "jaxlib==0.4.14"]:
        assert current in text, current
