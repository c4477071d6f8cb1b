"""Lesson 07 (communication): what the lesson builds in the open agrees with fedutils.compression.

The functions are taken from the notebook's own cells (found by their name tags and executed),
so a change in the lesson that breaks agreement fails here. The last test checks the
lesson's description of TFF's compression_aggregator() against the installed TFF source; the
exercises' checks must accept the solution and reject a wrong answer.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest

from fedutils import compression

import lesson_code

LESSON = Path(__file__).resolve().parent.parent / "lessons" / "07_communication.ipynb"
DIGITS_SHAPES = [(64, 64), (64,), (64, 10), (10,)]


def lesson_namespace(*tags: str) -> dict:
    """Execute the lesson's definition cells tagged `tags` and return what they define."""
    namespace = {"np": np, "math": math, "compression": compression}
    return lesson_code.exec_cells(LESSON, namespace, *tags)


def random_update(rng, shapes=DIGITS_SHAPES):
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


def test_slide_top_k_sends_small_tensors_whole_and_fedutils_does_not():
    compress_weights = lesson_namespace("slide-compress-weights")["compress_weights"]
    update = random_update(np.random.default_rng(0))
    slide = compress_weights(update, 0.01)
    fixed = compression.top_k_sparsify(update, 0.01)
    for u, s, f in zip(update, slide, fixed):
        if u.size < 100:  # int(size * 0.01) == 0: everything kept
            np.testing.assert_array_equal(s, u)
        else:
            assert np.count_nonzero(s) == int(u.size * 0.01)
        assert np.count_nonzero(f) == max(1, math.ceil(u.size * 0.01))


@pytest.mark.parametrize("ratio", [0.5, 0.1, 0.07, 0.05, 0.01, 0.001, 1.0])
def test_top_k_by_hand_equals_fedutils(ratio):
    top_k_by_hand = lesson_namespace("top-k-by-hand")["top_k_by_hand"]
    rng = np.random.default_rng(1)
    shapes = DIGITS_SHAPES + [(100,), (3,), (7, 3, 5)]
    update = random_update(rng, shapes)
    update.append(rng.integers(-3, 4, size=50).astype(np.float32))  # ties in magnitude
    for mine, packaged in zip(top_k_by_hand(update, ratio),
                              compression.top_k_sparsify(update, ratio)):
        np.testing.assert_array_equal(mine, packaged)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("stochastic", [False, True])
def test_quantize_by_hand_equals_fedutils(bits, stochastic):
    ns = lesson_namespace("quantize-by-hand")
    update = random_update(np.random.default_rng(2)) + [np.full((4,), 0.5, np.float32)]
    rng = np.random.default_rng(3)
    mine = [ns["quantize_by_hand"](u, bits, stochastic, rng) for u in update]
    q = compression.quantize(update, bits, stochastic=stochastic, rng=3)
    for (codes, low, step), c, u, r in zip(mine, q.codes, update, compression.dequantize(q)):
        np.testing.assert_array_equal(codes, c)
        rebuilt = ns["dequantize_by_hand"](codes, low, step)
        np.testing.assert_allclose(rebuilt, r, rtol=1e-6, atol=1e-9)
        error = np.abs(rebuilt - u.astype(np.float64)).max()
        assert error <= (step if stochastic else step / 2) + 1e-9


def test_exercise_error_feedback_equals_fedutils_and_loses_nothing():
    MyErrorFeedback = lesson_namespace("exercise-2-solution")["MyErrorFeedback"]
    rng = np.random.default_rng(4)
    compressors = [lambda u: compression.top_k_sparsify(u, 0.01),
                   lambda u: compression.dequantize(compression.quantize(u, 2))]
    for compress_fn in compressors:
        mine, theirs = MyErrorFeedback(), compression.ErrorFeedback()
        totals = {c: [np.zeros(s) for s in DIGITS_SHAPES] for c in (0, 1, 2)}
        sent_sum = {c: [np.zeros(s) for s in DIGITS_SHAPES] for c in (0, 1, 2)}
        for _ in range(4):
            for client in (0, 1, 2):
                u = random_update(rng)
                a = mine.compress(client, u, compress_fn)
                b = theirs.compress(client, u, compress_fn)
                for x, y in zip(a, b):
                    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
                totals[client] = [t + v for t, v in zip(totals[client], u)]
                sent_sum[client] = [t + v for t, v in zip(sent_sum[client], a)]
        for client in (0, 1, 2):  # sent + residual == sum of the updates
            for s, r, t in zip(sent_sum[client], mine.residuals[client], totals[client]):
                np.testing.assert_allclose(s + r, t, atol=1e-9)


def test_kept_share_and_top_k_beats_random_k():
    kept_share = lesson_namespace("kept-share")["kept_share"]
    full = [np.array([3.0, 4.0]), np.array([0.0])]
    assert kept_share([np.array([0.0, 4.0]), np.array([0.0])], full) == pytest.approx(16 / 25)
    update = [u * np.exp(np.random.default_rng(5).normal(size=u.shape)).astype(np.float32)
              for u in random_update(np.random.default_rng(6))]  # heavy-tailed, like updates
    top = kept_share(compression.top_k_sparsify(update, 0.05), update)
    rand = kept_share(compression.random_k_sparsify(update, 0.05, rng=0), update)
    assert top > 2 * rand


def test_tff_compression_aggregator_is_as_the_lesson_describes():
    pytest.importorskip("tensorflow_federated")
    import tensorflow as tf
    import tensorflow_federated as tff
    from tensorflow_model_optimization.python.core.internal.tensor_encoding.stages import (
        stages_impl)

    source = inspect.getsource(tff.learning.compression_aggregator)
    assert "quantize_above_threshold(" in source
    assert "quantization_bits=8, threshold=20000" in source
    stage_cls = stages_impl.UniformQuantizationEncodingStage
    undecorated = next(c for c in stage_cls.__mro__ if "stochastic" in
                       inspect.signature(c.__init__).parameters)
    assert inspect.signature(undecorated.__init__).parameters["stochastic"].default is True
    with pytest.raises(TypeError, match="threshold"):
        tff.learning.compression_aggregator(threshold=0)
    # TFF's deterministic 8-bit codes are fedutils' nearest-level codes.
    x = np.random.default_rng(7).normal(size=1000).astype(np.float32)
    stage = stage_cls(bits=8, stochastic=False)
    params, _ = stage.get_params()
    codes = stage.encode(tf.constant(x), params)[stage.ENCODED_VALUES_KEY].numpy()
    ours = compression.quantize([x], 8).codes[0]
    assert np.abs(codes - ours).max() <= 1  # float32 vs float64 scaling at a rounding boundary
    assert np.mean(codes == ours) > 0.99


def test_exercise_1_check_accepts_the_fitting_candidates_and_rejects_others():
    from fedutils import fedavg

    source = lesson_code.cell_source(LESSON, "exercise-1-check")
    spreads = {"top-k 5% + EF": fedavg.Spread([0, 1, 2], np.array([0.89, 0.9, 0.91])),
               "2-bit stochastic": fedavg.Spread([0, 1, 2], np.array([0.9, 0.9, 0.92]))}
    fits = ["top-k 1% + EF", "top-k 2% + EF", "top-k 5% + EF", "1-bit stochastic",
            "2-bit stochastic"]
    # the budget itself: these are the candidates within 1,500 bytes
    weights = [np.zeros(s, np.float32) for s in DIGITS_SHAPES]
    assert [r for r in (0.01, 0.02, 0.05, 0.1)
            if compression.payload_bytes(weights, "sparse", ratio=r) <= 1500] == [0.01, 0.02, 0.05]
    assert [b for b in (1, 2, 4, 8)
            if compression.payload_bytes(weights, "quantized", bits=b) <= 1500] == [1, 2]
    names = dict(fits=fits, budget_results=spreads, SEEDS=(0, 1, 2))
    exec(source, dict(names, choice="2-bit stochastic"))
    with pytest.raises(AssertionError):
        exec(source, dict(names, choice="top-k 5% + EF"))          # not the better one
    with pytest.raises(AssertionError):
        exec(source, dict(names, fits=fits + ["top-k 10% + EF"], choice="2-bit stochastic"))


def test_exercise_3_check_accepts_the_both_ways_factors_and_rejects_upload_only():
    from fedutils import fedavg

    source = lesson_code.cell_source(LESSON, "exercise-3-check")
    weights = [np.zeros(s, np.float32) for s in DIGITS_SHAPES]
    rounds, clients = 30, 30

    def history(up):
        return fedavg.History(rounds=[{"round": r + 1, "upload_bytes": up,
                                       "download_bytes": clients * 19_240}
                                      for r in range(rounds)])

    baseline, ef_run = history(clients * 19_240), history(clients * 298)
    dense = 2 * rounds * clients * 19_240
    up = rounds * clients * 298
    names = dict(baseline=baseline, histories={"top-k 1% + EF": [ef_run]}, ROUNDS=rounds,
                 NUM_CLIENTS=clients, initial_weights=weights, math=math)
    right = dict(factor_dense_down=dense / (up + rounds * clients * 19_240),
                 factor_8bit_down=dense / (up + rounds * clients * 4_842))
    exec(source, dict(names, **right))
    with pytest.raises(AssertionError):   # upload only: 64.6x, not a traffic factor
        exec(source, dict(names, factor_dense_down=19_240 / 298,
                          factor_8bit_down=right["factor_8bit_down"]))


def test_a_seeded_run_starts_from_the_first_model_made_after_set_seed():
    """The lesson's `initial_weights_of(seed)` (never-updated counts, the TFF comparison) is
    the start of `train(..., seed)`: run_fedavg's first model after fedutils.set_seed."""
    import fedutils
    from fedutils import data, fedavg, models, partition

    x, y = data.load_digits()
    parts = partition.iid_partition(y[:300], 3, seed=0)
    clients = data.make_client_data(x[:300], y[:300], parts, batch_size=20, seed=0)
    fedutils.set_seed(2)
    start = models.create_digits_model().get_weights()
    fedutils.set_seed(2)
    seeded = fedavg.run_fedavg(models.create_digits_model, clients, rounds=1, seed=2,
                               progress=False).final_weights
    explicit = fedavg.run_fedavg(models.create_digits_model, clients, rounds=1, seed=2,
                                 initial_weights=start, progress=False).final_weights
    for a, b in zip(seeded, explicit):
        np.testing.assert_array_equal(a, b)
