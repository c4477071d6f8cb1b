"""fedutils.tff_bridge: fedutils and TensorFlow Federated 0.87 compute the same thing.

The reference checks: one round of `run_fedavg` equals one round of TFF's
`build_weighted_fed_avg` (and FedProx, and federated evaluation) from the same weights on the
same batches. Every TFF process is built once per module: tracing one costs seconds.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fedutils
from fedutils import data, fedavg, partition, tff_bridge
from fedutils.bridges import tff_workers as workers
from fedutils.evaluation import federated_evaluate
from fedutils.models import create_digits_model

needs_tff = pytest.mark.skipif(
    not tff_bridge.tff_available(),
    reason="TensorFlow Federated is not installed (it needs Python < 3.12 and TensorFlow 2.14)")

TOL = 1e-5
MU = 1.0
# Unequal clients, most with a partial last batch (batch size 20): 13, 47, 100 and 30 examples.
SIZES = (13, 47, 100, 30)


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(a, b))


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


@pytest.fixture(scope="module")
def clients(digits):
    x, y = digits
    order = np.random.default_rng(0).permutation(len(y))
    ends = np.cumsum(SIZES)
    parts = [order[end - size:end] for end, size in zip(ends, SIZES)]
    return data.make_client_datasets(x, y, parts, batch_size=20, seed=0)


@pytest.fixture(scope="module")
def spec(clients):
    return clients[0].element_spec


@pytest.fixture(scope="module")
def initial_weights():
    fedutils.set_seed(0)
    return create_digits_model().get_weights()


@pytest.fixture(scope="module")
def fedavg_process(spec):
    return tff_bridge.build_fedavg(create_digits_model, spec, client_lr=0.1, server_lr=1.0)


def tff_round(process, weights, datasets):
    state = tff_bridge.set_weights(process, process.initialize(), weights)
    return tff_bridge.get_weights(process, process.next(state, datasets).state)


def fedutils_round(datasets, weights, path="run_fedavg", local_epochs=1, **kwargs):
    """One round by run_fedavg (compiled client work) or by the readable client_update."""
    if path == "run_fedavg":
        return fedavg.run_fedavg(create_digits_model, datasets, rounds=1, client_lr=0.1,
                                 initial_weights=weights, progress=False,
                                 local_epochs=local_epochs, **kwargs).final_weights
    model = create_digits_model()
    results = []
    for ds in datasets:
        model.set_weights(weights)
        results.append(fedavg.client_update(model, ds, local_epochs, 0.1))
    return fedavg.server_aggregate([r.weights for r in results],
                                   [r.num_examples for r in results])


@pytest.fixture(scope="module")
def tff_one_round(fedavg_process, initial_weights, clients):
    return tff_round(fedavg_process, initial_weights, clients)


@needs_tff
@pytest.mark.parametrize("path", ["run_fedavg", "client_update"])
def test_one_round_equals_tff_weighted_fed_avg(clients, initial_weights, tff_one_round, path):
    ours = fedutils_round(clients, initial_weights, path)
    diff = max_diff(ours, tff_one_round)
    print(f"one round, {path}: max |fedutils - TFF| = {diff:.2e}")
    assert diff < TOL
    assert max_diff(ours, initial_weights) > 1e-2  # the round did move the model


def local_updates(datasets, weights, sign=0.0):
    """Each client's weights after one epoch of SGD (lr 0.1) from `weights`, with
    sign·MU·(w - w_global) added to every gradient (0: plain FedAvg)."""
    import tensorflow as tf

    model, results = create_digits_model(), []
    anchor = [tf.constant(w) for w in weights]
    for ds in datasets:
        model.set_weights(weights)
        for batch in ds:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(fedavg.per_example_loss(
                    model, batch["y"], model(batch["x"], training=True)))
            grads = tape.gradient(loss, model.trainable_variables)
            for v, g, a in zip(model.trainable_variables, grads, anchor):
                v.assign_sub(0.1 * (g + sign * MU * (v - a)))
        results.append(model.get_weights())
    return results


@needs_tff
def test_weighted_and_unweighted_fed_avg(spec, clients, initial_weights, tff_one_round):
    local = local_updates(clients, initial_weights)
    assert max_diff(fedavg.server_aggregate(local, list(SIZES)), tff_one_round) < TOL
    # The unequal client sizes make the weighting visible: a plain mean fails the check above.
    assert max_diff(fedavg.server_aggregate(local), tff_one_round) > 100 * TOL
    unweighted = tff_bridge.build_fedavg(create_digits_model, spec, weighted=False)
    theirs = tff_round(unweighted, initial_weights, clients)
    assert max_diff(fedavg.server_aggregate(local), theirs) < TOL


@needs_tff
@pytest.mark.parametrize("path", ["run_fedavg", "client_update"])
def test_two_local_epochs_equal_tff_on_repeated_datasets(fedavg_process, clients,
                                                         initial_weights, path):
    theirs = tff_round(fedavg_process, initial_weights, [ds.repeat(2) for ds in clients])
    ours = fedutils_round(clients, initial_weights, path, local_epochs=2)
    diff = max_diff(ours, theirs)
    print(f"two local epochs, {path}: max |fedutils - TFF| = {diff:.2e}")
    assert diff < TOL


@needs_tff
def test_tff_fed_prox_has_the_proximal_term_with_the_wrong_sign(spec, clients, initial_weights,
                                                                tff_one_round):
    """FedProx's gradient term is +mu·(w - w_global) (run_fedavg's); TFF 0.87 adds
    mu·(w_global - w). If a TFF release fixes it, the first assertion fails: then compare
    build_fedprox with run_fedavg(..., proximal_mu=MU) directly."""
    process = tff_bridge.build_fedprox(create_digits_model, spec, proximal_mu=MU)
    theirs = tff_round(process, initial_weights, clients)
    reversed_sign = fedavg.server_aggregate(local_updates(clients, initial_weights, -1.0),
                                            list(SIZES))
    print(f"TFF FedProx vs reversed-sign FedProx: {max_diff(theirs, reversed_sign):.2e}")
    assert max_diff(theirs, reversed_sign) < TOL
    ours = fedutils_round(clients, initial_weights, proximal_mu=MU)
    correct_sign = fedavg.server_aggregate(local_updates(clients, initial_weights, 1.0),
                                           list(SIZES))
    print(f"fedutils FedProx vs correct-sign FedProx: {max_diff(ours, correct_sign):.2e}")
    assert max_diff(ours, correct_sign) < TOL
    assert max_diff(theirs, ours) > 100 * TOL

    def distance(weights):
        return np.sqrt(sum(np.sum((w - w0) ** 2) for w, w0 in zip(weights, initial_weights)))

    # FedProx should keep the clients closer to the global model than FedAvg; TFF's moves further.
    assert distance(ours) < distance(tff_one_round) < distance(theirs)


@needs_tff
def test_tff_federated_evaluate_equals_weighted_federated_evaluate(spec, clients,
                                                                   tff_one_round):
    theirs = tff_bridge.tff_federated_evaluate(create_digits_model, spec, tff_one_round,
                                               clients)
    ours = federated_evaluate(create_digits_model(), clients, tff_one_round)
    print(f"evaluation: TFF {theirs}, fedutils {ours.weighted}")
    assert theirs["num_examples"] == sum(SIZES)
    assert abs(theirs["loss"] - ours.weighted["loss"]) < TOL
    assert abs(theirs["accuracy"] - ours.weighted["accuracy"]) < TOL
    assert abs(ours.weighted["accuracy"] - ours.unweighted["accuracy"]) > 100 * TOL


@needs_tff
def test_run_tff_fedavg_matches_run_fedavg(digits, fedavg_process, initial_weights):
    x_train, x_test, y_train, y_test = data.train_test_split(*digits, seed=0)
    datasets = data.make_client_datasets(
        x_train, y_train, partition.iid_partition(y_train, 10, seed=0), batch_size=20)
    common = dict(rounds=3, clients_per_round=5, seed=3, initial_weights=initial_weights,
                  eval_data=(x_test, y_test), progress=False)
    ours = fedavg.run_fedavg(create_digits_model, datasets, **common)
    theirs = tff_bridge.run_tff_fedavg(create_digits_model, datasets, process=fedavg_process,
                                       **common)
    for key in ("round", "num_selected", "num_clients", "num_examples"):
        assert ours[key] == theirs[key], key
    diff = max(np.max(np.abs(np.subtract(ours[k], theirs[k])))
               for k in ("accuracy", "loss", "train_loss"))
    print(f"3 rounds, 5 of 10 clients: accuracy {theirs.accuracy}, max difference {diff:.2e}")
    assert diff < 1e-4
    assert max_diff(ours.final_weights, theirs.final_weights) < 1e-4
    assert theirs.accuracy[-1] > theirs.accuracy[0]


@needs_tff
@pytest.mark.filterwarnings("ignore:Batch Normalization contains non-trainable variables")
def test_weights_round_trip_keeps_non_trainable_weights_apart():
    import tensorflow as tf

    def create_model():
        return tf.keras.Sequential([
            tf.keras.Input(shape=(4,)), tf.keras.layers.Dense(3),
            tf.keras.layers.BatchNormalization(), tf.keras.layers.Dense(2, activation="softmax")])

    spec = {"x": tf.TensorSpec([None, 4], tf.float32), "y": tf.TensorSpec([None], tf.int32)}
    process = tff_bridge.build_fed_eval(create_model, spec)
    keras_weights = [np.full(w.shape, i, np.float32)
                     for i, w in enumerate(create_model().get_weights())]
    state = tff_bridge.set_weights(process, process.initialize(), keras_weights)
    held = process.get_model_weights(state)
    # BatchNormalization's moving mean and variance (weights 4 and 5) are TFF's non-trainables.
    assert [float(w.flat[0]) for w in held.non_trainable] == [4.0, 5.0]
    assert [float(w.flat[0]) for w in held.trainable] == [0.0, 1.0, 2.0, 3.0, 6.0, 7.0]
    back = tff_bridge.get_weights(process, state)
    assert all(np.array_equal(a, b) for a, b in zip(back, keras_weights))
    with pytest.raises(ValueError, match=r"keras_weights\[0\] must have shape"):
        tff_bridge.set_weights(process, state, keras_weights[::-1])


@needs_tff
def test_import_tff_stops_the_worker_when_the_script_exits(tmp_path):
    script = tmp_path / "tiny_tff.py"
    script.write_text(
        "import json, os, sys\n"
        "import tensorflow as tf\n"
        "from fedutils import tff_bridge\nfrom fedutils.bridges import tff_workers as workers\n"
        "tff = tff_bridge.import_tff()\n"
        "one = tff.tensorflow.computation(lambda: tf.constant(1))\n"
        "assert one() == 1\n"
        "pids = [p.pid for p in workers.find_workers(children_of=os.getpid())]\n"
        "print(json.dumps(pids))\n"
        "sys.stdout.flush()\n")
    out = tmp_path / "out.txt"
    started = time.time() - 1
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with open(out, "w") as stdout:
        result = subprocess.run([sys.executable, str(script)], stdout=stdout,
                                stderr=subprocess.STDOUT, timeout=180, env=env)
    lines = out.read_text().strip().splitlines()
    assert result.returncode == 0, "\n".join(lines[-20:])
    pids = json.loads(lines[-1])
    assert pids, "the script ran a TFF computation, so TFF should have started a worker"
    time.sleep(0.5)
    survivors = {p.pid for p in workers.find_workers(since=started)} & set(pids)
    assert not survivors, f"worker_binary {sorted(survivors)} outlived its script"


def test_import_tff_explains_a_missing_tff(monkeypatch):
    from fedutils.bridges import tff as bridge

    monkeypatch.setattr(bridge, "_available", False)
    monkeypatch.setattr(bridge, "_import_error", "ModuleNotFoundError: no module")
    assert tff_bridge.tff_available() is False
    with pytest.raises(RuntimeError, match=r"Python >=3\.9,<3\.12 and TensorFlow 2\.14"):
        tff_bridge.import_tff()
    with pytest.raises(tff_bridge.TFFUnavailableError):
        tff_bridge.build_fedavg(create_digits_model, None)
    assert "TFF is not installed" in tff_bridge.TFF_MISSING_NOTE
