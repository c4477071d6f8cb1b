"""The fast path of `run_fedavg`: a whole round of client training in one compiled graph.

Simulated FedAvg does the same arithmetic as centralized training; what makes simulators slow is
per-client overhead in Python (building optimizers, iterating datasets, one `fit` call per
client). Here every client's examples are laid out once, back to back, in one tensor; a round is
a single `tf.function` call that, for each chosen client, resets the model's variables to the
global weights, runs the same SGD steps as `fedavg.client_update` on slices of that tensor, and
stacks the resulting weights. Python runs once per round, not once per batch.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from fedutils.data import client_arrays
from fedutils.fedavg import per_example_loss


class FastRound:
    """Compiled FedAvg round for one model and one fixed set of client datasets."""

    def __init__(self, model: tf.keras.Model, client_datasets: Sequence[Any], epochs: int,
                 learning_rate: float, proximal_mu: float):
        self.model = model
        xs, ys, batch_rows = [], [], []
        for ds in client_datasets:  # the datasets' own batches, in their own order
            x, y, sizes = client_arrays(ds)
            xs.append(x)
            ys.append(y)
            batch_rows.append(sizes)
        self.x = tf.constant(np.concatenate(xs))
        self.y = tf.constant(np.concatenate(ys))
        # Batch table: row offset and size of every batch, and each client's first batch.
        sizes = np.concatenate([np.asarray(s) for s in batch_rows])
        self.batch_offset = tf.constant(np.concatenate([[0], np.cumsum(sizes)[:-1]]), tf.int32)
        self.batch_size = tf.constant(sizes, tf.int32)
        counts = np.array([len(s) for s in batch_rows])
        self.first_batch = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
        self.num_batches = counts.astype(np.int32)
        self.num_examples = np.array([sum(s) for s in batch_rows], dtype=np.int64)
        self.epochs = int(epochs)
        self.lr = float(learning_rate)
        self.mu = float(proximal_mu)
        self._train = tf.function(self._train_clients, input_signature=[
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)])

    def run(self, global_weights: list, chosen: np.ndarray
            ) -> tuple[list, np.ndarray, np.ndarray]:
        """Train the `chosen` clients from `global_weights`; return their weights, example
        counts and mean training losses."""
        self.model.set_weights(global_weights)
        stacked, losses = self._train(tf.constant(self.first_batch[chosen]),
                                      tf.constant(self.num_batches[chosen]))
        stacked = [s.numpy() for s in stacked]
        weights = [[s[i] for s in stacked] for i in range(len(chosen))]
        return weights, self.num_examples[chosen], losses.numpy()

    def _train_clients(self, first_batch: tf.Tensor, num_batches: tf.Tensor):
        variables = self.model.trainable_variables
        anchor = [tf.identity(v) for v in variables]  # the global weights
        num_chosen = tf.shape(first_batch)[0]
        outputs = [tf.TensorArray(v.dtype, size=num_chosen) for v in variables]
        losses = tf.TensorArray(tf.float32, size=num_chosen)
        for c in tf.range(num_chosen):
            for v, a in zip(variables, anchor):
                v.assign(a)
            loss_sum = tf.constant(0.0)
            seen = tf.constant(0.0)
            for _ in tf.range(self.epochs):
                for b in tf.range(num_batches[c]):
                    index = first_batch[c] + b
                    start, size = self.batch_offset[index], self.batch_size[index]
                    loss = self._step(self.x[start:start + size], self.y[start:start + size],
                                      anchor)
                    loss_sum += loss * tf.cast(size, tf.float32)
                    seen += tf.cast(size, tf.float32)
            outputs = [out.write(c, v) for out, v in zip(outputs, variables)]
            losses = losses.write(c, loss_sum / seen)
        return [out.stack() for out in outputs], losses.stack()

    def _step(self, x: tf.Tensor, y: tf.Tensor, anchor: list) -> tf.Tensor:
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            probabilities = self.model(x, training=True)
            loss = tf.reduce_mean(per_example_loss(self.model, y, probabilities))
            objective = loss
            if self.mu > 0:
                objective += self.mu / 2 * tf.add_n(
                    [tf.reduce_sum(tf.square(v - a)) for v, a in zip(variables, anchor)])
        grads = tape.gradient(objective, variables)
        for v, g in zip(variables, grads):
            v.assign_sub(self.lr * tf.convert_to_tensor(g))  # dense even for an Embedding
        return tf.cast(loss, tf.float32)
