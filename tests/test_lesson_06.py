"""Lesson 06 builds privacy tools in the open; these tests run the notebook's own cells (found
by their `# lesson06: NAME` marker) and check them against fedutils.privacy on small data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fedutils
from fedutils import data, fedavg, models, partition, privacy
from fedutils.techniques import privacy as privacy_impl

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "06_privacy.ipynb"


def run_cell(marker: str, **namespace) -> dict:
    """Execute the lesson's code cell tagged `# lesson06: <marker>` in a fresh namespace."""
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    found = [s for s in sources if f"# lesson06: {marker}\n" in s + "\n"]
    assert len(found) == 1, f"expected one cell marked {marker!r}, found {len(found)}"
    ns = {"np": np, "fedutils": fedutils, "data": data, "fedavg": fedavg, "models": models,
          "privacy": privacy, **namespace}
    exec(compile(found[0], f"06_privacy.ipynb[{marker}]", "exec"), ns)
    return ns


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
    attack = run_cell("attack")["label_counts_from_update"]
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
    ns = run_cell("masks")
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
    masks = run_cell("masks")
    recover_sum = run_cell("dropout", pair_mask=masks["pair_mask"],
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
    by_hand = run_cell("dp-fedavg")["dp_fedavg_by_hand"]
    updates = random_updates(np.random.default_rng(2), 6)
    mine = by_hand(updates, clip, z, m, np.random.default_rng(8))
    theirs = privacy.DPFedAvgAggregator(clip, z, expected_clients=m)(
        updates, rng=np.random.default_rng(8))
    for a, b in zip(mine, theirs):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# --- DP-SGD: tensorflow-privacy and the fedutils path ---------------------------------------

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

    singles = data.make_client_datasets(x_train, y_train, [np.array([i]) for i in range(batch)],
                                        batch_size=1, seed=0)
    plain = models.create_digits_model()
    updates = []
    for ds in singles:
        plain.set_weights(start)
        new = fedavg.client_update(plain, ds, learning_rate=lr).weights
        updates.append([n - s for n, s in zip(new, start)])
    aggregator = privacy.DPFedAvgAggregator(lr * clip, 0.0, expected_clients=batch)
    result = aggregator.aggregate(updates, None, list(range(batch)), np.random.default_rng(0))
    mean = result.delta
    assert result.measurements["clipped_fraction"] > 0   # the clip is exercised
    for a, s, d in zip(tf_privacy_step, start, mean):
        np.testing.assert_allclose(a, s + d, rtol=0, atol=2e-6)


def test_the_keras_3_fallback_trains_with_fedutils(monkeypatch, digits):
    x_train, x_test, y_train, y_test = digits
    monkeypatch.setattr(privacy_impl, "keras_version", lambda: "3.15.0")
    ns = run_cell("dp-sgd", tf=None, x_train=x_train[:512], y_train=y_train[:512],
                  x_test=x_test, y_test=y_test)
    assert ns["train_dp_sgd"] is ns["dp_sgd_fedutils"]
    ns["DP_EPOCHS"] = 3   # 12 steps of 128 one-example clients
    accuracy = ns["train_dp_sgd"](0.5)
    assert 0.3 < accuracy <= 1.0, accuracy
