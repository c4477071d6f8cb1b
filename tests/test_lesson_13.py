"""Lesson 13 (future directions) federates a head on features computed once by a frozen base, in
place of `fedutils.models.create_transfer_model`, and personalizes it client by client. These
tests run the notebook's own cells (found by the code they contain) and check that the shortcut
trains exactly what the transfer model would, and that the per-client numbers agree with
fedutils' federated evaluation."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import matplotlib
import numpy as np
import pytest

import lesson_code

matplotlib.use("Agg")
NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "13_future_directions.ipynb"


cell = partial(lesson_code.cell_source, NOTEBOOK, unique=True)


@pytest.fixture(scope="module")
def lesson() -> dict:
    """The lesson's namespace after its data, pretraining, transfer, FedAvg and
    personalization cells (the MobileNetV2 cells are left out)."""
    namespace: dict = {}
    for marker in ["import fedutils  # first", "NUM_CLIENTS = 20", "pretrain.fit(",
                   "transfer_model = create_transfer_model(", "features = base.predict(",
                   "ROUNDS, CLIENTS_PER_ROUND, LR, LOCAL_EPOCHS =", "PERSONAL_EPOCHS, PERSONAL_LR ="]:
        exec(cell(marker), namespace)
    import matplotlib.pyplot as plt

    plt.close("all")
    return namespace


def test_clients_hold_only_private_digits_split_into_train_and_held_out(lesson):
    train, test = lesson["train_parts"], lesson["test_parts"]
    everything = np.concatenate(train + test)
    assert np.array_equal(np.sort(everything), np.arange(len(lesson["y_private"])))
    for tr, te in zip(train, test):
        assert len(np.intersect1d(tr, te)) == 0 and len(te) == int(round(0.3 * (len(tr) + len(te))))
    assert set(np.unique(lesson["y"][~lesson["public"]])) == {5, 6, 7, 8, 9}


def test_head_on_features_trains_exactly_what_the_transfer_model_trains(lesson):
    from fedutils.data import make_client_datasets
    from fedutils.fedavg import client_update, server_aggregate
    from fedutils.models import create_transfer_model

    base, features = lesson["base"], lesson["features"]
    x, y, parts = lesson["x_private"], lesson["y_private"], lesson["train_parts"][:3]
    transfer_model = create_transfer_model(base, num_classes=5)
    head = lesson["head_fn"]()
    start = head.get_weights()
    base_before = [w.copy() for w in base.get_weights()]
    pixels = make_client_datasets(x, y, parts, batch_size=10, seed=0)
    feats = make_client_datasets(features, y, parts, batch_size=10, seed=0)
    via_transfer, via_head, counts = [], [], []
    for ds_pixels, ds_features in zip(pixels, feats):
        transfer_model.layers[-1].set_weights(start)
        result = client_update(transfer_model, ds_pixels, epochs=2, learning_rate=0.3)
        via_transfer.append(transfer_model.layers[-1].get_weights())
        counts.append(result.num_examples)
        head.set_weights(start)
        via_head.append(client_update(head, ds_features, epochs=2, learning_rate=0.3).weights)
    for a, b in zip(server_aggregate(via_transfer, counts), server_aggregate(via_head, counts)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for before, after in zip(base_before, base.get_weights()):
        np.testing.assert_array_equal(before, after)  # the frozen base never moved


def test_only_the_head_is_uploaded(lesson):
    transfer, scratch = lesson["transfer"], lesson["scratch"]
    head_bytes = 4 * (64 * 5 + 5)
    full_bytes = 4 * (64 * 64 + 64 + 64 * 5 + 5)
    assert all(r["upload_bytes"] == r["num_clients"] * head_bytes for r in transfer.rounds)
    assert all(r["upload_bytes"] == r["num_clients"] * full_bytes for r in scratch.rounds)
    assert len(transfer) == len(scratch) == lesson["ROUNDS"]


def test_personalization_numbers_agree_with_federated_evaluation(lesson):
    from fedutils.data import make_client_datasets
    from fedutils.evaluation import federated_evaluate
    from fedutils.fedavg import client_update

    features, y, test_parts = lesson["features"], lesson["y_private"], lesson["test_parts"]
    held_out = make_client_datasets(features, y, test_parts, batch_size=64, shuffle=False)
    model = lesson["head_fn"]()
    evaluation = federated_evaluate(model, held_out, lesson["transfer"].final_weights)
    np.testing.assert_allclose(lesson["before"], evaluation.accuracies, atol=1e-9)
    sizes = np.array([len(t) for t in test_parts])
    assert np.average(lesson["before"], weights=sizes) == pytest.approx(
        evaluation.weighted["accuracy"])
    assert evaluation.weighted["accuracy"] == pytest.approx(lesson["transfer"]["accuracy"][-1])
    model.set_weights(lesson["transfer"].final_weights)
    tuned = client_update(model, lesson["head_datasets"][0], epochs=lesson["PERSONAL_EPOCHS"],
                          learning_rate=lesson["PERSONAL_LR"])
    personal = federated_evaluate(model, held_out[:1], tuned.weights)
    assert lesson["after"][0] == pytest.approx(personal.accuracies[0])
