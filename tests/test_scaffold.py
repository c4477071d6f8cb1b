"""SCAFFOLD (Karimireddy et al. 2020, option II) in `run_fedavg(..., scaffold=True)`.

References: SCAFFOLD written out step by step in NumPy (softmax regression, gradients by hand,
float64) on four clients of unequal size with partial participation; the readable
`client_update(..., correction=...)` in a plain loop (the compiled path must equal it); FedAvg
itself where SCAFFOLD must reduce to it (first round, or one local step per client).
"""
import numpy as np
import pytest
import tensorflow as tf

import fedutils
from fedutils import data, fedavg, models, server_optimizers
from fedutils.compression import CompressionAggregator
from fedutils.loop.client import scaffold_control_update

SIZES = (13, 47, 100, 30)  # unequal clients; batch 20 gives 1, 3, 5 and 2 steps per epoch
BATCH, LR, EPOCHS, ROUNDS, PER_ROUND, SEED = 20, 0.1, 2, 4, 2, 3


@pytest.fixture(scope="module")
def clients():
    """Four label-skewed clients: the examples sorted by label, dealt out in blocks."""
    x, y = data.load_digits()
    order = np.argsort(y, kind="stable")[::3]
    ends = np.cumsum(SIZES)
    parts = [order[end - size:end] for end, size in zip(ends, SIZES)]
    return data.make_client_data(x, y, parts, batch_size=BATCH, seed=0)


def softmax_regression():
    return tf.keras.Sequential([tf.keras.Input(shape=(64,)),
                                tf.keras.layers.Dense(10, activation="softmax")])


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
               for u, v in zip(a, b))


# --- the NumPy reference ------------------------------------------------------------------------

def softmax_gradient(w, x, y):
    """Gradient of the mean cross-entropy of softmax(x @ kernel + bias) on a batch."""
    kernel, bias = w
    logits = x @ kernel + bias
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return [x.T @ p / len(y), p.mean(axis=0)]


def numpy_scaffold(clients, x0, rounds, per_round, seed, lr, epochs, server_lr):
    """SCAFFOLD, option II, line by line; the server averages Δy weighted by example counts
    (run_fedavg's default aggregator) and applies it with step server_lr."""
    n = len(clients)
    x = [w.astype(np.float64) for w in x0]
    c = [np.zeros_like(w) for w in x]
    c_i = [[np.zeros_like(w) for w in x] for _ in range(n)]
    for r in range(1, rounds + 1):
        chosen = fedavg.sample_clients(n, per_round, 1.0, np.random.default_rng([seed, r]))
        dy, dc, counts = [], [], []
        for i in chosen:
            y, steps = [w.copy() for w in x], 0
            for _ in range(epochs):
                for xb, yb in clients[i].batches():
                    g = softmax_gradient(y, xb.astype(np.float64), yb)
                    y = [w - lr * (gw - ci + cw) for w, gw, ci, cw in zip(y, g, c_i[i], c)]
                    steps += 1
            new_ci = [ci - cw + (xw - yw) / (steps * lr)
                      for ci, cw, xw, yw in zip(c_i[i], c, x, y)]
            dy.append([yw - xw for yw, xw in zip(y, x)])
            dc.append([a - b for a, b in zip(new_ci, c_i[i])])
            counts.append(len(clients[i]))
            c_i[i] = new_ci
        share = np.array(counts) / sum(counts)
        x = [xw + server_lr * sum(s * d[t] for s, d in zip(share, dy)) for t, xw in enumerate(x)]
        c = [cw + len(chosen) / n * np.mean([d[t] for d in dc], axis=0)
             for t, cw in enumerate(c)]
    return x


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_run_fedavg_scaffold_equals_numpy_reference(clients, server_lr):
    fedutils.set_seed(0)
    x0 = softmax_regression().get_weights()
    expected = numpy_scaffold(clients, x0, ROUNDS, PER_ROUND, SEED, LR, EPOCHS, server_lr)
    history = fedavg.run_fedavg(softmax_regression, clients, rounds=ROUNDS,
                                clients_per_round=PER_ROUND, local_epochs=EPOCHS, client_lr=LR,
                                server_optimizer=server_optimizers.sgd(server_lr),
                                initial_weights=x0, seed=SEED, scaffold=True, progress=False)
    plain = fedavg.run_fedavg(softmax_regression, clients, rounds=ROUNDS,
                              clients_per_round=PER_ROUND, local_epochs=EPOCHS, client_lr=LR,
                              server_optimizer=server_optimizers.sgd(server_lr),
                              initial_weights=x0, seed=SEED, progress=False)
    assert max_diff(history.final_weights, expected) < 1e-5
    assert max_diff(plain.final_weights, expected) > 1e-3  # the corrections mattered
    # Every client took part at least once, so every c_i was used.
    chosen = [fedavg.sample_clients(4, PER_ROUND, 1.0, np.random.default_rng([SEED, r]))
              for r in range(1, ROUNDS + 1)]
    assert set(np.concatenate(chosen)) == {0, 1, 2, 3}


def readable_scaffold(clients, x0, rounds, per_round, seed, lr, epochs):
    """SCAFFOLD with the readable client_update and the public control-variate formula."""
    model = models.create_digits_model()
    n, x = len(clients), x0
    c = [np.zeros_like(w) for w in x]
    c_i = [c] * n
    for r in range(1, rounds + 1):
        chosen = fedavg.sample_clients(n, per_round, 1.0, np.random.default_rng([seed, r]))
        results, dc = [], []
        for i in chosen:
            model.set_weights(x)
            correction = [cw - ci for cw, ci in zip(c, c_i[i])]
            result = fedavg.client_update(model, clients[i], epochs, lr, correction=correction)
            steps = len(clients[i].batch_sizes) * epochs
            new_ci = scaffold_control_update(c_i[i], c, x, result.weights, steps, lr)
            dc.append([a - b for a, b in zip(new_ci, c_i[i])])
            c_i[i] = new_ci
            results.append(result)
        x = fedavg.server_aggregate([r.weights for r in results],
                                    [r.num_examples for r in results])
        c = [cw + len(chosen) / n * np.mean([d[t] for d in dc], axis=0)
             for t, cw in enumerate(c)]
    return x


def test_compiled_path_equals_readable_client_update_with_correction(clients):
    fedutils.set_seed(0)
    x0 = models.create_digits_model().get_weights()
    expected = readable_scaffold(clients, x0, 3, 3, SEED, LR, EPOCHS)
    history = fedavg.run_fedavg(models.create_digits_model, clients, rounds=3,
                                clients_per_round=3, local_epochs=EPOCHS, client_lr=LR,
                                initial_weights=x0, seed=SEED, scaffold=True, progress=False)
    assert max_diff(history.final_weights, expected) < 1e-5


def test_client_update_correction_is_added_to_every_gradient(clients):
    """With a constant correction v, each step is w - lr·(g + v): a zero correction changes
    nothing, and on a one-batch client one step differs from plain SGD by exactly -lr·v."""
    fedutils.set_seed(0)
    model = models.create_digits_model()
    start = model.get_weights()
    plain = fedavg.client_update(model, clients[0], 1, LR)  # 13 examples: one batch
    model.set_weights(start)
    zero = fedavg.client_update(model, clients[0], 1, LR, correction=[0 * w for w in start])
    assert max_diff(plain.weights, zero.weights) == 0
    v = [np.full_like(w, 0.25) for w in start]
    model.set_weights(start)
    shifted = fedavg.client_update(model, clients[0], 1, LR, correction=v)
    for a, b, vw in zip(shifted.weights, plain.weights, v):
        np.testing.assert_allclose(a, b - LR * vw, atol=1e-6)


def test_first_round_is_fedavg_because_every_control_is_zero(clients):
    fedutils.set_seed(0)
    x0 = models.create_digits_model().get_weights()
    common = dict(rounds=1, local_epochs=3, initial_weights=x0, seed=1, progress=False)
    scaffold = fedavg.run_fedavg(models.create_digits_model, clients, scaffold=True, **common)
    plain = fedavg.run_fedavg(models.create_digits_model, clients, **common)
    # Equal up to the order of float32 sums: the plain round averages in the compiled graph.
    assert max_diff(scaffold.final_weights, plain.final_weights) < 1e-7


def test_one_local_step_is_fedavg(digits_split):
    """K = 1 (one batch, one epoch) and full participation of equal clients: c is the mean of
    the c_i, so the corrections cancel in the average, and SCAFFOLD is FedAvg (FedSGD) round
    after round. With more local steps they differ."""
    x_train, _, y_train, _ = digits_split
    parts = np.array_split(np.argsort(y_train, kind="stable")[:400], 4)  # label-skewed
    one_step = data.make_client_data(x_train, y_train, parts, batch_size=100, seed=0)
    fedutils.set_seed(0)
    x0 = models.create_digits_model().get_weights()
    runs = {}
    for epochs in (1, 3):
        for scaffold in (False, True):
            runs[epochs, scaffold] = fedavg.run_fedavg(
                models.create_digits_model, one_step, rounds=4, local_epochs=epochs,
                client_lr=0.5, initial_weights=x0, scaffold=scaffold, progress=False)
    assert max_diff(runs[1, True].final_weights, runs[1, False].final_weights) < 1e-5
    assert max_diff(runs[3, True].final_weights, runs[3, False].final_weights) > 1e-3


def test_bytes_both_ways_are_doubled(clients):
    model_bytes = sum(w.nbytes for w in models.create_digits_model().get_weights())
    common = dict(rounds=4, clients_per_round=3, dropout=0.4, seed=5, progress=False)
    history = fedavg.run_fedavg(models.create_digits_model, clients, scaffold=True, **common)
    plain = fedavg.run_fedavg(models.create_digits_model, clients, **common)
    assert history["num_clients"] == plain["num_clients"]
    assert 0 < sum(history["num_clients"]) < sum(history["num_selected"])  # some dropped out
    for r, p in zip(history.rounds, plain.rounds):
        assert r["download_bytes"] == 2 * r["num_selected"] * model_bytes == 2 * p["download_bytes"]
        assert r["upload_bytes"] == 2 * r["num_clients"] * model_bytes == 2 * p["upload_bytes"]


def test_compressed_delta_y_plus_dense_delta_c(clients):
    """A compressing aggregator measures Δy; SCAFFOLD adds Δc, sent dense."""
    model_bytes = sum(w.nbytes for w in models.create_digits_model().get_weights())
    aggregator = CompressionAggregator("top_k", ratio=0.1)
    common = dict(rounds=2, seed=5, aggregator=aggregator, progress=False)
    history = fedavg.run_fedavg(models.create_digits_model, clients, scaffold=True, **common)
    plain = fedavg.run_fedavg(models.create_digits_model, clients, **common)
    for r, p in zip(history.rounds, plain.rounds):
        assert r["upload_bytes"] == p["upload_bytes"] + r["num_clients"] * model_bytes
        assert r["dense_upload_bytes"] == 2 * r["num_clients"] * model_bytes


def test_scaffold_learns_and_is_reproducible(clients, digits_split):
    _, x_test, _, y_test = digits_split
    runs = []
    for _ in range(2):
        fedutils.set_seed(0)
        runs.append(fedavg.run_fedavg(models.create_digits_model, clients, rounds=8,
                                      local_epochs=2, clients_per_round=3, seed=2,
                                      eval_data=(x_test, y_test), scaffold=True,
                                      progress=False))
    assert runs[0].accuracy == runs[1].accuracy
    assert max_diff(runs[0].final_weights, runs[1].final_weights) == 0
    assert runs[0].accuracy[-1] > runs[0].accuracy[0]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(scaffold="yes"), TypeError, "scaffold must be True or False"),
    (dict(scaffold=1), TypeError, "scaffold must be True or False"),
    (dict(scaffold=None), TypeError, "scaffold must be True or False"),
    (dict(scaffold=True, proximal_mu=0.1), ValueError, "alternative remedies"),
])
def test_bad_arguments(clients, kwargs, error, match):
    with pytest.raises(error, match=match):
        fedavg.run_fedavg(models.create_digits_model, clients, rounds=1, progress=False,
                          **kwargs)


def test_client_update_bad_correction(clients):
    model = models.create_digits_model()
    weights = model.get_weights()
    with pytest.raises(ValueError, match="correction"):
        fedavg.client_update(model, clients[0], correction=weights[:-1])
    with pytest.raises(ValueError, match="correction"):
        fedavg.client_update(model, clients[0], correction=[w[..., :1] for w in weights])
    with pytest.raises(TypeError, match="correction"):
        fedavg.client_update(model, clients[0], correction=np.zeros(3))
