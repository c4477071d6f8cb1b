"""ServerApp: Flower's FedAvg over the connected SuperNodes. The server holds no data.

Each round has two steps. "train": every node gets the global model, trains on its own data
and replies with new weights, averaged weighted by each reply's example count. "evaluate":
every node gets the new model and reports its loss and accuracy on its own held-out data,
averaged the same way (federated evaluation; `fraction-evaluate = 0` skips it, as the
benchmark does). The server waits at most `round-timeout` seconds per step; a node that has not
replied by then is left out of that average and not asked again in this run.
"""
import time

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from digits_app.server_support import QuickGrid, RunRecord

app = ServerApp()


class CountingFedAvg(FedAvg):
    """Flower's FedAvg, plus: count who was asked and who replied in each step, and stop
    asking a node that missed a deadline (it may be dead: until Flower's heartbeat check says
    so, each message to it would cost another full timeout)."""

    def __init__(self, record: RunRecord, **kwargs):
        super().__init__(**kwargs)
        self.record, self.silent, self.waiting_for = record, set(), []

    def configure_train(self, server_round, arrays, config, grid):
        messages = super().configure_train(server_round, arrays, config, grid)
        return self.ask(server_round, "train", messages)

    def configure_evaluate(self, server_round, arrays, config, grid):
        messages = super().configure_evaluate(server_round, arrays, config, grid)
        return self.ask(server_round, "evaluate", messages)

    def aggregate_train(self, server_round, replies):
        replies = self.count("train", replies)
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(self, server_round, replies):
        replies = self.count("evaluate", replies)
        metrics = super().aggregate_evaluate(server_round, replies)
        self.record.metrics(dict(metrics or {}))
        return metrics

    def ask(self, server_round, step, messages):
        messages = [m for m in messages if m.metadata.dst_node_id not in self.silent]
        self.waiting_for = [m.metadata.dst_node_id for m in messages]
        self.record.asked(server_round, step, len(messages))
        return messages

    def count(self, step, replies):
        replies = list(replies)
        answered = {m.metadata.src_node_id for m in replies}
        missing = [node for node in self.waiting_for if node not in answered]
        self.silent.update(missing)
        good = [m for m in replies if not m.has_error()]
        examples = sum(int(m.content["metrics"]["num-examples"]) for m in good)
        self.record.replied(step, len(good), len(replies) - len(good), len(missing), examples)
        return replies


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    if not hasattr(grid, "pull_interval"):   # Flower's simulation grid checks every 0.1 s
        grid = QuickGrid(grid)   # checks for replies every 0.25 s instead of every 3 s
    record = RunRecord(str(cfg["results-path"]))
    # Round 1 should include every expected node, so wait (up to 2 minutes) until all connect.
    deadline = time.monotonic() + 120
    while len(list(grid.get_node_ids())) < int(cfg["min-nodes"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    start = np.load(str(cfg["initial-weights"]))   # the model everyone starts from
    strategy = CountingFedAvg(record, fraction_train=1.0,
                              fraction_evaluate=float(cfg["fraction-evaluate"]),
                              min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    result = strategy.start(grid=grid,
                            initial_arrays=ArrayRecord([start[k] for k in sorted(start, key=int)]),
                            num_rounds=int(cfg["num-server-rounds"]),
                            timeout=float(cfg["round-timeout"]))
    record.finish(result.arrays.to_numpy_ndarrays())
