import numpy as np
import pytest

from fedutils import compression, data, fedavg, models, partition

DIGITS_SHAPES = [(64, 64), (64,), (64, 10), (10,)]  # create_digits_model(): 4,810 weights


def slide_compress_weights(weights, compression_ratio=0.1):  # slide 7, verbatim
    compressed = []
    for w in weights:
        # Keep only the top k% of values
        k = int(w.size * compression_ratio)
        flat = w.flatten()
        idx = np.argpartition(np.abs(flat), -k)[-k:]
        sparse = np.zeros_like(flat)
        sparse[idx] = flat[idx]
        compressed.append(sparse.reshape(w.shape))
    return compressed


def random_update(rng, shapes=DIGITS_SHAPES):
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


# --- sparsification -------------------------------------------------------------------------

def test_top_k_keeps_exactly_k_largest_and_at_least_one_per_tensor():
    rng = np.random.default_rng(0)
    update = [rng.normal(size=(64, 64)), rng.normal(size=64), rng.normal(size=3)]
    sparse = compression.top_k_sparsify(update, 0.1)
    assert [np.count_nonzero(s) for s in sparse] == [410, 7, 1]  # ceil(0.1·size), at least 1
    for raw, kept in zip(update, sparse):
        mask = kept != 0
        assert np.array_equal(kept[mask], raw[mask])                  # values untouched
        assert np.abs(raw[mask]).min() >= np.abs(raw[~mask]).max()    # the largest ones
    bias = sparse[2]
    assert np.count_nonzero(bias) == 1 and bias[np.argmax(np.abs(update[2]))] != 0


def test_the_slides_top_k_keeps_every_value_of_a_small_tensor():
    rng = np.random.default_rng(1)
    bias = rng.normal(size=3)
    slide = slide_compress_weights([bias], 0.1)[0]          # k = int(0.3) = 0, [-0:] keeps all
    assert np.array_equal(slide, bias)
    assert np.count_nonzero(compression.top_k_sparsify([bias], 0.1)[0]) == 1
    big = rng.normal(size=(50, 20))                          # where k > 0 the two agree
    np.testing.assert_array_equal(slide_compress_weights([big], 0.1)[0],
                                  compression.top_k_sparsify([big], 0.1)[0])


def test_top_k_breaks_ties_deterministically_and_keeps_exactly_k():
    ties = np.array([1.0, -1.0, 1.0, 1.0, 0.5])
    out = compression.top_k_sparsify([ties], 0.4)[0]        # k = 2 among four equal magnitudes
    np.testing.assert_array_equal(out, [1.0, -1.0, 0.0, 0.0, 0.0])
    assert compression.num_kept(100, 0.07) == 7              # not 8 from 0.07*100 = 7.000…01
    assert compression.num_kept(5, 1.0) == 5


def test_random_k_keeps_k_random_entries_seeded_and_optionally_unbiased():
    rng = np.random.default_rng(2)
    update = [rng.normal(size=(40, 25)), rng.normal(size=3)]
    a = compression.random_k_sparsify(update, 0.05, rng=3)
    b = compression.random_k_sparsify(update, 0.05, rng=3)
    assert [np.count_nonzero(s) for s in a] == [50, 1]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    scaled = compression.random_k_sparsify(update, 0.05, rng=3, unbiased=True)
    mask = a[0] != 0
    np.testing.assert_allclose(scaled[0][mask], update[0][mask] * 1000 / 50)
    # unbiased in expectation: the mean over many draws approaches the dense update
    gen = np.random.default_rng(4)
    small = [np.arange(1.0, 11.0)]
    draws = np.mean([compression.random_k_sparsify(small, 0.2, gen, unbiased=True)[0]
                     for _ in range(4000)], axis=0)
    np.testing.assert_allclose(draws, small[0], rtol=0.15)


# --- bytes ----------------------------------------------------------------------------------

def test_payload_bytes_matches_a_hand_count():
    update = [np.zeros(300), np.zeros((10, 10)), np.zeros(70000)]
    update[0][[0, 10, 20, 30, 299]] = 1.0
    update[1][[0, 5, 9], [9, 5, 0]] = -2.0
    update[2][[7, 69999]] = 3.0
    assert compression.payload_bytes(update) == (300 + 100 + 70000) * 4
    # nonzeros × (4 value bytes + index bytes): 300 values need 2-byte indices, 100 need 1,
    # 70,000 need 4
    assert compression.payload_bytes(update, "sparse") == 5 * (4 + 2) + 3 * (4 + 1) + 2 * (4 + 4)
    assert compression.payload_bytes(update, "sparse", ratio=0.01) == (3 * 6 + 1 * 5 + 700 * 8)
    assert compression.payload_bytes(update, "quantized", bits=8) == 300 + 100 + 70000 + 3 * 8
    # 3 bits: ceil(900/8) + ceil(300/8) + ceil(210000/8), plus min and step per tensor
    assert compression.payload_bytes(update, "quantized", bits=3) == 113 + 38 + 26250 + 3 * 8
    q = compression.quantize(update, 3)
    assert compression.payload_bytes(q) == 113 + 38 + 26250 + 3 * 8
    assert [compression.index_bytes(n) for n in (1, 256, 257, 65536, 65537)] == [1, 1, 2, 2, 4]


def test_payload_bytes_of_the_digits_model():
    update = random_update(np.random.default_rng(5))
    assert compression.payload_bytes(update) == 19240
    top1 = compression.top_k_sparsify(update, 0.01)                   # k = 41, 1, 7, 1
    expected = 41 * (4 + 2) + 1 * (4 + 1) + 7 * (4 + 2) + 1 * (4 + 1)
    assert compression.payload_bytes(top1, "sparse") == expected == 298
    assert compression.payload_bytes(update, "sparse", ratio=0.01) == 298


# --- quantization ---------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16, 32])
def test_quantize_error_is_within_half_a_step_or_one_step_stochastic(bits):
    update = random_update(np.random.default_rng(6))
    for stochastic, bound in ((False, 0.5), (True, 1.0)):
        q = compression.quantize(update, bits, stochastic=stochastic, rng=0)
        assert all(c.max() <= 2 ** bits - 1 for c in q.codes)
        for raw, back, step in zip(update, compression.dequantize(q), q.steps):
            assert back.dtype == raw.dtype and back.shape == raw.shape
            error = np.abs(back.astype(np.float64) - raw)
            float32_rounding = 1e-7 * np.abs(raw).max()   # the result is cast back to float32
            assert error.max() <= bound * step + float32_rounding
    assert compression.quantize(update, 8).codes[0].dtype == np.uint8


def test_quantize_a_constant_tensor_is_exact():
    const = [np.full((3, 4), 0.25, np.float32), np.zeros(5, np.float32)]
    for stochastic in (False, True):
        back = compression.dequantize(compression.quantize(const, 4, stochastic, rng=1))
        assert all(np.array_equal(a, b) for a, b in zip(back, const))


def test_stochastic_rounding_is_unbiased_and_deterministic_rounding_is_not():
    x = [np.random.default_rng(7).uniform(-1, 1, size=200)]
    gen = np.random.default_rng(8)
    draws = 3000
    mean = np.mean([compression.dequantize(compression.quantize(x, 2, True, gen))[0]
                    for _ in range(draws)], axis=0)
    step = compression.quantize(x, 2).steps[0]
    # each draw errs by at most one step, so the mean of `draws` errs by ~step/(2·sqrt(draws))
    assert np.max(np.abs(mean - x[0])) < 5 * step / (2 * np.sqrt(draws))
    nearest = compression.dequantize(compression.quantize(x, 2))[0]
    assert np.max(np.abs(nearest - x[0])) > 10 * np.max(np.abs(mean - x[0]))


# --- error feedback -------------------------------------------------------------------------

def test_error_feedback_loses_nothing_over_rounds():
    rng = np.random.default_rng(9)
    feedback = compression.ErrorFeedback()
    raw = {c: [] for c in (3, 8)}
    sent = {c: [] for c in (3, 8)}
    for _ in range(6):
        for c in raw:
            update = random_update(rng)
            raw[c].append(update)
            sent[c].append(feedback.compress(c, update,
                                             lambda u: compression.top_k_sparsify(u, 0.05)))
    for c in raw:
        for t in range(len(DIGITS_SHAPES)):
            total_raw = np.sum([u[t].astype(np.float64) for u in raw[c]], axis=0)
            total_sent = np.sum([s[t].astype(np.float64) for s in sent[c]], axis=0)
            np.testing.assert_allclose(total_sent + feedback.residual(c)[t], total_raw,
                                       rtol=0, atol=1e-12)
    assert sent[3][0][0].dtype == np.float32
    assert feedback.residual(99) is None
    with pytest.raises(ValueError, match="must hold 4 tensors"):
        feedback.compress(3, [np.zeros(2)], lambda u: u)
    with pytest.raises(ValueError, match=r"update\[1\] must have shape \(64,\)"):
        feedback.compress(3, [np.zeros((64, 64)), np.zeros(3), np.zeros((64, 10)), np.zeros(10)],
                          lambda u: u)
    with pytest.raises(ValueError, match=r"compress_fn\(update\)\[0\] must have shape"):
        feedback.compress(5, [np.zeros(4)], lambda u: [np.zeros(2)])


def test_error_feedback_eventually_sends_what_top_k_alone_never_would():
    update = [np.array([10.0, 1.0, 1.0, 1.0])]
    feedback = compression.ErrorFeedback()
    sent = [feedback.compress(0, update, lambda u: compression.top_k_sparsify(u, 0.25))[0]
            for _ in range(20)]
    assert all(s[1:].sum() == 0 for s in compression.top_k_sparsify(update, 0.25))
    assert np.sum(sent, axis=0)[1:].min() > 0   # the small entries get through


# --- the aggregator -------------------------------------------------------------------------

@pytest.fixture
def digits_clients(five_digit_clients):
    return five_digit_clients


def run(clients, initial, aggregator, rounds=2):
    return fedavg.run_fedavg(models.create_digits_model, clients, rounds=rounds,
                             aggregator=aggregator, initial_weights=initial,
                             progress=False)


@pytest.mark.parametrize("kwargs, per_client", [
    ({"method": "top_k", "ratio": 0.01}, 298),
    ({"method": "random_k", "ratio": 0.01}, 298),
    ({"method": "quantize", "bits": 8}, 4096 + 64 + 640 + 10 + 4 * 8),
])
def test_compression_aggregator_runs_inside_run_fedavg(digits_clients, kwargs, per_client):
    agg = compression.CompressionAggregator(**kwargs)
    history = run(*digits_clients, agg)
    assert history["upload_bytes"] == [5 * per_client] * 2
    assert history["dense_upload_bytes"] == [5 * 19240] * 2
    assert history["download_bytes"] == [5 * 19240] * 2
    assert all(np.isfinite(w).all() for w in history.final_weights)


def test_error_feedback_starts_fresh_in_every_run(digits_clients):
    """The residuals are the aggregator's state, made anew by each run: running the same
    aggregator twice gives the same numbers (re-running a lesson's cell changes nothing)."""
    agg = compression.CompressionAggregator("top_k", ratio=0.01)
    first, second = run(*digits_clients, agg), run(*digits_clients, agg)
    for a, b in zip(first.final_weights, second.final_weights):
        np.testing.assert_array_equal(a, b)
    state = agg.initialize()
    out = agg.aggregate([[np.ones(4)]], np.ones(1), [7], np.random.default_rng(0), state)
    assert out.state is state and len(state.residuals) == 1 and not agg.initialize().residuals


def test_lossless_compression_without_feedback_is_fedavg(digits_clients):
    plain = run(*digits_clients, None, rounds=1)
    for kwargs in ({"method": "top_k", "ratio": 1.0}, {"method": "quantize", "bits": 32}):
        agg = compression.CompressionAggregator(error_feedback=False, **kwargs)
        ours = run(*digits_clients, agg, rounds=1)
        for a, b in zip(ours.final_weights, plain.final_weights):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_compression_aggregator_averages_weighted_by_examples():
    a = [np.array([1.0, 0.0, 0.0, 0.0])]
    b = [np.array([0.0, 0.0, 0.0, 4.0])]
    agg = compression.CompressionAggregator("top_k", ratio=0.25, error_feedback=True)
    out = agg.aggregate([a, b], np.array([3, 1]), [0, 1], np.random.default_rng(0),
                        agg.initialize())
    np.testing.assert_allclose(out.delta[0], [0.75, 0.0, 0.0, 1.0])
    assert out.measurements["upload_bytes"] == 2 * (4 + 1)   # one float32 and a 1-byte index
    np.testing.assert_allclose(agg([a, b], np.array([3, 1]))[0], [0.75, 0.0, 0.0, 1.0])


def test_stochastic_quantize_aggregator_rounds_at_random_with_the_rounds_rng():
    """stochastic=True: each client's update is quantize(..., stochastic=True) drawn from the
    round's rng, in client order (so a seeded run is reproducible); the default is nearest."""
    rng = np.random.default_rng(0)
    updates = [[rng.normal(size=(6, 5)), rng.normal(size=3)] for _ in range(3)]
    counts = np.array([2, 5, 1])
    agg = compression.CompressionAggregator("quantize", bits=2, error_feedback=False,
                                            stochastic=True)
    out = agg.aggregate(updates, counts, [0, 1, 2], np.random.default_rng(9))
    draws = np.random.default_rng(9)
    by_hand = [compression.dequantize(compression.quantize(u, 2, stochastic=True, rng=draws))
               for u in updates]
    for a, b in zip(out.delta, fedavg.server_aggregate(by_hand, counts)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    nearest = compression.CompressionAggregator("quantize", bits=2, error_feedback=False)
    assert not nearest.stochastic and "stochastic" not in repr(nearest)
    by_nearest = [compression.dequantize(compression.quantize(u, 2)) for u in updates]
    for a, b in zip(nearest.aggregate(updates, counts, [0, 1, 2], None).delta,
                    fedavg.server_aggregate(by_nearest, counts)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert "stochastic=True" in repr(agg)
    assert out.measurements["upload_bytes"] == 3 * ((30 * 2 + 7) // 8 + 8 + 1 + 8)


def test_stochastic_quantize_aggregator_is_unbiased_and_nearest_is_not():
    """Averaged over many rounds, 1-bit stochastic rounding gives the true mean update; nearest
    rounding keeps its error however often it is repeated."""
    update = [np.array([0.1, 0.2, 0.3, 1.0, -1.0])]
    stochastic = compression.CompressionAggregator("quantize", bits=1, error_feedback=False,
                                                   stochastic=True)
    nearest = compression.CompressionAggregator("quantize", bits=1, error_feedback=False)
    rng = np.random.default_rng(1)
    mean = np.mean([stochastic([update], rng=rng)[0] for _ in range(4000)], axis=0)
    np.testing.assert_allclose(mean, update[0], atol=0.05)
    assert np.max(np.abs(nearest([update])[0] - update[0])) > 0.25


def test_stochastic_quantize_aggregator_trains_reproducibly(digits_clients):
    agg = compression.CompressionAggregator("quantize", bits=2, stochastic=True,
                                            error_feedback=False)
    first, second = run(*digits_clients, agg), run(*digits_clients, agg)
    for a, b in zip(first.final_weights, second.final_weights):
        np.testing.assert_array_equal(a, b)
    nearest = run(*digits_clients, compression.CompressionAggregator(
        "quantize", bits=2, error_feedback=False))
    assert max(float(np.max(np.abs(a - b)))
               for a, b in zip(first.final_weights, nearest.final_weights)) > 1e-4


# --- bad input ------------------------------------------------------------------------------

ONE = [np.ones(4, np.float32)]


@pytest.mark.parametrize("call, match", [
    (lambda: compression.top_k_sparsify(ONE, 0.0), r"ratio must be a finite number in \(0, 1\]"),
    (lambda: compression.top_k_sparsify(ONE, 1.5), "ratio"),
    (lambda: compression.random_k_sparsify(ONE, -0.1, 0), "ratio"),
    (lambda: compression.quantize(ONE, 0), r"bits must be an integer in \[1, 32\]"),
    (lambda: compression.quantize(ONE, 33), "bits"),
    (lambda: compression.top_k_sparsify([], 0.1), "at least one tensor"),
    (lambda: compression.top_k_sparsify([np.array([np.nan, 1.0])], 0.5), "NaN"),
    (lambda: compression.payload_bytes(ONE, "zip"), "scheme"),
    (lambda: compression.payload_bytes(ONE, "dense", ratio=0.1), "ratio"),
    (lambda: compression.payload_bytes(ONE, "sparse", ratio=2.0), "ratio"),
    (lambda: compression.payload_bytes(ONE, "quantized", bits=40), "bits"),
    (lambda: compression.CompressionAggregator("prune", ratio=0.1), "method"),
    (lambda: compression.CompressionAggregator("top_k"), "ratio is required"),
    (lambda: compression.CompressionAggregator("top_k", ratio=0.1, bits=8), "bits"),
    (lambda: compression.CompressionAggregator("quantize", bits=8, ratio=0.1), "ratio"),
    (lambda: compression.CompressionAggregator("quantize", bits=64), "bits"),
    (lambda: compression.CompressionAggregator("top_k", ratio=0.1, stochastic=True),
     "stochastic is for method 'quantize'"),
    (lambda: compression.CompressionAggregator("top_k", ratio=0.1)([], [], [], None), "empty"),
    (lambda: compression.CompressionAggregator("top_k", ratio=0.1)(
        [ONE, [np.ones(3)]], [1, 1], [0, 1], None), "shape"),
    (lambda: compression.CompressionAggregator("top_k", ratio=0.1)(
        [ONE, ONE], [1, 1], [0], None), "client_ids"),
])
def test_bad_input_raises_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call, match", [
    (lambda: compression.quantize(ONE, 2.5), "bits must be an integer"),
    (lambda: compression.dequantize(ONE), "Quantized"),
    (lambda: compression.ErrorFeedback().compress(0, ONE, "top_k"), "compress_fn"),
    (lambda: compression.random_k_sparsify(ONE, 0.5, rng="x"), "rng"),
    (lambda: compression.CompressionAggregator("quantize", bits=2, stochastic="yes"),
     "stochastic must be True or False"),
])
def test_bad_types_raise_a_clear_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()
