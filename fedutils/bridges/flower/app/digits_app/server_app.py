"""ServerApp: weighted FedAvg over every connected SuperNode, evaluated on held-out digits.

The SuperLink starts this in its own process when `flwr run` submits the app. It waits until
`min-nodes` SuperNodes have connected (so round 1 matches the simulation), then lets Flower's
FedAvg strategy run the rounds. After each round it writes what happened to `results-path`,
which is how `fedutils.bridges.flower.launcher.run_federation` follows the run from outside.
"""
import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class RecordingFedAvg(FedAvg):
    """Flower's FedAvg (a mean weighted by "num-examples"), noting per round how many
    clients were asked, how many replied, and how many examples the replies carried."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.asked: dict[int, int] = {}
        self.replies: dict[int, tuple[int, int]] = {}

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.asked[server_round] = len(messages)
        return messages

    def aggregate_train(self, server_round, replies):
        # A client that crashed or timed out sends nothing (or an error): FedAvg averages
        # the replies that did arrive, weighted by their example counts.
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        examples = sum(int(m.content["metrics"]["num-examples"]) for m in ok)
        self.replies[server_round] = (len(ok), examples)
        return super().aggregate_train(server_round, replies)


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedutils.loop.evaluation import evaluate_weights
    from fedutils.bridges.flower.task import digits_model, federation_data

    cfg = context.run_config
    min_nodes, seed = int(cfg["min-nodes"]), int(cfg["seed"])
    model = digits_model(seed)
    _, (x_test, y_test) = federation_data(min_nodes, seed, int(cfg["batch-size"]))
    out = Path(str(cfg["results-path"])) if cfg["results-path"] else None
    state = {"rounds": [], "done": False}
    strategy = RecordingFedAvg(fraction_train=1.0, fraction_evaluate=0.0,
                               min_train_nodes=1, min_available_nodes=1)
    clock = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Called by the strategy before round 1 and after every round."""
        loss, accuracy = evaluate_weights(model, arrays.to_numpy_ndarrays(), x_test, y_test)
        if server_round == 0:
            state["initial"] = {"accuracy": accuracy, "loss": loss}
        else:
            clients, examples = strategy.replies.get(server_round, (0, 0))
            state["rounds"].append({
                "round": server_round, "asked": strategy.asked.get(server_round, 0),
                "clients": clients,
                "failures": strategy.asked.get(server_round, 0) - clients,
                "num_examples": examples, "accuracy": accuracy, "loss": loss,
                "seconds": time.perf_counter() - clock[0]})
        clock[0] = time.perf_counter()
        _write(out, state)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    # Wait for every expected client once, so that round 1 includes them all.
    deadline = time.monotonic() + 120
    while len(list(grid.get_node_ids())) < min_nodes and time.monotonic() < deadline:
        time.sleep(0.2)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.get_weights()),
                            num_rounds=int(cfg["num-server-rounds"]),
                            timeout=float(cfg["round-timeout"]), evaluate_fn=evaluate)
    if out is not None:
        weights_path = out.with_suffix(".npz")
        np.savez(weights_path, **{str(i): w for i, w in
                                  enumerate(result.arrays.to_numpy_ndarrays())})
        state.update(done=True, weights_path=str(weights_path))
        _write(out, state)


def _write(path, state: dict) -> None:
    if path is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(path)
