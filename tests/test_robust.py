"""fedutils.robust: hand-computed cases, agreement with Flower 1.39's aggregation functions
(current-TF environment only), the documented differences from Flower, and bad inputs."""
import subprocess
import sys

import numpy as np
import pytest

from fedutils import robust
from fedutils.loop.aggregators import Aggregate, Aggregator


def clients(rows):
    """Updates of two tensors, shapes (2,) and (1, 1), from rows (a, b, c)."""
    return [[np.array([a, b], dtype=np.float32), np.array([[c]], dtype=np.float32)]
            for a, b, c in rows]


# Five clients; the last is an outlier.
FIVE = clients([(1, 10, 0), (2, 20, 1), (3, 33, 2), (4, 40, 3), (100, -50, 4)])
# Five points in the plane for Krum, as tensors of shapes (1,) and (1, 1); the last is far off.
POINTS = [[np.array([x]), np.array([[y]])] for x, y in [(0, 0), (1, 0), (0, 2), (3, 3), (10, 10)]]


def assert_weights(actual, expected, tol=1e-6):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


# --- hand-computed cases --------------------------------------------------------------------

def test_median_by_hand_odd_and_even_number_of_clients():
    out = robust.median(FIVE)
    assert_weights(out, [[3, 20], [[2]]])          # -50, 10, [20], 33, 40
    assert [a.dtype for a in out] == [np.float32, np.float32]
    assert [a.shape for a in out] == [(2,), (1, 1)]
    # Even n: the mean of the two middle values, not one client's value.
    assert_weights(robust.median(FIVE[:4]), [[2.5, 26.5], [[1.5]]])


def test_trimmed_mean_by_hand():
    # beta = 0.2 of 5 clients: one value dropped at each end of every coordinate.
    assert robust.num_trimmed(5, 0.2) == 1
    assert_weights(robust.trimmed_mean(FIVE, 0.2), [[3, 21], [[2]]])   # mean(10, 20, 33) = 21
    # beta = 0 is the plain mean; 0.19 of 5 trims nothing (floor(0.95) = 0).
    assert_weights(robust.trimmed_mean(FIVE, 0.0), [[22, 10.6], [[2]]])
    assert_weights(robust.trimmed_mean(FIVE, 0.19), robust.trimmed_mean(FIVE, 0.0))
    # 0.49 of 5 trims 2 at each end: the median.
    assert_weights(robust.trimmed_mean(FIVE, 0.49), robust.median(FIVE))
    assert robust.num_trimmed(4, 0.4999999999999) == 1      # never everything


def test_krum_scores_and_selection_by_hand():
    # Squared distances: d01=1 d02=4 d03=18 d04=200 d12=5 d13=13 d14=181 d23=10 d24=164 d34=98;
    # with f = 1, each score sums the n - f - 2 = 2 smallest distances to the others.
    np.testing.assert_allclose(robust.krum_scores(POINTS, 1), [5, 6, 9, 23, 262])
    assert_weights(robust.krum(POINTS, 1), [[0], [[0]]])                  # client 0
    assert_weights(robust.krum(POINTS, 1, num_selected=2), [[0.5], [[0]]])  # mean of 0, 1
    assert_weights(robust.krum(POINTS, 1, num_selected=3), [[1 / 3], [[2 / 3]]])
    out = robust.krum(POINTS, 1)
    assert [a.dtype for a in out] == [np.float64, np.float64]   # integer input, float output
    # f = 0: three neighbours: c0 = 1+4+18 = 23, c1 = 1+5+13 = 19, c2 = 4+5+10 = 19: c1 wins tie.
    np.testing.assert_allclose(robust.krum_scores(POINTS, 0), [23, 19, 19, 41, 443])
    assert_weights(robust.krum(POINTS, 0), [[1], [[0]]])


def test_norm_bounded_mean_by_hand():
    updates = [[np.array([3.0]), np.array([[4.0]])],      # norm 5: scaled by 2/5
               [np.array([0.6]), np.array([[0.8]])]]      # norm 1: unchanged
    assert_weights(robust.norm_bounded_mean(updates, 2.0), [[0.9], [[1.2]]])
    assert_weights(robust.norm_bounded_mean(updates, 2.0, num_examples=[1, 3]),
                   [[0.75], [[1.0]]])                     # (1.2 + 3·0.6) / 4, (1.6 + 3·0.8) / 4
    assert_weights(robust.norm_bounded_mean(updates, 10.0), [[1.8], [[2.4]]])  # nothing clipped


def test_integer_updates_give_float64():
    ints = [[np.array([1, 2]), np.array([[3]])], [np.array([2, 4]), np.array([[5]])],
            [np.array([4, 8]), np.array([[9]])]]
    for out in (robust.median(ints), robust.trimmed_mean(ints, 0.0), robust.krum(ints, 0),
                robust.norm_bounded_mean(ints, 100.0)):
        assert [a.dtype for a in out] == [np.float64, np.float64]
    assert_weights(robust.trimmed_mean(ints, 0.0), [[7 / 3, 14 / 3], [[17 / 3]]])


# --- aggregator classes ---------------------------------------------------------------------

def test_aggregators_match_the_functions_and_measure():
    counts = np.array([10, 20, 30, 40, 50])
    ids = ["a", "b", "c", "d", "e"]
    rng = np.random.default_rng(0)
    sent = sum(a.nbytes for u in FIVE for a in u)
    for agg, expected in [(robust.Median(), robust.median(FIVE)),
                          (robust.TrimmedMean(0.2), robust.trimmed_mean(FIVE, 0.2))]:
        assert isinstance(agg, Aggregator)
        out = agg.aggregate(FIVE, counts, ids, rng)
        assert isinstance(out, Aggregate) and out.measurements["upload_bytes"] == sent
        assert_weights(out.delta, expected)
        assert_weights(agg(FIVE), expected)          # counts are ignored
    assert robust.TrimmedMean(0.2).aggregate(FIVE, counts, ids, rng).measurements[
        "num_trimmed"] == 1


def test_krum_aggregator_reports_the_selected_clients():
    out = robust.Krum(1, num_selected=2).aggregate(POINTS, np.ones(5), list("abcde"),
                                                   np.random.default_rng(0))
    assert out.measurements["krum_selected"] == ["a", "b"]
    assert out.measurements["upload_bytes"] == 5 * 2 * 8
    assert_weights(out.delta, [[0.5], [[0]]])
    assert_weights(robust.Krum(1)(POINTS), robust.krum(POINTS, 1))
    assert robust.Krum(1).aggregate(POINTS, None, [7, 8, 9, 10, 11], None).measurements[
        "krum_selected"] == [7]


def test_norm_bounded_aggregator_clips_then_delegates():
    updates = [[np.array([3.0]), np.array([[4.0]])], [np.array([0.6]), np.array([[0.8]])]]
    out = robust.NormBounded(2.0).aggregate(updates, np.array([1, 3]), [0, 1],
                                            np.random.default_rng(0))
    assert_weights(out.delta, [[0.75], [[1.0]]])                 # weighted by default
    assert out.measurements == {"upload_bytes": 32, "clipped_fraction": 0.5}
    assert_weights(robust.NormBounded(2.0)(updates), [[0.9], [[1.2]]])   # no counts: plain mean
    # Clip then take the median: updates longer than 20 (all but the first) are scaled to 20.
    clipped = [[a * min(1.0, 20 / np.sqrt(sum(np.sum(t.astype(float) ** 2) for t in u)))
                for a in u] for u in FIVE]
    out = robust.NormBounded(20.0, robust.Median()).aggregate(FIVE, None, list(range(5)), None)
    assert_weights(out.delta, robust.median(clipped), tol=1e-5)
    assert out.measurements["clipped_fraction"] == 0.8   # norms 10.05, 20.12, ..., 112
    assert out.measurements["upload_bytes"] == sum(a.nbytes for u in FIVE for a in u)


def test_norm_bounded_passes_the_inner_state_through():
    class Counting(Aggregator):
        def initialize(self):
            return 0

        def aggregate(self, updates, num_examples, client_ids, rng, state=None):
            return Aggregate(updates[0], {"calls": state + 1}, state + 1)

    agg = robust.NormBounded(1.0, Counting())
    assert agg.initialize() == 0
    out = agg.aggregate(POINTS, None, list(range(5)), None, state=4)
    assert out.state == 5 and out.measurements["calls"] == 5


def test_robust_does_not_import_tensorflow():
    code = "import sys, fedutils.robust; assert 'tensorflow' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- agreement with Flower (current-TF environment) -----------------------------------------

def random_clients(seed, n, dtype):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=(3, 4)).astype(dtype), rng.normal(size=5).astype(dtype)]
            for _ in range(n)]


def flower():
    pytest.importorskip("flwr")
    from flwr.server.strategy import aggregate
    return aggregate


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [5, 6, 7, 10])
def test_equal_to_flower_on_random_inputs(n, dtype):
    fl = flower()
    for seed in range(3):
        updates = random_clients(seed, n, dtype)
        results = [(u, 10 + i) for i, u in enumerate(updates)]
        assert_weights(robust.median(updates), fl.aggregate_median(results))
        for beta in (0.0, 0.1, 0.2, 0.3, 0.45):
            assert_weights(robust.trimmed_mean(updates, beta),
                           fl.aggregate_trimmed_avg(results, beta))
        for f in range((n - 3) // 2 + 1):
            assert_weights(robust.krum(updates, f), fl.aggregate_krum(results, f, 0))
            equal = [(u, 7) for u in updates]   # Flower's Multi-Krum weights by counts
            for m in (1, 2, n - f):
                assert_weights(robust.krum(updates, f, m), fl.aggregate_krum(equal, f, m))


def test_multi_krum_differs_from_flower_with_unequal_counts():
    fl = flower()
    results = [(u, c) for u, c in zip(POINTS, [1, 3, 1, 1, 1])]
    # Both select clients 0 and 1; Flower weights them 1:3, fedutils averages them.
    assert_weights(fl.aggregate_krum(results, 1, 2), [[0.75], [[0]]])
    assert_weights(robust.krum(POINTS, 1, num_selected=2), [[0.5], [[0]]])


def test_trimmed_mean_differs_from_flower_where_beta_n_rounds_down():
    fl = flower()
    updates = [[np.array([float(i)])] for i in range(48)] + [[np.array([1000.0])]]
    beta = 1 / 49                                        # 49 · (1/49) = 0.9999999999999999
    # Flower trims int(0.99…) = 0 values, so the outlier stays in; fedutils trims one per end.
    assert_weights(fl.aggregate_trimmed_avg([(u, 1) for u in updates], beta), [[2128 / 49]])
    assert_weights(robust.trimmed_mean(updates, beta), [[24.0]])   # mean of 1 .. 47


def test_krum_with_too_many_malicious_runs_in_flower_but_raises_here():
    fl = flower()
    # n = 5, f = 2 breaks n > 2f + 2; Flower still answers (with max(1, n-f-2) = 1 neighbour).
    assert_weights(fl.aggregate_krum([(u, 1) for u in POINTS], 2, 0), POINTS[0])
    with pytest.raises(ValueError, match="num_malicious"):
        robust.krum(POINTS, 2)


# --- bad inputs -----------------------------------------------------------------------------

FUNCTIONS = [robust.median, lambda u: robust.trimmed_mean(u, 0.1),
             lambda u: robust.krum(u, 0), lambda u: robust.krum_scores(u, 0),
             lambda u: robust.norm_bounded_mean(u, 1.0)]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_bad_updates_are_rejected_naming_the_argument(function):
    ok = [np.zeros(2), np.zeros((1, 1))]
    with pytest.raises(ValueError, match="updates is empty"):
        function([])
    with pytest.raises(TypeError, match="updates"):
        function(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"updates\[1\]\[0\] must have shape \(2,\)"):
        function([ok, [np.zeros(3), np.zeros((1, 1))], ok])
    with pytest.raises(ValueError, match=r"updates\[2\] must hold 2 tensors"):
        function([ok, ok, [np.zeros(2)]])
    with pytest.raises(ValueError, match=r"updates\[1\]\[1\] contains NaN"):
        function([ok, [np.zeros(2), np.full((1, 1), np.nan)], ok])
    with pytest.raises(TypeError, match=r"updates\[0\]\[0\] must be numeric"):
        function([[np.array(["a", "b"]), np.zeros((1, 1))]] * 3)


def test_bad_parameters_are_rejected_naming_the_argument():
    for beta in (0.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            robust.trimmed_mean(FIVE, beta)
    with pytest.raises(TypeError, match="beta"):
        robust.trimmed_mean(FIVE, "0.1")
    with pytest.raises(ValueError, match=r"num_malicious <= 1 .*got 2"):
        robust.krum(FIVE, 2)
    with pytest.raises(ValueError, match="num_malicious"):
        robust.krum(FIVE[:2], 0)                      # Krum needs at least 3 clients
    with pytest.raises(ValueError, match="num_malicious"):
        robust.krum_scores(FIVE, -1)
    with pytest.raises(TypeError, match="num_malicious"):
        robust.krum(FIVE, 1.0)
    for m in (0, 6):
        with pytest.raises(ValueError, match="num_selected"):
            robust.krum(FIVE, 1, num_selected=m)
    for bound in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="max_norm"):
            robust.norm_bounded_mean(FIVE, bound)
    with pytest.raises(ValueError, match="num_examples"):
        robust.norm_bounded_mean(FIVE, 1.0, num_examples=[1, 2])


def test_bad_aggregator_arguments_are_rejected_naming_the_argument():
    with pytest.raises(ValueError, match="beta"):
        robust.TrimmedMean(0.5)
    with pytest.raises(ValueError, match="num_malicious"):
        robust.Krum(-1)
    with pytest.raises(ValueError, match="num_selected"):
        robust.Krum(1, num_selected=0)
    with pytest.raises(ValueError, match="max_norm"):
        robust.NormBounded(0.0)
    with pytest.raises(TypeError, match="inner"):
        robust.NormBounded(1.0, inner="median")
    with pytest.raises(ValueError, match="num_malicious"):    # too few clients this round
        robust.Krum(2)(FIVE)
    with pytest.raises(ValueError, match="num_selected"):
        robust.Krum(1, num_selected=6)(FIVE)
