"""The compiled client work of `run_fedavg`: a whole round of client training in one graph.

Simulated FedAvg does the same arithmetic as centralized training; what makes simulators slow is
per-client overhead (building optimizers, iterating datasets, one `fit` per client) and training
clients one after another. A round's clients are independent, so here they train side by side:

- `StackedDenseClients`, for a chain of Dense layers (the digits, iris and breast-cancer models):
  every chosen client's weights are stacked on a leading client axis, each layer is one batched
  matrix product (`tf.matmul` over the client axis), and one step of the graph is one SGD step
  of every client at once.
  Clients of different sizes are handled by a mask: a short last batch, or a client whose steps
  are used up, contributes zeros.
- `SequentialClients`, for any other model (the keyboard LSTM, the convolutional and transfer
  models): one `tf.function` that loops over the chosen clients, resetting the model to the
  global weights for each.

Both run `fedutils.loop.client`'s rule for step t of client c: the same loss, FedProx term and
SCAFFOLD correction as `sgd_step` on c's batch t (tests/test_fedavg.py checks the final weights
against `client_update` to 1e-5). Both return the round's weights stacked per tensor, client axis
first, so the aggregator can do array arithmetic instead of a Python loop over clients.
`compile_clients` picks the path.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from fedutils.core.clientdata import ClientData
from fedutils.core.losses import per_example_loss
from fedutils.loop.client import sgd_step


@dataclass
class RoundWork:
    """What a round's chosen clients produced: their weights stacked per tensor (client axis
    first), their example counts and their mean training losses. When the round only needs the
    example-weighted mean update of some of them (`mean_of`), `mean` holds it instead and
    `stacked` is None."""
    stacked: Optional[list]
    num_examples: np.ndarray
    losses: np.ndarray
    mean: Optional[list] = None

    def client(self, i: int) -> list:
        """Client i's weights, one array per tensor (views into `stacked`)."""
        return [s[i] for s in self.stacked]


def compile_clients(model: tf.keras.Model, clients: Sequence[ClientData], epochs: int,
                    learning_rate: float, proximal_mu: float, scaffold: bool = False,
                    reuse: bool = True):
    """The compiled trainer for `model` and `clients`: side by side where the model is a chain
    of Dense layers and there is more than one client, one client after another otherwise.

    Compiling costs about as much as a few rounds, and lessons train the same model many times
    (seeds, learning rates, data splits), so with `reuse` the last few trainers are kept, keyed
    by the model's architecture, the shape of the examples and the training settings. A new
    run reuses one with its own clients and learning rate: both are variables of the graph, not
    constants in it. A kept trainer trains and evaluates with the model it was built with, so
    `reuse` is only for a model nobody else holds (`run_fedavg` builds one from `model_fn`); a
    model the caller owns gets a trainer of its own."""
    stack = dense_activations(model) is not None and len(clients) > 1
    # One client (centralized training) has nothing to stack: the plain loop is faster.
    path = StackedDenseClients if stack else SequentialClients
    x, y = clients[0].x, clients[0].y
    key = (path.__name__, _architecture(model), str(x.dtype), x.shape[1:], str(y.dtype),
           y.shape[1:], int(epochs), float(proximal_mu), bool(scaffold)) if reuse else None
    trainer = _TRAINERS.pop(key, None) if reuse else None
    if trainer is None:
        trainer = path(model, clients, epochs, proximal_mu, scaffold)
    else:
        trainer.set_clients(clients)
    if reuse:
        _TRAINERS[key] = trainer  # the most recently used last
        while len(_TRAINERS) > KEPT_TRAINERS:
            _TRAINERS.popitem(last=False)
    trainer.lr.assign(learning_rate)
    return trainer


KEPT_TRAINERS = 6
_TRAINERS: "OrderedDict[tuple, _Clients]" = OrderedDict()


def _architecture(model: tf.keras.Model) -> str:
    """The model's layers and their settings, without the layer names Keras numbers apart."""
    layers = [(type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
              for layer in model.layers]
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    return json.dumps([layers, shapes, str(model.input_shape)], sort_keys=True, default=str)


def dense_activations(model: tf.keras.Model) -> Optional[list[Callable]]:
    """Each layer's activation if `model` is a plain chain of Dense layers with biases on flat
    inputs and nothing else (what `StackedDenseClients` runs), else None."""
    layers = [layer for layer in model.layers
              if not isinstance(layer, tf.keras.layers.InputLayer)]
    if not layers or not all(type(layer) is tf.keras.layers.Dense and layer.use_bias
                             for layer in layers):
        return None
    if len(model.inputs) != 1 or len(model.input_shape) != 2:
        return None
    expected = [v for layer in layers for v in (layer.kernel, layer.bias)]
    if [id(v) for v in model.trainable_variables] != [id(v) for v in expected]:
        return None
    return [layer.activation for layer in layers]


class _Clients:
    """What both paths share: the clients' examples back to back in two variables (so another
    run's clients need no new graph), and their sizes in examples and batches."""

    def __init__(self, model: tf.keras.Model, clients: Sequence[ClientData], epochs: int,
                 proximal_mu: float):
        self.model = model
        x, y = clients[0].x, clients[0].y
        self.x = tf.Variable(np.zeros((0, *x.shape[1:]), x.dtype), trainable=False,
                             shape=tf.TensorShape([None, *x.shape[1:]]))
        self.y = tf.Variable(np.zeros((0, *y.shape[1:]), y.dtype), trainable=False,
                             shape=tf.TensorShape([None, *y.shape[1:]]))
        self.epochs, self.mu = int(epochs), float(proximal_mu)
        self.lr = tf.Variable(0.0, trainable=False, dtype=tf.float32)  # set by compile_clients
        self.set_clients(clients)

    def set_clients(self, clients: Sequence[ClientData]) -> None:
        """Train `clients` from now on (same example shape and dtypes as the first ones)."""
        self.x.assign(np.concatenate([c.x for c in clients]))
        self.y.assign(np.concatenate([c.y for c in clients]))
        self.sizes = np.array([len(c) for c in clients], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.batch = np.array([c.batch_size for c in clients], dtype=np.int64)
        self.num_batches = np.array([len(c.batch_sizes) for c in clients], dtype=np.int64)

    def local_steps(self, chosen: np.ndarray) -> np.ndarray:
        """SGD steps each of the `chosen` clients takes in a round: batches × epochs."""
        return self.num_batches[chosen] * self.epochs

    def _specs(self, *extra: tf.TensorSpec) -> list:
        weights = [tf.TensorSpec(v.shape, v.dtype) for v in self.model.trainable_variables]
        return [weights, *extra]

    def _correction_spec(self) -> list:
        return [tf.TensorSpec([None, *v.shape], v.dtype) for v in self.model.trainable_variables]


class StackedDenseClients(_Clients):
    """Every chosen client of a Dense-chain model trains at once, weights stacked per client."""

    def __init__(self, model, clients, epochs, proximal_mu, scaffold=False):
        super().__init__(model, clients, epochs, proximal_mu)
        self.activations = dense_activations(model)
        if self.activations is None:
            raise ValueError("StackedDenseClients runs chains of Dense layers only")
        index = tf.TensorSpec([None, None, None], tf.int32)
        self._train = tf.function(self._train_stacked, input_signature=self._specs(
            index, tf.TensorSpec([None, None, None], tf.float32)))
        if scaffold:  # a second graph, so the plain round's stays as it is
            self._train_corrected = tf.function(self._train_stacked, input_signature=self._specs(
                index, tf.TensorSpec([None, None, None], tf.float32), self._correction_spec()))
        share = tf.TensorSpec([None], tf.float32)
        self._mean_update = tf.function(self._train_mean, input_signature=self._specs(
            index, tf.TensorSpec([None, None, None], tf.float32), share))
        self._one_step = tf.function(self._train_one_step, input_signature=self._specs(
            index, tf.TensorSpec([None, None, None], tf.float32), share))

    def set_clients(self, clients: Sequence[ClientData]) -> None:
        super().set_clients(clients)
        self._schedule_of: tuple = (None, None)

    def schedule(self, chosen: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        """Rows [steps, clients, width] into the examples and a 0/1 mask of that shape: at step
        t, client c trains on its batch t mod (its batches per epoch) until its steps run out.
        `width` is the largest batch of any chosen client. Kept for the next call with the same
        clients (every round, when every client takes part)."""
        key = chosen.tobytes()
        if self._schedule_of[0] == key:
            return self._schedule_of[1]
        sizes, batch, per_epoch = self.sizes[chosen], self.batch[chosen], self.num_batches[chosen]
        steps = int((per_epoch * self.epochs).max())
        width = int(np.minimum(batch, sizes).max())
        t = np.arange(steps)[:, None, None]
        b = np.arange(width)[None, None, :]
        offset = (t % per_epoch[None, :, None]) * batch[None, :, None] + b
        valid = ((t < (per_epoch * self.epochs)[None, :, None]) & (b < batch[None, :, None])
                 & (offset < sizes[None, :, None]))
        rows = np.where(valid, self.starts[chosen][None, :, None] + offset, 0)
        schedule = tf.constant(rows, tf.int32), tf.constant(valid, tf.float32)
        self._schedule_of = (key, schedule)
        return schedule

    def train(self, global_weights: list, chosen: np.ndarray,
              corrections: Optional[list] = None,
              mean_of: Optional[np.ndarray] = None) -> RoundWork:
        """Train the `chosen` clients from `global_weights`. `corrections` (SCAFFOLD's c - c_i,
        one array per tensor stacked over the chosen clients) is added to every gradient.
        With `mean_of` (positions in `chosen`), return only the example-weighted mean update of
        those clients, computed in the graph: no per-client weights leave it."""
        rows, mask = self.schedule(chosen)
        if mean_of is not None and corrections is None:
            share = np.zeros(len(chosen), np.float32)
            share[mean_of] = self.sizes[chosen][mean_of] / self.sizes[chosen][mean_of].sum()
            mean_update = self._one_step if rows.shape[0] == 1 else self._mean_update
            mean, losses = mean_update(global_weights, rows, mask, tf.constant(share))
            return RoundWork(None, self.sizes[chosen], losses.numpy(), [m.numpy() for m in mean])
        if corrections is None:
            stacked, losses = self._train(global_weights, rows, mask)
        else:
            stacked, losses = self._train_corrected(global_weights, rows, mask,
                                                    [tf.constant(c) for c in corrections])
        return RoundWork([s.numpy() for s in stacked], self.sizes[chosen], losses.numpy())

    def _forward(self, weights: list, x: tf.Tensor) -> tf.Tensor:
        for i, activation in enumerate(self.activations):  # [clients, batch, units]
            x = activation(tf.matmul(x, weights[2 * i]) + tf.expand_dims(weights[2 * i + 1], 1))
        return x

    def _train_stacked(self, start: list, rows: tf.Tensor, mask: tf.Tensor,
                       corrections: Optional[list] = None):
        num = tf.shape(rows)[1]
        weights = [tf.broadcast_to(w, tf.concat([[num], tf.shape(w)], 0)) for w in start]
        anchor = [w[None] for w in start]
        xs, ys = tf.gather(self.x, rows), tf.gather(self.y, rows)  # [steps, clients, width, ...]
        count = tf.reduce_sum(mask, axis=2)                        # [steps, clients]
        share = mask / tf.maximum(count, 1.0)[:, :, None]  # an example's share of its batch mean
        # A client with no batch left has a zero loss gradient; only FedProx's term or SCAFFOLD's
        # correction could still move it, so only then is its step masked out explicitly.
        idle_moves = self.mu > 0 or corrections is not None
        loss_sum = tf.zeros([num], tf.float32)
        for t in tf.range(tf.shape(rows)[0]):
            with tf.GradientTape() as tape:
                tape.watch(weights)
                losses = per_example_loss(self.model, ys[t], self._forward(weights, xs[t]))
                client_loss = tf.reduce_sum(losses * share[t], axis=1)
                objective = tf.reduce_sum(client_loss)
                if self.mu > 0:
                    objective += self.mu / 2 * tf.add_n(
                        [tf.reduce_sum(tf.square(w - a)) for w, a in zip(weights, anchor)])
            grads = tape.gradient(objective, weights)
            if corrections is not None:
                grads = [g + k for g, k in zip(grads, corrections)]
            if idle_moves:
                active = tf.cast(count[t] > 0, tf.float32)
                grads = [g * tf.reshape(active, [-1] + [1] * (len(g.shape) - 1)) for g in grads]
            weights = [w - self.lr * g for w, g in zip(weights, grads)]
            loss_sum += client_loss * count[t]
        return weights, loss_sum / tf.reduce_sum(count, axis=0)


    def _train_mean(self, start: list, rows: tf.Tensor, mask: tf.Tensor, share: tf.Tensor):
        """sum_c share_c · (w_c - start): the weighted mean update, without leaving the graph."""
        weights, losses = self._train_stacked(start, rows, mask)
        return [tf.tensordot(share, w - s, 1) for w, s in zip(weights, start)], losses

    def _train_one_step(self, start: list, rows: tf.Tensor, mask: tf.Tensor, share: tf.Tensor):
        """The weighted mean update when every client takes exactly one step (FedSGD's case):
        client c's update is -lr·∇L_c(start), so sum_c share_c·update_c = -lr·∇(sum_c
        share_c·L_c)(start): one gradient of the shared weights over all the clients' examples,
        no per-client copies. (FedProx's term has zero gradient at the start.)"""
        x, y = tf.gather(self.x, rows[0]), tf.gather(self.y, rows[0])  # [clients, width, ...]
        count = tf.reduce_sum(mask[0], axis=1)
        with tf.GradientTape() as tape:
            tape.watch(start)
            flat = tf.reshape(x, tf.concat([[1, -1], tf.shape(x)[2:]], 0))
            probabilities = self._forward([w[None] for w in start], flat)
            losses = tf.reshape(per_example_loss(self.model, tf.reshape(y, [1, -1]),
                                                 probabilities), tf.shape(mask[0]))
            client_loss = tf.reduce_sum(losses * mask[0], axis=1) / tf.maximum(count, 1.0)
            objective = tf.reduce_sum(share * client_loss)
        grads = tape.gradient(objective, start)
        return [-self.lr * g for g in grads], client_loss


class SequentialClients(_Clients):
    """Any model: the chosen clients train one after another inside one compiled function."""

    def __init__(self, model, clients, epochs, proximal_mu, scaffold=False):
        self.batch_offset = tf.Variable([0], shape=[None], trainable=False)
        self.batch_size = tf.Variable([0], shape=[None], trainable=False)
        super().__init__(model, clients, epochs, proximal_mu)
        index = tf.TensorSpec([None], tf.int32)
        self._train = tf.function(self._train_clients, input_signature=[index, index])
        if scaffold:
            self._train_corrected = tf.function(self._train_clients, input_signature=[
                index, index, self._correction_spec()])

    def set_clients(self, clients: Sequence[ClientData]) -> None:
        super().set_clients(clients)
        sizes = np.concatenate([c.batch_sizes for c in clients]).astype(np.int32)
        self.batch_offset.assign(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32))
        self.batch_size.assign(sizes)
        self.first_batch = np.concatenate([[0], np.cumsum(self.num_batches)[:-1]]).astype(np.int32)

    def train(self, global_weights: list, chosen: np.ndarray,
              corrections: Optional[list] = None,
              mean_of: Optional[np.ndarray] = None) -> RoundWork:
        """As `StackedDenseClients.train`, always with every client's weights (`mean_of` is
        ignored: they leave the graph one client at a time anyway)."""
        self.model.set_weights(global_weights)
        first = tf.constant(self.first_batch[chosen])
        count = tf.constant(self.num_batches[chosen].astype(np.int32))
        if corrections is None:
            stacked, losses = self._train(first, count)
        else:
            stacked, losses = self._train_corrected(first, count,
                                                    [tf.constant(c) for c in corrections])
        return RoundWork([s.numpy() for s in stacked], self.sizes[chosen], losses.numpy())

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
