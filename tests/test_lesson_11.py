"""Lesson 11 simulates unreliable clients: a round deadline and an availability sampler built in
the open as fedutils aggregators, and partial work from slow clients as a round loop of
`client_update` and `server_aggregate`. These tests run the lesson's own cells (found by their
name tags) on small data and hold them to fedutils.fedavg and to hand computations;
each exercise's check must accept the solution and reject a wrong answer."""
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedutils import data, fedavg, models, partition

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "11_challenges.ipynb"

run_cells = partial(lesson_code.run_cells, NOTEBOOK)
exec_cells = partial(lesson_code.exec_cells, NOTEBOOK)
cell = partial(lesson_code.cell_source, NOTEBOOK)


def max_difference(a, b) -> float:
    return max(float(np.max(np.abs(p - q))) for p, q in zip(a, b))


@pytest.fixture(scope="module")
def small():
    """Six small digits clients (seed 0 only), the lesson's device model, deadline aggregator
    and partial-work loop."""
    x, y = data.load_digits()
    parts = partition.dirichlet_partition(y[:300], 6, alpha=0.5, seed=1)
    clients = data.make_client_data(x[:300], y[:300], parts, batch_size=16, seed=0)
    fed = SimpleNamespace(clients=clients, y_train=y[:300], partitions=parts)
    return run_cells("deadline-aggregator", "partial-work", NUM_CLIENTS=6,
                     LOCAL_EPOCHS=2, LR=0.1, PER_ROUND=4, SEEDS=(0,), feds={0: fed},
                     x_test=x[1500:], y_test=y[1500:], ROUNDS=2)


def three_rounds(ns, seed=0, rounds=3, per_round=4, **settings):
    from fedutils import set_seed

    set_seed(seed)
    return fedavg.run_fedavg(models.create_digits_model, ns["feds"][seed].clients,
                             rounds=rounds, clients_per_round=per_round, local_epochs=2,
                             client_lr=0.1, progress=False, seed=seed, **settings).final_weights


def random_round(rng, num_clients, like):
    updates = [[rng.normal(size=w.shape).astype(np.float32) for w in like]
               for _ in range(num_clients)]
    return updates, rng.integers(5, 60, size=num_clients).astype(np.int64)


def test_slide_availability_matches_the_formula():
    ns = run_cells("slide-availability")
    observed = ns["empty"] / ns["SIMULATED_ROUNDS"]
    assert abs(observed - 0.09) < 0.004  # 4 standard errors at 100,000 rounds
    # fedutils' sampler gives the same chance of an empty round.
    empty = sum(len(fedavg.sample_clients(2, None, 0.7, np.random.default_rng([9, r]))) == 0
                for r in range(20000))
    assert abs(empty / 20000 - 0.09) < 0.009


def test_slide_average_of_nothing_is_silent_and_fedutils_is_not():
    ns = run_cells("slide-server-aggregate")
    assert ns["aggregated"] == []
    with pytest.raises(ValueError, match="empty"):
        fedavg.server_aggregate([])


def test_deadline_without_limit_is_the_weighted_mean(small):
    aggregator = small["DeadlineAggregator"](0, np.inf)
    rng = np.random.default_rng(0)
    updates, counts = random_round(rng, 4, models.create_digits_model().get_weights())
    ours = aggregator(updates, counts, [0, 2, 3, 5], np.random.default_rng(1))
    assert max_difference(ours, fedavg.server_aggregate(updates, counts)) == 0.0
    assert aggregator.log[0][2].all()


def test_deadline_keeps_exactly_the_clients_that_finish_in_time(small):
    deadline = 2.5
    aggregator = small["DeadlineAggregator"](0, deadline)
    rng = np.random.default_rng(4)
    ids = np.arange(6)
    updates, counts = random_round(rng, 6, models.create_digits_model().get_weights())
    ours = aggregator(updates, counts, list(ids), np.random.default_rng(7))
    # The same compute times, worked out independently from the lesson's formula.
    seconds = (small["sizes"][0][ids] * 2 / small["speed"][0][ids]
               * np.random.default_rng(7).lognormal(0.0, 0.3, 6))
    on_time = seconds <= deadline
    assert 0 < on_time.sum() < 6, "the case must keep some clients and drop others"
    np.testing.assert_array_equal(aggregator.log[0][2], on_time)
    expected = fedavg.server_aggregate([u for u, ok in zip(updates, on_time) if ok],
                                       counts[on_time])
    assert max_difference(ours, expected) < 1e-6


def test_nobody_on_time_leaves_the_model_unchanged(small):
    start = models.create_digits_model().get_weights()
    aggregator = small["DeadlineAggregator"](0, 0.0)
    history = fedavg.run_fedavg(models.create_digits_model, small["feds"][0].clients, rounds=2,
                                initial_weights=start, aggregator=aggregator, progress=False)
    assert max_difference(history.final_weights, start) == 0.0
    assert all(not ok.any() for _, _, ok in aggregator.log)


def test_partial_update_does_whole_batches_of_the_local_epochs(small):
    client = max(small["feds"][0].clients, key=lambda c: len(c.batch_sizes))
    batches = len(client.batch_sizes)
    assert batches >= 3
    model = models.create_digits_model()
    start = model.get_weights()
    full, steps = small["partial_update"](start, client, 1.0)
    assert steps == 2 * batches
    model.set_weights(start)
    reference = fedavg.client_update(model, client, epochs=2, learning_rate=0.1).weights
    assert max_difference(full, reference) < 1e-6
    # One epoch and two batches of the second: 2 + batches batches of 2 * batches.
    share = (batches + 2 + 0.5) / (2 * batches)
    cut, steps = small["partial_update"](start, client, share)
    assert steps == batches + 2
    model.set_weights(start)
    fedavg.client_update(model, client, epochs=1, learning_rate=0.1)
    head = data.ClientData(client.x[:2 * client.batch_size], client.y[:2 * client.batch_size],
                           client.batch_size)
    reference = fedavg.client_update(model, head, epochs=1, learning_rate=0.1).weights
    assert max_difference(cut, reference) < 1e-6
    assert small["partial_update"](start, client, 0.4 / (2 * batches)) is None, "no whole batch"


def test_partial_work_without_deadline_is_fedavg(small):
    loop = small["partial_work_run"](0, np.inf, rounds=3)
    reference = three_rounds(small, per_round=small["PER_ROUND"])
    assert max_difference(loop.final_weights, reference) < 1e-5
    assert all(share.min() == 1.0 for _, _, share in loop.log)


def test_partial_work_round_aggregates_what_each_client_finished(small):
    deadline = 2.0
    loop = small["partial_work_run"](0, deadline, rounds=1)
    chosen, seconds, share = loop.log[0]
    # The same draws as run_fedavg's round 1: sample, drop-outs, compute times.
    rng = np.random.default_rng([0, 1])
    assert np.array_equal(chosen, fedavg.sample_clients(6, small["PER_ROUND"], 1.0, rng))
    rng.random(len(chosen))
    np.testing.assert_allclose(seconds, small["seconds_for"](0, chosen, rng))
    np.testing.assert_allclose(share, np.minimum(1, deadline / seconds))
    assert 0 < share.min() < 1, "the case must cut someone short"
    from fedutils import set_seed

    set_seed(0)
    start = models.create_digits_model().get_weights()
    sent = [(small["partial_update"](start, small["feds"][0].clients[i], s), small["sizes"][0][i])
            for i, s in zip(chosen, share)]
    sent = [(result[0], result[1], n) for result, n in sent if result is not None]
    expected = fedavg.server_aggregate([w for w, _, _ in sent], [n for _, _, n in sent])
    assert max_difference(loop.final_weights, expected) < 1e-6
    # FedNova's round: sum_i p_i * (w_i - w) / tau_i, times sum_i p_i tau_i, by hand.
    normalised = small["partial_work_run"](0, deadline, rounds=1, normalised=True)
    p = np.array([n for _, _, n in sent], dtype=np.float64)
    p /= p.sum()
    taus = np.array([k for _, k, _ in sent], dtype=np.float64)
    by_hand = [w0 + np.dot(p, taus) * sum(pi * (w[t] - w0) / k
                                          for pi, (w, k, _) in zip(p, sent))
               for t, w0 in enumerate(start)]
    assert max_difference(normalised.final_weights, by_hand) < 1e-5
    assert max_difference(normalised.final_weights, expected) > 1e-4, "a different average"


def test_normalised_average_is_fedavg_when_every_client_takes_the_same_steps(small):
    rng = np.random.default_rng(8)
    start = models.create_digits_model().get_weights()
    new = [[w + rng.normal(size=w.shape).astype(np.float32) for w in start] for _ in range(3)]
    counts = [10, 30, 60]
    got = small["normalised_average"](start, new, [4, 4, 4], counts)
    assert max_difference(got, fedavg.server_aggregate(new, counts)) < 1e-5


def test_online_sampler_keeps_online_clients_and_weights_by_inverse_probability():
    ns = run_cells("availability-groups", PER_ROUND=10, feds={}, train=None)
    rng = np.random.default_rng(3)
    updates, counts = random_round(rng, 8, models.create_digits_model().get_weights())
    everyone = ns["online_sampler"](np.ones(8), per_round=8)
    ours = everyone(updates, counts, list(range(8)), np.random.default_rng(0))
    assert max_difference(ours, fedavg.server_aggregate(updates, counts)) < 1e-6
    probability = np.array([0.5, 0.1] * 4)
    weighted = ns["online_sampler"](probability, per_round=3, weighted=True)
    ours = weighted(updates, counts, list(range(8)), np.random.default_rng(5))
    kept = weighted.log[0]
    draw = np.random.default_rng(5)
    online = np.flatnonzero(draw.random(8) < probability)
    assert np.array_equal(kept, draw.choice(online, size=min(3, len(online)), replace=False))
    expected = fedavg.server_aggregate([updates[i] for i in kept], counts[kept] / probability[kept])
    assert max_difference(ours, expected) < 1e-6
    nobody = ns["online_sampler"](np.zeros(8))
    assert max_difference(nobody(updates, counts, list(range(8)), rng),
                          [np.zeros_like(u) for u in updates[0]]) == 0.0


def test_two_groups_hold_mostly_their_own_digits():
    fed = data.federated_digits(50, "dirichlet", alpha=0.5, seed=0)
    ns = run_cells("availability-groups", PER_ROUND=10, feds={0: fed}, train=None)
    clients = ns["two_groups"](0)
    assert len(clients) == 50
    assert sum(len(c) for c in clients) == len(fed.y_train), "every training example, once"
    low = [np.isin(c.y, np.arange(5)).mean() for c in clients]
    group_a = np.concatenate([c.y for c in clients[:25]])
    assert abs(np.isin(group_a, np.arange(5)).mean() - 0.9) < 0.03
    assert min(low[:25]) > 0.7 and max(low[25:]) < 0.3


def history_with(accuracy, clients_per_round, model_bytes=1000):
    rounds = [{"round": r + 1, "accuracy": a, "download_bytes": clients_per_round * model_bytes,
               "upload_bytes": clients_per_round * model_bytes} for r, a in enumerate(accuracy)]
    return fedavg.History(rounds=rounds)


def test_exercise_1_check_accepts_the_solution_and_rejects_wrong_answers():
    ns = run_cells("federations-and-training")
    model_bytes = 19_240
    ns["MODEL_BYTES"] = model_bytes
    ns["participation"] = {k: [history_with([0.8 + 0.002 * k] * 30, k, model_bytes)] * 3
                           for k in (5, 10, 25, 50)}
    exec_cells(ns, "exercise-1-solution")
    assert ns["per_round_choice"] == 10
    check = cell("exercise-1-check")
    exec(check, dict(ns))
    with pytest.raises(AssertionError):
        exec(check, dict(ns, per_round_choice=25))
    with pytest.raises(AssertionError):  # uploads only
        exec(check, dict(ns, traffic={k: v / 2 for k, v in ns["traffic"].items()}))


def test_exercise_2_check_accepts_the_solution_and_rejects_wrong_answers():
    feds = {0: data.federated_digits(50, "dirichlet", alpha=0.5, seed=0)}
    ns = run_cells("deadline-aggregator", "on-time-shares", NUM_CLIENTS=50,
                   LOCAL_EPOCHS=2, PER_ROUND=10, SEEDS=(0,), feds=feds)
    exec_cells(ns, "exercise-2-solution")
    check = cell("exercise-2-check")
    exec(check, dict(ns))
    longer = [d for d in (2, 3, 5, 8, 12) if d > ns["deadline_choice"]]
    if longer:
        with pytest.raises(AssertionError):
            exec(check, dict(ns, deadline_choice=longer[0]))
    shorter = [d for d in (2, 3, 5, 8, 12) if d < ns["deadline_choice"]]
    if shorter:
        with pytest.raises(AssertionError):
            exec(check, dict(ns, deadline_choice=shorter[-1]))
