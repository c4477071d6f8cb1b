import matplotlib
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fedutils import partition

matplotlib.use("Agg")

labels_strategy = st.lists(st.integers(0, 9), min_size=40, max_size=300).map(np.array)


def assert_valid(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n, "every example exactly once"
    assert len(np.unique(allidx)) == n, "disjoint"
    assert all(len(p) > 0 for p in parts)


@settings(max_examples=40, deadline=None)
@given(labels=labels_strategy, num_clients=st.integers(1, 10), seed=st.integers(0, 10**6))
def test_iid_partition_invariants(labels, num_clients, seed):
    parts = partition.iid_partition(labels, num_clients, seed)
    assert len(parts) == num_clients
    assert_valid(parts, len(labels))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    same = partition.iid_partition(len(labels), num_clients, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, same))


@settings(max_examples=40, deadline=None)
@given(labels=labels_strategy, num_clients=st.integers(1, 10), shards=st.integers(1, 3),
       seed=st.integers(0, 10**6))
def test_shard_partition_invariants(labels, num_clients, shards, seed):
    parts = partition.shard_partition(labels, num_clients, shards, seed)
    assert_valid(parts, len(labels))
    again = partition.shard_partition(labels, num_clients, shards, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@settings(max_examples=40, deadline=None)
@given(labels=labels_strategy, num_clients=st.integers(1, 8),
       alpha=st.floats(0.05, 100.0), seed=st.integers(0, 10**6))
def test_dirichlet_partition_invariants(labels, num_clients, alpha, seed):
    parts = partition.dirichlet_partition(labels, num_clients, alpha, seed)
    assert_valid(parts, len(labels))
    again = partition.dirichlet_partition(labels, num_clients, alpha, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_small_alpha_more_skewed_than_large_alpha(seed):
    labels = np.repeat(np.arange(10), 100)
    skew = {a: partition.label_skew(labels, partition.dirichlet_partition(labels, 10, a, seed))
            for a in (0.1, 100.0)}
    assert skew[0.1] > skew[100.0] + 0.3


def test_shards_give_few_classes_per_client():
    labels = np.repeat(np.arange(10), 100)
    parts = partition.shard_partition(labels, 10, shards_per_client=2, seed=0)
    classes = [len(np.unique(labels[p])) for p in parts]
    assert max(classes) <= 2
    iid = partition.iid_partition(labels, 10, seed=0)
    assert partition.label_skew(labels, parts) > 0.7 > 0.2 > partition.label_skew(labels, iid)


def test_label_distribution_counts():
    labels = np.array([0, 0, 1, 2, 2, 2])
    counts = partition.label_distribution(labels, [np.array([0, 2]), np.array([1, 3, 4, 5])])
    np.testing.assert_array_equal(counts, [[1, 1, 0], [1, 0, 3]])
    assert partition.label_skew(labels, [np.arange(6)]) == 0.0


def test_plot_label_distribution_draws_one_bar_per_client_and_class():
    labels = np.repeat(np.arange(3), 10)
    ax = partition.plot_label_distribution(labels, partition.iid_partition(labels, 4))
    assert len(ax.patches) == 4 * 3


@pytest.mark.parametrize("call, error, match", [
    (lambda y: partition.dirichlet_partition(y, 5, alpha=0), ValueError, "alpha"),
    (lambda y: partition.dirichlet_partition(y, 5, alpha=-1.0), ValueError, "alpha"),
    (lambda y: partition.iid_partition(y, 100), ValueError, "num_clients"),
    (lambda y: partition.iid_partition(y, 0), ValueError, "num_clients"),
    (lambda y: partition.shard_partition(y, 5, shards_per_client=10), ValueError,
     "shards_per_client"),
    (lambda y: partition.iid_partition(y, 2.5), TypeError, "num_clients"),
    (lambda y: partition.shard_partition(y.reshape(5, 4), 2), ValueError, "labels"),
    (lambda y: partition.shard_partition(y - 5, 2), ValueError, "labels"),
    (lambda y: partition.dirichlet_partition(y, 20, 0.01, min_size=1, max_tries=2), ValueError,
     "could not give"),
    (lambda y: partition.label_distribution(y, []), ValueError, "at least one client"),
])
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call(np.repeat(np.arange(4), 5))
