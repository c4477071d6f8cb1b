"""ClientApp: what each SuperNode runs for every message the server sends it.

The node's own data is a file named in its node config (`data-path`): training examples in
batch order and a held-out set. Under Flower's simulation engine a virtual node has no file of
its own, only a `partition-id` in its node config: it then reads its partition of one shared
file named in the run config (`partitions`; arrays `x_train-<id>`, `y_train-<id>`, ...).
"train" replies with new weights and the example count FedAvg weights them by; "evaluate"
replies with the global model's loss and accuracy on the held-out set. Only Flower and NumPy
are imported: `task.py` holds the model's arithmetic.
"""
import functools

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from digits_app.task import evaluate, train

app = ClientApp()
PARTS = ("x_train", "y_train", "x_test", "y_test")


def my_data(context: Context):
    """This node's arrays: its own file (a SuperNode, lesson 15) or, in simulation, its
    partition of the shared file."""
    if "data-path" in context.node_config:
        return np.load(str(context.node_config["data-path"]))
    shared = shared_file(str(context.run_config["partitions"]))
    part = context.node_config["partition-id"]
    return {name: shared[f"{name}-{part}"] for name in PARTS if f"{name}-{part}" in shared}


@functools.lru_cache(maxsize=1)
def shared_file(path: str):
    """The shared partitions file, opened once per process (arrays are read on access)."""
    return np.load(path)


@app.train()
def train_on_my_data(msg: Message, context: Context) -> Message:
    data, cfg = my_data(context), context.run_config
    weights, loss = train(msg.content["arrays"].to_numpy_ndarrays(), data["x_train"],
                          data["y_train"], epochs=int(cfg["local-epochs"]),
                          learning_rate=float(cfg["client-lr"]),
                          batch_size=int(cfg["batch-size"]))
    metrics = {"num-examples": len(data["y_train"]), "train-loss": loss}
    return Message(RecordDict({"arrays": ArrayRecord(weights),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate_on_my_held_out_data(msg: Message, context: Context) -> Message:
    data = my_data(context)
    loss, accuracy = evaluate(msg.content["arrays"].to_numpy_ndarrays(), data["x_test"],
                              data["y_test"])
    metrics = {"num-examples": len(data["y_test"]), "loss": loss, "accuracy": accuracy}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
