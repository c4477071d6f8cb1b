"""The compiled client work of `run_fedavg`: a whole round of client training in one graph.

Simulated FedAvg does the same arithmetic as centralized training; what makes simulators slow is
per-client overhead in Python (building optimizers, iterating datasets, one `fit` call per
client). Here every client's examples are laid out once, back to back, in one tensor; a round is
a single `tf.function` call that, for each chosen client, resets the model's variables to the
global weights, runs `fedutils.loop.client.sgd_step` (the step `client_update` runs) on slices
of that tensor, and stacks the resulting weights. Python runs once per round, not per batch.
For SCAFFOLD the round also takes each chosen client's drift correction c - c_i, stacked per
variable, as an argument of the compiled function.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from fedutils.core.clientdata import ClientData
from fedutils.loop.client import sgd_step


class CompiledClients:
    """Compiled client training for one model and one fixed list of clients."""

    def __init__(self, model: tf.keras.Model, clients: Sequence[ClientData], epochs: int,
                 learning_rate: float, proximal_mu: float, scaffold: bool = False):
        self.model = model
        self.x = tf.constant(np.concatenate([c.x for c in clients]))
        self.y = tf.constant(np.concatenate([c.y for c in clients]))
        # Batch table: row offset and size of every batch, and each client's first batch.
        sizes = np.concatenate([c.batch_sizes for c in clients])
        self.batch_offset = tf.constant(np.concatenate([[0], np.cumsum(sizes)[:-1]]), tf.int32)
        self.batch_size = tf.constant(sizes, tf.int32)
        counts = np.array([len(c.batch_sizes) for c in clients])
        self.first_batch = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
        self.num_batches = counts.astype(np.int32)
        self.num_examples = np.array([len(c) for c in clients], dtype=np.int64)
        self.epochs = int(epochs)
        self.lr = float(learning_rate)
        self.mu = float(proximal_mu)
        self._train = tf.function(self._train_clients, input_signature=[
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)])
        if scaffold:  # a second graph, so the plain round's stays exactly as it was
            self._train_corrected = tf.function(self._train_clients_corrected, input_signature=[
                tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
                [tf.TensorSpec([None, *v.shape], v.dtype) for v in model.trainable_variables]])

    def local_steps(self, chosen: np.ndarray) -> np.ndarray:
        """SGD steps each of the `chosen` clients takes in a round: batches × epochs."""
        return self.num_batches[chosen].astype(np.int64) * self.epochs

    def train(self, global_weights: list, chosen: np.ndarray,
              corrections: Optional[list] = None) -> tuple[list, np.ndarray, np.ndarray]:
        """Train the `chosen` clients from `global_weights`; return their weights, example
        counts and mean training losses. `corrections` (SCAFFOLD's c - c_i, one array per
        variable stacked over the chosen clients) is added to every gradient of each client."""
        self.model.set_weights(global_weights)
        first, count = tf.constant(self.first_batch[chosen]), tf.constant(self.num_batches[chosen])
        if corrections is None:
            stacked, losses = self._train(first, count)
        else:
            stacked, losses = self._train_corrected(first, count,
                                                    [tf.constant(c) for c in corrections])
        stacked = [s.numpy() for s in stacked]
        weights = [[s[i] for s in stacked] for i in range(len(chosen))]
        return weights, self.num_examples[chosen], losses.numpy()

    def _train_clients_corrected(self, first_batch: tf.Tensor, num_batches: tf.Tensor,
                                 corrections: list):
        return self._train_clients(first_batch, num_batches, corrections)

    def _train_clients(self, first_batch: tf.Tensor, num_batches: tf.Tensor,
                       corrections: Optional[list] = None):
        variables = self.model.trainable_variables
        anchor = [tf.identity(v) for v in variables]  # the global weights
        num_chosen = tf.shape(first_batch)[0]
        outputs = [tf.TensorArray(v.dtype, size=num_chosen) for v in variables]
        losses = tf.TensorArray(tf.float32, size=num_chosen)
        for c in tf.range(num_chosen):
            for v, a in zip(variables, anchor):
                v.assign(a)
            correction = None if corrections is None else [k[c] for k in corrections]
            loss_sum = tf.constant(0.0)
            seen = tf.constant(0.0)
            for _ in tf.range(self.epochs):
                for b in tf.range(num_batches[c]):
                    index = first_batch[c] + b
                    start, size = self.batch_offset[index], self.batch_size[index]
                    loss = sgd_step(self.model, self.x[start:start + size],
                                    self.y[start:start + size], self.lr, self.mu, anchor,
                                    correction)
                    loss_sum += loss * tf.cast(size, tf.float32)
                    seen += tf.cast(size, tf.float32)
            outputs = [out.write(c, v) for out, v in zip(outputs, variables)]
            losses = losses.write(c, loss_sum / seen)
        return [out.stack() for out in outputs], losses.stack()
