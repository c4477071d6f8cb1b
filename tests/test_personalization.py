"""fedutils.personalization against a step-by-step NumPy reference: local fine-tuning, FedPer,
FedRep and Ditto on a tiny two-layer network, batch by batch, to 1e-5; the personal head stays
on its client while the body is averaged; Ditto's global model is run_fedavg's; bad arguments
are refused with errors that name them."""
import numpy as np
import pytest
import tensorflow as tf

from fedutils import personalization
from fedutils.data import ClientData
from fedutils.fedavg import run_fedavg, sample_clients

FEATURES, HIDDEN, CLASSES = 3, 4, 3


def tiny_model():
    return tf.keras.Sequential([tf.keras.Input(shape=(FEATURES,)),
                                tf.keras.layers.Dense(HIDDEN, activation="relu"),
                                tf.keras.layers.Dense(CLASSES, activation="softmax")])


def tiny_clients(sizes=(7, 5, 4), batch_size=3, seed=0):
    """Clients of different sizes (the last batch is partial) and different label mixes."""
    rng = np.random.default_rng(seed)
    clients = []
    for k, n in enumerate(sizes):
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        y = ((np.arange(n) + k) % CLASSES if k else np.zeros(n)).astype(np.int32)
        clients.append(ClientData(x, y, batch_size))
    return clients


def start_weights(seed=1):
    rng = np.random.default_rng(seed)
    shapes = [(FEATURES, HIDDEN), (HIDDEN,), (HIDDEN, CLASSES), (CLASSES,)]
    return [rng.normal(scale=0.5, size=s).astype(np.float32) for s in shapes]


# --- the NumPy reference: plain SGD on the mean cross-entropy, written out ------------------

def gradients(w, x, y):
    """Gradients of the mean cross-entropy of relu(x W1 + b1) W2 + b2 under a softmax."""
    w1, b1, w2, b2 = w
    pre = x @ w1 + b1
    hidden = np.maximum(pre, 0)
    logits = hidden @ w2 + b2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    d_logits = (p - np.eye(CLASSES)[y]) / len(y)
    d_hidden = d_logits @ w2.T * (pre > 0)
    return [x.T @ d_hidden, d_hidden.sum(0), hidden.T @ d_logits, d_logits.sum(0)]


def reference_sgd(w, client, epochs, lr, mu=0.0, anchor=None, trainable=(0, 1, 2, 3)):
    """epochs × batches of w - lr·(grad + mu·(w - anchor)), only the `trainable` tensors."""
    w = [a.astype(np.float64) for a in w]
    anchor = [a.astype(np.float64) for a in (anchor if anchor is not None else w)]
    x, y = client.x.astype(np.float64), client.y
    for _ in range(epochs):
        for i in range(0, len(y), client.batch_size):
            g = gradients(w, x[i:i + client.batch_size], y[i:i + client.batch_size])
            w = [wt - lr * (gt + mu * (wt - at)) if t in trainable else wt
                 for t, (wt, gt, at) in enumerate(zip(w, g, anchor))]
    return w


def weighted_mean(weight_list, counts):
    return [sum(c * w[t] for w, c in zip(weight_list, counts)) / sum(counts)
            for t in range(len(weight_list[0]))]


def assert_close(actual, expected, tol=1e-5):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


# --- the methods against the reference ------------------------------------------------------

def test_local_finetune_equals_reference_sgd_per_client():
    clients, w = tiny_clients(), start_weights()
    tuned = personalization.local_finetune(tiny_model, w, clients, epochs=3, learning_rate=0.4)
    assert len(tuned) == len(clients)
    for client, weights in zip(clients, tuned):
        assert_close(weights, reference_sgd(w, client, 3, 0.4))


def test_fedper_equals_reference_heads_stay_local_body_is_averaged():
    clients, w = tiny_clients(), start_weights()
    out = personalization.run_fedper(tiny_model, clients, num_personal_layers=1, rounds=3,
                                     local_epochs=2, client_lr=0.3, initial_weights=w)
    body, heads = w[:2], [w[2:]] * len(clients)
    counts = [len(c) for c in clients]
    for _ in range(3):
        trained = [reference_sgd(body + head, c, 2, 0.3) for head, c in zip(heads, clients)]
        heads = [t[2:] for t in trained]                    # each head stays on its client
        body = weighted_mean([t[:2] for t in trained], counts)
    assert_close(out.shared_weights, body)
    for k, head in enumerate(heads):
        assert_close(out.personal_weights[k], body + head)
    # The heads really differ between clients (none is the average), the bodies do not.
    assert not np.allclose(out.personal_weights[0][2], out.personal_weights[1][2], atol=1e-3)
    for k in range(1, len(clients)):
        for t in (0, 1):
            np.testing.assert_array_equal(out.personal_weights[k][t], out.personal_weights[0][t])


def test_fedrep_trains_head_with_body_frozen_then_body_with_head_frozen():
    clients, w = tiny_clients(), start_weights()
    out = personalization.run_fedrep(tiny_model, clients, rounds=2, head_epochs=3,
                                     body_epochs=1, client_lr=0.3, initial_weights=w)
    body, heads = w[:2], [w[2:]] * len(clients)
    counts = [len(c) for c in clients]
    for _ in range(2):
        trained = []
        for k, c in enumerate(clients):
            after_head = reference_sgd(body + heads[k], c, 3, 0.3, trainable=(2, 3))
            assert_close(after_head[:2], body)              # the body did not move
            trained.append(reference_sgd(after_head, c, 1, 0.3, trainable=(0, 1)))
            assert_close(trained[-1][2:], after_head[2:])   # nor the head in the body phase
        heads = [t[2:] for t in trained]
        body = weighted_mean([t[:2] for t in trained], counts)
    assert_close(out.shared_weights, body)
    for k, head in enumerate(heads):
        assert_close(out.personal_weights[k], body + head)


def test_ditto_equals_reference_and_its_global_model_is_run_fedavgs():
    clients, w = tiny_clients(), start_weights()
    lam, lr = 0.5, 0.3
    out = personalization.run_ditto(tiny_model, clients, lam=lam, rounds=3, local_epochs=2,
                                    client_lr=lr, initial_weights=w)
    global_w, personal = w, [w] * len(clients)
    counts = [len(c) for c in clients]
    for _ in range(3):
        updated = [reference_sgd(global_w, c, 2, lr) for c in clients]
        personal = [reference_sgd(v, c, 2, lr, mu=lam, anchor=global_w)   # pulled towards w^t
                    for v, c in zip(personal, clients)]
        global_w = weighted_mean(updated, counts)
    assert_close(out.shared_weights, global_w)
    for got, expected in zip(out.personal_weights, personal):
        assert_close(got, expected)
    fedavg = run_fedavg(tiny_model, clients, rounds=3, local_epochs=2, client_lr=lr,
                        initial_weights=w, progress=False)
    assert_close(out.shared_weights, fedavg.final_weights)


def test_ditto_lam_zero_is_local_training_and_large_lam_stays_near_the_global_model():
    clients, w = tiny_clients(), start_weights()
    alone = personalization.run_ditto(tiny_model, clients, lam=0.0, rounds=2, local_epochs=1,
                                      client_lr=0.3, initial_weights=w)
    local = personalization.local_finetune(tiny_model, w, clients, epochs=2, learning_rate=0.3)
    for a, b in zip(alone.personal_weights, local):
        assert_close(a, b)
    tight = personalization.run_ditto(tiny_model, clients, lam=3.0, rounds=2, local_epochs=1,
                                      client_lr=0.3, initial_weights=w)

    def gap(out):
        return np.mean([sum(np.sum((v - g) ** 2) for v, g in zip(p, out.shared_weights))
                        for p in out.personal_weights])

    assert gap(tight) < 0.5 * gap(alone)


def test_only_sampled_clients_train_and_only_the_body_is_sent():
    clients, w = tiny_clients(sizes=(6, 6, 6, 6)), start_weights()
    out = personalization.run_fedper(tiny_model, clients, rounds=1, clients_per_round=2,
                                     client_lr=0.3, initial_weights=w, seed=3)
    chosen = sample_clients(4, 2, 1.0, np.random.default_rng([3, 1]))
    for k in range(4):
        moved = not np.allclose(out.personal_weights[k][2], w[2])
        assert moved == (k in chosen)
    body_bytes = w[0].nbytes + w[1].nbytes
    record = out.history.rounds[0]
    assert record["download_bytes"] == record["upload_bytes"] == 2 * body_bytes
    ditto = personalization.run_ditto(tiny_model, clients, rounds=1, clients_per_round=2,
                                      initial_weights=w, seed=3)
    assert ditto.history.rounds[0]["upload_bytes"] == 2 * sum(a.nbytes for a in w)


def test_evaluate_personalized_scores_each_client_with_its_own_model():
    clients, w = tiny_clients(), start_weights()
    tuned = personalization.local_finetune(tiny_model, w, clients, epochs=5, learning_rate=0.5)
    model = tiny_model()
    result = personalization.evaluate_personalized(model, clients, tuned)
    for k, (client, weights) in enumerate(zip(clients, tuned)):
        model.set_weights(weights)
        predicted = np.argmax(model.predict(client.x, verbose=0), axis=1)
        assert result.per_client[k]["accuracy"] == pytest.approx(np.mean(predicted == client.y))
        assert result.per_client[k]["client"] == k
    sizes = np.array([len(c) for c in clients])
    assert result.weighted["accuracy"] == pytest.approx(
        np.average(result.accuracies, weights=sizes))
    assert result.unweighted["accuracy"] == pytest.approx(result.accuracies.mean())


# --- bad arguments --------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, words", [
    (lambda c, w: personalization.local_finetune(tiny_model, w, c, epochs=0), ValueError,
     "epochs"),
    (lambda c, w: personalization.local_finetune(tiny_model, w, c, learning_rate=-1.0),
     ValueError, "learning_rate"),
    (lambda c, w: personalization.local_finetune(tiny_model, w[:2], c), ValueError,
     "global_weights"),
    (lambda c, w: personalization.local_finetune(tiny_model(), w, c), TypeError, "model_fn"),
    (lambda c, w: personalization.run_fedper(tiny_model, c, num_personal_layers=2), ValueError,
     "num_personal_layers"),
    (lambda c, w: personalization.run_fedper(tiny_model, c, num_personal_layers=0), ValueError,
     "num_personal_layers"),
    (lambda c, w: personalization.run_fedper(tiny_model, c, rounds=0), ValueError, "rounds"),
    (lambda c, w: personalization.run_fedper(tiny_model, c, clients_per_round=9), ValueError,
     "clients_per_round"),
    (lambda c, w: personalization.run_fedrep(tiny_model, c, head_epochs=0), ValueError,
     "head_epochs"),
    (lambda c, w: personalization.run_fedrep(tiny_model, c, body_epochs=1.5), TypeError,
     "body_epochs"),
    (lambda c, w: personalization.run_ditto(tiny_model, c, lam=-0.1), ValueError, "lam"),
    (lambda c, w: personalization.run_ditto(tiny_model, c, client_lr=0), ValueError,
     "client_lr"),
    (lambda c, w: personalization.run_ditto(tiny_model, c, lam=10.0, client_lr=0.3),
     ValueError, "lam = 10 with client_lr = 0.3.*diverge"),
    (lambda c, w: personalization.run_ditto(tiny_model, c, seed=-1), ValueError, "seed"),
    (lambda c, w: personalization.run_ditto(tiny_model, "clients"), TypeError,
     "client_datasets"),
    (lambda c, w: personalization.run_ditto(tiny_model, c, initial_weights=w[::-1]),
     ValueError, "initial_weights"),
    (lambda c, w: personalization.evaluate_personalized(tiny_model(), c, [w]), ValueError,
     "personal_weights"),
    (lambda c, w: personalization.evaluate_personalized(tiny_model(), c, w[0]), TypeError,
     "personal_weights"),
    (lambda c, w: personalization.evaluate_personalized(tiny_model(), c, [w, w, w[:3]]),
     ValueError, "personal_weights[2]"),
])
def test_bad_arguments_are_refused_by_name(call, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        call(tiny_clients(), start_weights())


def test_clients_with_other_dtypes_train_like_float32_ones():
    clients, w = tiny_clients(), start_weights()
    mixed = [clients[0], ClientData(clients[1].x.astype(np.float64),
                                    clients[1].y.astype(np.int64), clients[1].batch_size)]
    for got, client in zip(personalization.local_finetune(tiny_model, w, mixed, epochs=2,
                                                          learning_rate=0.4), clients):
        assert_close(got, reference_sgd(w, client, 2, 0.4))


def test_data_that_does_not_fit_the_model_is_refused():
    wrong = [ClientData(np.zeros((4, FEATURES), np.float32), np.array([0, 1, 2, 5], np.int32),
                        2)]
    with pytest.raises(ValueError, match="client_datasets.*labels from 0 to 5"):
        personalization.run_fedper(tiny_model, wrong)


def test_a_model_with_frozen_layers_or_one_layer_is_refused():
    def frozen():
        model = tiny_model()
        model.layers[0].trainable = False
        return model

    with pytest.raises(ValueError, match="all trainable"):
        personalization.run_ditto(frozen, tiny_clients())

    def one_layer():
        return tf.keras.Sequential([tf.keras.Input(shape=(FEATURES,)),
                                    tf.keras.layers.Dense(CLASSES, activation="softmax")])

    with pytest.raises(ValueError, match="num_personal_layers"):
        personalization.run_fedrep(one_layer, tiny_clients())
