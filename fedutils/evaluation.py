"""Federated evaluation: how good is one global model on each client's own held-out data?

Slide 12 evaluates on the training data; federated evaluation instead sends the global model
to every client, which scores it on data it never trained on and reports its numbers back. Two
aggregates answer two questions: the example-weighted one ("how good is the model on an average
example?", what TFF's `build_fed_eval` reports) and the unweighted one ("how good is it for an
average client?"), which a few large clients cannot dominate. The spread between clients is the
third thing to look at.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import tensorflow as tf

from fedutils import fedavg
from fedutils._validate import check_weights


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


def federated_evaluate(model: tf.keras.Model, client_datasets: Sequence[Any],
                       weights: Optional[list] = None) -> FederatedEvaluation:
    """Evaluate `model` (after `model.set_weights(weights)` if given) on every client's dataset
    of {"x", "y"} batches, without training: per-client loss (mean cross-entropy per example)
    and accuracy, plus example-weighted and unweighted aggregates.

    All clients' examples go through the model in one pass and are then split per client, so
    a hundred clients take a fraction of a second.
    """
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"model must be a Keras model, got {type(model).__name__}")
    fedavg._check_client_datasets(client_datasets)
    if weights is not None:
        model.set_weights(check_weights("weights", weights, like=model.get_weights()))
    xs, ys, counts = [], [], []
    for i, batches in enumerate(_client_batches(list(client_datasets))):
        if not batches:
            raise ValueError(f"client_datasets[{i}] is empty: each client needs at least one "
                             "held-out example")
        if batches[0]["x"].ndim != len(model.input_shape):
            raise ValueError(f"client_datasets[{i}] must yield batches with x of shape "
                             f"{model.input_shape}, got {batches[0]['x'].shape} "
                             "(batch it with .batch(n))")
        client_y = [np.reshape(b["y"], -1) for b in batches]
        xs += [b["x"] for b in batches]
        ys += client_y
        counts.append(sum(map(len, client_y)))
    y = np.concatenate(ys)
    probabilities = fedavg._predict(model, np.concatenate(xs))
    losses = np.asarray(fedavg.per_example_loss(model, y, probabilities), dtype=np.float64)
    if probabilities.shape[-1] == 1:
        predicted = (probabilities[:, 0] > 0.5).astype(np.int64)
    else:
        predicted = np.argmax(probabilities, axis=-1)
    correct = (predicted == y).astype(np.float64)
    counts = np.asarray(counts)
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


def _client_batches(datasets: list) -> list:
    """Every client's batches as NumPy dicts. One tf.data pipeline reads them all, which is
    many times faster than starting one iterator per client."""
    sizes = [int(ds.cardinality()) for ds in datasets]
    for i, size in enumerate(sizes):
        if size == tf.data.INFINITE_CARDINALITY:
            raise ValueError(f"client_datasets[{i}] repeats forever; evaluate on a finite "
                             "dataset (drop .repeat())")
    if min(sizes) < 0:  # a length tf.data cannot tell in advance: read client by client
        return [list(ds.as_numpy_iterator()) for ds in datasets]
    choice = tf.data.Dataset.from_tensor_slices(
        np.repeat(np.arange(len(datasets), dtype=np.int64), sizes))
    batches = list(tf.data.Dataset.choose_from_datasets(datasets, choice).as_numpy_iterator())
    ends = np.cumsum(sizes)
    return [batches[end - size:end] for end, size in zip(ends, sizes)]
