"""Lesson 06 builds privacy tools in the open; these tests run the notebook's own cells (found
by their name tags) and check them against fedutils.privacy on small data: the
label attack, pairwise masks, DP-FedAvg and DP-SGD by hand (against fedutils, tensorflow-privacy
and TFF's DP aggregator), the replace-one epsilon of local DP (against the exact Gaussian
mechanism), and the exercises' checks (they accept the solution and reject a wrong answer)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

import fedutils
from fedutils import data, fedavg, models, partition, privacy

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "06_privacy.ipynb"
run_cells = partial(lesson_code.run_cells, NOTEBOOK)
cell_source = partial(lesson_code.cell_source, NOTEBOOK)


def random_updates(rng, num_clients, shapes=((6, 5), (5,), (5, 3), (3,))):
    return [[rng.normal(0, 0.3, size=s).astype(np.float32) for s in shapes]
            for _ in range(num_clients)]


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_digits()
    return data.train_test_split(x, y, test_fraction=0.25, seed=0)


# --- the label attack -----------------------------------------------------------------------

def test_attack_recovers_exact_label_counts_from_real_one_step_updates(digits):
    x_train, x_test, y_train, _ = digits
    attack = run_cells("label-attack")["label_counts_from_update"]
    parts = partition.iid_partition(y_train, 150, seed=0)[:8]
    clients = data.make_client_datasets(x_train, y_train, parts, batch_size=64, seed=0)
    fedutils.set_seed(0)
    model = models.create_digits_model()
    start = model.get_weights()
    public_hits = 0
    for idx, ds in zip(parts, clients):
        model.set_weights(start)
        bias_update = fedavg.client_update(model, ds, learning_rate=0.1).weights[3] - start[3]
        model.set_weights(start)
        exact_mean = model(x_train[idx]).numpy().mean(axis=0)   # the batch's own mean p
        truth = np.bincount(y_train[idx], minlength=10)
        # with the batch's true mean prediction the formula is an identity
        np.testing.assert_array_equal(attack(bias_update, len(idx), exact_mean, 0.1), truth)
        public_mean = model(x_test).numpy().mean(axis=0)       # what the server can estimate
        public_hits += np.array_equal(attack(bias_update, len(idx), public_mean, 0.1), truth)
    assert public_hits >= 7, public_hits


# --- secure aggregation ---------------------------------------------------------------------

@pytest.mark.parametrize("num_clients,seed", [(2, 0), (3, 42), (6, 9)])
def test_masking_by_hand_equals_mask_updates(num_clients, seed):
    ns = run_cells("pairwise-masks")
    rng = np.random.default_rng(seed)
    vectors = [rng.normal(0, 5, size=17) for _ in range(num_clients)]
    by_hand = ns["mask_by_hand"](vectors, seed)
    packaged = privacy.mask_updates([[v] for v in vectors], seed)
    for mine, theirs in zip(by_hand, packaged):
        assert mine.dtype == np.uint32
        np.testing.assert_array_equal(mine, theirs[0])
    total = ns["decode"](np.sum(by_hand, axis=0, dtype=np.uint32))
    assert np.max(np.abs(total - np.sum(vectors, axis=0))) <= num_clients * 0.5 / 2 ** 16


@pytest.mark.parametrize("dropped", [[2], [0], [1, 3], [0, 4]])
def test_dropout_recovery_by_hand_equals_secure_sum(dropped):
    masks = run_cells("pairwise-masks")
    recover_sum = run_cells("dropout-recovery", pair_mask=masks["pair_mask"],
                            decode=masks["decode"])["recover_sum"]
    rng = np.random.default_rng(1)
    vectors = [rng.normal(0, 2, size=11) for _ in range(5)]
    sent = masks["mask_by_hand"](vectors, 5)
    survivors = [i for i in range(5) if i not in dropped]
    mine = recover_sum(sent, survivors, dropped, seed=5)
    theirs = privacy.secure_sum([[v] for v in vectors], seed=5, dropped=dropped)[0]
    np.testing.assert_array_equal(mine, theirs)
    plain = np.sum([vectors[i] for i in survivors], axis=0)
    assert np.max(np.abs(mine - plain)) <= len(survivors) * 0.5 / 2 ** 16
    naive = masks["decode"](np.sum([sent[i] for i in survivors], axis=0, dtype=np.uint32))
    assert np.max(np.abs(naive - plain)) > 1.0   # without recovery the masks do not cancel


# --- DP-FedAvg ------------------------------------------------------------------------------

@pytest.mark.parametrize("clip,z,m", [(0.5, 1.0, 6), (0.05, 0.3, 10.0), (100.0, 0.0, 6)])
def test_dp_fedavg_by_hand_equals_the_aggregator(clip, z, m):
    by_hand = run_cells("dp-fedavg-by-hand")["dp_fedavg_by_hand"]
    updates = random_updates(np.random.default_rng(2), 6)
    mine = by_hand(updates, clip, z, m, np.random.default_rng(8))
    theirs = privacy.DPFedAvgAggregator(clip, z, expected_clients=m)(
        updates, rng=np.random.default_rng(8))
    for a, b in zip(mine, theirs):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# --- local DP: the replace-one epsilon ---------------------------------------------------------

def gaussian_epsilon(sensitivity_over_sigma: float, delta: float) -> float:
    """Exact epsilon of one Gaussian mechanism (Balle and Wang 2018): the smallest eps with
    Phi(s/2 - eps/s) - e^eps Phi(-s/2 - eps/s) <= delta, where s = sensitivity / sigma."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    s = sensitivity_over_sigma

    def excess(eps):
        return norm.cdf(s / 2 - eps / s) - np.exp(eps) * norm.cdf(-s / 2 - eps / s) - delta

    return brentq(excess, 0.0, 100.0)


def test_local_dp_epsilon_is_that_of_half_the_noise_multiplier():
    """A client noising its own clipped update: two inputs differ by up to 2C, so noise z*C has
    sensitivity/sigma = 2/z, the add/remove sensitivity/sigma of noise multiplier z/2."""
    z, delta = 1.0, 1e-5
    exact_replace_one = gaussian_epsilon(2 / z, delta)
    rdp_half = privacy.compute_epsilon(z / 2, 1.0, 1, delta)
    assert abs(rdp_half - 10.73) < 0.01                              # the number
    assert exact_replace_one <= rdp_half < 1.1 * exact_replace_one   # RDP: a tight upper bound
    assert privacy.compute_epsilon(z, 1.0, 1, delta) < 0.5 * exact_replace_one  # z understates


def test_the_lesson_prints_the_replace_one_epsilon():
    """The saved output of the local-DP table: the z = 1 row's epsilon is that of z/2."""
    table = lesson_code.tagged_cell(NOTEBOOK, "local-dp-epsilon")
    text = "".join(o.get("text", "") for o in table.outputs)
    row = next(line for line in text.splitlines() if line.split()[:1] == ["1.0"])
    delta = next(float(line.split()[2].rstrip(";"))
                 for line in cell_source("delta-policy").splitlines()
                 if line.startswith("DELTA = "))
    assert float(row.split()[-1]) == pytest.approx(
        privacy.compute_epsilon(0.5, 1.0, 1, delta), rel=2e-2)


# --- DP-SGD by hand, tensorflow-privacy and the fedutils path --------------------------------

@pytest.fixture(scope="module")
def dp_sgd():
    ns = run_cells("dp-sgd-by-hand")
    fedutils.set_seed(0)
    ns["model"] = models.create_digits_model()
    ns["start"] = ns["model"].get_weights()
    return ns


def by_hand_step(dp_sgd, x, y, clip, lr, noise=None):
    import tensorflow as tf

    model = dp_sgd["model"]
    model.set_weights(dp_sgd["start"])
    noise = noise or [np.zeros(v.shape, np.float32) for v in model.trainable_variables]
    norms = dp_sgd["dp_sgd_step"](model, x, y, tf.constant(clip, tf.float32), noise,
                                  tf.constant(lr, tf.float32))
    return model.get_weights(), norms.numpy()


def one_example_updates(x, y, start, lr):
    """Each example's update after one SGD step on it alone: -lr * its gradient."""
    singles = data.make_client_datasets(x, y, [np.array([i]) for i in range(len(y))],
                                        batch_size=1, seed=0)
    plain = models.create_digits_model()
    updates = []
    for ds in singles:
        plain.set_weights(start)
        new = fedavg.client_update(plain, ds, learning_rate=lr).weights
        updates.append([n - s for n, s in zip(new, start)])
    return updates


def test_dp_sgd_by_hand_clips_each_example(dp_sgd, digits):
    """The hand-written step equals clip-then-average of one-example updates (fedutils'
    DP-FedAvg over one-example clients), and returns each example's gradient norm."""
    x_train, _, y_train, _ = digits
    lr, clip, batch = 0.5, 4.0, 12
    x, y = x_train[:batch], y_train[:batch]
    mine, norms = by_hand_step(dp_sgd, x, y, clip, lr)
    updates = one_example_updates(x, y, dp_sgd["start"], lr)
    np.testing.assert_allclose(norms, [privacy.update_norm(u) / lr for u in updates], rtol=1e-4)
    assert 0 < np.sum(norms > clip) < batch                   # some clipped, some not
    theirs = privacy.DPFedAvgAggregator(lr * clip, 0.0, expected_clients=batch)(
        updates, rng=np.random.default_rng(0))
    for a, s, d in zip(mine, dp_sgd["start"], theirs):
        np.testing.assert_allclose(a, s + d, rtol=0, atol=2e-6)
    unclipped, _ = by_hand_step(dp_sgd, x, y, 1e9, lr)       # no clipping: plain SGD's step
    plain_mean = fedavg.server_aggregate(updates)
    for a, s, d in zip(unclipped, dp_sgd["start"], plain_mean):
        np.testing.assert_allclose(a, s + d, rtol=0, atol=2e-6)


def test_dp_sgd_by_hand_adds_the_noise_it_is_given(dp_sgd, digits):
    x_train, _, y_train, _ = digits
    lr, clip, batch = 0.5, 1.0, 16
    x, y = x_train[:batch], y_train[:batch]
    clean, _ = by_hand_step(dp_sgd, x, y, clip, lr)
    rng = np.random.default_rng(4)
    noise = [rng.normal(0, 1.0, w.shape).astype(np.float32) for w in dp_sgd["start"]]
    noisy, _ = by_hand_step(dp_sgd, x, y, clip, lr, noise)
    for a, c, n in zip(noisy, clean, noise):
        np.testing.assert_allclose(a, c - lr * n / batch, rtol=0, atol=2e-6)


def test_dp_sgd_by_hand_equals_tensorflow_privacy(dp_sgd, digits):
    if not privacy.keras_version().startswith("2"):
        pytest.skip("tensorflow-privacy needs Keras 2")
    pytest.importorskip("tensorflow_privacy")
    import tensorflow as tf

    x_train, _, y_train, _ = digits
    lr, clip, batch = 0.5, 0.8, 8
    model = models.create_digits_model()
    model.set_weights(dp_sgd["start"])
    model.compile(optimizer=privacy.make_dp_optimizer(clip, 0.0, learning_rate=lr),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(reduction="none"))
    model.fit(x_train[:batch], y_train[:batch], batch_size=batch, epochs=1, shuffle=False,
              verbose=0)
    mine, norms = by_hand_step(dp_sgd, x_train[:batch], y_train[:batch], clip, lr)
    assert np.any(norms > clip)
    for a, b in zip(model.get_weights(), mine):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


def test_train_dp_sgd_is_reproducible_and_learns(dp_sgd, digits):
    x_train, x_test, y_train, y_test = digits
    model, runs = dp_sgd["model"], []
    for _ in range(2):
        model.set_weights(dp_sgd["start"])
        norms = dp_sgd["train_dp_sgd"](model, x_train[:256], y_train[:256], 2.0, 1.0, 0.5, 64,
                                       3, seed=5)
        runs.append((model.get_weights(), norms))
    assert len(runs[0][1]) == 3 * 256
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    accuracy = fedavg.evaluate_weights(model, runs[0][0], x_test, y_test)[1]
    assert accuracy > 0.3, accuracy


def test_dp_fedavg_over_one_example_clients_is_one_dp_sgd_step(digits):
    """The lesson's identity: clip each one-example update to lr*C, average = DP-SGD's step."""
    if not (privacy.keras_version().startswith("2")):
        pytest.skip("tensorflow-privacy needs Keras 2")
    pytest.importorskip("tensorflow_privacy")
    import tensorflow as tf

    x_train, _, y_train, _ = digits
    lr, clip, batch = 0.5, 0.4, 8
    fedutils.set_seed(0)
    model = models.create_digits_model()
    start = model.get_weights()
    model.compile(optimizer=privacy.make_dp_optimizer(clip, 0.0, learning_rate=lr),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(reduction="none"))
    model.fit(x_train[:batch], y_train[:batch], batch_size=batch, epochs=1, shuffle=False,
              verbose=0)
    tf_privacy_step = model.get_weights()
    updates = one_example_updates(x_train[:batch], y_train[:batch], start, lr)
    aggregator = privacy.DPFedAvgAggregator(lr * clip, 0.0, expected_clients=batch)
    result = aggregator.aggregate(updates, None, list(range(batch)), np.random.default_rng(0))
    assert result.measurements["clipped_fraction"] > 0   # the clip is exercised
    for a, s, d in zip(tf_privacy_step, start, result.delta):
        np.testing.assert_allclose(a, s + d, rtol=0, atol=2e-6)


# --- DP-FedAvg in TFF ---------------------------------------------------------------------------

def test_tff_gaussian_fixed_is_dp_fedavg_aggregator(digits):
    """TFF's DifferentiallyPrivateFactory.gaussian_fixed with build_unweighted_fed_avg takes the
    step of run_fedavg with DPFedAvgAggregator: same weights without noise, noise zC/m with."""
    from fedutils import tff_bridge

    if not tff_bridge.tff_available():
        pytest.skip("TFF is not installed here")
    tff = tff_bridge.import_tff()
    x_train, _, y_train, _ = digits
    parts = partition.iid_partition(y_train, 150, seed=0)[:6]
    clients = data.make_client_datasets(x_train, y_train, parts, batch_size=3, seed=0)
    fedutils.set_seed(0)
    start = models.create_digits_model().get_weights()
    clip, m = 0.3, 6

    def fedutils_round(z):
        return fedavg.run_fedavg(models.create_digits_model, clients, rounds=1, client_lr=0.1,
                                 aggregator=privacy.DPFedAvgAggregator(clip, z, m),
                                 initial_weights=start, seed=0, progress=False).final_weights

    def tff_round(z):
        process = tff.learning.algorithms.build_unweighted_fed_avg(
            tff_bridge.tff_model_fn(models.create_digits_model, clients[0].element_spec),
            client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
            server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0),
            model_aggregator=tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
                noise_multiplier=z, clients_per_round=m, clip=clip))
        keras_model = models.create_digits_model()
        state = tff_bridge.set_weights(process, process.initialize(), start, keras_model)
        return tff_bridge.get_weights(process, process.next(state, clients).state, keras_model)

    ours = fedutils_round(0.0)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(ours, start)) > 1e-3
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(tff_round(0.0), ours)) < 1e-5
    noise = np.concatenate([(a - b).ravel() for a, b in zip(tff_round(2.0), ours)])
    assert noise.std() == pytest.approx(2.0 * clip / m, rel=0.05)


# --- the exercises' checks ----------------------------------------------------------------------

def test_exercise_1_check_accepts_the_smallest_z_and_rejects_a_larger_one():
    source = cell_source("exercise-1-check")
    delta, clip = 1e-7, 0.35
    grid = np.arange(0.5, 5.01, 0.25)
    plans = {}
    for m in (50, 100):
        z = float(next(z for z in grid if privacy.compute_epsilon(z, m / 500, 100, delta) <= 4))
        plans[m] = (z, z * clip / m)
    names = {"np": np, "DELTA": delta, "CLIP": clip}
    exec(source, dict(names, plans=plans))
    too_noisy = {**plans, 50: (plans[50][0] + 0.5, (plans[50][0] + 0.5) * clip / 50)}
    with pytest.raises(AssertionError):
        exec(source, dict(names, plans=too_noisy))


def test_exercise_2_check_accepts_the_best_on_validation_and_rejects_another():
    source = cell_source("exercise-2-check")
    n, batch, delta = 1078, 128, 1e-7
    grid = np.arange(0.5, 8.01, 0.25)
    runs = {}
    for epochs, accuracies in ((3, [0.7, 0.75, 0.8]), (10, [0.82, 0.84, 0.85]),
                               (30, [0.6, 0.7, 0.7])):
        z = float(next(z for z in grid
                       if privacy.dp_sgd_epsilon(n, batch, epochs, z, delta) <= 2))
        runs[epochs] = (z, fedavg.Spread([0, 1, 2], np.array(accuracies)))
    names = {"np": np, "privacy": privacy, "DELTA": delta, "DP_BATCH": batch,
             "y_fit": np.zeros(n), "SEEDS": (0, 1, 2), "budget_runs": runs}
    exec(source, dict(names, best_epochs=10))
    with pytest.raises(AssertionError):
        exec(source, dict(names, best_epochs=30))
