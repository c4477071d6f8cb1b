"""Lesson 10 (smart keyboards) builds its data pipeline, one FedAvg round, its recall metric, a
bigram model and central training on chunks of the pooled windows in the open. These tests run
the notebook's own cells (found by their name tags) and check them against fedutils and
against plain reference computations; each exercise's check must accept the solution and
reject a wrong answer."""
from __future__ import annotations

import collections
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "10_smart_keyboards.ipynb"

cell = partial(lesson_code.cell_source, NOTEBOOK)
exec_cells = partial(lesson_code.exec_cells, NOTEBOOK)
DATA = ("slide-model-size", "speeches-and-users", "vocabulary-and-windows", "phones-and-pools")


@pytest.fixture(scope="module")
def lesson() -> dict:
    """The lesson's namespace after its setup, data and one-round cells (the round on fewer,
    unequal batches per phone, to keep the test fast and make the weighting matter)."""
    namespace = lesson_code.run_cells(NOTEBOOK, *DATA)
    from fedutils.data import ClientData

    full = namespace["train_clients"]
    namespace["train_clients"] = [ClientData(c.x[:n], c.y[:n], c.batch_size)
                                  for c, n in zip(full[:3], (100, 60, 80))]
    exec_cells(namespace, "one-round-by-hand")
    namespace["train_clients"] = full
    return exec_cells(namespace, "suggestions-and-recall")


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


def test_phones_hold_their_own_in_vocabulary_windows(lesson):
    clients, users = lesson["train_clients"], lesson["train_users"]
    assert len(clients) == len(users)
    for client, user in list(zip(clients, users))[:20]:
        assert len(client) == lesson["MAX_WINDOWS"] and client.batch_size == 20
        assert (client.y != lesson["OOV"]).all()
        x, y = lesson["windows"][user]
        rows = {(tuple(a), b) for a, b in zip(x.tolist(), y.tolist())}
        assert all((tuple(a), b) in rows for a, b in zip(client.x.tolist(), client.y.tolist()))


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


def test_suggestions_and_recall_match_a_plain_reference(lesson):
    suggest, recall_at_k = lesson["suggest"], lesson["recall_at_k"]
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
    chunked = lesson["in_chunks"](lambda x: probabilities[x[:, 0]], np.arange(200)[:, None],
                                  k=5, chunk=7)
    np.testing.assert_array_equal(chunked, top)


def test_bigram_suggests_the_most_frequent_followers(lesson):
    """The bigram's suggestions against counts made with a Counter over the same windows."""
    x_pool, y_pool, OOV = lesson["x_pool"], lesson["y_pool"], lesson["OOV"]
    followers = collections.defaultdict(collections.Counter)
    for last, nxt in zip(x_pool[:, -1].tolist(), y_pool.tolist()):
        followers[last][nxt] += 1
    frequency = collections.Counter(y_pool.tolist())
    overall = [w for w, _ in sorted(frequency.items(), key=lambda kv: (-kv[1], kv[0]))]
    for last in [lesson["word_id"][w] for w in ("my", "good", "the", "i")] + [OOV]:
        ranked = sorted(followers[last].items(), key=lambda kv: (-kv[1], -frequency[kv[0]], kv[0]))
        expected = [w for w, _ in ranked if w != OOV]
        expected += [w for w in overall if w not in expected and w != OOV]
        got = lesson["in_chunks"](lesson["bigram_scores"], np.array([[0, 0, 0, 0, last]]), k=5)
        assert got[0].tolist() == expected[:5]
    freq_top = lesson["references"]["word frequency"][0]
    assert freq_top.tolist() == [w for w in overall if w != OOV][:10]


def test_central_chunks_are_the_pooled_windows_in_rounds_of_equal_size():
    ns = lesson_code.run_cells(NOTEBOOK, *DATA)
    source = cell("central-chunks")
    exec(source[:source.index("\n\n\ndef train(")], ns)
    chunks, pool = ns["chunks"], len(ns["y_pool"])
    assert pool % ns["CHUNK"] == 0 and len(chunks) == pool // ns["CHUNK"]
    assert all(len(c) == ns["CHUNK"] == ns["CLIENTS_PER_ROUND"] * ns["MAX_WINDOWS"]
               for c in chunks)
    pooled = collections.Counter(map(tuple, np.column_stack([ns["x_pool"], ns["y_pool"]])))
    chunked = collections.Counter(map(tuple, np.concatenate(
        [np.column_stack([c.x, c.y]) for c in chunks])))
    assert pooled == chunked, "every pooled window in exactly one chunk"
    assert ns["SETTINGS"]["central"] == (chunks, 1) and ns["SETTINGS"]["federated"][1] == 10


def test_exercise_1_check_accepts_the_solution_and_rejects_wrong_answers(lesson):
    ns = dict(lesson)
    exec_cells(ns, "exercise-1-solution")
    check = cell("exercise-1-check")
    exec(check, dict(ns))
    too_big = [s for s in ns["upload_bytes"] if ns["upload_bytes"][s] > 1_000_000]
    with pytest.raises(AssertionError):
        exec(check, dict(ns, vocab_choice=too_big[0]))
    with pytest.raises(AssertionError):
        exec(check, dict(ns, vocab_choice=500))
    with pytest.raises(AssertionError):  # coverage of the test users instead of validation users
        test_words = [w for u in ns["test_users"] for s in ns["speeches"][u] for w in s]
        known = {w for w, _ in ns["counts"].most_common(499)}
        wrong = {**ns["coverage"], 500: float(np.mean([w in known for w in test_words]))}
        exec(check, dict(ns, coverage=wrong))


def test_exercise_2_check_accepts_the_solution_and_rejects_wrong_answers(lesson):
    from fedutils.evaluation import predict

    ns = dict(lesson, predict=predict, keyboard=lesson["model_fn"]())
    exec_cells(ns, "exercise-2-solution")
    check = cell("exercise-2-check")
    exec(check, dict(ns))
    xs = np.concatenate([ns["windows"][u][0] for u in ns["test_users"][:10]])
    ys = np.concatenate([ns["windows"][u][1] for u in ns["test_users"][:10]])
    known = ys != ns["OOV"]
    suggestions = ns["in_chunks"](ns["network_scores"](ns["keyboard"]), xs[known], 3)
    without_oov = ns["recall_at_k"](suggestions, ys[known], 3)
    with pytest.raises(AssertionError):
        exec(check, dict(ns, top3_with_oov=dict(ns["top3_with_oov"], federated=without_oov)))
