"""Attacks on federated learning: what a curious server or a few malicious clients can do.

- Gradient inversion (a curious server): Deep Leakage from Gradients (Zhu et al. 2019) with
  iDLG's label inference (Zhao et al. 2020). The server knows the model and receives a client's
  gradient; it optimises dummy images until their gradient matches (Geiping et al. 2020's
  distances), and so recovers the client's images.
- Poisoning (malicious clients): label flipping changes their data (`flip_labels`,
  `poison_clients`); sign flipping and scaling change their updates (`MaliciousClients`, an
  aggregator wrapper that swaps the chosen clients' updates before the real aggregator sees them,
  so the training loop stays untouched).
- Backdoors (Bagdasaryan et al. 2020): malicious clients train on images carrying a small
  trigger patch relabelled to a target class (`backdoor_examples`), and boost their update so
  that it survives averaging (model replacement: `MaliciousClients(..., scale_update(n / lr))`).
  `backdoor_success` measures how often triggered test images land in the target class.

The defences are in `fedutils.robust` and `fedutils.privacy`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from fedutils.core.checks import (check_float, check_int, check_labels, check_rng,
                                  check_weights, float_dtype)
from fedutils.core.losses import per_example_loss
from fedutils.loop.aggregators import Aggregate, Aggregator, as_aggregator
from fedutils.loop.evaluation import predict

Weights = list  # a list of NumPy arrays, as model.get_weights() returns
Attack = Callable[[Weights], Weights]


# --- gradient inversion ---------------------------------------------------------------------

def batch_gradient(model: tf.keras.Model, x: Any, y: Any) -> Weights:
    """The gradient of the mean cross-entropy of (x, y) for `model`'s weights: what a FedSGD
    client sends for one batch (and, times -learning rate, its update after one SGD step)."""
    _check_model(model)
    y = check_labels("y", y)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x must have shape (len(y), features) = ({len(y)}, ...), "
                         f"got {x.shape}")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(per_example_loss(model, y, model(x, training=True)))
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def infer_labels(bias_gradient: Any, batch_size: int,
                 mean_prediction: Optional[Any] = None) -> np.ndarray:
    """The labels of a batch, read from the gradient of the output layer's bias (iDLG).

    For softmax cross-entropy that gradient is mean(p) - counts / B: the class of a single
    example is its only negative entry (iDLG's sign rule), and a batch's label counts are
    B·(p̄ - gradient), with p̄ the mean prediction (lesson 06's attack). The server can estimate
    p̄ from the model's outputs on public data; without it, the uniform 1/C is used. Counts are
    rounded so they sum to B (largest remainders). Returns the B labels, sorted.
    """
    g = np.asarray(bias_gradient, dtype=np.float64)
    if g.ndim != 1 or g.size < 2 or not np.all(np.isfinite(g)):
        raise ValueError("bias_gradient must be the finite 1-D gradient of the output layer's "
                         f"bias (one entry per class), got shape {g.shape}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if batch_size == 1:
        return np.array([int(np.argmin(g))])
    p = (np.full(g.size, 1.0 / g.size) if mean_prediction is None
         else np.asarray(mean_prediction, dtype=np.float64))
    if p.shape != g.shape or np.any(p < 0) or not np.isclose(p.sum(), 1.0, atol=1e-3):
        raise ValueError(f"mean_prediction must be probabilities summing to 1, one per class "
                         f"{g.shape}, got {np.round(p, 4).tolist()}")
    estimate = np.clip(batch_size * (p - g), 0.0, None)  # sums to >= B when g sums to 0
    total = estimate.sum()
    estimate = (estimate * batch_size / total if total > 0
                else np.full(g.size, batch_size / g.size))
    counts = np.floor(estimate).astype(int)
    counts[np.argsort(counts - estimate, kind="stable")[:batch_size - counts.sum()]] += 1
    return np.repeat(np.arange(g.size), counts)


@dataclass
class Reconstruction:
    """What `invert_gradient` returns: the images, the labels it assumed, and the final
    distance between their gradient and the target (0 = a perfect match)."""
    images: np.ndarray
    labels: np.ndarray
    distance: float


def invert_gradient(model: tf.keras.Model, gradient: Weights, batch_size: int,
                    labels: Optional[Any] = None, mean_prediction: Optional[Any] = None,
                    steps: int = 1000, learning_rate: float = 0.3, distance: str = "l2",
                    seed: int = 0) -> Reconstruction:
    """Deep Leakage from Gradients: find `batch_size` inputs whose gradient matches `gradient`.

    The labels come from `labels`, else from the output bias's gradient (`infer_labels`, with
    `mean_prediction` if given). Dummy inputs x = sigmoid(z), so every feature stays in (0, 1)
    like the course's pixels, start from z ~ N(0, 1) (fixed by `seed`) and are optimised with
    Adam (cosine-decayed `learning_rate`) for `steps` steps, in float64, to minimise the
    distance between their gradient and the target: "l2", ||g - g*||² / ||g*||², or "cosine",
    1 - cos(g, g*) (Geiping et al. 2020). Needs a stack of Dense layers ending in a softmax.
    """
    activations = _dense_stack(model)
    target = check_weights("gradient", gradient, like=model.get_weights())
    batch_size = check_int("batch_size", batch_size, minimum=1)
    steps = check_int("steps", steps, minimum=1)
    learning_rate = check_float("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    if distance not in ("l2", "cosine"):
        raise ValueError(f"distance must be 'l2' or 'cosine', got {distance!r}")
    seed = check_int("seed", seed, minimum=0)
    if labels is None:
        labels = infer_labels(target[-1], batch_size, mean_prediction)
    labels = check_labels("labels", labels)
    if len(labels) != batch_size or labels.max() >= target[-1].size:
        raise ValueError(f"labels must hold batch_size = {batch_size} labels in "
                         f"[0, {target[-1].size - 1}], got {labels.tolist()}")
    z0 = np.random.default_rng(seed).normal(size=(batch_size, target[0].shape[0]))
    images, dist = _adam_inversion(
        [tf.constant(w, tf.float64) for w in model.get_weights()],
        [tf.constant(t, tf.float64) for t in target], tf.constant(labels, tf.int32),
        tf.constant(z0), tf.constant(steps), tf.constant(learning_rate, tf.float64),
        activations, distance == "cosine")
    return Reconstruction(images.numpy(), labels, float(dist))


def reconstruction_error(reconstructed: Any, originals: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-original mean squared error after the best one-to-one matching.

    A batch's gradient does not depend on the order of its examples, so reconstructions are
    matched to originals by the Hungarian algorithm (scipy's `linear_sum_assignment`) on the
    pairwise MSE. Returns (errors, order): originals[i] matches reconstructed[order[i]], with
    MSE errors[i]. There may be more reconstructions than originals (an aggregate of many
    clients), never fewer.
    """
    from scipy.optimize import linear_sum_assignment

    rec = np.asarray(reconstructed, dtype=np.float64)
    orig = np.asarray(originals, dtype=np.float64)
    rec, orig = rec.reshape(len(rec), -1), orig.reshape(len(orig), -1)
    if rec.shape[1] != orig.shape[1] or len(rec) < len(orig) or len(orig) == 0:
        raise ValueError("reconstructed and originals must be images of the same size, with at "
                         f"least as many reconstructions as originals; got {rec.shape} and "
                         f"{orig.shape}")
    cost = np.mean((orig[:, None, :] - rec[None, :, :]) ** 2, axis=-1)
    rows, order = linear_sum_assignment(cost)
    return cost[rows, order], order


_ACTIVATIONS = {"relu": tf.nn.relu, "linear": tf.identity, "sigmoid": tf.sigmoid,
                "tanh": tf.tanh}


def _dense_stack(model: Any) -> tuple[str, ...]:
    """The hidden activations of a model made of Dense layers ending in a softmax."""
    _check_model(model)
    dense = [layer for layer in model.layers
             if not isinstance(layer, tf.keras.layers.InputLayer)]
    names = [getattr(getattr(layer, "activation", None), "__name__", None) for layer in dense]
    if (not all(isinstance(layer, tf.keras.layers.Dense) and layer.use_bias
                for layer in dense) or names[-1] != "softmax"
            or any(n not in _ACTIVATIONS for n in names[:-1])):
        raise ValueError("invert_gradient needs a model of Dense layers with biases, hidden "
                         f"activations in {sorted(_ACTIVATIONS)} and a softmax output (such as "
                         f"create_digits_model()), got layers {[type(x).__name__ for x in dense]} "
                         f"with activations {names}")
    return tuple(names[:-1])


def _model_gradient(weights, x, labels, activations):
    """Gradient of the mean softmax cross-entropy of a Dense stack, computed from weights."""
    with tf.GradientTape() as tape:
        tape.watch(weights)
        h = x
        for i, name in enumerate(activations):
            h = _ACTIVATIONS[name](h @ weights[2 * i] + weights[2 * i + 1])
        logits = h @ weights[-2] + weights[-1]
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    return tape.gradient(loss, weights)


@tf.function(reduce_retracing=True)
def _adam_inversion(weights, target, labels, z, steps, learning_rate, activations, cosine):
    """Adam on the dummy inputs' logits z, minimising the gradient distance; one compiled loop."""
    target_sq = tf.add_n([tf.reduce_sum(t * t) for t in target])
    m, v = tf.zeros_like(z), tf.zeros_like(z)
    dist = tf.constant(0.0, tf.float64)
    for i in tf.range(steps):
        with tf.GradientTape() as tape:
            tape.watch(z)
            g = _model_gradient(weights, tf.sigmoid(z), labels, activations)
            if cosine:
                dot = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(g, target)])
                g_sq = tf.add_n([tf.reduce_sum(a * a) for a in g])
                dist = 1.0 - dot / tf.sqrt(g_sq * target_sq + 1e-300)
            else:
                dist = tf.add_n([tf.reduce_sum(tf.square(a - b))
                                 for a, b in zip(g, target)]) / target_sq
        grad = tape.gradient(dist, z)
        t = tf.cast(i + 1, tf.float64)
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        rate = learning_rate * 0.5 * (1.0 + tf.cos(math.pi * t / tf.cast(steps, tf.float64)))
        z = z - rate * (m / (1.0 - 0.9 ** t)) / (tf.sqrt(v / (1.0 - 0.999 ** t)) + 1e-8)
    return tf.sigmoid(z), dist


# --- poisoning ------------------------------------------------------------------------------

def flip_labels(y: Any, num_classes: int = 10) -> np.ndarray:
    """Label flipping: every label y becomes num_classes - 1 - y (a 3 becomes a 6 for digits)."""
    y = check_labels("y", y)
    num_classes = check_int("num_classes", num_classes, minimum=2)
    if y.max() >= num_classes:
        raise ValueError(f"y must hold labels in [0, {num_classes - 1}], got {y.max()}")
    return (num_classes - 1 - y).astype(y.dtype)


def poison_clients(x: Any, y: Any, partitions: Sequence[Sequence[int]], malicious: Sequence[int],
                   transform: Callable[..., tuple], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Copies of (x, y) in which the examples of the `malicious` clients (indices into
    `partitions`) are replaced by `transform(x_client, y_client, rng)`, which returns arrays of
    the same shapes. Build the client datasets from the copies with the same partitions."""
    y = check_labels("y", y)
    x = np.array(x, copy=True)
    y = y.copy()
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if not isinstance(partitions, (list, tuple)) or not partitions:
        raise TypeError("partitions must be a non-empty list of index arrays, one per client")
    chosen = _check_ids("malicious", malicious, len(partitions))
    if not callable(transform):
        raise TypeError(f"transform must be a function (x, y, rng) -> (x, y), "
                        f"got {type(transform).__name__}")
    rng = np.random.default_rng(check_int("seed", seed, minimum=0))
    for c in sorted(chosen):
        idx = np.asarray(partitions[c])
        new_x, new_y = transform(x[idx], y[idx], rng)
        if np.shape(new_x) != x[idx].shape or np.shape(new_y) != y[idx].shape:
            raise ValueError("transform must return x and y of the shapes it was given, got "
                             f"{np.shape(new_x)} and {np.shape(new_y)} for client {c}")
        x[idx], y[idx] = new_x, new_y
    return x, y


def sign_flip(scale: float = 1.0) -> Attack:
    """An attack that sends -scale times the honest update: the model is pushed uphill."""
    scale = check_float("scale", scale, low=0.0, low_inclusive=False)
    return lambda update: [(-scale * np.asarray(t)).astype(float_dtype(np.asarray(t)))
                           for t in update]


def scale_update(factor: float) -> Attack:
    """An attack that sends factor times the honest update. With factor n / server learning
    rate (n clients averaged), one client's update replaces the global model: Bagdasaryan et
    al.'s model replacement."""
    factor = check_float("factor", factor)
    return lambda update: [(factor * np.asarray(t)).astype(float_dtype(np.asarray(t)))
                           for t in update]


class MaliciousClients(Aggregator):
    """Simulate malicious clients without touching the training loop: before `inner` (any
    aggregator; None: the weighted mean) aggregates, the updates of the clients in `malicious`
    (client ids, as `run_fedavg` numbers them) are replaced by `attack(update)`.

    Records `num_attacked` (the malicious clients among the round's reports) besides `inner`'s
    measurements.
    """

    def __init__(self, malicious: Sequence[int], attack: Attack, inner: Any = None):
        self.malicious = frozenset(_check_ids("malicious", malicious, None))
        if not callable(attack):
            raise TypeError("attack must be a function update -> update, such as sign_flip() "
                            f"or scale_update(10), got {type(attack).__name__}")
        self.attack = attack
        self.inner = as_aggregator(inner)

    def initialize(self) -> Any:
        return self.inner.initialize()

    def aggregate(self, updates, num_examples, client_ids, rng, state=None) -> Aggregate:
        hit = [cid in self.malicious for cid in client_ids]
        sent = [self.attack(u) if h else u for u, h in zip(updates, hit)]
        out = self.inner.aggregate(sent, num_examples, client_ids, rng, state)
        return Aggregate(out.delta, {**out.measurements, "num_attacked": int(sum(hit))},
                         out.state)

    def __repr__(self) -> str:
        return (f"MaliciousClients(malicious={sorted(self.malicious)}, "
                f"attack={getattr(self.attack, '__name__', self.attack)!r}, inner={self.inner!r})")


# --- backdoors ------------------------------------------------------------------------------

def add_trigger(x: Any, size: int = 2, value: float = 1.0) -> np.ndarray:
    """A copy of images `x` with a bright `size` x `size` patch (pixels set to `value`) in the
    bottom-right corner, the backdoor's trigger. `x` is (n, side²) flattened square images, as
    `load_digits()` gives, or (n, height, width[, channels])."""
    arr = np.array(x, dtype=float_dtype(np.asarray(x)), copy=True)
    if arr.ndim == 2:
        side = math.isqrt(arr.shape[1])
        if side * side != arr.shape[1]:
            raise ValueError(f"x must be flattened square images (n, side²), got {arr.shape}")
        images = arr.reshape(len(arr), side, side, 1)
    elif arr.ndim in (3, 4):
        images = arr.reshape(arr.shape[:3] + (-1,))
    else:
        raise ValueError(f"x must have shape (n, side²) or (n, height, width[, channels]), "
                         f"got {arr.shape}")
    size = check_int("size", size, minimum=1, maximum=min(images.shape[1:3]))
    images[:, -size:, -size:, :] = check_float("value", value)
    return images.reshape(arr.shape)


def backdoor_examples(x: Any, y: Any, target: int, fraction: float = 0.5, size: int = 2,
                      value: float = 1.0, rng: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """A malicious client's training data: a random `fraction` of its examples get the
    trigger and the label `target`; the rest stay clean, so its model still does the main task
    (Bagdasaryan et al.). Usable as `poison_clients`' transform (rng as third argument)."""
    y = check_labels("y", y)
    target = check_int("target", target, minimum=0)
    fraction = check_float("fraction", fraction, low=0.0, high=1.0)
    chosen = check_rng(rng).permutation(len(y))[:int(round(fraction * len(y)))]
    x = np.array(x, copy=True)
    y = y.copy()
    x[chosen] = add_trigger(x[chosen], size, value)
    y[chosen] = target
    return x, y


def backdoor_success(model: tf.keras.Model, weights: Weights, x: Any, y: Any, target: int,
                     size: int = 2, value: float = 1.0) -> float:
    """The backdoor's success rate: the fraction of test images whose true label is not
    `target` that the model with `weights` classifies as `target` once they carry the trigger."""
    _check_model(model)
    y = check_labels("y", y)
    target = check_int("target", target, minimum=0)
    keep = y != target
    if not keep.any():
        raise ValueError(f"y must hold some labels other than target = {target}")
    model.set_weights(check_weights("weights", weights, like=model.get_weights()))
    probabilities = predict(model, add_trigger(np.asarray(x)[keep], size, value)
                            .astype(np.float32))
    return float(np.mean(np.argmax(probabilities, axis=-1) == target))


class WatchGlobalModel(Aggregator):
    """Evaluate the global model every round, for measurements `run_fedavg` does not make.

    Wraps `inner` (None: the weighted mean) and keeps its own copy of the global weights: it
    starts from `initial_weights` and adds each round's aggregate, which is what `run_fedavg`
    does with its default server optimizer (SGD at learning rate 1; with another server
    optimizer the copy would be wrong). `evaluate(weights) -> dict` is then recorded with the
    round's measurements, e.g. {"backdoor_success": ...}.
    """

    def __init__(self, initial_weights: Weights, evaluate: Callable[[Weights], dict],
                 inner: Any = None):
        self.initial_weights = check_weights("initial_weights", initial_weights)
        if not callable(evaluate):
            raise TypeError(f"evaluate must be a function weights -> dict, "
                            f"got {type(evaluate).__name__}")
        self.evaluate = evaluate
        self.inner = as_aggregator(inner)

    def initialize(self) -> Any:
        return (self.initial_weights, self.inner.initialize())

    def aggregate(self, updates, num_examples, client_ids, rng, state=None) -> Aggregate:
        weights, inner_state = state if state is not None else self.initialize()
        out = self.inner.aggregate(updates, num_examples, client_ids, rng, inner_state)
        weights = [(w + d).astype(w.dtype) for w, d in zip(weights, out.delta)]
        return Aggregate(out.delta, {**out.measurements, **self.evaluate(weights)},
                         (weights, out.state))

    def __repr__(self) -> str:
        return f"WatchGlobalModel(inner={self.inner!r})"


# --- helpers --------------------------------------------------------------------------------

def _check_model(model: Any) -> None:
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"model must be a Keras model, got {type(model).__name__}")


def _check_ids(name: str, ids: Any, num_clients: Optional[int]) -> set[int]:
    """A set of client ids (integers >= 0, below num_clients when it is known)."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"{name} must be a list of client ids, got {type(ids).__name__}")
    top = None if num_clients is None else num_clients - 1
    return {check_int(f"{name}'s ids", i, minimum=0, maximum=top) for i in ids}
