"""Learner mistakes get a clear fedutils error: nothing hangs, nothing trains silently wrong.

Each case of issue 21 is a test below: the bad call raises ValueError or TypeError from fedutils
itself (not from NumPy, Keras or TensorFlow) with a message naming what is wrong, within a time
limit. The property tests at the end feed random bad inputs to the public functions: each call
either raises such an error or returns finite numbers, never another exception, never a hang.
"""
from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import signal
import warnings

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import fedutils
from fedutils import compression, data, evaluation, fedavg, models, partition, privacy, robust
from fedutils.core import clientdata
from fedutils.techniques import accounting

FEDUTILS_DIR = os.path.dirname(fedutils.__file__)


# --- helpers ----------------------------------------------------------------------------------

@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail a call that runs over `seconds`: SIGALRM interrupts Python code; a loop inside C
    (NumPy's Dirichlet sampler) ignores it, so faulthandler ends the process a little later."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"the call ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds + 30, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def raised_by_fedutils(exc: BaseException) -> bool:
    """True when the innermost frame of the exception's traceback is fedutils code."""
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(FEDUTILS_DIR)


def fails_clearly(error, match, fn, *args, seconds: float = 20, **kwargs):
    """`fn(*args, **kwargs)` raises `error` from fedutils, matching `match`, within the limit."""
    with time_limit(seconds), pytest.raises(error, match=match) as info:
        fn(*args, **kwargs)
    assert raised_by_fedutils(info.value), f"raised outside fedutils: {info.value!r}"
    return info.value


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_digits()
    return x[:300], y[:300]


@pytest.fixture(scope="module")
def clients(digits):
    x, y = digits
    return data.make_client_data(x, y, partition.iid_partition(y, 3, seed=0), batch_size=50)


@pytest.fixture(scope="module")
def iris_clients():
    """A small binary task on the smallest model: cheap to compile for run_fedavg tests."""
    x, y = data.load_iris_binary()
    return data.make_client_data(x, y, partition.iid_partition(y, 3, seed=0), batch_size=25)


def tiny_model():
    return models.create_keras_model(num_features=4, hidden_units=3)


# --- hangs and runaway memory -------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [1e-7, 1e-10, 1e-300])
def test_dirichlet_with_tiny_alpha_returns_one_client_per_class(alpha):
    # Before: NumPy 1.25's sampler looped forever (from about 1e-8), deaf to Ctrl-C.
    y = np.repeat(np.arange(4), 25)
    with time_limit(10):
        parts = partition.dirichlet_partition(y, 3, alpha=alpha, seed=0)
    counts = partition.label_distribution(y, parts)
    assert np.all((counts == 0) | (counts == 25))  # each class whole on one client
    fails_clearly(ValueError, "larger alpha", partition.dirichlet_partition, y, 6, alpha,
                  max_tries=50)  # 4 classes cannot fill 6 clients


def test_dirichlet_keeps_numpys_draws_for_the_course_alphas():
    # The lessons' splits must not change: above 1e-3 the draws are NumPy's own.
    y = np.repeat(np.arange(5), 40)
    for alpha in (0.01, 0.5, 100.0):
        rng = np.random.default_rng(7)
        expected = [[] for _ in range(4)]
        for label in range(5):
            idx = rng.permutation(np.flatnonzero(y == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(4, alpha)))[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                expected[client].append(chunk)
        got = partition.dirichlet_partition(y, 4, alpha, seed=7)
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, np.sort(np.concatenate(e)))


def test_log_space_dirichlet_sampler_has_the_right_marginal(monkeypatch):
    # The tiny-alpha sampler, forced at alpha = 0.5 where NumPy's is fine, against the exact
    # marginal: the first proportion of Dirichlet(a, a, a) is Beta(a, 2a).
    from scipy import stats

    monkeypatch.setattr(partition_module(), "_SMALL_ALPHA", 10.0)
    rng = np.random.default_rng(0)
    draws = np.array([partition_module()._dirichlet(rng, 0.5, 3) for _ in range(3000)])
    np.testing.assert_allclose(draws.sum(axis=1), 1.0)
    assert stats.kstest(draws[:, 0], stats.beta(0.5, 1.0).cdf).pvalue > 0.001


def partition_module():
    from fedutils.core import partition as module
    return module


@pytest.mark.parametrize("kwargs", [{}, {"num_classes": 10**12}])
def test_label_distribution_refuses_a_table_of_gigabytes(kwargs):
    # Before: MemoryError (7 TiB) or gigabytes allocated.
    labels = np.array([0, 10**12]) if not kwargs else np.array([0, 1])
    fails_clearly(ValueError, "class indices 0..C-1", partition.label_distribution, labels,
                  [np.array([0]), np.array([1])], **kwargs)
    fails_clearly(ValueError, "class indices", partition.label_skew, np.array([0, 10**9]),
                  [np.array([0]), np.array([1])])


def test_plot_label_distribution_checks_class_names_and_width():
    y = np.arange(10) % 5
    parts = [np.arange(5), np.arange(5, 10)]
    fails_clearly(ValueError, "class_names must name all 5", partition.plot_label_distribution,
                  y, parts, class_names=["a", "b"])
    fails_clearly(ValueError, "at most", partition.plot_label_distribution, np.arange(100),
                  [np.arange(50), np.arange(50, 100)])


def test_pld_at_small_noise_falls_back_to_rdp_with_a_warning():
    # Before: two minutes and gigabytes (measured: z=0.1, q=0.1, 100 steps, 26 s and 1.7 GB).
    with time_limit(10), pytest.warns(UserWarning, match="RDP bound instead"):
        eps = privacy.compute_epsilon(0.1, 0.1, 100, 1e-5, accountant="pld")
    assert eps == privacy.compute_epsilon(0.1, 0.1, 100, 1e-5, accountant="rdp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # an ordinary PLD runs as before, without the note
        privacy.compute_epsilon(1.1, 0.01, 500, 1e-5, accountant="pld")
    assert not [w for w in caught if "RDP bound" in str(w.message)]


def test_pld_size_estimate_bounds_dp_accountings_grid(monkeypatch):
    # The guard's estimate against the grid dp-accounting really builds (cheap settings only).
    from dp_accounting.pld import common

    sizes = []
    real = common.self_convolve

    def spy(input_list, num_times, tail_mass_truncation=0):
        lo, hi = common.compute_self_convolve_bounds(input_list, num_times, tail_mass_truncation)
        sizes.append(max(len(input_list), hi - lo + 1))
        return real(input_list, num_times, tail_mass_truncation)

    monkeypatch.setattr(common, "self_convolve", spy)
    for z, q, steps in [(2.0, 0.01, 100), (1.0, 1.0, 1)]:
        sizes.clear()
        privacy.compute_epsilon(z, q, steps, 1e-5, accountant="pld")
        _, estimate = accounting.pld_points(z, q, steps)
        assert max(sizes) <= estimate <= 6 * max(sizes), (z, q, steps, sizes, estimate)


def test_infinite_datasets_are_refused(clients, monkeypatch):
    # .repeat(): tf.data knows the length is infinite (already refused by the refactor).
    endless = [c.dataset().repeat() for c in clients]
    fails_clearly(ValueError, "repeats forever", fedavg.run_fedavg, models.create_digits_model,
                  endless, progress=False)
    # .repeat().filter(...): the length is unknown. Before: run_fedavg never returned while
    # memory grew. Now reading stops at MAX_UNKNOWN_BYTES (made small here to stay fast).
    monkeypatch.setattr(clientdata, "MAX_UNKNOWN_BYTES", 2**20)
    unknown = [c.dataset().repeat().filter(lambda b: True) for c in clients]
    fails_clearly(ValueError, "may repeat forever", fedavg.run_fedavg, models.create_digits_model,
                  unknown, progress=False)
    fails_clearly(ValueError, "may repeat forever", fedavg.client_update,
                  models.create_digits_model(), unknown[0])


def test_finite_datasets_of_unknown_length_are_still_read(clients):
    finite = [c.dataset().filter(lambda b: True) for c in clients]
    assert int(finite[0].cardinality()) == tf.data.UNKNOWN_CARDINALITY
    for read, original in zip(data.as_client_data(finite), clients):
        np.testing.assert_array_equal(read.x, original.x)
        np.testing.assert_array_equal(read.y, original.y)


# --- labels and features checked against the model before any compiled code ------------------

def no_training_aggregator():
    """An aggregator that records whether any round reached aggregation."""
    calls = []

    def aggregate(updates, num_examples, client_ids, rng):
        calls.append(1)
        return fedavg.server_aggregate(updates, num_examples)
    return aggregate, calls


def test_labels_outside_the_models_classes(clients, digits):
    x, y = digits
    parts = partition.iid_partition(y, 3, seed=0)
    shifted = data.make_client_data(x, y + 5, parts)
    fails_clearly(ValueError, r"labels from 5 to 14.*0\.\.9", fedavg.run_fedavg,
                  models.create_digits_model, shifted, progress=False)
    # In eval_data: refused before any round trains (before: after a round had trained).
    spy, calls = no_training_aggregator()
    fails_clearly(ValueError, "eval_data has labels from 10 to 19", fedavg.run_fedavg,
                  models.create_digits_model, clients, eval_data=(x, y + 10), aggregator=spy,
                  progress=False)
    assert calls == []
    fails_clearly(ValueError, "labels from 3 to 12", evaluation.federated_evaluate,
                  models.create_digits_model(), data.make_client_data(x, y + 3, parts))
    model = models.create_digits_model()
    fails_clearly(ValueError, "labels from 0 to 10", evaluation.evaluate_weights, model,
                  model.get_weights(), x[:20], np.arange(20) % 11)


def test_sigmoid_model_with_three_labels(digits):
    # Before: a negative loss, reported silently.
    x, y = digits
    three = data.make_client_data(x, y % 3, partition.iid_partition(y, 3, seed=0))
    fails_clearly(ValueError, "0 or 1 \\(one sigmoid output\\)", fedavg.run_fedavg,
                  lambda: models.create_keras_model(64), three, progress=False)


def test_float_labels_are_refused_not_truncated(digits):
    x, y = digits
    parts = partition.iid_partition(y, 3, seed=0)
    fails_clearly(ValueError, "integer class labels.*0.5", data.make_client_data, x, y + 0.5,
                  parts)
    ds = [tf.data.Dataset.from_tensor_slices({"x": x[:40], "y": y[:40] + 0.5}).batch(10)]
    fails_clearly(ValueError, "integer class labels", fedavg.run_fedavg,
                  models.create_digits_model, ds, progress=False)
    # Whole-number floats are labels: the same clients as integer labels.
    as_float = data.make_client_data(x, y.astype(np.float64), parts)
    as_int = data.make_client_data(x, y, parts)
    for a, b in zip(as_float, as_int):
        np.testing.assert_array_equal(a.y, b.y)


def test_labels_beyond_int32_are_not_wrapped(digits):
    x, y = digits
    big = y.astype(np.int64)
    big[0] = 2**32  # int32 would wrap it to 0, a valid digit
    fails_clearly(ValueError, "beyond what int32 holds", data.make_client_data, x, big,
                  [np.arange(300)])


def test_feature_count_that_does_not_match_the_model(clients, digits):
    x, y = digits
    thirty = lambda: models.create_digits_model(num_features=30)  # noqa: E731
    fails_clearly(ValueError, r"features of shape \(64,\).*takes \(30,\)", fedavg.run_fedavg,
                  thirty, clients, progress=False)
    fails_clearly(ValueError, r"eval_data has features of shape \(30,\)", fedavg.run_fedavg,
                  models.create_digits_model, clients, eval_data=(x[:, :30], y),
                  progress=False)
    fails_clearly(ValueError, r"dataset has features of shape \(64,\)", fedavg.client_update,
                  models.create_digits_model(num_features=10), clients[0])
    model = models.create_digits_model()
    fails_clearly(ValueError, r"features of shape \(30,\)", evaluation.evaluate_weights, model,
                  model.get_weights(), x[:, :30], y)
    fails_clearly(ValueError, r"examples of shape \(64,\)", evaluation.predict, model, x[:, :30])


def test_token_ids_outside_the_vocabulary():
    # Before: TensorFlow's "indices[...] is not in [0, 50)" from inside the compiled round.
    x = np.arange(60).reshape(12, 5) % 60
    y = np.arange(12) % 50
    cl = data.make_client_data(x, y, [np.arange(12)], batch_size=4)
    keyboard = lambda: models.create_keyboard_model(vocab_size=50, embedding_dim=4,  # noqa
                                                    lstm_units=4)
    fails_clearly(ValueError, "token ids from 0 to 59.*ids 0..49", fedavg.run_fedavg, keyboard,
                  cl, progress=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_features(digits, clients, bad):
    # Before: accepted, surfacing as NaN weights a round later.
    x, y = digits
    dirty = x.copy()
    dirty[3, 3] = bad
    fails_clearly(ValueError, "NaN or infinite", data.make_client_data, dirty, y,
                  [np.arange(300)])
    ds = [tf.data.Dataset.from_tensor_slices({"x": dirty[:40], "y": y[:40]}).batch(10)]
    fails_clearly(ValueError, "NaN or infinite", fedavg.run_fedavg, models.create_digits_model,
                  ds, progress=False)
    fails_clearly(ValueError, "eval_data contains NaN", fedavg.run_fedavg,
                  models.create_digits_model, clients, eval_data=(dirty, y), progress=False)


def test_features_that_are_not_numbers():
    fails_clearly(TypeError, "x must hold numbers", data.make_client_data,
                  np.array([["a"], ["b"]]), np.array([0, 1]), [np.arange(2)])


# --- what a custom aggregator returns ------------------------------------------------------------

@pytest.mark.parametrize("returned, error, match", [
    (lambda u: None, TypeError, "returned None"),
    (lambda u: u[0][:2], ValueError, "must hold 4 tensors"),
    (lambda u: [w.T for w in u[0]], ValueError, r"must have shape \(4, 3\)"),
    (lambda u: [w * np.nan for w in u[0]], ValueError, "NaN"),
    (lambda u: fedavg.Aggregate(u[0], measurements=[1]), TypeError, "must be a dict"),
])
def test_run_fedavg_checks_what_the_aggregator_returns(iris_clients, returned, error, match):
    fails_clearly(error, match, fedavg.run_fedavg, tiny_model, iris_clients, rounds=1,
                  aggregator=lambda u, n, c, r: returned(u), progress=False)


def test_aggregator_subclass_that_returns_a_list(iris_clients):
    class ReturnsList(fedavg.Aggregator):
        def aggregate(self, updates, num_examples, client_ids, rng, state=None):
            return updates[0]

    fails_clearly(TypeError, "must return an Aggregate", fedavg.run_fedavg, tiny_model,
                  iris_clients, rounds=1, aggregator=ReturnsList(), progress=False)


def test_aggregator_class_instead_of_instance(iris_clients):
    from fedutils.loop.aggregators import WeightedMean

    fails_clearly(TypeError, r"an instance, such as WeightedMean\(\.\.\.\)", fedavg.run_fedavg,
                  tiny_model, iris_clients, aggregator=WeightedMean, progress=False)


def test_eval_data_that_is_not_arrays(iris_clients):
    fails_clearly(ValueError, "eval_data must be a pair", fedavg.run_fedavg, tiny_model,
                  iris_clients, eval_data=(1, 2), progress=False)


def test_client_update_checks_global_weights(iris_clients):
    fails_clearly(ValueError, "global_weights", fedavg.client_update, tiny_model(),
                  iris_clients[0], proximal_mu=0.1, global_weights=[np.zeros(3)])


# --- state that leaks between runs ---------------------------------------------------------------

def test_error_feedback_starts_fresh_in_every_run(iris_clients):
    # Before (issue 21): the second run_fedavg reused the first run's residuals.
    agg = compression.CompressionAggregator("top_k", ratio=0.2)
    start = tiny_model().get_weights()
    run = lambda: fedavg.run_fedavg(tiny_model, iris_clients, rounds=2, aggregator=agg,  # noqa
                                    initial_weights=start, progress=False).final_weights
    first, second = run(), run()
    fresh = fedavg.run_fedavg(tiny_model, iris_clients, rounds=2, initial_weights=start,
                              aggregator=compression.CompressionAggregator("top_k", ratio=0.2),
                              progress=False).final_weights
    for a, b, c in zip(first, second, fresh):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_seed_covers_the_run_and_set_seed_the_initial_model(iris_clients):
    # run_fedavg's seed fixes sampling and drop-outs; the initial weights come from model_fn,
    # which fedutils.set_seed seeds. Both are documented in run_fedavg's docstring.
    assert "fedutils.set_seed" in fedavg.run_fedavg.__doc__

    def run():
        fedutils.set_seed(3)
        return fedavg.run_fedavg(tiny_model, iris_clients, rounds=1, seed=0,
                                 progress=False).final_weights
    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)


# --- silently wrong results ----------------------------------------------------------------------

@pytest.mark.parametrize("n, labels, fraction, side", [
    (3, [0, 1, 2], 0.25, "test"),
    (4, [0, 0, 1, 1], 0.1, "test"),
    (2, [0, 0], 0.9, "training"),
])
def test_train_test_split_never_returns_an_empty_side(n, labels, fraction, side):
    # Before: an empty test (or training) side, returned silently.
    fails_clearly(ValueError, f"leaves the {side} side empty", data.train_test_split,
                  np.zeros((n, 2)), np.array(labels), fraction)


def test_train_test_split_of_small_data_that_can_be_split():
    xtr, xte, ytr, yte = data.train_test_split(np.zeros((4, 2)), np.array([0, 0, 1, 1]), 0.5)
    assert sorted(ytr) == [0, 1] and sorted(yte) == [0, 1]


def test_server_aggregate_of_integers_is_a_float_mean():
    out = fedavg.server_aggregate([[np.array([1, 2])], [np.array([2, 2])]])
    np.testing.assert_array_equal(out[0], [1.5, 2.0])
    assert out[0].dtype == np.float64


@pytest.mark.parametrize("parts", [[np.array([0, 1]), np.array([1, 2])], [np.array([0, 0, 1])]])
def test_overlapping_partitions_are_refused(digits, parts):
    x, y = digits
    fails_clearly(ValueError, "must not share examples", data.make_client_datasets, x, y, parts)


def test_partitions_as_one_2d_array_are_accepted(digits):
    x, y = digits
    stacked = np.arange(300).reshape(3, 100)
    assert [len(c) for c in data.make_client_data(x, y, stacked)] == [100, 100, 100]


# --- errors that name the argument ---------------------------------------------------------------

@pytest.mark.parametrize("seed, error", [(2**32, ValueError), (-1, ValueError),
                                         (1.5, TypeError)])
def test_set_seed_bad_seed(seed, error):
    fails_clearly(error, "seed must be an integer", fedutils.set_seed, seed)


@pytest.mark.parametrize("builder, kwargs, error, match", [
    (models.create_digits_model, {"num_features": 0}, ValueError, "num_features"),
    (models.create_digits_model, {"hidden_units": 10**7}, ValueError, "weights, more than"),
    (models.create_keras_model, {"num_features": 10**9}, ValueError, "weights, more than"),
    (models.create_medical_model, {"input_shape": 8}, TypeError, "input_shape must be"),
    (models.create_medical_model, {"input_shape": (8, 8)}, ValueError, "input_shape must be"),
    (models.create_medical_model, {"input_shape": (8, 8, 0)}, ValueError, r"input_shape\[2\]"),
    (models.create_medical_model, {"input_shape": (3, 3, 1)}, ValueError, r"input_shape\[0\]"),
    (models.create_medical_model, {"input_shape": (8.0, 8, 1)}, TypeError, r"input_shape\[0\]"),
    (models.create_keyboard_model, {"vocab_size": -3}, ValueError, "vocab_size"),
    (models.create_keyboard_model, {"vocab_size": 10**7}, ValueError, "weights, more than"),
])
def test_model_builders_bad_sizes(builder, kwargs, error, match):
    fails_clearly(error, match, builder, **kwargs)


def test_model_builders_accept_numpy_integers():
    model = models.create_medical_model(input_shape=np.array([8, 8, 1]), num_classes=3)
    assert model.output_shape == (None, 3)


def test_transfer_model_bad_head():
    base = models.create_digits_model()
    fails_clearly(ValueError, "hidden_units", models.create_transfer_model, base,
                  hidden_units=0)
    assert base.trainable  # refused before the base was frozen


@pytest.mark.parametrize("args, match", [((5, -2, 1.0), "clients_per_round"),
                                         ((-5, 2, 1.0), "num_clients"),
                                         ((5, 2, 1.5), "availability")])
def test_sample_clients_bad_counts(args, match):
    fails_clearly(ValueError, match, fedavg.sample_clients, *args, np.random.default_rng(0))


def test_sample_clients_bad_rng():
    fails_clearly(TypeError, "rng", fedavg.sample_clients, 5, 2, 1.0, "seed")


def test_sample_clients_huge_count():
    fails_clearly(ValueError, "num_clients", fedavg.sample_clients, 2**31, 2, 1.0,
                  np.random.default_rng(0), seconds=5)


def test_history_plot_on_an_empty_history():
    fails_clearly(ValueError, "History is empty", fedavg.History().plot)


@pytest.mark.parametrize("x, y, error, match", [
    (np.zeros((0, 64)), np.zeros(0, int), ValueError, "non-empty"),
    (np.zeros((10, 64)), np.zeros(5, int), ValueError, "same number of examples"),
    (np.zeros(64), np.zeros(1, int), ValueError, "x must be an array of shape"),
    ([[1, 2], [3]], np.zeros(2, int), TypeError, "ragged"),
])
def test_evaluate_weights_bad_data(x, y, error, match):
    model = models.create_digits_model()
    fails_clearly(error, match, evaluation.evaluate_weights, model, model.get_weights(), x, y)


def test_client_data_built_by_hand_is_checked():
    fails_clearly(ValueError, "with n >= 1", data.ClientData, np.zeros((0, 2)), np.zeros(0), 5)
    fails_clearly(ValueError, "batch_size", data.ClientData, np.zeros((2, 2)), np.zeros(2), 0)


# --- property tests: random bad inputs ---------------------------------------------------------

def junk_values(huge_integers: bool = True):
    """Values of every type a learner might pass by mistake."""
    return st.one_of(
        st.none(), st.booleans(), st.integers(-5, 50), st.floats(), st.text(max_size=3),
        st.sampled_from([-2**63, 2**31, 2**70] if huge_integers else [-2**63]),
        st.lists(st.integers(-3, 3), max_size=4), st.just([[1], [1, 2]]),
        hnp.arrays(np.int64, 3, elements=st.sampled_from([0, 1, 2**31, 10**12])),  # wild labels
        hnp.arrays(st.sampled_from([np.int64, np.float64, np.float32, np.bool_]),
                   hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5)),
    )


def maybe(valid, huge_integers: bool = True):
    """Mostly plausible values (so calls get past the first check), sometimes junk."""
    return st.one_of(valid, valid, junk_values(huge_integers))


labels = hnp.arrays(np.int64, st.integers(1, 40), elements=st.integers(-1, 4))
count = st.integers(-2, 12)
seed = st.integers(-2, 2**33)
fraction = st.floats(-0.5, 1.5)
features = hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64]),
                      st.tuples(st.integers(0, 40), st.integers(1, 4)))
index_lists = st.lists(hnp.arrays(np.int64, st.integers(0, 6), elements=st.integers(-1, 40)),
                       max_size=4)
tensor = hnp.arrays(np.float64, st.sampled_from([(3,), (2, 2)]),
                    elements=st.floats(-1e3, 1e3) | st.sampled_from([np.nan, np.inf, 0.0]))
weights = st.lists(tensor, min_size=0, max_size=2)
weight_lists = st.lists(weights, max_size=3)
noise = st.floats(0.05, 5) | st.sampled_from([0.0, -1.0, np.nan, 1e-9])
rate = st.floats(0.0, 1.0) | st.sampled_from([1e-12, 2.0])


_fuzz_model = []


def model_for_fuzzing():
    """One small model for every fuzzed call (building one per call costs 0.1 s)."""
    if not _fuzz_model:
        _fuzz_model.append(models.create_keras_model(num_features=4, hidden_units=3))
    return _fuzz_model[0]


# Each public function with a strategy per positional argument.
FUZZED = {
    "iid_partition": (partition.iid_partition, [maybe(labels | count), maybe(count), maybe(seed)]),
    "shard_partition": (partition.shard_partition,
                        [maybe(labels), maybe(count), maybe(count), maybe(seed)]),
    "dirichlet_partition": (partition.dirichlet_partition,
                            [maybe(labels), maybe(count),
                             maybe(st.floats(0, 10) | st.sampled_from([1e-300, 1e-9])),
                             maybe(seed), maybe(count), maybe(st.integers(-1, 30))]),
    "label_distribution": (partition.label_distribution,
                           [maybe(labels), maybe(index_lists), maybe(count | st.none())]),
    "label_skew": (partition.label_skew, [maybe(labels), maybe(index_lists)]),
    "train_test_split": (data.train_test_split,
                         [maybe(features), maybe(labels), maybe(fraction), maybe(seed)]),
    "make_client_data": (data.make_client_data, [maybe(features), maybe(labels),
                                                 maybe(index_lists), maybe(count), maybe(seed)]),
    "check_partitions": (data.check_partitions, [maybe(index_lists), maybe(count)]),
    "federated_digits": (data.federated_digits,
                         [maybe(count), st.sampled_from(["iid", "dirichlet", "shards", "x"]),
                          maybe(st.floats(0, 5) | st.none()), maybe(count), maybe(count)]),
    "server_aggregate": (fedavg.server_aggregate,
                         [maybe(weight_lists), maybe(st.none() | st.lists(count, max_size=3))]),
    "sample_clients": (lambda n, k, a: fedavg.sample_clients(n, k, a, np.random.default_rng(0)),
                       [maybe(count), maybe(count | fraction | st.none()),
                        maybe(fraction)]),
    "compute_epsilon": (privacy.compute_epsilon,
                        [maybe(noise), maybe(rate), maybe(st.integers(-1, 10**6)),
                         maybe(st.floats(0, 1)), st.sampled_from(["rdp", "pld", "xyz"])]),
    "dp_sgd_epsilon": (privacy.dp_sgd_epsilon,
                       [maybe(st.integers(-1, 10**5)), maybe(count), maybe(count), maybe(noise),
                        maybe(st.floats(0, 1))]),
    "clip_update": (privacy.clip_update, [maybe(weights), maybe(st.floats(-1, 10))]),
    "add_gaussian_noise": (privacy.add_gaussian_noise,
                           [maybe(weights), maybe(st.floats(-1, 10)), maybe(seed)]),
    "top_k_sparsify": (compression.top_k_sparsify, [maybe(weights), maybe(fraction)]),
    "quantize": (compression.quantize, [maybe(weights), maybe(st.integers(-1, 40))]),
    "payload_bytes": (compression.payload_bytes,
                      [maybe(weights), st.sampled_from(["dense", "sparse", "quantized", "x"]),
                       maybe(st.integers(-1, 40))]),
    "median": (robust.median, [maybe(weight_lists)]),
    "trimmed_mean": (robust.trimmed_mean, [maybe(weight_lists), maybe(fraction)]),
    "krum": (robust.krum, [maybe(weight_lists), maybe(count)]),
    "create_digits_model": (models.create_digits_model,
                            [maybe(st.integers(-1, 10**8)), maybe(count), maybe(count)]),
    "create_medical_model": (models.create_medical_model,
                             [maybe(st.tuples(count, count, count)), maybe(count)]),
    "evaluate_weights": (lambda w, x, y: evaluation.evaluate_weights(model_for_fuzzing(), w, x, y),
                         [maybe(weights), maybe(features), maybe(labels)]),
    "predict": (lambda x: evaluation.predict(model_for_fuzzing(), x), [maybe(features)]),
    "set_seed": (fedutils.set_seed, [maybe(seed)]),
}


def all_finite(value, depth=0) -> bool:
    """Every number inside a result (arrays, lists, dicts, dataclasses) is finite."""
    if depth > 6 or value is None or isinstance(value, (str, bool, tf.keras.Model)):
        return True
    if isinstance(value, (int, np.integer)):
        return True
    if isinstance(value, (float, np.floating)):
        return math.isfinite(value)
    if isinstance(value, np.ndarray):
        return not np.issubdtype(value.dtype, np.floating) or bool(np.all(np.isfinite(value)))
    if isinstance(value, dict):
        return all(all_finite(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(all_finite(v, depth + 1) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return all(all_finite(getattr(value, f), depth + 1) for f in value.__dataclass_fields__)
    return True


@pytest.fixture
def small_pld_limits(monkeypatch):
    """Keep fuzzed PLD calls well under a second each."""
    monkeypatch.setattr(accounting, "MAX_PLD_STEP_POINTS", 100_000)
    monkeypatch.setattr(accounting, "MAX_PLD_POINTS", 300_000)


@pytest.mark.parametrize("name", list(FUZZED))
@settings(max_examples=30, deadline=5000, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(draw=st.data())
def test_bad_inputs_raise_a_fedutils_error_or_return_finite_numbers(name, draw,
                                                                    small_pld_limits):
    fn, strategies = FUZZED[name]
    args = [draw.draw(s, label=f"argument {i}") for i, s in enumerate(strategies)]
    try:
        with time_limit(10), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn(*args)
    except (ValueError, TypeError) as exc:
        assert raised_by_fedutils(exc), f"{name}: raised outside fedutils: {exc!r}"
        return
    assert all_finite(result), f"{name} returned non-finite numbers: {result!r:.300}"
