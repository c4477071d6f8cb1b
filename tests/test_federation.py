"""fedutils.federation: the course's Flower app run as real processes (one SuperLink, three
SuperNodes each with one long-lived ClientApp process, gRPC over loopback).

What must hold: the nodes' NumPy code equals fedutils' client training and evaluation; each
node's held-out set is its share of the test set; the federation, a client killed mid-run
included, reproduces fedutils.run_fedavg with the same crash (`federation.simulate`); the
server waits out one timeout for the dead node and never asks it again; federated evaluation
covers exactly the nodes that replied; and no process outlives the run, nor the program that
started it. Stated tolerance (also in lesson 15): final weights within 1e-5, accuracies
within one example. The Flower tests need flwr (the current-TensorFlow environment, `make
test-modern`); in the TFF environment they are skipped and the message for a missing Flower
is tested instead.
"""
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

from fedutils import federation
from fedutils.bridges.flower import launcher, processes
from fedutils.fedavg import client_update, evaluate_weights

HAS_FLOWER = importlib.util.find_spec("flwr") is not None
needs_flower = pytest.mark.skipif(not HAS_FLOWER, reason="Flower lives in the current-TF "
                                  "environment (make test-modern)")
KILL_CLIENT, KILL_ROUND, ROUND_TIMEOUT = 2, 2, 12.0


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
    me = psutil.Process()      # only this process's children: make test runs another half
    before = {p.pid for p in me.children(recursive=True)}
    with pytest.raises(error, match=words):
        federation.run_federation(**kwargs)
    started = [p for p in me.children(recursive=True) if p.pid not in before
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


def test_held_out_sets_split_the_test_set_by_each_nodes_label_mix():
    clients, (_, y_test) = federation.federation_data(3, seed=0)
    parts = federation.held_out_split(3, seed=0)
    together = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(together, np.arange(len(y_test)))   # disjoint, complete
    for client, part in zip(clients, parts):
        trained = np.bincount(client.y, minlength=10)
        held = np.bincount(y_test[part], minlength=10)
        assert np.all(held[trained == 0] == 0)        # a label the node never saw: none held
        # the node's share of each label in the test set follows its share in training
        share_train = trained / np.bincount(np.concatenate([c.y for c in clients]), minlength=10)
        share_test = held / np.bincount(y_test, minlength=10)
        assert np.abs(share_train - share_test).mean() < 0.15
    np.testing.assert_array_equal(parts[1], federation.held_out_split(3, seed=0)[1])


def test_node_data_is_each_clients_training_data_in_batch_order_and_its_held_out_set():
    clients, (x_test, y_test) = federation.federation_data(3, seed=0)
    parts = federation.held_out_split(3, seed=0)
    for node, client, part in zip(federation.node_data(3, seed=0), clients, parts):
        np.testing.assert_array_equal(node["x_train"], client.x)
        np.testing.assert_array_equal(node["y_train"], client.y)
        np.testing.assert_array_equal(node["y_test"], y_test[part])


@pytest.mark.parametrize("client_index, epochs", [(0, 1), (1, 1), (2, 2)])
def test_the_nodes_numpy_training_equals_fedutils_client_update(client_index, epochs):
    clients, _ = federation.federation_data(3, seed=0)
    model = federation.digits_model(0)
    start = model.get_weights()
    ours, loss = federation.device_train(start, clients[client_index].x,
                                         clients[client_index].y, epochs=epochs,
                                         learning_rate=0.1, batch_size=20)
    reference = client_update(model, clients[client_index], epochs=epochs, learning_rate=0.1)
    for a, b in zip(ours, reference.weights):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert loss == pytest.approx(reference.metrics["loss"], rel=1e-5)


def test_the_nodes_numpy_evaluation_equals_fedutils_evaluate_weights():
    _, (x_test, y_test) = federation.federation_data(3, seed=0)
    model = federation.digits_model(0)
    trained = federation.simulate(3, rounds=1).final_weights
    for weights in (model.get_weights(), trained):
        loss, accuracy = federation.device_evaluate(weights, x_test, y_test)
        want_loss, want_accuracy = evaluate_weights(model, weights, x_test, y_test)
        assert accuracy == want_accuracy
        assert loss == pytest.approx(want_loss, rel=1e-5)


def test_simulate_with_a_lost_client_is_run_fedavg_round_by_round():
    clients, _ = federation.federation_data(3, seed=0)
    lost = federation.simulate(3, rounds=3, lost_client=2, lost_from_round=2)
    assert [r["round"] for r in lost.rounds] == [1, 2, 3]
    assert [r["num_selected"] for r in lost.rounds] == [3, 2, 2]
    first = federation.simulate(3, rounds=1)
    np.testing.assert_allclose(lost.accuracy[0], first.accuracy[0])
    with pytest.raises(ValueError, match="lost_client"):
        federation.simulate(3, lost_client=3)


@pytest.mark.skipif(HAS_FLOWER, reason="tests the message shown when Flower is missing")
def test_missing_flower_says_which_environment_to_use():
    with pytest.raises(RuntimeError, match="current-TensorFlow environment"):
        federation.run_federation()


def test_a_missing_flower_command_is_named_with_the_fix():
    with pytest.raises(RuntimeError, match="'flower-superlink'.*pip install flwr==1.39.0"):
        processes.find_command("flower-superlink", {"PATH": "/nonexistent"},
                               launcher.INSTALL_HINT)


@needs_flower
def test_quick_grid_returns_every_reply_or_stops_at_the_timeout():
    from fedutils.bridges.flower.app.digits_app.server_support import QuickGrid

    class FakeGrid:   # replies to messages "a" and "b" arrive at the second pull; "c" never
        def __init__(self):
            self.pulls = 0

        def push_messages(self, messages):
            return list(messages)

        def pull_messages(self, ids):
            self.pulls += 1
            ready = [i for i in ids if i != "c"] if self.pulls >= 2 else []
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
                    for i in ready]

    grid = QuickGrid(FakeGrid(), poll=0.01)
    assert sorted(m.metadata.reply_to_message_id
                  for m in grid.send_and_receive(["a", "b"], timeout=5)) == ["a", "b"]
    started = time.monotonic()
    replies = grid.send_and_receive(["a", "b", "c"], timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2
    assert sorted(m.metadata.reply_to_message_id for m in replies) == ["a", "b"]


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory):
    """One federation of three nodes, node 2 killed as round 2's training goes out."""
    return federation.run_federation(num_clients=3, rounds=3, round_timeout=ROUND_TIMEOUT,
                                     kill_client=KILL_CLIENT, kill_round=KILL_ROUND,
                                     verbose=False,
                                     workdir=str(tmp_path_factory.mktemp("federation")))


@needs_flower
def test_the_server_waits_out_one_timeout_for_the_dead_node_then_stops_asking_it(crashed_run):
    assert crashed_run.killed == [KILL_CLIENT]
    steps = [(r["round"], step, r[step]["asked"], r[step]["replied"], r[step]["missing"])
             for r in crashed_run.rounds for step in ("train", "evaluate")]
    assert steps == [(1, "train", 3, 3, 0), (1, "evaluate", 3, 3, 0),
                     (2, "train", 3, 2, 1), (2, "evaluate", 2, 2, 0),
                     (3, "train", 2, 2, 0), (3, "evaluate", 2, 2, 0)]
    assert all(r[s]["errors"] == 0 for r in crashed_run.rounds for s in ("train", "evaluate"))
    sizes = [len(node["y_train"]) for node in federation.node_data(3)]
    assert [r["train"]["examples"] for r in crashed_run.rounds] == \
        [sum(sizes), sizes[0] + sizes[1], sizes[0] + sizes[1]]


@needs_flower
def test_the_federation_reproduces_run_fedavg_with_the_same_crash(crashed_run):
    reference = federation.simulate(3, rounds=3, lost_client=KILL_CLIENT,
                                    lost_from_round=KILL_ROUND)
    for got, want in zip(crashed_run.final_weights, reference.final_weights):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # round 1: every node evaluated, and their held-out sets are the whole test set
    assert crashed_run.rounds[0]["evaluate"]["examples"] == 450
    assert abs(crashed_run.accuracies[0] - reference.accuracy[0]) <= 1 / 450 + 1e-12


@needs_flower
def test_federated_evaluation_covers_exactly_the_nodes_that_replied(crashed_run):
    nodes = federation.node_data(3)
    survivors = [i for i in range(3) if i != KILL_CLIENT]
    x = np.concatenate([nodes[i]["x_test"] for i in survivors])
    y = np.concatenate([nodes[i]["y_test"] for i in survivors])
    assert crashed_run.rounds[-1]["evaluate"]["examples"] == len(y)
    _, accuracy = federation.device_evaluate(crashed_run.final_weights, x, y)
    assert abs(crashed_run.accuracies[-1] - accuracy) <= 1 / len(y) + 1e-12
    assert crashed_run.accuracies[-1] > 0.7


@needs_flower
def test_commands_and_outputs_hold_no_absolute_paths(crashed_run):
    assert "flwr-run" in crashed_run.commands and "clientapp-0" in crashed_run.commands
    for command in crashed_run.commands.values():
        assert str(crashed_run.workdir) not in command and " /" not in command, command


@needs_flower
def test_every_process_of_the_federation_has_exited(crashed_run):
    assert crashed_run.left_running == []
    home = str(crashed_run.workdir / "flwr-home")        # every process of the run has it
    leftovers = [" ".join(_cmdline(p)) for p in psutil.process_iter()
                 if _environ(p).get("FLWR_HOME") == home]
    assert leftovers == []
    assert 9 <= crashed_run.peak_processes <= 12 and crashed_run.peak_memory_mb > 0


@needs_flower
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_no_process_outlives_a_program_killed_mid_run(tmp_path):
    script = textwrap.dedent(f"""
        from fedutils import federation
        federation.run_federation(num_clients=2, rounds=50, workdir={str(tmp_path)!r})
    """)
    with open(tmp_path / "out.log", "wb") as out:
        parent = subprocess.Popen([sys.executable, "-u", "-c", script], stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "round 1/50" not in (tmp_path / "out.log").read_text():
            assert parent.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "out.log").read_text()
            time.sleep(0.5)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    home = str(tmp_path / "flwr-home")
    deadline = time.monotonic() + 30          # Flower's own helpers exit a few seconds later
    while time.monotonic() < deadline:
        left = [p for p in psutil.process_iter() if _environ(p).get("FLWR_HOME") == home
                and _status(p) != psutil.STATUS_ZOMBIE]
        if not left:
            break
        time.sleep(0.5)
    for p in left:                            # leave nothing behind even when failing
        p.kill()
    assert [" ".join(_cmdline(p)) for p in left] == []


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


def _status(proc):
    try:
        return proc.status()
    except psutil.Error:
        return psutil.STATUS_ZOMBIE
