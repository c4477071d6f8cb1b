"""ClientApp: what each SuperNode runs for every message the server sends it.

The node's own data is a file named in its node config (`data-path`): training examples in
batch order and a held-out set. "train" replies with new weights and the example count FedAvg
weights them by; "evaluate" replies with the global model's loss and accuracy on the held-out
set. Only Flower and NumPy are imported: `task.py` holds the model's arithmetic.
"""
import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from digits_app.task import evaluate, train

app = ClientApp()


@app.train()
def train_on_my_data(msg: Message, context: Context) -> Message:
    data, cfg = np.load(str(context.node_config["data-path"])), context.run_config
    weights, loss = train(msg.content["arrays"].to_numpy_ndarrays(), data["x_train"],
                          data["y_train"], epochs=int(cfg["local-epochs"]),
                          learning_rate=float(cfg["client-lr"]),
                          batch_size=int(cfg["batch-size"]))
    metrics = {"num-examples": len(data["y_train"]), "train-loss": loss}
    return Message(RecordDict({"arrays": ArrayRecord(weights),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate_on_my_held_out_data(msg: Message, context: Context) -> Message:
    data = np.load(str(context.node_config["data-path"]))
    loss, accuracy = evaluate(msg.content["arrays"].to_numpy_ndarrays(), data["x_test"],
                              data["y_test"])
    metrics = {"num-examples": len(data["y_test"]), "loss": loss, "accuracy": accuracy}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
