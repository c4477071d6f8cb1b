"""Client work: what one client does in a round, written once.

`sgd_step` is the one training step of the course: a forward pass, the cross-entropy of
`fedutils.core.losses` (plus FedProx's proximal term when mu > 0), one plain SGD update (plus
SCAFFOLD's drift correction c - c_i when given). The readable `client_update` calls it eagerly
batch by batch; the compiled round of `fedutils.loop.compiled` calls the very same function
inside a `tf.function`. `scaffold_control_update` is SCAFFOLD's client-side bookkeeping.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
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
             proximal_mu: float = 0.0, anchor: Optional[Sequence[tf.Tensor]] = None,
             correction: Optional[Sequence[tf.Tensor]] = None) -> tf.Tensor:
    """One SGD step on the batch (x, y); returns the batch's mean loss (without the proximal
    term). With `proximal_mu` > 0 the objective gains FedProx's (mu/2)·||w - anchor||².
    `correction` (one tensor per trainable variable) is added to the gradient before the step:
    SCAFFOLD passes c - c_i, so the step is w - lr·(g(w) - c_i + c)."""
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        probabilities = model(x, training=True)
        loss = tf.reduce_mean(per_example_loss(model, y, probabilities))
        objective = loss
        if proximal_mu > 0:
            objective += proximal_mu / 2 * tf.add_n(
                [tf.reduce_sum(tf.square(v - a)) for v, a in zip(variables, anchor)])
    grads = tape.gradient(objective, variables)
    if correction is not None:
        grads = [tf.convert_to_tensor(g) + c for g, c in zip(grads, correction)]
    for variable, grad in zip(variables, grads):
        # An Embedding layer's gradient is sparse (IndexedSlices): make it dense.
        variable.assign_sub(learning_rate * tf.convert_to_tensor(grad))
    return tf.cast(loss, tf.float32)


def client_update(model: tf.keras.Model, dataset: Any, epochs: int = 1,
                  learning_rate: float = 0.1, proximal_mu: float = 0.0,
                  global_weights: Optional[Weights] = None,
                  correction: Optional[Weights] = None) -> ClientResult:
    """Train `model` (already holding the global weights) on one client's data (a `ClientData`
    or a tf.data dataset of {"x", "y"} batches) with plain SGD; return its new weights and
    example count.

    One `sgd_step` per batch, `epochs` passes over the data. With `proximal_mu` > 0 this is
    FedProx's client: the loss gains (mu/2)·||w - w_global||², which pulls the local model back
    towards `global_weights` (default: the weights the model starts with). With `correction`
    (arrays shaped like the trainable weights) this is SCAFFOLD's client: every step adds it to
    the gradient; pass c - c_i, the server's control variate minus this client's.
    """
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"model must be a Keras model, got {type(model).__name__}")
    epochs = check_int("epochs", epochs, minimum=1)
    learning_rate = check_float("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    proximal_mu = check_float("proximal_mu", proximal_mu, low=0.0)
    data = dataset if isinstance(dataset, ClientData) else as_client_data([dataset], "dataset")[0]
    check_against_model([data], model, "dataset")
    variables = model.trainable_variables
    start = (check_weights("global_weights", global_weights, like=[v.numpy() for v in variables])
             if global_weights is not None else [v.numpy() for v in variables])
    anchor = [tf.constant(w, dtype=v.dtype) for w, v in zip(start, variables)]
    if correction is not None:
        correction = [tf.constant(c.astype(w.dtype, copy=False)) for c, w in
                      zip(check_weights("correction", correction, like=start), start)]
    total_loss = 0.0
    for _ in range(epochs):
        for x, y in data.batches():
            loss = sgd_step(model, x, y, learning_rate, proximal_mu, anchor, correction)
            total_loss += float(loss) * len(y)
    return ClientResult(model.get_weights(), len(data), {"loss": total_loss / (len(data) * epochs)})


def scaffold_control_update(client_control: Weights, server_control: Weights,
                            global_weights: Weights, local_weights: Weights, local_steps: int,
                            learning_rate: float) -> Weights:
    """SCAFFOLD's new client control variate, option II of Karimireddy et al. (2020):

        c_i+ = c_i - c + (x - y) / (K · lr)

    x: the global weights the client started from, y: its weights after K local steps at
    learning rate lr. (x - y)/(K·lr) is the average corrected gradient g - c_i + c of those
    steps, so c_i+ is the client's average plain gradient: no extra pass over the data."""
    scale = 1.0 / (local_steps * learning_rate)
    return [ci - c + (x - y) * np.asarray(scale, dtype=x.dtype)
            for ci, c, x, y in zip(client_control, server_control, global_weights,
                                   local_weights)]
