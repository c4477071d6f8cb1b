"""fedutils.bridges.flower.launcher: the course's Flower app run as real processes (one SuperLink, three
SuperNodes, gRPC over loopback) must reproduce fedutils.run_fedavg, survive a client killed
mid-round, and leave no process behind.

Stated tolerance (also in lesson 15): with every client in every round, the Flower run and the
simulation start from the same weights and train on the same batches, so they differ only by
float32 rounding in the weighted mean: final weights within 1e-5, test accuracy within one test
example. The Flower tests need flwr (the current-TensorFlow environment, `make test-modern`);
in the TFF environment they are skipped and the clear error for a missing Flower is tested.
"""
import importlib.util

import numpy as np
import psutil
import pytest

from fedutils import federation
from fedutils.bridges.flower import launcher

HAS_FLOWER = importlib.util.find_spec("flwr") is not None
needs_flower = pytest.mark.skipif(not HAS_FLOWER, reason="Flower lives in the current-TF "
                                  "environment (make test-modern)")


@pytest.mark.parametrize("kwargs, error, words", [
    ({"num_clients": 0}, ValueError, "num_clients"),
    ({"num_clients": "3"}, TypeError, "num_clients"),
    ({"rounds": 0}, ValueError, "rounds"),
    ({"client_lr": -0.1}, ValueError, "client_lr"),
    ({"round_timeout": 0.5}, ValueError, "round_timeout"),
    ({"kill_client": 3}, ValueError, "kill_client"),
    ({"kill_client": 0, "kill_round": 4}, ValueError, "kill_round"),
])
def test_run_federation_rejects_bad_arguments_before_starting_anything(kwargs, error, words):
    before = {p.pid for p in psutil.process_iter()}
    with pytest.raises(error, match=words):
        federation.run_federation(**kwargs)
    started = [p for p in psutil.process_iter() if p.pid not in before
               and "flower" in " ".join(_cmdline(p))]
    assert started == []


def test_federation_data_is_the_same_split_for_every_party():
    clients, (x_test, y_test) = federation.federation_data(3, seed=0)
    again, _ = federation.federation_data.__wrapped__(3, seed=0)
    sizes = [len(c) for c in clients]
    assert sizes == [len(c) for c in again]
    assert sum(sizes) + len(y_test) == 1797          # all of digits, each example once
    assert len(set(sizes)) == 3                       # unequal: the weighting matters
    for a, b in zip(clients, again):
        np.testing.assert_array_equal(a.x, b.x)
    with pytest.raises(ValueError, match="num_clients"):
        federation.federation_data(0)


@pytest.mark.skipif(HAS_FLOWER, reason="tests the message shown when Flower is missing")
def test_missing_flower_says_which_environment_to_use():
    with pytest.raises(RuntimeError, match="current-TensorFlow environment"):
        federation.run_federation()


def test_a_missing_flower_command_is_named_with_the_fix():
    with pytest.raises(RuntimeError, match="'flower-superlink'.*pip install flwr==1.39.0"):
        launcher._executable("flower-superlink", {"PATH": "/nonexistent"})


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory):
    return federation.run_federation(num_clients=3, rounds=3, verbose=False,
                                     workdir=str(tmp_path_factory.mktemp("federation")))


@needs_flower
def test_three_supernodes_train_three_rounds_and_accuracy_improves(flower_run):
    assert [r["round"] for r in flower_run.rounds] == [1, 2, 3]
    assert all(r["asked"] == r["clients"] == 3 and r["failures"] == 0
               for r in flower_run.rounds)
    assert all(r["num_examples"] == 1347 for r in flower_run.rounds)   # 1797 - 450 test
    accuracies = flower_run.accuracies
    assert accuracies[0] < 0.2                       # the untrained model guesses
    assert accuracies[-1] > accuracies[0] + 0.4
    assert accuracies[-1] > accuracies[1]


@needs_flower
def test_flower_run_matches_run_fedavg_on_the_same_split_and_seed(flower_run):
    history = federation.simulate(num_clients=3, rounds=3)
    _, (_, y_test) = federation.federation_data(3)
    for got, want in zip(flower_run.final_weights, history.final_weights):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for record, expected in zip(flower_run.rounds, history.accuracy):
        assert abs(record["accuracy"] - expected) <= 1 / len(y_test) + 1e-12


@needs_flower
def test_every_process_of_the_federation_has_exited(flower_run):
    assert flower_run.left_running == []
    home = str(flower_run.workdir / "flwr-home")        # every process of the run has it
    leftovers = [" ".join(_cmdline(p)) for p in psutil.process_iter()
                 if _environ(p).get("FLWR_HOME") == home]
    assert leftovers == []


@needs_flower
def test_a_client_killed_mid_round_does_not_hang_the_server(tmp_path):
    # 40 s: over three times a round here (about 12 s), so a slower CI machine still misses
    # only the dead client; the SuperLink's own heartbeat check ends round 3 sooner.
    result = federation.run_federation(num_clients=3, rounds=3, round_timeout=40.0,
                                       kill_client=2, kill_round=2, verbose=False,
                                       timeout=300, workdir=str(tmp_path))
    assert result.killed == [2]
    assert result.rounds[0]["clients"] == 3
    second = result.rounds[1]
    assert second["asked"] == 3 and second["clients"] == 2 and second["failures"] == 1
    assert second["seconds"] < 40.0 + 15                # the round timeout, not forever
    assert result.rounds[2]["clients"] == 2             # the survivors carry on
    assert result.accuracies[-1] > result.accuracies[0] + 0.4
    assert result.left_running == []


def _cmdline(proc):
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _environ(proc):
    try:
        return proc.environ()
    except psutil.Error:
        return {}
