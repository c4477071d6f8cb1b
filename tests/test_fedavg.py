import numpy as np
import pytest
import tensorflow as tf

import fedutils
from fedutils import data, fedavg, models, partition


def slide_server_aggregate(client_weights):  # slide 5, verbatim
    return [sum(weights) / len(weights) for weights in zip(*client_weights)]


def test_server_aggregate_weighted_equals_hand_computation():
    a = [np.array([1.0, 2.0]), np.array([[0.0]])]
    b = [np.array([4.0, 8.0]), np.array([[3.0]])]
    out = fedavg.server_aggregate([a, b], num_examples=[1, 2])
    np.testing.assert_allclose(out[0], [(1 * 1 + 2 * 4) / 3, (1 * 2 + 2 * 8) / 3])
    np.testing.assert_allclose(out[1], [[2.0]])


def test_server_aggregate_unweighted_equals_slide_formula():
    rng = np.random.default_rng(0)
    clients = [[rng.normal(size=(3, 2)), rng.normal(size=2)] for _ in range(4)]
    for ours, slide in zip(fedavg.server_aggregate(clients), slide_server_aggregate(clients)):
        np.testing.assert_allclose(ours, slide, rtol=1e-12)


@pytest.mark.parametrize("args, error, match", [
    (([],), ValueError, "empty"),
    (([[np.zeros(2)], [np.zeros(3)]],), ValueError, r"client_weights\[1\]\[0\] must have shape"),
    (([[np.zeros(2)], [np.zeros(2), np.zeros(1)]],), ValueError, "must hold 1 tensors"),
    (([[np.array([np.nan, 0.0])]],), ValueError, "NaN"),
    (([[np.zeros(2)]], [1, 2]), ValueError, "one count per client"),
    (([[np.zeros(2)]], [-1]), ValueError, "non-negative"),
    ((np.zeros(3),), TypeError, "list"),
])
def test_server_aggregate_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        fedavg.server_aggregate(*args)


@pytest.fixture(scope="module")
def small_federation(digits_split):
    xtr, xte, ytr, yte = digits_split
    parts = partition.dirichlet_partition(ytr, 6, alpha=0.5, seed=1)
    return data.make_client_datasets(xtr, ytr, parts, batch_size=16, seed=2), (xte, yte)


def test_client_update_reports_examples_and_learns(small_federation):
    datasets, _ = small_federation
    fedutils.set_seed(0)
    model = models.create_digits_model()
    start = model.get_weights()
    n = sum(int(b["y"].shape[0]) for b in datasets[0])
    result = fedavg.client_update(model, datasets[0], epochs=3, learning_rate=0.1)
    assert result.num_examples == n
    assert not np.allclose(result.weights[0], start[0])
    first = fedavg.client_update(models.create_digits_model(), datasets[0], epochs=1)
    assert result.metrics["loss"] < first.metrics["loss"] + 1.0


def readable_fedavg(model_fn, datasets, rounds, epochs=1, lr=0.1, mu=0.0):
    """FedAvg written with the readable client_update, client after client: the reference
    for run_fedavg's compiled client work. Returns final weights and per-round mean losses."""
    fedutils.set_seed(0)
    model = model_fn()
    weights, losses = model.get_weights(), []
    for _ in range(rounds):
        results = []
        for ds in datasets:
            model.set_weights(weights)
            results.append(fedavg.client_update(model, ds, epochs, lr, mu, weights))
        counts = [r.num_examples for r in results]
        weights = fedavg.server_aggregate([r.weights for r in results], counts)
        losses.append(float(np.average([r.metrics["loss"] for r in results], weights=counts)))
    return weights, losses


def test_compiled_client_work_equals_readable_client_update(small_federation):
    datasets, eval_data = small_federation
    fedutils.set_seed(0)
    compiled = fedavg.run_fedavg(models.create_digits_model, datasets, rounds=2, local_epochs=2,
                                 proximal_mu=0.05, eval_data=eval_data, seed=3, progress=False)
    weights, losses = readable_fedavg(models.create_digits_model, datasets, 2, epochs=2,
                                      mu=0.05)
    for a, b in zip(compiled.final_weights, weights):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(compiled["train_loss"], losses, rtol=1e-5)


def test_one_round_equals_hand_written_fedavg(small_federation):
    datasets, _ = small_federation
    fedutils.set_seed(0)
    model = models.create_digits_model()
    start = model.get_weights()
    history = fedavg.run_fedavg(model, datasets, rounds=1, progress=False,
                                initial_weights=start)
    results = []
    for ds in datasets:
        model.set_weights(start)
        results.append(fedavg.client_update(model, ds, epochs=1, learning_rate=0.1))
    expected = fedavg.server_aggregate([r.weights for r in results],
                                       [r.num_examples for r in results])
    for a, b in zip(history.final_weights, expected):
        np.testing.assert_allclose(a, b, atol=1e-5)
    unweighted = fedavg.server_aggregate([r.weights for r in results])
    assert max(np.abs(a - b).max() for a, b in zip(history.final_weights, unweighted)) > 1e-4


def test_same_seed_same_history(small_federation):
    datasets, eval_data = small_federation
    histories = []
    for _ in range(2):
        fedutils.set_seed(0)
        histories.append(fedavg.run_fedavg(models.create_digits_model, datasets, rounds=3,
                                           clients_per_round=0.5, availability=0.8,
                                           eval_data=eval_data, seed=7, progress=False))
    assert histories[0].rounds == [
        {**r, "seconds": histories[0].rounds[i]["seconds"]}
        for i, r in enumerate(histories[1].rounds)]


def test_round_without_clients_keeps_the_model(small_federation):
    datasets, eval_data = small_federation
    fedutils.set_seed(0)
    model = models.create_digits_model()
    start = model.get_weights()
    history = fedavg.run_fedavg(model, datasets, rounds=2, availability=1e-9,
                                eval_data=eval_data, progress=False)
    assert history["num_clients"] == [0, 0] and history["upload_bytes"] == [0, 0]
    for a, b in zip(history.final_weights, start):
        np.testing.assert_array_equal(a, b)


def test_fedavg_learns_digits(small_federation):
    datasets, eval_data = small_federation
    fedutils.set_seed(0)
    history = fedavg.run_fedavg(models.create_digits_model, datasets, rounds=15,
                                local_epochs=2, eval_data=eval_data, progress=False)
    assert history.accuracy[-1] > 0.85 > history.accuracy[0] - 0.2


def test_dropout_reduces_reporting_clients(small_federation):
    datasets, _ = small_federation
    history = fedavg.run_fedavg(models.create_digits_model, datasets, rounds=5, dropout=0.5,
                                progress=False)
    assert sum(history["num_clients"]) < sum(history["num_selected"])


def test_history_plot_and_bad_metric(small_federation):
    import matplotlib
    matplotlib.use("Agg")
    datasets, eval_data = small_federation
    history = fedavg.run_fedavg(models.create_digits_model, datasets, rounds=2,
                                eval_data=eval_data, progress=False)
    assert len(history.plot().lines) == 1
    with pytest.raises(ValueError, match="metric"):
        history.plot("f1")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"rounds": 0}, ValueError, "rounds"),
    ({"clients_per_round": 0}, ValueError, "clients_per_round"),
    ({"clients_per_round": 7}, ValueError, "clients_per_round"),
    ({"clients_per_round": 1.5}, ValueError, "clients_per_round"),
    ({"availability": 0.0}, ValueError, "availability"),
    ({"dropout": 1.0}, ValueError, "dropout"),
    ({"client_lr": -0.1}, ValueError, "client_lr"),
    ({"proximal_mu": -1.0}, ValueError, "proximal_mu"),
    ({"local_epochs": 1.5}, TypeError, "local_epochs"),
    ({"aggregator": "mean"}, TypeError, "aggregator"),
    ({"eval_data": (np.zeros((3, 64)),)}, ValueError, "eval_data"),
    ({"initial_weights": [np.zeros(3)]}, ValueError, "initial_weights"),
])
def test_run_fedavg_bad_input(small_federation, kwargs, error, match):
    datasets, _ = small_federation
    with pytest.raises(error, match=match):
        fedavg.run_fedavg(models.create_digits_model, datasets, progress=False, **kwargs)


def test_run_fedavg_rejects_bad_datasets():
    with pytest.raises(ValueError, match="empty"):
        fedavg.run_fedavg(models.create_digits_model, [], progress=False)
    with pytest.raises(TypeError, match="'x'"):
        fedavg.run_fedavg(models.create_digits_model,
                          [tf.data.Dataset.from_tensor_slices(np.zeros((4, 64)))],
                          progress=False)
    with pytest.raises(TypeError, match="Keras model"):
        fedavg.client_update("model", None)


def test_sample_clients_handles_availability():
    rng = np.random.default_rng(0)
    empty_rounds = sum(len(fedavg.sample_clients(2, None, 0.7, rng)) == 0 for _ in range(20000))
    assert abs(empty_rounds / 20000 - 0.09) < 0.01  # 0.3 ** 2
    chosen = fedavg.sample_clients(100, 0.1, 1.0, np.random.default_rng(1))
    assert len(chosen) == 10 and len(set(chosen)) == 10


def test_models_with_an_embedding_train_on_both_paths():
    """An Embedding's gradient is sparse (IndexedSlices); both paths must handle it."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, size=(40, 5)).astype(np.int32)
    y = rng.integers(0, 30, size=40).astype(np.int32)
    datasets = data.make_client_datasets(x, y, [np.arange(20), np.arange(20, 40)], batch_size=8)
    model_fn = lambda: models.create_keyboard_model(30, 5, 4, 4)  # noqa: E731
    fedutils.set_seed(0)
    compiled = fedavg.run_fedavg(model_fn, datasets, rounds=2, eval_data=(x, y), progress=False)
    weights, _ = readable_fedavg(model_fn, datasets, 2)
    for a, b in zip(compiled.final_weights, weights):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("model_fn, stacked", [
    (models.create_digits_model, True),
    (lambda: models.create_keras_model(4, 10), True),
    (lambda: models.create_tabular_model(30, 16), True),
    (lambda: models.create_keyboard_model(30, 5, 4, 4), False),
    (models.create_medical_model, False),
])
def test_dense_chains_train_side_by_side_other_models_in_turn(model_fn, stacked):
    from fedutils.loop.compiled import (SequentialClients, StackedDenseClients,
                                        compile_clients, dense_activations)

    model = model_fn()
    assert (dense_activations(model) is not None) == stacked
    x = np.zeros((4, *model.input_shape[1:]), dtype=np.float32)
    clients = data.make_client_data(x, np.zeros(4, np.int64), [np.arange(2), np.arange(2, 4)],
                                    batch_size=2)
    trainer = compile_clients(model, clients, 1, 0.1, 0.0)
    assert isinstance(trainer, StackedDenseClients if stacked else SequentialClients)
    # centralized training (one client) has nothing to stack
    assert isinstance(compile_clients(model, clients[:1], 1, 0.1, 0.0), SequentialClients)


def test_side_by_side_clients_of_unequal_sizes_equal_client_update():
    """Ragged clients (1 to 23 examples, short last batches), a binary model, two epochs and
    FedProx: every client's final weights from the stacked round equal client_update's."""
    from fedutils.loop.compiled import compile_clients

    rng = np.random.default_rng(4)
    sizes = [1, 5, 23, 8, 12]
    x = rng.normal(size=(sum(sizes), 4)).astype(np.float32)
    y = rng.integers(0, 2, size=sum(sizes))
    bounds = np.cumsum([0] + sizes)
    clients = data.make_client_data(x, y, [np.arange(a, b) for a, b in zip(bounds, bounds[1:])],
                                    batch_size=5, seed=1)
    fedutils.set_seed(0)
    model = models.create_keras_model(4, 10)
    start = model.get_weights()
    chosen = np.array([4, 0, 2, 3])  # any order, any subset
    work = compile_clients(model, clients, 2, 0.3, 0.1).train(start, chosen)
    np.testing.assert_array_equal(work.num_examples, [sizes[i] for i in chosen])
    for k, i in enumerate(chosen):
        model.set_weights(start)
        expected = fedavg.client_update(model, clients[i], 2, 0.3, 0.1, start)
        for a, b in zip(work.client(k), expected.weights):
            np.testing.assert_allclose(a, b, atol=1e-5)
        assert abs(work.losses[k] - expected.metrics["loss"]) < 1e-5


def test_stacked_aggregation_equals_per_client_aggregation():
    from fedutils import robust

    rng = np.random.default_rng(0)
    updates = [[rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2)]
               for _ in range(5)]
    stacked = [np.stack(t) for t in zip(*updates)]
    counts = np.array([3, 1, 4, 1, 5])
    for agg in (fedavg.WeightedMean(), robust.Median()):
        a = agg.aggregate(updates, counts, list(range(5)), np.random.default_rng(1))
        b = agg.aggregate_stacked(stacked, counts, list(range(5)), np.random.default_rng(1))
        for u, v in zip(a.delta, b.delta):
            np.testing.assert_array_equal(u, v)
            assert u.dtype == v.dtype
        assert a.measurements == b.measurements


@pytest.mark.parametrize("partition, clients, epochs, batch_size, dropout", [
    ("iid", 100, 1, 20, 0.0),         # 13 examples each: one step, one pooled gradient
    ("iid", 100, 1, 20, 0.4),
    ("dirichlet", 12, 2, 8, 0.0),     # ragged clients, many steps
    ("dirichlet", 12, 1, 8, 0.4),
])
def test_weighted_mean_computed_in_the_round_equals_the_aggregator(partition, clients, epochs,
                                                                   batch_size, dropout):
    """The default aggregator's mean is computed in the compiled round (one pooled gradient
    when every client takes one step); it must equal the same run with the mean written as a
    plain function aggregator, which receives every client's update."""
    split = data.federated_digits(clients, partition, alpha=0.5 if partition != "iid" else None,
                                  batch_size=batch_size, seed=1)
    fedutils.set_seed(0)
    start = models.create_digits_model().get_weights()
    runs = [fedavg.run_fedavg(models.create_digits_model, split.clients, rounds=3,
                              clients_per_round=min(clients, 30), local_epochs=epochs,
                              dropout=dropout,
                              initial_weights=start, progress=False, aggregator=agg, seed=2)
            for agg in (None, lambda u, n, ids, rng: fedavg.server_aggregate(u, n))]
    for a, b in zip(*(r.final_weights for r in runs)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for key in ("train_loss", "upload_bytes", "num_clients"):
        np.testing.assert_allclose(runs[0][key], runs[1][key], rtol=1e-6)


def test_compiled_trainers_are_reused_for_the_same_model_and_settings():
    """Runs of the same architecture and training settings share one compiled trainer, whatever
    their clients and learning rate (both are graph variables); another model or another epoch
    count gets its own. A reused trainer gives exactly what a fresh one gives, on both paths
    (several clients side by side, one client alone)."""
    from fedutils.loop import compiled

    datasets = data.federated_digits(5, "iid").clients
    changed = [data.ClientData(c.x, (c.y + 1) % 10, c.batch_size) for c in datasets]
    fedutils.set_seed(0)
    start = models.create_digits_model().get_weights()

    def run(clients, lr, model_fn=models.create_digits_model, epochs=1):
        return fedavg.run_fedavg(model_fn, clients, rounds=2, client_lr=lr, local_epochs=epochs,
                                 initial_weights=start if model_fn is models.create_digits_model
                                 else None, progress=False).final_weights

    cases = [(datasets, 0.1), (datasets, 0.05), (changed[1:4], 0.1), (datasets[:1], 0.1),
             (changed[2:3], 0.05)]
    compiled._TRAINERS.clear()
    reused = [run(clients, lr) for clients, lr in cases]
    assert len(compiled._TRAINERS) == 2          # side by side, and one client alone
    for (clients, lr), weights in zip(cases, reused):
        compiled._TRAINERS.clear()               # a fresh trainer: the same numbers
        for a, b in zip(weights, run(clients, lr)):
            np.testing.assert_array_equal(a, b)
    assert max(np.abs(a - b).max() for a, b in zip(reused[0], reused[1])) > 1e-4
    assert max(np.abs(a - b).max() for a, b in zip(reused[3], reused[4])) > 1e-4
    run(datasets, 0.1, epochs=2)
    run(datasets, 0.1, model_fn=lambda: models.create_digits_model(hidden_units=8))
    assert len(compiled._TRAINERS) == 3


def test_a_later_run_leaves_an_earlier_runs_model_alone(small_federation):
    datasets, _ = small_federation
    fedutils.set_seed(0)
    mine = models.create_digits_model()
    fedavg.run_fedavg(mine, datasets, rounds=1, progress=False)
    kept = mine.get_weights()
    fedavg.run_fedavg(models.create_digits_model, datasets, rounds=2, progress=False)
    for a, b in zip(kept, mine.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_run_fedavg_draws_randomness_only_for_its_model():
    """Lessons seed once and build several models: a run must draw from TensorFlow's random
    state exactly as building its one model does, whether or not its trainer is reused."""
    from fedutils.loop import compiled

    clients = data.federated_digits(4, "iid").clients
    compiled._TRAINERS.clear()
    for _ in range(2):  # a new trainer, then a reused one
        fedutils.set_seed(0)
        fedavg.run_fedavg(models.create_digits_model, clients, rounds=1, progress=False)
        after_run = models.create_digits_model().get_weights()
        fedutils.set_seed(0)
        models.create_digits_model()
        after_model = models.create_digits_model().get_weights()
        for a, b in zip(after_run, after_model):
            np.testing.assert_array_equal(a, b)
