"""Lesson 11 simulates unreliable clients and builds a round deadline in the open as a fedutils
aggregator; these tests run the lesson's own cells (found by a marker they contain) on small
data and hold them to fedutils.fedavg."""
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from fedutils import fedavg

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "11_challenges.ipynb"


lesson_cell = partial(lesson_code.cell_source, NOTEBOOK)
run_cells = partial(lesson_code.run_cells, NOTEBOOK)


def max_difference(a, b) -> float:
    return max(float(np.max(np.abs(p - q))) for p, q in zip(a, b))


@pytest.fixture(scope="module")
def small():
    """Six small digits clients, their sizes, device speeds and the lesson's deadline class."""
    from fedutils import data, models, partition

    x, y = data.load_digits()
    parts = partition.dirichlet_partition(y[:300], 6, alpha=0.5, seed=1)
    datasets = data.make_client_datasets(x[:300], y[:300], parts, batch_size=16, seed=0)
    sizes = np.array([len(p) for p in parts])
    speed = np.random.default_rng(3).lognormal(np.log(20), 0.6, 6)
    ns = run_cells("class DeadlineAggregator", NUM_CLIENTS=6, LOCAL_EPOCHS=2, sizes=sizes)
    ns["speed"] = speed  # the cell draws speeds for 50 clients; use six
    return {"ns": ns, "datasets": datasets, "sizes": sizes, "speed": speed,
            "weights": models.create_digits_model().get_weights()}


def random_round(rng, num_clients, like):
    updates = [[rng.normal(size=w.shape).astype(np.float32) for w in like]
               for _ in range(num_clients)]
    return updates, rng.integers(5, 60, size=num_clients).astype(np.int64)


def test_slide_availability_matches_the_formula():
    ns = run_cells("def simulate_client_availability(")
    observed = ns["empty"] / ns["SIMULATED_ROUNDS"]
    assert abs(observed - 0.09) < 0.004  # 4 standard errors at 100,000 rounds
    # fedutils' sampler gives the same chance of an empty round.
    empty = sum(len(fedavg.sample_clients(2, None, 0.7, np.random.default_rng([9, r]))) == 0
                for r in range(20000))
    assert abs(empty / 20000 - 0.09) < 0.009


def test_slide_average_of_nothing_is_silent_and_fedutils_is_not():
    ns = run_cells("def slide_server_aggregate(")
    assert ns["aggregated"] == []
    with pytest.raises(ValueError, match="empty"):
        fedavg.server_aggregate([])


def test_deadline_without_limit_is_the_weighted_mean(small):
    aggregator = small["ns"]["DeadlineAggregator"](np.inf)
    rng = np.random.default_rng(0)
    updates, counts = random_round(rng, 4, small["weights"])
    ours = aggregator(updates, counts, [0, 2, 3, 5], np.random.default_rng(1))
    assert max_difference(ours, fedavg.server_aggregate(updates, counts)) == 0.0
    assert aggregator.log[0][2].all()


def test_deadline_keeps_exactly_the_clients_that_finish_in_time(small):
    deadline = 2.5
    aggregator = small["ns"]["DeadlineAggregator"](deadline)
    rng = np.random.default_rng(4)
    ids = np.array([0, 1, 2, 3, 4, 5])
    updates, counts = random_round(rng, 6, small["weights"])
    ours = aggregator(updates, counts, list(ids), np.random.default_rng(7))
    # The same compute times, worked out independently from the lesson's formula.
    seconds = (small["sizes"][ids] * 2 / small["speed"][ids]
               * np.random.default_rng(7).lognormal(0.0, 0.3, 6))
    on_time = seconds <= deadline
    assert 0 < on_time.sum() < 6, "the case must keep some clients and drop others"
    np.testing.assert_array_equal(aggregator.log[0][2], on_time)
    expected = fedavg.server_aggregate([u for u, ok in zip(updates, on_time) if ok],
                                       counts[on_time])
    assert max_difference(ours, expected) < 1e-6


def test_deadline_round_equals_fedavg_on_the_on_time_clients(small):
    from fedutils import models

    aggregator = small["ns"]["DeadlineAggregator"](2.5)
    with_deadline = fedavg.run_fedavg(models.create_digits_model, small["datasets"], rounds=1,
                                      local_epochs=2, initial_weights=small["weights"],
                                      aggregator=aggregator, progress=False, seed=0)
    ids, _, on_time = aggregator.log[0]
    kept = [small["datasets"][i] for i in ids[on_time]]
    assert 0 < len(kept) < len(ids)
    selected_only = fedavg.run_fedavg(models.create_digits_model, kept, rounds=1,
                                      local_epochs=2, initial_weights=small["weights"],
                                      progress=False, seed=0)
    assert max_difference(with_deadline.final_weights, selected_only.final_weights) < 1e-5


def test_nobody_on_time_leaves_the_model_unchanged(small):
    from fedutils import models

    aggregator = small["ns"]["DeadlineAggregator"](0.0)
    history = fedavg.run_fedavg(models.create_digits_model, small["datasets"], rounds=2,
                                initial_weights=small["weights"], aggregator=aggregator,
                                progress=False, seed=0)
    assert max_difference(history.final_weights, small["weights"]) == 0.0
    assert all(not ok.any() for _, _, ok in aggregator.log)


def test_exercise_1_solution_passes_its_check_and_a_wrong_one_fails():
    ns = run_cells("def smallest_federation(")
    check = lesson_cell("0.3 ** n < 1e-6")
    exec(check, dict(ns))
    with pytest.raises(AssertionError):
        exec(check, dict(ns, smallest_federation=lambda p, target: 10))
