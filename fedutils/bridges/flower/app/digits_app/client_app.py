"""ClientApp: what each SuperNode runs for every training message it receives.

The SuperNode's node config says which partition of the digits it holds (a real client would
read its own files instead). Training is the course's own `fedutils.client_update`; the reply
carries the new weights and the example count the server weights them by.
"""
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    from fedutils.loop.client import client_update
    from fedutils.bridges.flower.task import digits_model, federation_data

    cfg = context.run_config
    partition = int(context.node_config["partition-id"])
    clients, _ = federation_data(int(context.node_config["num-partitions"]),
                                 int(cfg["seed"]), int(cfg["batch-size"]))
    model = digits_model(int(cfg["seed"]))
    model.set_weights(msg.content["arrays"].to_numpy_ndarrays())   # the global model
    result = client_update(model, clients[partition], epochs=int(cfg["local-epochs"]),
                           learning_rate=float(cfg["client-lr"]))
    reply = RecordDict({
        "arrays": ArrayRecord(result.weights),
        # FedAvg weights each reply by this key: examples per epoch, as fedutils does.
        "metrics": MetricRecord({"num-examples": result.num_examples,
                                 "train_loss": result.metrics["loss"]}),
    })
    return Message(content=reply, reply_to=msg)
