"""Client work: what one client does in a round, written once.

`sgd_step` is the one training step of the course: a forward pass, the cross-entropy of
`fedutils.core.losses` (plus FedProx's proximal term when mu > 0), one plain SGD update. The
readable `client_update` calls it eagerly batch by batch; the compiled round of
`fedutils.loop.compiled` calls the very same function inside a `tf.function`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import tensorflow as tf

from fedutils.core.checks import check_float, check_int, check_weights
from fedutils.core.clientdata import ClientData, as_client_data, check_against_model
from fedutils.core.losses import per_example_loss

Weights = list  # a model's weights: list of NumPy arrays, as model.get_weights() returns


@dataclass
class ClientResult:
    """What a client sends back after local training."""
    weights: Weights            # the locally trained weights
    num_examples: int           # examples seen per epoch: the server weights by this
    metrics: dict = field(default_factory=dict)  # local training loss (mean per example)


def sgd_step(model: tf.keras.Model, x: Any, y: Any, learning_rate: float,
             proximal_mu: float = 0.0, anchor: Optional[Sequence[tf.Tensor]] = None
             ) -> tf.Tensor:
    """One SGD step on the batch (x, y); returns the batch's mean loss (without the proximal
    term). With `proximal_mu` > 0 the objective gains FedProx's (mu/2)·||w - anchor||²."""
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        probabilities = model(x, training=True)
        loss = tf.reduce_mean(per_example_loss(model, y, probabilities))
        objective = loss
        if proximal_mu > 0:
            objective += proximal_mu / 2 * tf.add_n(
                [tf.reduce_sum(tf.square(v - a)) for v, a in zip(variables, anchor)])
    grads = tape.gradient(objective, variables)
    for variable, grad in zip(variables, grads):
        # An Embedding layer's gradient is sparse (IndexedSlices): make it dense.
        variable.assign_sub(learning_rate * tf.convert_to_tensor(grad))
    return tf.cast(loss, tf.float32)


def client_update(model: tf.keras.Model, dataset: Any, epochs: int = 1,
                  learning_rate: float = 0.1, proximal_mu: float = 0.0,
                  global_weights: Optional[Weights] = None) -> ClientResult:
    """Train `model` (already holding the global weights) on one client's data (a `ClientData`
    or a tf.data dataset of {"x", "y"} batches) with plain SGD; return its new weights and
    example count.

    One `sgd_step` per batch, `epochs` passes over the data. With `proximal_mu` > 0 this is
    FedProx's client: the loss gains (mu/2)·||w - w_global||², which pulls the local model back
    towards `global_weights` (default: the weights the model starts with).
    """
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"model must be a Keras model, got {type(model).__name__}")
    epochs = check_int("epochs", epochs, minimum=1)
    learning_rate = check_float("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    proximal_mu = check_float("proximal_mu", proximal_mu, low=0.0)
    data = dataset if isinstance(dataset, ClientData) else as_client_data([dataset], "dataset")[0]
    check_against_model([data], model, "dataset")
    start = (check_weights("global_weights", global_weights) if global_weights is not None
             else [v.numpy() for v in model.trainable_variables])
    anchor = [tf.constant(w) for w in start]
    total_loss = 0.0
    for _ in range(epochs):
        for x, y in data.batches():
            loss = sgd_step(model, x, y, learning_rate, proximal_mu, anchor)
            total_loss += float(loss) * len(y)
    return ClientResult(model.get_weights(), len(data), {"loss": total_loss / (len(data) * epochs)})
