"""Lesson 08 builds a Dirichlet split and FedProx's proximal step in the open and fixes the
slide's generator; these tests run the lesson's own cells (found by their name tags) and hold
them to fedutils (partition.dirichlet_partition, fedavg.client_update) and to hand
computation."""
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import fedutils
from fedutils import data, models, partition
from fedutils.fedavg import client_update

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "08_non_iid_data.ipynb"

run_cells = partial(lesson_code.run_cells, NOTEBOOK)


@pytest.fixture(scope="module")
def lesson():
    return run_cells("dirichlet-by-hand", "disjoint-and-complete", y_train=np.arange(40) % 4,
                     NUM_CLIENTS=4)


@pytest.mark.parametrize("num_clients, alpha, seed", [
    (20, 0.05, 0), (20, 0.5, 1), (20, 100.0, 2), (5, 1.0, 3), (50, 0.1, 4)])
def test_my_dirichlet_partition_is_fedutils_split(lesson, digits_split, num_clients, alpha, seed):
    y_train = digits_split[2]
    ours = lesson["my_dirichlet_partition"](y_train, num_clients, alpha, seed=seed)
    theirs = partition.dirichlet_partition(y_train, num_clients, alpha, seed=seed)
    assert len(ours) == len(theirs) == num_clients
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    assert lesson["is_disjoint_and_complete"](ours, len(y_train))
    assert min(len(p) for p in ours) >= 1


def test_my_dirichlet_partition_redraws_like_fedutils_when_a_client_is_empty(lesson):
    labels = np.repeat(np.arange(3), 20)
    for seed in (0, 2, 4):
        # The first draw leaves a client empty (fedutils with one try gives up), so both redraw.
        with pytest.raises(ValueError):
            partition.dirichlet_partition(labels, 10, 0.3, seed=seed, max_tries=1)
        ours = lesson["my_dirichlet_partition"](labels, 10, 0.3, seed=seed)
        theirs = partition.dirichlet_partition(labels, 10, 0.3, seed=seed)
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)
        assert min(len(p) for p in ours) >= 1


def test_my_dirichlet_partition_gives_up_instead_of_looping(lesson):
    with pytest.raises(ValueError, match="empty"):
        lesson["my_dirichlet_partition"](np.zeros(5, dtype=int), 5, 0.01, seed=0, max_tries=20)


def test_invariant_check_catches_overlap_and_gaps(lesson):
    check = lesson["is_disjoint_and_complete"]
    assert check([np.array([0, 2]), np.array([1, 3])], 4)
    assert not check([np.array([0, 1]), np.array([1, 3])], 4)  # 1 twice, 2 missing
    assert not check([np.array([0, 1]), np.array([2])], 4)      # 3 missing


def test_dirichlet_100_is_less_skewed_than_iid_dealing(digits_split):
    """The lesson's explanation: per-label allocation with shares near 1/20 holds each client's
    label counts closer to the global mix than shuffling and cutting does, on every seed."""
    y_train = digits_split[2]
    ns = run_cells("count-spread", y_train=y_train, NUM_CLIENTS=20)
    iid, dirichlet = ns["near_iid"].values()
    for seed in range(5):
        assert (partition.label_skew(y_train, dirichlet(seed))
                < partition.label_skew(y_train, iid(seed)) / 2)
        assert ns["count_spread"](dirichlet(seed)) < ns["count_spread"](iid(seed))
    # Dirichlet(alpha) shares have std sqrt((1/n)(1 - 1/n)/(n·alpha + 1)): 0.005 here.
    shares = np.random.default_rng(0).dirichlet(np.full(20, 100.0), size=4000)
    assert abs(shares.std() - np.sqrt(0.05 * 0.95 / 2001)) < 2e-4


@pytest.fixture(scope="module")
def prox(digits_split):
    x_train, _, y_train, _ = digits_split
    parts = partition.dirichlet_partition(y_train, 20, 0.1, seed=0)
    client = data.make_client_data(x_train, y_train, parts, batch_size=20, seed=0)[0]
    return run_cells("proximal-step"), client


@pytest.mark.parametrize("mu", [0.0, 0.01, 1.0])
def test_my_fedprox_client_equals_client_update(prox, mu):
    ns, client = prox
    fedutils.set_seed(0)
    model = models.create_digits_model()
    start = model.get_weights()
    ours = ns["my_fedprox_client"](model, client, 2, 0.1, mu)
    model.set_weights(start)
    theirs = client_update(model, client, epochs=2, learning_rate=0.1, proximal_mu=mu).weights
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-5)
    moved = np.sqrt(sum(np.sum((w - s) ** 2) for w, s in zip(ours, start)))
    assert moved > 0


def test_proximal_step_adds_mu_times_distance_to_the_gradient(prox):
    """By hand: from weights w away from w_global, the step with mu differs from the step
    without by exactly -lr·mu·(w - w_global)."""
    ns, client = prox
    fedutils.set_seed(1)
    model = models.create_digits_model()
    anchor = [w.numpy() for w in model.trainable_variables]
    w = [a + 0.05 * np.random.default_rng(k).standard_normal(a.shape).astype(a.dtype)
         for k, a in enumerate(anchor)]
    x, y = next(client.batches())
    after = {}
    for mu in (0.0, 0.7):
        model.set_weights(w)
        ns["proximal_step"](model, x, y, 0.1, mu, anchor)
        after[mu] = model.get_weights()
    for with_mu, without, wi, ai in zip(after[0.7], after[0.0], w, anchor):
        np.testing.assert_allclose(with_mu - without, -0.1 * 0.7 * (wi - ai), atol=1e-6)


def test_seeded_slide_generator_is_reproducible_and_label_free():
    ns = run_cells("slide-generator-seeded")
    make = ns["create_non_iid_data_seeded"]
    a = make(5, 10, np.random.default_rng(3))
    b = make(5, 10, np.random.default_rng(3))
    c = make(5, 10, np.random.default_rng(4))
    assert all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(a, b))
    assert not np.array_equal(a[0][0], c[0][0])
    for features, labels in a:
        assert features.shape == (100, 4) and labels.shape == (100,)
        assert len(np.unique(labels)) <= 2
    # The features do not depend on the labels: class means differ only by sampling noise.
    many = make(200, 10, np.random.default_rng(0))
    x = np.concatenate([f for f, _ in many])
    y = np.concatenate([l for _, l in many])
    means = np.array([x[y == k].mean(axis=0) for k in range(10)])
    assert np.abs(means).max() < 0.1


def test_exercise_1_solution_passes_its_check_and_a_wrong_answer_fails(digits_split):
    names = {"y_train": digits_split[2], "NUM_CLIENTS": 20}
    solution = run_cells("exercise-1-solution", **names)
    check = lesson_code.cell_source(NOTEBOOK, "exercise-1-check")
    exec(check, dict(solution))
    wrong = dict(solution, shard_skew={k: 0.5 for k in (1, 2, 5, 10)})
    with pytest.raises(AssertionError):
        exec(check, wrong)
