"""fedutils.course.capstone: the fixed split, and a checker that passes a good run, fails a plain one
and rejects what it cannot measure."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from fedutils import compression, fedavg, models, privacy
from fedutils.course import capstone

REFERENCE = {"rounds": 60, "clients_per_round": 20, "local_epochs": 5, "client_lr": 0.2,
             "clip_norm": 0.5, "noise_multiplier": 1.2, "topk_ratio": 0.1}


class ReferenceAggregator(fedavg.Aggregator):
    """Clip, top-k with error feedback, clip again; Gaussian noise on the sum; divide by m."""

    def __init__(self, clip_norm, noise_multiplier, expected_clients, ratio):
        self.c, self.z, self.m, self.ratio = clip_norm, noise_multiplier, expected_clients, ratio

    def initialize(self):
        return compression.ErrorFeedback()

    def aggregate(self, updates, num_examples, client_ids, rng, state=None):
        squeeze = lambda v: privacy.clip_update(compression.top_k_sparsify(v, self.ratio), self.c)
        sent = [state.compress(i, privacy.clip_update(u, self.c), squeeze)
                for i, u in zip(client_ids, updates)]
        total = [np.sum(layer, axis=0, dtype=np.float64) for layer in zip(*sent)]
        noisy = privacy.add_gaussian_noise(total, self.z * self.c, rng)
        upload = sum(compression.payload_bytes(s, "sparse", ratio=self.ratio) for s in sent)
        return fedavg.Aggregate([(t / self.m).astype(np.float32) for t in noisy],
                                {"upload_bytes": upload}, state)


def run(config, aggregator=None, rounds=None):
    data = capstone.load_capstone_data()
    return fedavg.run_fedavg(models.create_digits_model, data.clients,
                             rounds=rounds or config["rounds"],
                             clients_per_round=config["clients_per_round"],
                             local_epochs=config["local_epochs"], client_lr=config["client_lr"],
                             aggregator=aggregator, seed=0, progress=False)


@pytest.fixture(scope="module")
def reference_history():
    agg = ReferenceAggregator(REFERENCE["clip_norm"], REFERENCE["noise_multiplier"],
                              REFERENCE["clients_per_round"], REFERENCE["topk_ratio"])
    return run(REFERENCE, agg)


def fake_history(rounds, selected=20, upload=1000, weights=None):
    weights = weights if weights is not None else models.create_digits_model().get_weights()
    records = [{"round": r, "num_selected": selected, "num_clients": selected,
                "upload_bytes": upload} for r in range(1, rounds + 1)]
    return fedavg.History(records, weights)


def test_the_split_is_fixed_and_the_test_set_never_moves():
    a, b, other = (capstone.load_capstone_data(0), capstone.load_capstone_data(0),
                   capstone.load_capstone_data(1))
    assert len(a.clients) == len(a.partitions) == capstone.NUM_CLIENTS
    assert all(np.array_equal(p, q) for p, q in zip(a.partitions, b.partitions))
    assert not all(np.array_equal(p, q) for p, q in zip(a.partitions, other.partitions))
    np.testing.assert_array_equal(a.x_test, other.x_test)
    covered = np.sort(np.concatenate(a.partitions))
    np.testing.assert_array_equal(covered, np.arange(len(a.y_train)))
    assert len(a.y_train) + len(a.y_test) == 1797


def test_reference_solution_passes_every_target_with_margin(reference_history, capsys):
    report = capstone.check_capstone(reference_history, REFERENCE)
    assert report.passed
    assert report["accuracy"]["value"] >= capstone.TARGETS["accuracy"] + 0.05
    assert report["epsilon"]["value"] <= capstone.TARGETS["epsilon"] - 1.0
    assert report["upload_fraction"]["value"] <= capstone.TARGETS["upload_fraction"] - 0.03
    # Recomputed independently: epsilon from the config, bytes from payload_bytes.
    assert report["epsilon"]["value"] == pytest.approx(privacy.compute_epsilon(
        1.2, 20 / capstone.NUM_CLIENTS, 60, capstone.DELTA), rel=1e-12)
    per_client = compression.payload_bytes(reference_history.final_weights, "sparse", ratio=0.1)
    dense = compression.payload_bytes(reference_history.final_weights, "dense")
    assert report["upload_fraction"]["value"] == pytest.approx(per_client / dense)
    lines = capsys.readouterr().out.splitlines()
    assert [ln[:6] for ln in lines[:4]] == ["[PASS]"] * 4 and lines[-1] == "capstone passed"


def test_plain_dense_fedavg_fails_epsilon_and_bytes():
    plain = dict(REFERENCE, noise_multiplier=0.0)
    report = capstone.check_capstone(run(plain, rounds=5), plain, verbose=False)
    assert not report.passed
    assert report["epsilon"]["value"] == math.inf and not report["epsilon"]["passed"]
    assert report["upload_fraction"]["value"] == pytest.approx(1.0)
    assert not report["upload_fraction"]["passed"]
    assert report["rounds"]["passed"]
    assert "[FAIL] user-level epsilon: inf" in str(report)


def test_too_many_rounds_and_an_untrained_model_fail():
    report = capstone.check_capstone(fake_history(capstone.MAX_ROUNDS + 1),
                                     {"noise_multiplier": 5.0, "clients_per_round": 20},
                                     verbose=False)
    assert not report["rounds"]["passed"] and not report["accuracy"]["passed"]
    assert report["accuracy"]["value"] < 0.3
    with pytest.raises(KeyError, match="no target named"):
        report["speed"]


def test_config_may_be_an_object_with_attributes():
    history = fake_history(3)
    as_dict = capstone.check_capstone(history, {"noise_multiplier": 1.0, "clients_per_round": 20,
                                                "clip_norm": 1.0}, verbose=False)
    as_obj = capstone.check_capstone(history, SimpleNamespace(noise_multiplier=1.0,
                                                              clients_per_round=20),
                                     verbose=False)
    assert [r["value"] for r in as_dict.results] == [r["value"] for r in as_obj.results]


@pytest.mark.parametrize("config, error, match", [
    ({"clients_per_round": 20}, ValueError, "missing \\['noise_multiplier'\\]"),
    ({"noise_multiplier": 1.0}, ValueError, "clients_per_round"),
    ({"noise_multiplier": -1.0, "clients_per_round": 20}, ValueError, "noise_multiplier"),
    ({"noise_multiplier": "1", "clients_per_round": 20}, TypeError, "noise_multiplier"),
    ({"noise_multiplier": 1.0, "clients_per_round": 0}, ValueError, "\\[1, 100\\]"),
    ({"noise_multiplier": 1.0, "clients_per_round": 101}, ValueError, "\\[1, 100\\]"),
    ({"noise_multiplier": 1.0, "clients_per_round": 0.2}, TypeError, "clients_per_round"),
])
def test_bad_configs_raise_clear_errors(config, error, match):
    with pytest.raises(error, match=match):
        capstone.check_capstone(fake_history(2), config, verbose=False)


def test_bad_histories_raise_clear_errors():
    config = {"noise_multiplier": 1.0, "clients_per_round": 20}
    with pytest.raises(TypeError, match="History that fedutils.fedavg.run_fedavg returns"):
        capstone.check_capstone([{"round": 1}], config)
    with pytest.raises(ValueError, match="no finished run"):
        capstone.check_capstone(fedavg.History(), config)
    with pytest.raises(ValueError, match="no finished run"):
        capstone.check_capstone(fedavg.History(fake_history(2).rounds, None), config)
    with pytest.raises(ValueError, match="more than config clients_per_round=20"):
        capstone.check_capstone(fake_history(2, selected=30), config)
    broken = fake_history(2)
    del broken.rounds[1]["upload_bytes"]
    with pytest.raises(ValueError, match="round 2 lacks upload_bytes"):
        capstone.check_capstone(broken, config)
    small = models.create_digits_model(hidden_units=8).get_weights()
    with pytest.raises(ValueError, match="final_weights\\[0\\] must have shape"):
        capstone.check_capstone(fake_history(2, weights=small), config)


def test_bad_data_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="seed must be an integer in \\[0, inf\\]"):
        capstone.load_capstone_data(-1)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        capstone.load_capstone_data(0, batch_size=2.5)
