"""Evaluation: a model's loss and accuracy on arrays, and federated evaluation.

Federated evaluation: how good is one global model on each client's own held-out data?

Slide 12 evaluates on the training data; federated evaluation instead sends the global model
to every client, which scores it on data it never trained on and reports its numbers back. Two
aggregates answer two questions: the example-weighted one ("how good is the model on an average
example?", what TFF's `build_fed_eval` reports) and the unweighted one ("how good is it for an
average client?"), which a few large clients cannot dominate. The spread between clients is the
third thing to look at.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import weakref

import numpy as np
import tensorflow as tf

from fedutils.core.checks import as_array, check_int, check_labels, check_weights
from fedutils.core.clientdata import ClientData, as_client_data, check_against_model
from fedutils.core.data import check_xy
from fedutils.core.losses import per_example_loss, predicted_label_ops

Weights = list  # a model's weights: list of NumPy arrays, as model.get_weights() returns


@dataclass
class FederatedEvaluation:
    """Per-client metrics and their two aggregates, as `federated_evaluate` returns them."""
    per_client: list  # one dict per client: client, num_examples, loss, accuracy
    weighted: dict    # loss and accuracy over all examples pooled (example-weighted)
    unweighted: dict  # plain mean of the per-client numbers: every client counts once

    @property
    def accuracies(self) -> np.ndarray:
        return np.array([c["accuracy"] for c in self.per_client])

    @property
    def losses(self) -> np.ndarray:
        return np.array([c["loss"] for c in self.per_client])

    @property
    def num_examples(self) -> np.ndarray:
        return np.array([c["num_examples"] for c in self.per_client])

    def summary(self) -> str:
        acc = self.accuracies
        return (f"{len(acc)} clients, {int(self.num_examples.sum())} examples: "
                f"weighted accuracy {self.weighted['accuracy']:.3f} "
                f"(loss {self.weighted['loss']:.3f}), "
                f"unweighted accuracy {self.unweighted['accuracy']:.3f} "
                f"(loss {self.unweighted['loss']:.3f}); per-client accuracy from "
                f"{acc.min():.3f} to {acc.max():.3f}, median {np.median(acc):.3f}")

    __str__ = summary

    def plot_histogram(self, ax=None, bins: int = 20):
        """Histogram of per-client accuracy with both aggregates as vertical lines."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 3.5))
        ax.hist(self.accuracies, bins=bins, range=(0.0, 1.0), color="lightsteelblue",
                edgecolor="white")
        ax.axvline(self.weighted["accuracy"], color="tab:red", linestyle="-",
                   label=f"weighted {self.weighted['accuracy']:.3f}")
        ax.axvline(self.unweighted["accuracy"], color="tab:blue", linestyle="--",
                   label=f"unweighted {self.unweighted['accuracy']:.3f}")
        ax.set_xlabel("accuracy on the client's held-out data")
        ax.set_ylabel("clients")
        ax.legend(loc="upper left")
        return ax


def evaluate_weights(model: tf.keras.Model, weights: Weights, x: np.ndarray, y: np.ndarray
                     ) -> tuple[float, float]:
    """Loss and accuracy of `model` with `weights` on the arrays (x, y)."""
    _check_model(model)
    weights = check_weights("weights", weights, like=model.get_weights())
    x, y = as_array("x", x), check_labels("y", y)
    check_xy(x, y)
    check_against_model([ClientData(x, y, 1)], model, "(x, y)")
    model.set_weights(weights)
    return loss_and_accuracy(model, x, y)


def loss_and_accuracy(model: tf.keras.Model, x: np.ndarray, y: np.ndarray
                      ) -> tuple[float, float]:
    """`evaluate_weights` without the checks, for loops that checked (x, y) once up front."""
    losses, labels = _scores(model, x, y)
    return float(np.mean(losses)), float(np.mean(labels == y))


_compiled: "weakref.WeakKeyDictionary[tf.keras.Model, dict]" = weakref.WeakKeyDictionary()


def predict(model: tf.keras.Model, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """The model's outputs on x, in chunks, through one compiled function per model (calling
    an LSTM eagerly chunk after chunk grows memory by tens of MB per pass)."""
    _check_model(model)
    x = as_array("x", x)
    expected = tuple(model.input_shape[1:])
    if x.ndim < 1 or tuple(x.shape[1:]) != expected or len(x) == 0:
        raise ValueError(f"x must be a non-empty array of examples of shape {expected} (shape "
                         f"{(None,) + expected}), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"x must hold numbers, got dtype {x.dtype}")
    return _predict(model, x, check_int("chunk", chunk, minimum=1))


def _predict(model: tf.keras.Model, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """`predict` without the checks."""
    return _chunked(model, _outputs_graph, [x], chunk)[0]


def _scores(model: tf.keras.Model, x: np.ndarray, y: np.ndarray, chunk: int = 4096
            ) -> tuple[np.ndarray, np.ndarray]:
    """Each example's loss and predicted label: a softmax over a large vocabulary never leaves
    the graph."""
    return tuple(_chunked(model, _scores_graph, [x, y], chunk))


def _outputs_graph(model: tf.keras.Model) -> Callable:
    def graph(x):
        return (model(x, training=False),)
    return graph


def _scores_graph(model: tf.keras.Model) -> Callable:
    def graph(x, y):
        # tf.identity keeps Keras from reading the loss off the softmax's logits in a graph:
        # the same loss as on the outputs, as everywhere else.
        probabilities = tf.identity(model(x, training=False))
        return per_example_loss(model, y, probabilities), predicted_label_ops(probabilities)
    return graph


def _chunked(model: tf.keras.Model, build: Callable, arrays: list, chunk: int) -> list:
    """`build(model)`, compiled once per model (calling an LSTM eagerly chunk after chunk grows
    memory by tens of MB per pass), applied to `arrays` chunk by chunk; each of its outputs
    joined over the chunks. The compiled function holds the model weakly, so it goes with it."""
    functions = _compiled.setdefault(model, {})
    if build not in functions:
        functions[build] = tf.function(build(weakref.proxy(model)), reduce_retracing=True)
    parts = [functions[build](*[tf.constant(a[i:i + chunk]) for a in arrays])
             for i in range(0, len(arrays[0]), chunk)]
    return [np.concatenate([p[k].numpy() for p in parts]) for k in range(len(parts[0]))]


def _check_model(model: Any) -> None:
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"model must be a Keras model, got {type(model).__name__}")


def federated_evaluate(model: tf.keras.Model, client_datasets: Sequence[Any],
                       weights: Optional[list] = None) -> FederatedEvaluation:
    """Evaluate `model` (after `model.set_weights(weights)` if given) on every client's data
    (`ClientData` or tf.data datasets of {"x", "y"} batches), without training: per-client
    loss (mean cross-entropy per example) and accuracy, plus example-weighted and unweighted
    aggregates. All clients' examples go through the model in one pass.
    """
    _check_model(model)
    clients = as_client_data(client_datasets)
    check_against_model(clients, model, "client_datasets")
    if weights is not None:
        model.set_weights(check_weights("weights", weights, like=model.get_weights()))
    y = np.concatenate([c.y for c in clients])
    losses, labels = _scores(model, np.concatenate([c.x for c in clients]), y)
    losses, correct = losses.astype(np.float64), (labels == y).astype(np.float64)
    counts = np.array([len(c) for c in clients])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    loss_sums, correct_sums = np.add.reduceat(losses, starts), np.add.reduceat(correct, starts)
    per_client = [{"client": i, "num_examples": int(n), "loss": float(ls / n),
                   "accuracy": float(cs / n)}
                  for i, (n, ls, cs) in enumerate(zip(counts, loss_sums, correct_sums))]
    total = counts.sum()
    return FederatedEvaluation(
        per_client=per_client,
        weighted={"loss": float(loss_sums.sum() / total),
                  "accuracy": float(correct_sums.sum() / total)},
        unweighted={"loss": float(np.mean([c["loss"] for c in per_client])),
                    "accuracy": float(np.mean([c["accuracy"] for c in per_client]))})
