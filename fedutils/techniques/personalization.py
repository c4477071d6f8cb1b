"""Personalization: a model for each client that still learns from the others.

One global model must serve clients whose data differ (lesson 08's label skew). The methods here
give every client its own model; they differ in what the clients share:

- `local_finetune`: each client trains the global model a little further on its own data
  (Wang et al., 2019); nothing extra is sent.
- `run_fedper`: the body (every layer but the last `num_personal_layers`) is federated as in
  FedAvg; the head never leaves its client and trains together with the body there (FedPer,
  Arivazhagan et al., 2019). Only the body travels, both ways.
- `run_fedrep`: the same split, but in each round a client first trains its head with the body
  frozen, then the body with its head frozen (FedRep, Collins et al., 2021).
- `run_ditto`: FedAvg trains the global model w as usual; alongside, each client trains its own
  model v with the pull (lam/2)·||v - w||² towards the global model of the round (Ditto,
  Li et al., 2021). lam = 0 is local training alone; a large lam keeps v near w.

Client work is the course's one `sgd_step` (fedutils.loop.client), compiled once per model by
`LocalSGD` so that a round costs one call per client. Sampling is `run_fedavg`'s
(`sample_clients` with the round's generator `default_rng([seed, round])`), so Ditto's global
model is exactly the model `run_fedavg` trains with the same seed. `evaluate_personalized`
scores each client's own model on that client's own held-out data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from fedutils.core.checks import check_float, check_int, check_weights
from fedutils.core.clientdata import ClientData, as_client_data, check_against_model
from fedutils.loop.aggregators import server_aggregate
from fedutils.loop.client import sgd_step
from fedutils.loop.evaluation import FederatedEvaluation, federated_evaluate
from fedutils.loop.fedavg import check_clients_per_round, sample_clients
from fedutils.loop.history import History

Weights = list  # a model's weights: list of NumPy arrays, as model.get_weights() returns


@dataclass
class Personalized:
    """What a personalization run returns."""
    personal_weights: list  # one full model (Weights) per client, in client order
    shared_weights: Weights  # what the server holds: Ditto's global model, FedPer/FedRep's body
    history: History         # one record per round: clients, bytes down and up


class LocalSGD:
    """`epochs` passes of `sgd_step` at `learning_rate` over one client's batches, in the order
    `ClientData.batches()` gives them, compiled once for `model`. With `mu` > 0 each step also
    pulls the weights towards `anchor` by (mu/2)·||v - anchor||² (Ditto's personal objective).
    Only trainable variables move: freeze layers before building one to train part of a model.
    The weights go in and out of the compiled function as tensors: one call per client."""

    def __init__(self, model: tf.keras.Model, epochs: int, learning_rate: float,
                 mu: float = 0.0):
        self.model = model
        self.epochs, self.learning_rate, self.mu = int(epochs), float(learning_rate), float(mu)
        trainable = {id(v) for v in model.trainable_variables}
        self._trainable = [i for i, v in enumerate(model.weights) if id(v) in trainable]
        self._compiled = None

    def __call__(self, start: Weights, client: ClientData,
                 anchor: Optional[Weights] = None) -> Weights:
        """Train from `start` (all the model's weights) on `client`; return all the weights.
        `anchor` holds all the model's weights too (default: `start`); the proximal term uses
        its trainable ones."""
        anchor = start if anchor is None else anchor
        if self._compiled is None:  # traced once: every client's arrays get these dtypes
            self._dtypes = (client.x.dtype, client.y.dtype)
            specs = [tf.TensorSpec(v.shape, v.dtype) for v in self.model.weights]
            self._compiled = tf.function(self._train, input_signature=[
                tf.TensorSpec([None, *client.x.shape[1:]], client.x.dtype),
                tf.TensorSpec([None], client.y.dtype), tf.TensorSpec([], tf.int32), specs,
                [specs[i] for i in self._trainable]])
        x, y = (np.asarray(a, dtype=d) for a, d in zip((client.x, client.y), self._dtypes))
        out = self._compiled(x, y, client.batch_size, list(start),
                             [anchor[i] for i in self._trainable])
        return [w.numpy() for w in out]

    def _train(self, x: tf.Tensor, y: tf.Tensor, batch_size: tf.Tensor, start: list,
               anchor: list) -> list:
        for variable, value in zip(self.model.weights, start):
            variable.assign(value)
        for _ in tf.range(self.epochs):
            for first in tf.range(0, tf.shape(y)[0], batch_size):
                sgd_step(self.model, x[first:first + batch_size], y[first:first + batch_size],
                         self.learning_rate, self.mu, anchor)
        return [tf.identity(v) for v in self.model.weights]


# --- local fine-tuning ----------------------------------------------------------------------

def local_finetune(model_fn: Callable[[], tf.keras.Model], global_weights: Weights,
                   client_datasets: Sequence[Any], epochs: int = 1,
                   learning_rate: float = 0.1) -> list[Weights]:
    """Each client's model after `epochs` epochs of SGD at `learning_rate` on its own data,
    starting from `global_weights`: one full set of weights per client, in client order.
    Nothing is sent. From a fresh model's weights this is local training alone."""
    model, clients = _setup(model_fn, client_datasets)
    start = check_weights("global_weights", global_weights, like=model.get_weights())
    train = LocalSGD(model, check_int("epochs", epochs, minimum=1),
                     check_float("learning_rate", learning_rate, low=0.0, low_inclusive=False))
    return [train(start, client) for client in clients]


# --- FedPer and FedRep: a shared body, a personal head --------------------------------------

def run_fedper(model_fn: Callable[[], tf.keras.Model], client_datasets: Sequence[Any],
               num_personal_layers: int = 1, rounds: int = 10,
               clients_per_round: Union[int, float, None] = None, local_epochs: int = 1,
               client_lr: float = 0.1, initial_weights: Optional[Weights] = None,
               seed: int = 0) -> Personalized:
    """FedPer (Arivazhagan et al., 2019). The last `num_personal_layers` layers with weights
    are each client's head, the layers below them the shared body. Each round the chosen
    clients receive the body, put their own head on it, train the whole model `local_epochs`
    epochs at `client_lr`, keep the new head and send the body back; the server sets the body
    to the example-weighted mean. Every head starts from the initial weights' head."""
    model, clients = _setup(model_fn, client_datasets)
    settings = _round_settings(clients, rounds, clients_per_round, seed)
    split = _head_size(model, num_personal_layers)
    train = LocalSGD(model, check_int("local_epochs", local_epochs, minimum=1),
                     check_float("client_lr", client_lr, low=0.0, low_inclusive=False))
    return _shared_body_rounds(model, clients, split, train, initial_weights, **settings)


def run_fedrep(model_fn: Callable[[], tf.keras.Model], client_datasets: Sequence[Any],
               num_personal_layers: int = 1, rounds: int = 10,
               clients_per_round: Union[int, float, None] = None, head_epochs: int = 5,
               body_epochs: int = 1, client_lr: float = 0.1,
               initial_weights: Optional[Weights] = None, seed: int = 0) -> Personalized:
    """FedRep (Collins et al., 2021): FedPer's split and rounds, but a chosen client first
    trains its head for `head_epochs` epochs with the body frozen, then the body for
    `body_epochs` epochs with its new head frozen, both at `client_lr`. Many cheap head epochs
    fit the head to the client; few body epochs keep the bodies from drifting apart."""
    model, clients = _setup(model_fn, client_datasets)
    settings = _round_settings(clients, rounds, clients_per_round, seed)
    split = _head_size(model, num_personal_layers)
    head_epochs = check_int("head_epochs", head_epochs, minimum=1)
    body_epochs = check_int("body_epochs", body_epochs, minimum=1)
    client_lr = check_float("client_lr", client_lr, low=0.0, low_inclusive=False)
    train_head = LocalSGD(_frozen(model_fn, num_personal_layers, train_head=True), head_epochs,
                          client_lr)
    train_body = LocalSGD(_frozen(model_fn, num_personal_layers, train_head=False), body_epochs,
                          client_lr)

    def train(start: Weights, client: ClientData) -> Weights:
        return train_body(train_head(start, client), client)

    return _shared_body_rounds(model, clients, split, train, initial_weights, **settings)


def _shared_body_rounds(model: tf.keras.Model, clients: list[ClientData], head_size: int,
                        train: Callable[[Weights, ClientData], Weights],
                        initial_weights: Optional[Weights], rounds: int, clients_per_round: Any,
                        seed: int) -> Personalized:
    """The rounds of FedPer and FedRep: only the body (all tensors but the last `head_size`)
    goes down and up; each client's head stays with it between rounds."""
    weights = _initial(model, initial_weights)
    cut = len(weights) - head_size
    body, heads = weights[:cut], [weights[cut:]] * len(clients)
    body_bytes = sum(int(w.nbytes) for w in body)
    history = History()
    for r in range(1, rounds + 1):
        chosen = _sample(len(clients), clients_per_round, seed, r)
        bodies = []
        for i in chosen:
            trained = train(body + heads[i], clients[i])
            bodies.append(trained[:cut])
            heads[i] = trained[cut:]
        if len(chosen):
            body = server_aggregate(bodies, [len(clients[i]) for i in chosen])
        history.rounds.append(_record(r, chosen, clients, body_bytes))
    history.final_weights = body
    return Personalized([body + head for head in heads], body, history)


# --- Ditto: a global model, and a personal model pulled towards it ----------------------------

def run_ditto(model_fn: Callable[[], tf.keras.Model], client_datasets: Sequence[Any],
              lam: float = 0.1, rounds: int = 10,
              clients_per_round: Union[int, float, None] = None, local_epochs: int = 1,
              client_lr: float = 0.1, initial_weights: Optional[Weights] = None,
              seed: int = 0) -> Personalized:
    """Ditto (Li et al., 2021, Algorithm 1). Each round the chosen clients receive the global
    weights w and (1) train a copy for FedAvg, `local_epochs` epochs at `client_lr`, sent back
    and averaged (example-weighted) exactly as `run_fedavg` does; (2) train their own personal
    model v, kept on the client, for as many epochs at the same rate on the objective
    loss(v) + (lam/2)·||v - w||². Every v starts from the initial weights. With plain SGD the
    pull alone moves v - w by the factor 1 - client_lr·lam per step, so lam·client_lr must stay
    below 2 (beyond, the personal models diverge)."""
    model, clients = _setup(model_fn, client_datasets)
    settings = _round_settings(clients, rounds, clients_per_round, seed)
    lam = check_float("lam", lam, low=0.0)
    local_epochs = check_int("local_epochs", local_epochs, minimum=1)
    client_lr = check_float("client_lr", client_lr, low=0.0, low_inclusive=False)
    if lam * client_lr >= 2:
        raise ValueError(f"lam = {lam:g} with client_lr = {client_lr:g}: each SGD step multiplies "
                         f"v - w by 1 - client_lr·lam = {1 - client_lr * lam:g}, so the personal "
                         f"models would diverge; use lam below {2 / client_lr:g} at this rate")
    train_global = LocalSGD(model, local_epochs, client_lr)
    train_personal = LocalSGD(_build(model_fn), local_epochs, client_lr, mu=lam)
    weights = _initial(model, initial_weights)
    personal = [weights] * len(clients)
    model_bytes = sum(int(w.nbytes) for w in weights)
    history = History()
    for r in range(1, settings["rounds"] + 1):
        chosen = _sample(len(clients), settings["clients_per_round"], settings["seed"], r)
        updated = []
        for i in chosen:
            updated.append(train_global(weights, clients[i]))
            personal[i] = train_personal(personal[i], clients[i], anchor=weights)
        if len(chosen):
            weights = server_aggregate(updated, [len(clients[i]) for i in chosen])
        history.rounds.append(_record(r, chosen, clients, model_bytes))
    history.final_weights = weights
    return Personalized(personal, weights, history)


# --- evaluation -----------------------------------------------------------------------------

def evaluate_personalized(model: tf.keras.Model, client_datasets: Sequence[Any],
                          personal_weights: Sequence[Weights]) -> FederatedEvaluation:
    """Each client's own model (`personal_weights[i]`) on that client's data (held-out data,
    to judge it): per-client loss and accuracy, example-weighted and unweighted aggregates, as
    `federated_evaluate` reports them for one global model."""
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"model must be a Keras model, got {type(model).__name__}")
    clients = as_client_data(client_datasets)
    if not isinstance(personal_weights, (list, tuple)):
        raise TypeError("personal_weights must be a list with one set of weights per client, "
                        f"got {type(personal_weights).__name__}")
    if len(personal_weights) != len(clients):
        raise ValueError(f"personal_weights must hold one set of weights per client "
                         f"({len(clients)}), got {len(personal_weights)}")
    per_client = []
    for i, (client, weights) in enumerate(zip(clients, personal_weights)):
        check_weights(f"personal_weights[{i}]", weights, like=model.get_weights())
        row = federated_evaluate(model, [client], weights).per_client[0]
        per_client.append({**row, "client": i})
    counts = np.array([c["num_examples"] for c in per_client])
    weighted = {k: float(np.average([c[k] for c in per_client], weights=counts))
                for k in ("loss", "accuracy")}
    unweighted = {k: float(np.mean([c[k] for c in per_client])) for k in ("loss", "accuracy")}
    return FederatedEvaluation(per_client, weighted, unweighted)


# --- shared checks and helpers --------------------------------------------------------------

def _setup(model_fn: Any, client_datasets: Any) -> tuple[tf.keras.Model, list[ClientData]]:
    model = _build(model_fn)
    clients = as_client_data(client_datasets)
    check_against_model(clients, model, "client_datasets")
    return model, clients


def _build(model_fn: Any) -> tf.keras.Model:
    """A fresh model from `model_fn`, all of whose weights are trainable."""
    if not callable(model_fn) or isinstance(model_fn, tf.keras.Model):
        raise TypeError("model_fn must be a function that returns a new Keras model, such as "
                        f"fedutils.models.create_digits_model, got {type(model_fn).__name__}")
    model = model_fn()
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"model_fn must return a Keras model, got {type(model).__name__}")
    if model.non_trainable_weights:
        raise ValueError("model_fn must return a model whose weights are all trainable; "
                         "personalization decides itself which layers to freeze")
    return model


def _round_settings(clients: list, rounds: Any, clients_per_round: Any, seed: Any) -> dict:
    return {"rounds": check_int("rounds", rounds, minimum=1),
            "clients_per_round": check_clients_per_round(clients_per_round, len(clients)),
            "seed": check_int("seed", seed, minimum=0)}


def _sample(num_clients: int, clients_per_round: Any, seed: int, r: int) -> np.ndarray:
    """Round r's clients, drawn exactly as `run_fedavg` draws them (everyone available)."""
    return sample_clients(num_clients, clients_per_round, 1.0, np.random.default_rng([seed, r]))


def _weighted_layers(model: tf.keras.Model) -> list:
    return [layer for layer in model.layers if layer.weights]


def _head_size(model: tf.keras.Model, num_personal_layers: Any) -> int:
    """How many weight tensors the last `num_personal_layers` layers with weights hold."""
    layers = _weighted_layers(model)
    if len(layers) < 2:
        raise ValueError("num_personal_layers: the model needs at least two layers with "
                         "weights, a shared body below a personal head")
    num = check_int("num_personal_layers", num_personal_layers, minimum=1,
                    maximum=len(layers) - 1)
    return sum(len(layer.weights) for layer in layers[-num:])


def _frozen(model_fn: Callable[[], tf.keras.Model], num_personal_layers: int,
            train_head: bool) -> tf.keras.Model:
    """A model from `model_fn` in which only the head (or only the body) is trainable."""
    model = _build(model_fn)
    layers = _weighted_layers(model)
    for k, layer in enumerate(layers):
        in_head = k >= len(layers) - num_personal_layers
        layer.trainable = in_head == train_head
    return model


def _initial(model: tf.keras.Model, initial_weights: Optional[Weights]) -> Weights:
    if initial_weights is None:
        return model.get_weights()
    return check_weights("initial_weights", initial_weights, like=model.get_weights())


def _record(r: int, chosen: np.ndarray, clients: list, sent_bytes: int) -> dict:
    """A round's record: who took part and the bytes each way (every chosen client reports)."""
    return {"round": r, "num_selected": len(chosen), "num_clients": len(chosen),
            "num_examples": int(sum(len(clients[i]) for i in chosen)),
            "download_bytes": len(chosen) * sent_bytes, "upload_bytes": len(chosen) * sent_bytes}
