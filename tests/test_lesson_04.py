"""Lesson 04 writes the client update from scratch; these tests run the lesson's own cells
(found by the function they define) on small data and hold them to fedutils.fedavg."""
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "04_client_side.ipynb"


lesson_cell = partial(lesson_code.cell_source, NOTEBOOK)
run_cells = partial(lesson_code.run_cells, NOTEBOOK)


@pytest.fixture(scope="module")
def small(digits_split):
    """A few small, uneven digits clients, the global model's weights and a fresh model."""
    import fedutils
    from fedutils import data, models, partition

    x_train, _, y_train, _ = digits_split
    parts = partition.dirichlet_partition(y_train[:400], 4, alpha=0.5, seed=3)
    datasets = data.make_client_datasets(x_train[:400], y_train[:400], parts, batch_size=16,
                                         seed=1)
    fedutils.set_seed(1)
    model = models.create_digits_model()
    return {"datasets": datasets, "model": model, "weights": model.get_weights()}


def max_difference(a, b) -> float:
    return max(float(np.max(np.abs(p - q))) for p, q in zip(a, b))


def test_slide_optimizer_per_batch_loses_momentum(small):
    ns = run_cells("def slide_client_update(", model=small["model"],
                   global_weights=small["weights"], iid_datasets=small["datasets"], LR=0.1)
    # The lesson's claims: without state the two loops agree; a fresh momentum optimizer per
    # batch is plain SGD; momentum that persists across batches gives other weights.
    assert ns["max_difference"](ns["run"](ns["slide_client_update"], 0.0), ns["plain"]) == 0.0
    assert ns["max_difference"](ns["slide_momentum"], ns["plain"]) < 1e-7
    assert ns["max_difference"](ns["slide_momentum"], ns["true_momentum"]) > 1e-3


def test_my_client_update_agrees_with_fedutils(small):
    from fedutils import fedavg

    ns = run_cells("def slide_client_update(", "def my_client_update(", model=small["model"],
                   global_weights=small["weights"], iid_datasets=small["datasets"], LR=0.1)
    model = small["model"]
    for ds in small["datasets"][:2]:
        model.set_weights(small["weights"])
        weights, count, loss = ns["my_client_update"](model, ds, epochs=3, learning_rate=0.05)
        model.set_weights(small["weights"])
        reference = fedavg.client_update(model, ds, epochs=3, learning_rate=0.05)
        assert count == reference.num_examples == sum(int(b["y"].shape[0]) for b in ds)
        assert max_difference(weights, reference.weights) < 1e-6
        assert abs(loss - reference.metrics["loss"]) < 1e-6


def test_proximal_solution_agrees_with_fedutils(small):
    from fedutils import fedavg

    ns = run_cells("def slide_client_update(", "def my_prox_client_update(", model=small["model"],
                   global_weights=small["weights"], shard_datasets=small["datasets"],
                   iid_datasets=small["datasets"], LR=0.1)
    model, start = small["model"], small["weights"]
    anchor = [w * 0.9 for w in start]  # a global model other than the starting point
    model.set_weights(start)
    weights, count, loss = ns["my_prox_client_update"](model, small["datasets"][1], epochs=2,
                                                       learning_rate=0.1, mu=0.3,
                                                       global_weights=anchor)
    model.set_weights(start)
    reference = fedavg.client_update(model, small["datasets"][1], epochs=2, learning_rate=0.1,
                                     proximal_mu=0.3, global_weights=anchor)
    assert count == reference.num_examples
    assert abs(loss - reference.metrics["loss"]) < 1e-6
    assert max_difference(weights, reference.weights) < 1e-6


def test_drift_stats_measure_what_the_lesson_says(small):
    ns = run_cells("def drift_stats(", model=small["model"], global_weights=small["weights"],
                   iid_datasets=small["datasets"][:2], shard_datasets=small["datasets"][2:],
                   LR=0.1, EPOCHS=1, NUM_CLIENTS=2)
    drift_stats = ns["drift_stats"]
    counts = np.array([1.0, 3.0])
    same = drift_stats(np.array([[3.0, 4.0], [3.0, 4.0]]), counts)
    assert same["from global"] == pytest.approx(5.0)
    assert same["between clients"] == pytest.approx(0.0)
    assert same["agreement"] == pytest.approx(1.0)
    opposite = drift_stats(np.array([[3.0, 4.0], [-1.0, -4.0 / 3.0]]), counts)
    assert opposite["norm of average"] == pytest.approx(0.0, abs=1e-12)  # 1*d + 3*(-d/3) = 0
    assert opposite["between clients"] == pytest.approx(np.hypot(4.0, 16.0 / 3.0))
    # the lesson's own run: one entry per epoch for each split, updates measured from the start
    deltas = ns["drift"]["IID"]["deltas"]
    assert deltas.shape == (1, 2, sum(w.size for w in small["weights"]))
    assert np.all(np.linalg.norm(deltas, axis=-1) > 0)
