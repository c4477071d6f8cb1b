import math
import re
import sys

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from fedutils import data, fedavg, models, partition, privacy
from fedutils.techniques import privacy as privacy_impl



def _keras2_with_tensorflow_privacy() -> bool:
    try:
        import tensorflow_privacy  # noqa: F401
    except ImportError:
        return False
    return privacy.keras_version().startswith("2.")


needs_tensorflow_privacy = pytest.mark.skipif(
    not _keras2_with_tensorflow_privacy(),
    reason="tensorflow-privacy's DP optimizer needs Keras 2 and the package (course environment)")

def random_update(rng, shapes=((20, 30), (30,), (30, 10), (10,)), dtype=np.float32):
    return [rng.normal(size=s).astype(dtype) for s in shapes]


def flat(update):
    return np.concatenate([np.ravel(a) for a in update]).astype(np.float64)


# --- clipping and noise ---------------------------------------------------------------------

def test_update_norm_is_norm_of_all_entries():
    update = random_update(np.random.default_rng(0))
    assert privacy.update_norm(update) == pytest.approx(np.linalg.norm(flat(update)), rel=1e-12)


def test_clip_update_scales_long_updates_to_clip_norm_and_keeps_short_ones():
    update = random_update(np.random.default_rng(1))
    norm = privacy.update_norm(update)
    clipped = privacy.clip_update(update, norm / 4)
    assert privacy.update_norm(clipped) == pytest.approx(norm / 4, rel=1e-6)
    np.testing.assert_allclose(flat(clipped), flat(update) / 4, rtol=1e-6)  # same direction
    assert all(c.dtype == np.float32 for c in clipped)
    unchanged = privacy.clip_update(update, norm * 2)
    assert all(np.array_equal(a, b) for a, b in zip(unchanged, update))


def test_add_gaussian_noise_has_the_requested_stddev_and_is_seeded():
    zeros = [np.zeros((400, 500), np.float32), np.zeros(1000, np.float32)]
    noisy = privacy.add_gaussian_noise(zeros, 0.3, rng=7)
    sample = flat(noisy)
    assert abs(sample.std() / 0.3 - 1) < 0.02
    assert abs(sample.mean()) < 0.01
    again = privacy.add_gaussian_noise(zeros, 0.3, rng=7)
    assert all(np.array_equal(a, b) for a, b in zip(noisy, again))
    assert not np.array_equal(privacy.add_gaussian_noise(zeros, 0.3, rng=8)[0], noisy[0])
    assert np.array_equal(privacy.add_gaussian_noise(zeros, 0.0, rng=7)[0], zeros[0])


# --- DP-FedAvg ------------------------------------------------------------------------------

@pytest.mark.parametrize("expected_clients, m", [(None, 3), (8, 8)])
def test_dp_fedavg_noise_on_the_mean_is_z_c_over_m(expected_clients, m):
    agg = privacy.DPFedAvgAggregator(clip_norm=2.0, noise_multiplier=1.5,
                                     expected_clients=expected_clients)
    updates = [[np.zeros((300, 400), np.float32)] for _ in range(3)]  # clipped sum is 0
    out = agg.aggregate(updates, np.array([10, 20, 30]), [0, 1, 2], np.random.default_rng(0))
    theory = 1.5 * 2.0 / m
    assert out.measurements["noise_stddev"] == pytest.approx(theory)
    assert abs(out.delta[0].std() / theory - 1) < 0.02
    assert out.measurements["upload_bytes"] == 3 * 300 * 400 * 4


def test_dp_fedavg_without_noise_and_with_a_huge_clip_is_the_unweighted_mean():
    rng = np.random.default_rng(2)
    updates = [random_update(rng) for _ in range(4)]
    counts = np.array([5, 50, 500, 5000])
    agg = privacy.DPFedAvgAggregator(clip_norm=1e9, noise_multiplier=0.0)
    result = agg.aggregate(updates, counts, [0, 1, 2, 3], rng)
    out = result.delta
    for ours, plain in zip(out, fedavg.server_aggregate(updates)):
        np.testing.assert_allclose(ours, plain, rtol=1e-6, atol=1e-7)
    weighted = fedavg.server_aggregate(updates, counts)
    assert not np.allclose(out[0], weighted[0], atol=1e-3)  # every client counts once
    assert result.measurements["clipped_fraction"] == 0.0


def test_dp_fedavg_clips_each_client_before_averaging():
    rng = np.random.default_rng(3)
    updates = [[u * s for u in random_update(rng)] for s in (0.01, 0.01, 10.0, 10.0)]
    clip = 1.0
    agg = privacy.DPFedAvgAggregator(clip_norm=clip, noise_multiplier=0.0)
    result = agg.aggregate(updates, np.ones(4), [0, 1, 2, 3], rng)
    out = result.delta
    expected = fedavg.server_aggregate([privacy.clip_update(u, clip) for u in updates])
    for ours, ref in zip(out, expected):
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
    assert result.measurements["clipped_fraction"] == 0.5
    assert privacy.update_norm(out) <= clip  # the mean of vectors in a ball stays in it


@pytest.fixture
def digits_clients(five_digit_clients):
    x, y = data.load_digits()
    return (*five_digit_clients, (x[:300], y[:300]))


def test_dp_fedavg_runs_inside_run_fedavg(digits_clients):
    clients, initial, eval_data = digits_clients
    agg = privacy.DPFedAvgAggregator(clip_norm=0.5, noise_multiplier=1.0)
    history = fedavg.run_fedavg(models.create_digits_model, clients, rounds=2,
                                aggregator=agg, initial_weights=initial, eval_data=eval_data,
                                progress=False)
    assert history["upload_bytes"] == [5 * 4810 * 4] * 2
    assert all(0.0 <= f <= 1.0 for f in history["clipped_fraction"])
    assert history["noise_stddev"] == [pytest.approx(1.0 * 0.5 / 5)] * 2
    assert all(np.isfinite(w).all() for w in history.final_weights)


def test_dp_fedavg_without_noise_matches_unweighted_fedavg_in_run_fedavg(digits_clients):
    clients, initial, _ = digits_clients

    def unweighted(updates, num_examples, client_ids, rng):
        return fedavg.server_aggregate(updates)

    common = dict(rounds=2, initial_weights=initial, progress=False)
    dp = fedavg.run_fedavg(models.create_digits_model, clients, aggregator=privacy.
                           DPFedAvgAggregator(clip_norm=1e6, noise_multiplier=0.0), **common)
    plain = fedavg.run_fedavg(models.create_digits_model, clients, aggregator=unweighted,
                              **common)
    for a, b in zip(dp.final_weights, plain.final_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --- epsilon --------------------------------------------------------------------------------

@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_compute_epsilon_equals_dp_accounting_called_directly(accountant):
    import dp_accounting

    z, q, steps, delta = 1.1, 0.01, 500, 1e-5
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    acc = (dp_accounting.rdp.RdpAccountant() if accountant == "rdp"
           else dp_accounting.pld.PLDAccountant())
    direct = acc.compose(event).get_epsilon(delta)
    assert privacy.compute_epsilon(z, q, steps, delta, accountant) == pytest.approx(
        direct, rel=1e-12)


def analytic_gaussian_epsilon(sigma, delta):
    """Exact epsilon of one Gaussian mechanism with sensitivity 1 (Balle & Wang 2018, Thm 8)."""
    def gap(eps):
        return (norm.cdf(1 / (2 * sigma) - eps * sigma)
                - math.exp(eps) * norm.cdf(-1 / (2 * sigma) - eps * sigma) - delta)
    return brentq(gap, 0.0, 100.0)


def test_compute_epsilon_agrees_with_the_exact_gaussian_mechanism():
    # One step, no subsampling: the exact epsilon is known in closed form. PLD is tight; RDP is
    # an upper bound.
    for sigma in (0.8, 2.0, 5.0):
        exact = analytic_gaussian_epsilon(sigma, 1e-5)
        pld = privacy.compute_epsilon(sigma, 1.0, 1, 1e-5, "pld")
        assert pld == pytest.approx(exact, rel=1e-5)
        rdp = privacy.compute_epsilon(sigma, 1.0, 1, 1e-5, "rdp")
        assert exact < rdp < 1.2 * exact


def test_compute_epsilon_moves_the_right_way():
    eps = lambda z=1.0, q=0.05, steps=100: privacy.compute_epsilon(z, q, steps, 1e-5)  # noqa
    assert eps(z=0.7) > eps(z=1.0) > eps(z=2.0)
    assert eps(steps=10) < eps(steps=100) < eps(steps=1000)
    assert eps(q=0.01) < eps(q=0.05) < eps(q=0.2)


@needs_tensorflow_privacy
@pytest.mark.parametrize("used_microbatching", [False, True])
def test_dp_sgd_epsilon_matches_tensorflow_privacy_statement(used_microbatching):
    from tensorflow_privacy.privacy.analysis.compute_dp_sgd_privacy_lib import (
        compute_dp_sgd_privacy_statement)

    n, batch, epochs, z, delta = 60000, 250, 3, 1.1, 1e-5   # batch divides n: same step count
    statement = compute_dp_sgd_privacy_statement(n, batch, epochs, z, delta,
                                                 used_microbatching=used_microbatching)
    printed = float(re.search(r"Poisson sampling \(\*\):\s+([0-9.]+)", statement).group(1))
    ours = privacy.dp_sgd_epsilon(n, batch, epochs, z, delta,
                                  used_microbatching=used_microbatching)
    assert ours == pytest.approx(printed, abs=5e-4)  # the statement prints 3 decimals


# --- tensorflow-privacy's optimizer ---------------------------------------------------------

@needs_tensorflow_privacy
def test_make_dp_optimizer_trains_a_model_compiled_with_per_example_loss():
    import tensorflow as tf

    x, y = data.load_digits()
    model = models.create_digits_model()
    lr, clip = 0.1, 0.5
    model.compile(optimizer=privacy.make_dp_optimizer(clip, 0.0, learning_rate=lr),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(reduction="none"))
    before = model.get_weights()
    model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)
    step = privacy.update_norm([a - b for a, b in zip(model.get_weights(), before)])
    # no noise: the step is lr times the mean of per-example gradients clipped to `clip`
    assert 0 < step <= lr * clip * (1 + 1e-5)


@needs_tensorflow_privacy
def test_make_dp_optimizer_needs_a_per_example_loss():
    import tensorflow as tf

    x, y = data.load_digits()
    model = models.create_digits_model()
    model.compile(optimizer=privacy.make_dp_optimizer(1.0, 1.0),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy())  # averaged: a scalar
    with pytest.raises(ValueError, match="out of bounds"):
        model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)


def test_make_dp_optimizer_explains_keras_3_and_a_missing_package(monkeypatch):
    monkeypatch.setattr(privacy_impl, "keras_version", lambda: "3.15.0")
    with pytest.raises(RuntimeError, match="Keras 3.15.0.*DPFedAvgAggregator"):
        privacy.make_dp_optimizer(1.0, 1.0)
    monkeypatch.setattr(privacy_impl, "keras_version", lambda: "2.14.0")
    monkeypatch.setitem(sys.modules,
                        "tensorflow_privacy.privacy.optimizers.dp_optimizer_keras", None)
    with pytest.raises(RuntimeError, match="not installed.*DPFedAvgAggregator"):
        privacy.make_dp_optimizer(1.0, 1.0)


# --- secure aggregation ---------------------------------------------------------------------

def test_secure_sum_equals_the_plain_sum():
    rng = np.random.default_rng(4)
    updates = [random_update(rng) for _ in range(6)]
    scale = 2 ** 16
    total = privacy.secure_sum(updates, seed=11, scale=scale)
    plain = [np.sum([u[t].astype(np.float64) for u in updates], axis=0) for t in range(4)]
    worst = max(np.max(np.abs(a - b)) for a, b in zip(total, plain))
    assert worst <= len(updates) * 0.5 / scale  # rounding: half a unit per client and entry


def test_masks_cancel_exactly_in_the_modular_sum():
    rng = np.random.default_rng(5)
    updates = [random_update(rng) for _ in range(5)]
    masked = privacy.mask_updates(updates, seed=3)
    unmasked = [privacy.mask_updates([u], seed=3)[0] for u in updates]  # alone: no pair, no mask
    for t in range(len(updates[0])):
        masked_sum = np.sum([m[t] for m in masked], axis=0, dtype=np.uint32)
        plain_sum = np.sum([p[t] for p in unmasked], axis=0, dtype=np.uint32)
        assert masked_sum.dtype == np.uint32 and np.array_equal(masked_sum, plain_sum)
        assert not np.array_equal(masked[0][t], unmasked[0][t])


def test_a_masked_update_is_uncorrelated_with_the_raw_one():
    rng = np.random.default_rng(6)
    updates = [[rng.normal(size=50_000).astype(np.float32)] for _ in range(3)]
    masked = privacy.mask_updates(updates, seed=0)
    for raw, sent in zip(updates, masked):
        r = np.corrcoef(raw[0].astype(np.float64), sent[0].astype(np.float64))[0, 1]
        assert abs(r) < 0.05
    again = privacy.mask_updates(updates, seed=0)
    assert np.array_equal(again[1][0], masked[1][0])
    assert not np.array_equal(privacy.mask_updates(updates, seed=1)[1][0], masked[1][0])


def test_secure_sum_recovers_the_survivors_sum_when_clients_drop():
    rng = np.random.default_rng(7)
    updates = [random_update(rng) for _ in range(6)]
    dropped = [1, 4]
    survivors = [0, 2, 3, 5]
    total = privacy.secure_sum(updates, seed=2, dropped=dropped)
    expected = [np.sum([updates[i][t].astype(np.float64) for i in survivors], axis=0)
                for t in range(4)]
    for a, b in zip(total, expected):
        np.testing.assert_allclose(a, b, atol=len(survivors) * 0.5 / 2 ** 16)
    # without the server's recovery step the survivors' masks do not cancel: garbage
    masked = privacy.mask_updates(updates, seed=2)
    naive = np.sum([masked[i][0] for i in survivors], axis=0, dtype=np.uint32).astype(np.int64)
    naive = np.where(naive >= 2 ** 31, naive - 2 ** 32, naive) / 2 ** 16  # two's complement
    assert np.max(np.abs(naive - expected[0])) > 1000


@pytest.mark.parametrize("updates, kwargs, match", [
    ([[np.array([40000.0])]], {}, r"representable range \|x\| < 2\*\*31/scale"),
    ([[np.array([20000.0])], [np.array([20000.0])]], {}, "sum of the surviving updates"),
    ([[np.array([1.0])]], {"scale": 0}, "scale"),
    ([[np.zeros(2)], [np.zeros(2)]], {"dropped": [0, 1]}, "at least one must survive"),
    ([[np.zeros(2)], [np.zeros(2)]], {"dropped": [2]}, r"dropped must be an integer in \[0, 1\]"),
    ([], {}, "empty"),
    ([[np.zeros(2)], [np.zeros(3)]], {}, "shape"),
    ([[np.array([np.nan, 0.0])]], {}, "NaN"),
])
def test_secure_sum_rejects_bad_input(updates, kwargs, match):
    with pytest.raises(ValueError, match=match):
        privacy.secure_sum(updates, seed=0, **kwargs)


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: privacy.clip_update([np.ones(3)], -1.0), "clip_norm"),
    (lambda: privacy.clip_update([np.ones(3)], 0.0), "clip_norm"),
    (lambda: privacy.clip_update([], 1.0), "at least one tensor"),
    (lambda: privacy.add_gaussian_noise([np.ones(3)], -0.1), "stddev"),
    (lambda: privacy.DPFedAvgAggregator(clip_norm=-1.0, noise_multiplier=1.0), "clip_norm"),
    (lambda: privacy.DPFedAvgAggregator(clip_norm=1.0, noise_multiplier=-1.0),
     "noise_multiplier"),
    (lambda: privacy.DPFedAvgAggregator(1.0, 1.0, expected_clients=0), "expected_clients"),
    (lambda: privacy.DPFedAvgAggregator(1.0, 1.0)([], [], [], None), "empty"),
    (lambda: privacy.DPFedAvgAggregator(1.0, 1.0)([[np.array([np.nan])]], [1], [0], None),
     "NaN"),
    (lambda: privacy.DPFedAvgAggregator(1.0, 1.0)([[np.zeros(2)], [np.zeros(3)]], [1, 1],
                                                  [0, 1], None), "shape"),
    (lambda: privacy.compute_epsilon(1.0, 0.1, 10, 0.0), "delta"),
    (lambda: privacy.compute_epsilon(1.0, 0.1, 10, 1.0), "delta"),
    (lambda: privacy.compute_epsilon(0.0, 0.1, 10, 1e-5), "noise_multiplier"),
    (lambda: privacy.compute_epsilon(1.0, 0.0, 10, 1e-5), "sample_rate"),
    (lambda: privacy.compute_epsilon(1.0, 1.5, 10, 1e-5), "sample_rate"),
    (lambda: privacy.compute_epsilon(1.0, 0.1, 0, 1e-5), "steps"),
    (lambda: privacy.compute_epsilon(1.0, 0.1, 10, 1e-5, "gdp"), "accountant"),
    (lambda: privacy.dp_sgd_epsilon(100, 200, 1, 1.0, 1e-5), "batch_size"),
    (lambda: privacy.make_dp_optimizer(-1.0, 1.0), "l2_norm_clip"),
    (lambda: privacy.make_dp_optimizer(1.0, -1.0), "noise_multiplier"),
    (lambda: privacy.make_dp_optimizer(1.0, 1.0, num_microbatches=0), "num_microbatches"),
])
def test_bad_input_raises_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call, match", [
    (lambda: privacy.compute_epsilon(1.0, 0.1, 2.5, 1e-5), "steps must be an integer"),
    (lambda: privacy.add_gaussian_noise([np.ones(3)], 1.0, rng="seed"), "rng"),
    (lambda: privacy.clip_update(np.ones(3), 1.0), "list of NumPy arrays"),
])
def test_bad_types_raise_a_clear_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()
