"""Federated Averaging (McMahan et al., 2017): client update, server aggregation, the loop.

`client_update` is the readable version a lesson builds in the open: a `GradientTape` loop of
plain SGD over a client's batches. `run_fedavg` runs many rounds of it; by default it uses a fast
path (`fedutils._fastround`) that trains all of a round's clients inside one compiled TensorFlow
graph and gives the same numbers (tests/test_fedavg.py compares the two).
"""
from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Callable, Optional, Protocol, Sequence, Union

import numpy as np
import tensorflow as tf

from fedutils._validate import check_float, check_int, check_weight_list, check_weights

Weights = list  # a model's weights: list of NumPy arrays, as model.get_weights() returns


class _ExpectedRetracing(logging.Filter):
    """fedutils compiles one function per model on purpose: a round per `run_fedavg` call
    (`FastRound._train_clients`) and a prediction per evaluated model (`_predict`). After a few
    models TensorFlow warns that "N out of the last M calls ... triggered tf.function
    retracing", which is expected here and only noise in a lesson; this drops that message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "retracing" not in message or not ("_train_clients" in message
                                                   or "_predict" in message)


tf.get_logger().addFilter(_ExpectedRetracing())


@dataclass
class ClientResult:
    """What a client sends back after local training."""
    weights: Weights            # the locally trained weights
    num_examples: int           # examples seen per epoch: the server weights by this
    metrics: dict = field(default_factory=dict)  # local training loss (mean per example)


def per_example_loss(model: tf.keras.Model, y: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of each example: binary for one sigmoid output, sparse categorical for a
    softmax. Averaging it over a batch gives the loss Keras and TFF minimise."""
    if model.output_shape[-1] == 1:
        y = tf.reshape(tf.cast(y, probabilities.dtype), [-1, 1])
        return tf.keras.losses.binary_crossentropy(y, probabilities)
    return tf.keras.losses.sparse_categorical_crossentropy(y, probabilities)


def client_update(model: tf.keras.Model, dataset: Any, epochs: int = 1,
                  learning_rate: float = 0.1, proximal_mu: float = 0.0,
                  global_weights: Optional[Weights] = None) -> ClientResult:
    """Train `model` (already holding the global weights) on one client's `dataset` of
    {"x", "y"} batches with plain SGD, and return its new weights and example count.

    One optimizer step per batch, `epochs` passes over the data. With `proximal_mu` > 0 this is
    FedProx's client: the loss gains (mu/2)·||w - w_global||², which pulls the local model back
    towards `global_weights` (default: the weights the model starts with).
    """
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"model must be a Keras model, got {type(model).__name__}")
    epochs = check_int("epochs", epochs, minimum=1)
    learning_rate = check_float("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    proximal_mu = check_float("proximal_mu", proximal_mu, low=0.0)
    _check_dataset(dataset)
    anchor = [tf.constant(w) for w in (check_weights("global_weights", global_weights)
                                       if global_weights is not None
                                       else [v.numpy() for v in model.trainable_variables])]
    total_loss, seen = 0.0, 0
    for _ in range(epochs):
        seen = 0
        for batch in dataset:
            with tf.GradientTape() as tape:
                probabilities = model(batch["x"], training=True)
                loss = tf.reduce_mean(per_example_loss(model, batch["y"], probabilities))
                objective = loss
                if proximal_mu > 0:
                    objective += proximal_mu / 2 * tf.add_n(
                        [tf.reduce_sum(tf.square(v - a))
                         for v, a in zip(model.trainable_variables, anchor)])
            grads = tape.gradient(objective, model.trainable_variables)
            for variable, grad in zip(model.trainable_variables, grads):
                # An Embedding layer's gradient is sparse (IndexedSlices): make it dense.
                variable.assign_sub(learning_rate * tf.convert_to_tensor(grad))
            batch_size = int(tf.shape(batch["y"])[0])
            total_loss += float(loss) * batch_size
            seen += batch_size
    if seen == 0:
        raise ValueError("dataset is empty: a client needs at least one example to train")
    return ClientResult(model.get_weights(), seen, {"loss": total_loss / (seen * epochs)})


def server_aggregate(client_weights: Sequence[Weights],
                     num_examples: Optional[Sequence[Real]] = None) -> Weights:
    """Average the clients' weights (or updates), tensor by tensor.

    With `num_examples`, each client counts in proportion to its examples: FedAvg's weighted
    mean, sum_k n_k w_k / sum_k n_k. Without it, the plain mean of slide 5, in which a client with
    3 examples counts as much as one with 3,000.
    """
    weights = check_weight_list("client_weights", client_weights)
    if num_examples is None:
        coeffs = np.full(len(weights), 1.0 / len(weights))
    else:
        counts = np.asarray(num_examples, dtype=np.float64)
        if counts.shape != (len(weights),):
            raise ValueError(f"num_examples must hold one count per client ({len(weights)}), "
                             f"got shape {counts.shape}")
        if not np.all(np.isfinite(counts)) or counts.min() < 0 or counts.sum() <= 0:
            raise ValueError("num_examples must be non-negative counts with a positive total, "
                             f"got {counts.tolist()}")
        coeffs = counts / counts.sum()
    return [np.tensordot(coeffs, np.stack(layer), axes=1).astype(layer[0].dtype)
            for layer in zip(*weights)]


class Aggregator(Protocol):
    """How a round's client updates (new minus global weights) become one server update.

    fedutils.privacy and fedutils.compression provide aggregators that clip and noise, or
    compress, each update before it is averaged. `last_upload_bytes` (optional) reports what
    the clients sent in the round.
    """

    def __call__(self, updates: list[Weights], num_examples: np.ndarray,
                 client_ids: list[int], rng: np.random.Generator) -> Weights: ...


def weighted_mean_aggregator(updates: list[Weights], num_examples: np.ndarray,
                             client_ids: list[int], rng: np.random.Generator) -> Weights:
    """The FedAvg default: the example-weighted mean of the updates."""
    return server_aggregate(updates, num_examples)


@dataclass
class History:
    """Per-round record of a `run_fedavg` run; `plot()` draws accuracy (or any metric)."""
    rounds: list = field(default_factory=list)
    final_weights: Optional[Weights] = None

    def __getitem__(self, key: str) -> list:
        return [r.get(key) for r in self.rounds]

    def __len__(self) -> int:
        return len(self.rounds)

    @property
    def accuracy(self) -> list:
        return self["accuracy"]

    def plot(self, metric: str = "accuracy", ax=None, label: Optional[str] = None, **kwargs):
        """Plot `metric` against the round number on `ax` (a new figure if None)."""
        import matplotlib.pyplot as plt

        points = [(r["round"], r[metric]) for r in self.rounds if r.get(metric) is not None]
        if not points:
            raise ValueError(f"metric must be one recorded in every evaluated round, such as "
                             f"{sorted(k for k in self.rounds[0] if k != 'round')}, got {metric!r}")
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(*zip(*points), label=label, **kwargs)
        ax.set_xlabel("round")
        ax.set_ylabel(metric.replace("_", " "))
        if label:
            ax.legend()
        return ax


def evaluate_weights(model: tf.keras.Model, weights: Weights, x: np.ndarray, y: np.ndarray
                     ) -> tuple[float, float]:
    """Loss and accuracy of `model` with `weights` on the arrays (x, y)."""
    model.set_weights(weights)
    probabilities = _predict(model, x)
    loss = float(np.mean(per_example_loss(model, y, probabilities)))
    if probabilities.shape[-1] == 1:
        predicted = (probabilities[:, 0] > 0.5).astype(np.int64)
    else:
        predicted = np.argmax(probabilities, axis=-1)
    return loss, float(np.mean(predicted == np.asarray(y).reshape(-1)))


_compiled_predict: "weakref.WeakKeyDictionary[tf.keras.Model, Any]" = weakref.WeakKeyDictionary()


def _predict(model: tf.keras.Model, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """The model's outputs on x, in chunks, through one compiled function per model (calling
    an LSTM eagerly chunk after chunk grows memory by tens of MB per pass)."""
    predict = _compiled_predict.get(model)
    if predict is None:
        predict = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
        _compiled_predict[model] = predict
    return np.concatenate([predict(tf.constant(x[i:i + chunk])).numpy()
                           for i in range(0, len(x), chunk)])


def sample_clients(num_clients: int, clients_per_round: Union[int, float, None],
                   availability: float, rng: np.random.Generator) -> np.ndarray:
    """Pick a round's participants: each client is online with probability `availability`,
    then `clients_per_round` of the online ones (a count, or a fraction of all clients; None
    means all) are drawn without replacement. May return an empty array: nobody came."""
    online = np.flatnonzero(rng.random(num_clients) < availability)
    if clients_per_round is None:
        wanted = num_clients
    elif isinstance(clients_per_round, float):
        wanted = max(1, int(round(clients_per_round * num_clients)))
    else:
        wanted = clients_per_round
    if len(online) <= wanted:
        return online
    return np.sort(rng.choice(online, size=wanted, replace=False))


def run_fedavg(model_fn: Callable[[], tf.keras.Model], client_datasets: Sequence[Any],
               rounds: int = 10, clients_per_round: Union[int, float, None] = None,
               availability: float = 1.0, dropout: float = 0.0, local_epochs: int = 1,
               client_lr: float = 0.1, server_lr: float = 1.0, proximal_mu: float = 0.0,
               aggregator: Optional[Aggregator] = None,
               eval_data: Optional[tuple[np.ndarray, np.ndarray]] = None, eval_every: int = 1,
               initial_weights: Optional[Weights] = None, seed: int = 0,
               progress: bool = True, fast: bool = True) -> History:
    """Run `rounds` rounds of FedAvg and return the per-round `History`.

    Each round: sample participants (`clients_per_round` as a count or fraction, each client
    online with probability `availability`); send them the global weights; each trains
    `local_epochs` epochs of SGD at `client_lr` (plus FedProx's proximal term when
    `proximal_mu` > 0); each participant then fails to report with probability `dropout`; the
    survivors' updates (new minus global weights) are combined by `aggregator` (default: the
    example-weighted mean) and applied with `server_lr`. A round with no report leaves the
    model unchanged. The global model is evaluated on `eval_data` every `eval_every` rounds.

    `fast=True` trains the round's clients in one compiled graph; `fast=False` calls the
    readable `client_update` client by client. Both give the same result.
    """
    rounds = check_int("rounds", rounds, minimum=1)
    num_clients = _check_client_datasets(client_datasets)
    clients_per_round = _check_clients_per_round(clients_per_round, num_clients)
    availability = check_float("availability", availability, low=0.0, high=1.0,
                               low_inclusive=False)
    dropout = check_float("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
    local_epochs = check_int("local_epochs", local_epochs, minimum=1)
    client_lr = check_float("client_lr", client_lr, low=0.0, low_inclusive=False)
    server_lr = check_float("server_lr", server_lr, low=0.0, low_inclusive=False)
    proximal_mu = check_float("proximal_mu", proximal_mu, low=0.0)
    eval_every = check_int("eval_every", eval_every, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    aggregator = aggregator or weighted_mean_aggregator
    if not callable(aggregator):
        raise TypeError(f"aggregator must be callable, got {type(aggregator).__name__}")

    model = model_fn() if not isinstance(model_fn, tf.keras.Model) else model_fn
    if not isinstance(model, tf.keras.Model):
        raise TypeError("model_fn must return a Keras model (or be one), "
                        f"got {type(model).__name__}")
    if len(model.non_trainable_weights) > 0:
        raise ValueError("run_fedavg trains models whose weights are all trainable; freeze "
                         "layers by building the model without them (see lesson 13)")
    if eval_data is not None:
        if not (isinstance(eval_data, (tuple, list)) and len(eval_data) == 2
                and len(eval_data[0]) == len(eval_data[1]) > 0):
            raise ValueError("eval_data must be a pair (x, y) of arrays with the same, "
                             "non-zero number of examples")
    global_weights = (check_weights("initial_weights", initial_weights,
                                    like=model.get_weights())
                      if initial_weights is not None else model.get_weights())

    trainer = None
    if fast:
        from fedutils._fastround import FastRound

        trainer = FastRound(model, client_datasets, local_epochs, client_lr, proximal_mu)
    history = History()
    bar = _progress(rounds, progress)
    for r in range(1, rounds + 1):
        started = time.perf_counter()
        rng = np.random.default_rng([seed, r])
        chosen = sample_clients(num_clients, clients_per_round, availability, rng)
        record: dict[str, Any] = {"round": r, "num_selected": len(chosen)}
        if len(chosen):
            if trainer is not None:
                new_weights, counts, losses = trainer.run(global_weights, chosen)
            else:
                new_weights, counts, losses = _readable_round(
                    model, client_datasets, chosen, global_weights, local_epochs, client_lr,
                    proximal_mu)
            kept = np.flatnonzero(rng.random(len(chosen)) >= dropout)
            record["train_loss"] = float(np.average(losses, weights=counts))
        else:
            kept = np.array([], dtype=int)
        record["num_clients"] = len(kept)
        record["num_examples"] = int(np.sum(counts[kept])) if len(kept) else 0
        if len(kept):
            updates = [[n - g for n, g in zip(new_weights[i], global_weights)] for i in kept]
            delta = aggregator(updates, counts[kept], [int(chosen[i]) for i in kept], rng)
            global_weights = [(g + server_lr * d).astype(g.dtype)
                              for g, d in zip(global_weights, delta)]
            reported = getattr(aggregator, "last_upload_bytes", None)
            record["upload_bytes"] = (int(reported) if reported is not None else
                                      len(kept) * sum(int(g.nbytes) for g in global_weights))
        else:
            record["upload_bytes"] = 0
        if eval_data is not None and (r % eval_every == 0 or r == rounds):
            record["loss"], record["accuracy"] = evaluate_weights(model, global_weights,
                                                                  *eval_data)
        record["seconds"] = time.perf_counter() - started
        history.rounds.append(record)
        _advance(bar, record)
    if bar is not None:
        bar.close()
    model.set_weights(global_weights)
    history.final_weights = global_weights
    return history


def _readable_round(model, client_datasets, chosen, global_weights, epochs, lr, mu):
    weights, counts, losses = [], [], []
    for c in chosen:
        model.set_weights(global_weights)
        result = client_update(model, client_datasets[c], epochs, lr, mu, global_weights)
        weights.append(result.weights)
        counts.append(result.num_examples)
        losses.append(result.metrics["loss"])
    return weights, np.asarray(counts), np.asarray(losses)


def _progress(rounds: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=rounds, desc="FedAvg rounds", leave=False)


def _advance(bar, record: dict) -> None:
    if bar is None:
        return
    if record.get("accuracy") is not None:
        bar.set_postfix(accuracy=f"{record['accuracy']:.3f}", clients=record["num_clients"])
    bar.update(1)


def _check_dataset(dataset: Any) -> None:
    spec = getattr(dataset, "element_spec", None)
    if not isinstance(spec, dict) or "x" not in spec or "y" not in spec:
        raise TypeError("dataset must be a tf.data.Dataset of {'x': features, 'y': labels} "
                        "batches, as fedutils.data.make_client_datasets makes; "
                        f"got {type(dataset).__name__} with element_spec {spec!r}")


def _check_client_datasets(client_datasets: Any) -> int:
    if not isinstance(client_datasets, (list, tuple)):
        raise TypeError("client_datasets must be a list of tf.data datasets, one per client, "
                        f"got {type(client_datasets).__name__}")
    if not client_datasets:
        raise ValueError("client_datasets is empty: FedAvg needs at least one client")
    for ds in client_datasets:
        _check_dataset(ds)
    return len(client_datasets)


def _check_clients_per_round(value: Any, num_clients: int) -> Union[int, float, None]:
    if value is None:
        return None
    if isinstance(value, float):
        return check_float("clients_per_round", value, low=0.0, high=1.0, low_inclusive=False)
    return check_int("clients_per_round", value, minimum=1, maximum=num_clients)
