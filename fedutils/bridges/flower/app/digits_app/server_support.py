"""What the ServerApp needs besides FedAvg: a record of the run, written to a JSON file after
every step so that a program outside the federation (the course's launcher) can follow it,
and a Grid that checks for replies more often than Flower's."""
import json
import time
from pathlib import Path

import numpy as np
from flwr.serverapp import Grid


class RunRecord:
    """Per round and step ("train", "evaluate"): nodes asked, replies, error replies, nodes that
    missed the deadline, examples in the replies; the evaluation metrics; the final weights."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.state = {"rounds": [], "done": False}
        self.write()

    def asked(self, server_round: int, step: str, nodes: int) -> None:
        """Messages for `step` of `server_round` are about to go out to `nodes` nodes."""
        if step == "train":   # a round starts (its wall-clock time, for benchmarks)
            self.state["rounds"].append({"round": server_round, "started": time.time()})
        self.state["now"] = [server_round, step]
        self.state["rounds"][-1][step] = {"asked": nodes}
        self.write()

    def replied(self, step: str, replies: int, errors: int, missing: int, examples: int) -> None:
        """What came back for `step` of the current round."""
        self.state["rounds"][-1][step].update(replied=replies, errors=errors, missing=missing,
                                              examples=examples)
        self.write()

    def metrics(self, values: dict) -> None:
        """The round's aggregated evaluation metrics (accuracy, loss)."""
        self.state["rounds"][-1].update(values)
        self.write()

    def finish(self, weights: list) -> None:
        """Save the final model beside the record and mark the run done."""
        weights_path = self.path.with_suffix(".npz")
        np.savez(weights_path, **{str(i): w for i, w in enumerate(weights)})
        self.state.update(done=True, weights_path=weights_path.name, finished=time.time())
        self.write()

    def write(self) -> None:
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(self.state, indent=1))
        partial.replace(self.path)   # readers see the old or the new file, never half of one


class QuickGrid(Grid):
    """The SuperLink's Grid, unchanged except that `send_and_receive` checks for replies every
    `poll` seconds; Flower 1.39's checks every 3 s, so each step would last a multiple of 3 s
    even when every reply is in after one."""

    def __init__(self, grid: Grid, poll: float = 0.25):
        self.grid, self.poll = grid, poll

    @property
    def run(self):
        return self.grid.run

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    def create_message(self, *args, **kwargs):
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def push_messages(self, messages):
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        """Push the messages, then collect replies until all are in or `timeout` passes."""
        waiting = set(self.push_messages(messages))
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        replies = []
        while waiting and time.monotonic() < deadline:
            time.sleep(self.poll)
            arrived = list(self.pull_messages(waiting))
            replies += arrived
            waiting -= {m.metadata.reply_to_message_id for m in arrived}
        return replies
