"""Lesson 08 builds a Dirichlet split in the open and fixes the slide's generator; these tests
run the lesson's own cells (found by a marker they contain) and hold them to fedutils.partition."""
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from fedutils import partition

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "08_non_iid_data.ipynb"


lesson_cell = partial(lesson_code.cell_source, NOTEBOOK)


def run_cells(*markers: str, **names) -> dict:
    """Run the cells holding `markers` in a namespace that starts with NumPy and `names`."""
    namespace: dict = {"np": np, "partition": partition, **names}
    for marker in markers:
        exec(compile(lesson_cell(marker), f"{NOTEBOOK.name}: {marker}", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def lesson():
    return run_cells("def my_dirichlet_partition(", "def is_disjoint_and_complete(",
                     y_train=np.arange(40) % 4, NUM_CLIENTS=4)


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


def test_seeded_slide_generator_is_reproducible_and_label_free():
    ns = run_cells("def create_non_iid_data_seeded(")
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
    solution = run_cells("shard_skew, max_classes = {}, {}", **names)
    check = lesson_cell("more shards per client, less skew")
    exec(check, dict(solution))
    wrong = dict(solution, shard_skew={k: 0.5 for k in (1, 2, 5, 10)})
    with pytest.raises(AssertionError):
        exec(check, wrong)
