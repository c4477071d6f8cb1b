"""Lesson 10 (smart keyboards) builds its data pipeline, one FedAvg round and its recall metric in
the open. These tests run the notebook's own cells (found by the code they contain) and check
them against fedutils and against plain reference computations."""
from __future__ import annotations

import collections
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "10_smart_keyboards.ipynb"


cell = partial(lesson_code.cell_source, NOTEBOOK, unique=True)


@pytest.fixture(scope="module")
def lesson() -> dict:
    """The lesson's namespace after its setup, data and one-round cells."""
    namespace: dict = {}
    for marker in ["import fedutils  # first", "def describe(model)", "def tokenize(text)",
                   "def make_windows(", "MAX_WINDOWS ="]:
        exec(cell(marker), namespace)
    # The round by hand on fewer batches per phone (5 of 20, and unequal), to keep the test fast.
    full = namespace["train_datasets"]
    namespace["train_datasets"] = [full[0].take(5), full[1].take(3), full[2].take(4)]
    exec(cell("CLIENT_LR ="), namespace)
    return namespace


def test_users_are_split_disjointly_and_vocabulary_uses_training_users_only(lesson):
    train, val, test = (set(lesson[k]) for k in ("train_users", "val_users", "test_users"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(lesson["eligible"])
    speeches = lesson["speeches"]
    expected = collections.Counter(w for u in sorted(train) for s in speeches[u] for w in s)
    assert lesson["counts"] == expected
    vocab = lesson["vocab"]
    assert len(vocab) == lesson["VOCAB_SIZE"] and vocab[0] == "<oov>"
    frequencies = [expected[w] for w in vocab[1:]]
    assert frequencies == sorted(frequencies, reverse=True)  # id order = frequency order


def test_windows_stay_inside_speeches_and_map_unknown_words_to_oov(lesson):
    make_windows, tokenize, word_id = lesson["make_windows"], lesson["tokenize"], lesson["word_id"]
    speeches = tokenize("The king is come, my lord!\nZzyzx speaks: O heavens, what news?")
    x, y = make_windows(speeches)
    assert speeches[1][0] == "zzyzx" and "zzyzx" not in word_id
    assert len(y) == sum(max(0, len(s) - 5) for s in speeches) == 2
    first, second = ([word_id.get(w, 0) for w in s] for s in speeches)
    np.testing.assert_array_equal(x, [first[:5], second[:5]])
    np.testing.assert_array_equal(y, [first[5], second[5]])
    assert x[1][0] == lesson["OOV"]


def test_one_round_by_hand_equals_run_fedavg(lesson):
    results, by_hand = lesson["results"], lesson["by_hand"]
    counts = np.array([r.num_examples for r in results], dtype=np.float64)
    weighted = [np.tensordot(counts / counts.sum(), np.stack(ws), axes=1)
                for ws in zip(*[r.weights for r in results])]
    for a, b in zip(by_hand, weighted):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert counts.tolist() == [100, 60, 80]  # unequal phones: the weighting matters
    for a, b in zip(by_hand, lesson["packaged"]):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert not all(np.array_equal(a, b) for a, b in zip(by_hand, lesson["server_weights"]))


def test_suggestions_and_recall_match_a_plain_reference():
    namespace: dict = {"np": np, "OOV": 0}
    exec(cell("def suggest(probabilities, k)").split("model_top10 =")[0], namespace)
    suggest, recall_at_k = namespace["suggest"], namespace["recall_at_k"]
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(50), size=200).astype(np.float32)
    probabilities[:20, 0] = 1.0  # the OOV id is the likeliest, and must still never be offered
    targets = rng.integers(0, 50, size=200)
    top = suggest(probabilities, 5)
    for row, p in zip(top, probabilities):
        reference = [i for i in np.argsort(-p, kind="stable") if i != 0][:5]
        np.testing.assert_array_equal(row, reference)
    for k in (1, 3, 5):
        expected = np.mean([t in row[:k] for t, row in zip(targets, top)])
        assert recall_at_k(top, targets, k) == pytest.approx(expected)
