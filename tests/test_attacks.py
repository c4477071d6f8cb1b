"""fedutils.techniques.attacks: gradient inversion, poisoning and backdoors, checked against
hand computations, the real FedAvg loop and the data they are meant to leak or corrupt."""
from __future__ import annotations

import numpy as np
import pytest

import fedutils
from fedutils import data, models, partition, privacy
from fedutils.fedavg import Aggregate, Aggregator, run_fedavg, sample_clients
from fedutils import attacks


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_digits()
    return x, y


@pytest.fixture(scope="module")
def model():
    fedutils.set_seed(0)
    return models.create_digits_model()


def numpy_gradient(weights, x, y):
    """The digits MLP's gradient of the mean cross-entropy, by hand (backpropagation)."""
    w1, b1, w2, b2 = [w.astype(np.float64) for w in weights]
    pre = x @ w1 + b1
    h = np.maximum(pre, 0)
    logits = h @ w2 + b2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    d_logits = (p - np.eye(w2.shape[1])[y]) / len(y)
    d_pre = (d_logits @ w2.T) * (pre > 0)
    return [x.T @ d_pre, d_pre.sum(0), h.T @ d_logits, d_logits.sum(0)]


# --- gradient inversion ---------------------------------------------------------------------

def test_batch_gradient_equals_backpropagation_by_hand(digits, model):
    x, y = digits
    mine = attacks.batch_gradient(model, x[:7], y[:7])
    by_hand = numpy_gradient(model.get_weights(), x[:7].astype(np.float64), y[:7])
    for a, b in zip(mine, by_hand):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_label_of_one_example_is_the_negative_entry_of_the_bias_gradient(digits, model):
    x, y = digits
    for i in range(60):  # iDLG's sign rule is exact for softmax cross-entropy
        g = attacks.batch_gradient(model, x[i:i + 1], y[i:i + 1])
        assert attacks.infer_labels(g[-1], 1).tolist() == [y[i]]
        assert np.sum(g[-1] < 0) == 1


def test_batch_label_counts_are_exact_with_the_batch_mean_prediction(digits, model):
    x, y = digits
    rng = np.random.default_rng(0)
    for batch in (2, 5, 16, 40):
        idx = rng.choice(len(y), batch, replace=False)
        g = attacks.batch_gradient(model, x[idx], y[idx])
        p_bar = model(x[idx]).numpy().mean(axis=0)
        labels = attacks.infer_labels(g[-1], batch, p_bar)
        assert labels.tolist() == sorted(y[idx].tolist())
        uniform = attacks.infer_labels(g[-1], batch)  # rougher, but always B labels
        assert len(uniform) == batch and uniform.min() >= 0 and uniform.max() <= 9


def test_dlg_reconstructs_a_single_digit(digits, model):
    x, y = digits
    g = attacks.batch_gradient(model, x[3:4], y[3:4])
    rec = attacks.invert_gradient(model, g, 1, seed=0)
    errors, order = attacks.reconstruction_error(rec.images, x[3:4])
    assert rec.labels.tolist() == [y[3]]
    assert errors[0] < 5e-3 and rec.distance < 1e-2
    assert rec.images.min() >= 0 and rec.images.max() <= 1
    # A guess that ignores the gradient (the mean digit) is far worse.
    assert attacks.reconstruction_error(x.mean(0, keepdims=True), x[3:4])[0][0] > 0.03


def test_dlg_reconstructs_a_small_batch_with_cosine_distance_too(digits, model):
    x, y = digits
    g = attacks.batch_gradient(model, x[10:12], y[10:12])
    rec = attacks.invert_gradient(model, g, 2, labels=y[10:12], distance="cosine", seed=1)
    assert attacks.reconstruction_error(rec.images, x[10:12])[0].max() < 0.01


def test_dlg_fails_when_noise_dominates_the_gradient(digits, model):
    x, y = digits
    g = attacks.batch_gradient(model, x[3:4], y[3:4])
    scale = max(float(np.abs(t).max()) for t in g)
    noisy = privacy.add_gaussian_noise(g, 10 * scale, rng=0)
    rec = attacks.invert_gradient(model, noisy, 1, labels=y[3:4], seed=0)
    assert attacks.reconstruction_error(rec.images, x[3:4])[0][0] > 0.03


def test_reconstruction_error_matches_images_in_any_order():
    rng = np.random.default_rng(0)
    originals = rng.random((5, 64))
    shuffled = originals[[3, 0, 4, 1, 2]]
    errors, order = attacks.reconstruction_error(shuffled, originals)
    np.testing.assert_array_equal(errors, 0)
    np.testing.assert_array_equal(shuffled[order], originals)
    extra = np.vstack([rng.random((3, 64)), originals[:2] + 0.1])  # more reconstructions
    errors, order = attacks.reconstruction_error(extra, originals[:2])
    np.testing.assert_allclose(errors, 0.01)
    assert order.tolist() == [3, 4]


def test_gradient_inversion_rejects_bad_input(digits, model):
    x, y = digits
    g = attacks.batch_gradient(model, x[:1], y[:1])
    with pytest.raises(ValueError, match="Dense layers"):
        attacks.invert_gradient(models.create_medical_model(), g, 1)
    with pytest.raises(ValueError, match="gradient"):
        attacks.invert_gradient(model, g[:3], 1)
    with pytest.raises(ValueError, match="distance"):
        attacks.invert_gradient(model, g, 1, distance="l1")
    with pytest.raises(ValueError, match="labels"):
        attacks.invert_gradient(model, g, 2, labels=[1])
    with pytest.raises(ValueError, match="batch_size"):
        attacks.invert_gradient(model, g, 0)
    with pytest.raises(TypeError, match="model"):
        attacks.batch_gradient("model", x[:1], y[:1])
    with pytest.raises(ValueError, match="bias_gradient"):
        attacks.infer_labels(np.zeros((2, 10)), 1)
    with pytest.raises(ValueError, match="mean_prediction"):
        attacks.infer_labels(g[-1], 4, np.ones(10))
    with pytest.raises(ValueError, match="at least as many"):
        attacks.reconstruction_error(x[:1], x[:2])


# --- poisoning ------------------------------------------------------------------------------

def test_flip_labels_maps_y_to_nine_minus_y():
    assert attacks.flip_labels([0, 3, 9]).tolist() == [9, 6, 0]
    assert attacks.flip_labels([0, 1], num_classes=2).tolist() == [1, 0]
    with pytest.raises(ValueError, match="labels in"):
        attacks.flip_labels([10])


def test_poison_clients_changes_only_the_malicious_clients_examples(digits):
    x, y = digits
    parts = partition.iid_partition(y, 5, seed=0)
    new_x, new_y = attacks.poison_clients(
        x, y, parts, [1, 3], lambda a, b, rng: (a * 0, attacks.flip_labels(b)))
    bad = np.concatenate([parts[1], parts[3]])
    good = np.setdiff1d(np.arange(len(y)), bad)
    np.testing.assert_array_equal(new_y[bad], 9 - y[bad])
    np.testing.assert_array_equal(new_x[bad], 0)
    np.testing.assert_array_equal(new_y[good], y[good])
    np.testing.assert_array_equal(new_x[good], x[good])
    assert x[bad].sum() > 0  # the originals are untouched
    with pytest.raises(ValueError, match="malicious"):
        attacks.poison_clients(x, y, parts, [5], lambda a, b, rng: (a, b))
    with pytest.raises(ValueError, match="shapes"):
        attacks.poison_clients(x, y, parts, [0], lambda a, b, rng: (a[:1], b[:1]))


def test_sign_flip_and_scaling_keep_dtype():
    update = [np.array([1.0, -2.0], np.float32), np.array([[3.0]], np.float32)]
    flipped = attacks.sign_flip(2.0)(update)
    assert [t.tolist() for t in flipped] == [[-2.0, 4.0], [[-6.0]]]
    assert all(t.dtype == np.float32 for t in flipped)
    assert [t.tolist() for t in attacks.scale_update(10)(update)] == [[10.0, -20.0], [[30.0]]]
    with pytest.raises(ValueError, match="scale"):
        attacks.sign_flip(-1.0)


class Recorder(Aggregator):
    """An inner aggregator that keeps what it received and returns the first update."""

    def aggregate(self, updates, num_examples, client_ids, rng, state=None):
        self.received = (updates, list(client_ids))
        return Aggregate(updates[0], {"inner": 1}, state)


def test_malicious_clients_replaces_only_the_chosen_clients_updates():
    updates = [[np.full(3, float(i), np.float32)] for i in range(4)]
    inner = Recorder()
    wrapper = attacks.MaliciousClients([7, 2], attacks.sign_flip(3.0), inner)
    out = wrapper.aggregate(updates, np.ones(4), [5, 7, 2, 9], np.random.default_rng(0))
    sent, ids = inner.received
    assert ids == [5, 7, 2, 9]
    assert [u[0][0] for u in sent] == [0.0, -3.0, -6.0, 3.0]
    assert out.measurements == {"inner": 1, "num_attacked": 2}
    with pytest.raises(TypeError, match="attack"):
        attacks.MaliciousClients([0], "flip")
    with pytest.raises(ValueError, match="malicious"):
        attacks.MaliciousClients([-1], attacks.sign_flip())


def test_malicious_clients_inside_run_fedavg_sees_the_loops_client_ids(digits):
    x, y = digits
    parts = partition.iid_partition(y[:300], 6, seed=0)
    clients = data.make_client_data(x[:300], y[:300], parts, batch_size=10, seed=0)
    fedutils.set_seed(0)
    start = models.create_digits_model().get_weights()
    # Every client "attacks" by sending nothing: the model must not move.
    frozen = run_fedavg(models.create_digits_model, clients, rounds=2, clients_per_round=4,
                        aggregator=attacks.MaliciousClients(range(6), attacks.scale_update(0)),
                        initial_weights=start, seed=0, progress=False)
    for a, b in zip(frozen.final_weights, start):
        np.testing.assert_array_equal(a, b)
    assert frozen["num_attacked"] == [4, 4]
    some = run_fedavg(models.create_digits_model, clients, rounds=3, clients_per_round=3,
                      aggregator=attacks.MaliciousClients([0, 1], attacks.sign_flip()),
                      initial_weights=start, seed=0, progress=False)
    sampled = [sample_clients(6, 3, 1.0, np.random.default_rng([0, r])) for r in (1, 2, 3)]
    assert some["num_attacked"] == [int(np.isin([0, 1], s).sum()) for s in sampled]


# --- backdoors ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 64), (3, 8, 8), (3, 8, 8, 1)])
def test_add_trigger_sets_only_the_bottom_right_patch(shape):
    x = np.random.default_rng(0).random(shape).astype(np.float32) * 0.5
    triggered = attacks.add_trigger(x, size=3, value=1.0)
    assert triggered.shape == x.shape and triggered.dtype == np.float32
    images, original = triggered.reshape(3, 8, 8), x.reshape(3, 8, 8)
    patch = np.zeros((8, 8), bool)
    patch[5:, 5:] = True
    assert np.all(images[:, patch] == 1.0)
    np.testing.assert_array_equal(images[:, ~patch], original[:, ~patch])
    assert np.all(x.reshape(3, 8, 8)[:, patch] < 1)  # the input is not modified
    with pytest.raises(ValueError, match="size"):
        attacks.add_trigger(x, size=9)


def test_add_trigger_rejects_non_square_flat_images():
    with pytest.raises(ValueError, match="square"):
        attacks.add_trigger(np.zeros((2, 30)))


def test_backdoor_examples_trigger_and_relabel_the_requested_fraction(digits):
    x, y = digits
    new_x, new_y = attacks.backdoor_examples(x[:40], y[:40], target=0, fraction=0.25, rng=0)
    changed = np.flatnonzero(np.any(new_x != x[:40], axis=1) | (new_y != y[:40]))
    assert len(changed) <= 10
    corner = new_x.reshape(40, 8, 8)[:, -2:, -2:]
    poisoned = np.flatnonzero(np.all(corner == 1.0, axis=(1, 2)))
    assert len(poisoned) == 10 and np.all(new_y[poisoned] == 0)
    clean = np.setdiff1d(np.arange(40), poisoned)
    np.testing.assert_array_equal(new_x[clean], x[:40][clean])
    np.testing.assert_array_equal(new_y[clean], y[:40][clean])


def test_backdoor_success_counts_triggered_non_target_images(digits):
    x, y = digits
    fedutils.set_seed(0)
    model = models.create_digits_model()
    weights = [np.zeros_like(w) for w in model.get_weights()]
    weights[-1][4] = 5.0                       # always predicts 4
    assert attacks.backdoor_success(model, weights, x[:100], y[:100], target=4) == 1.0
    assert attacks.backdoor_success(model, weights, x[:100], y[:100], target=5) == 0.0
    # A model that reads the trigger: class 4 only when the bottom-right pixel is lit.
    weights = [np.zeros_like(w) for w in model.get_weights()]
    weights[0][63, 0], weights[2][0, 4], weights[-1][1] = 1.0, 10.0, 5.0
    lit = x[:100, 63] > 0.5
    assert attacks.backdoor_success(model, weights, x[:100], y[:100], target=4) == 1.0
    model.set_weights(weights)
    assert np.mean(np.argmax(model(x[:100]).numpy(), 1) == 4) == pytest.approx(lit.mean())
    with pytest.raises(ValueError, match="other than target"):
        attacks.backdoor_success(model, weights, x[:5], np.full(5, 4), target=4)


def test_watch_global_model_tracks_run_fedavgs_weights(digits):
    x, y = digits
    parts = partition.iid_partition(y[:300], 5, seed=0)
    clients = data.make_client_data(x[:300], y[:300], parts, batch_size=10, seed=0)
    fedutils.set_seed(0)
    start = models.create_digits_model().get_weights()
    seen = []
    watch = attacks.WatchGlobalModel(start, lambda w: seen.append(w) or {"norm": 1.0})
    history = run_fedavg(models.create_digits_model, clients, rounds=3, aggregator=watch,
                         initial_weights=start, seed=0, progress=False)
    assert len(seen) == 3 and history["norm"] == [1.0, 1.0, 1.0]
    for a, b in zip(seen[-1], history.final_weights):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
