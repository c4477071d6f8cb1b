"""Federated Averaging (McMahan et al., 2017) and its generalisation, FedOpt: the round loop.

A round is the decomposition TFF and Flower share: sample clients → client work (local SGD,
compiled: `fedutils.loop.compiled`) → aggregator (`fedutils.loop.aggregators`: the updates
become one update plus measurements) → server optimizer (`fedutils.server_optimizers`,
applied to the pseudo-gradient, minus the aggregate update) → new global weights. Every
stateful part starts fresh in each run; what each part measured goes into the `History`.
With `scaffold=True` the round is SCAFFOLD's (Karimireddy et al., 2020): clients correct every
step by c - c_i, and the server keeps the control variates in an explicit `ScaffoldState`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from fedutils.core.checks import check_float, check_int, check_labels, check_rng, check_weights
from fedutils.core.clientdata import ClientData, as_client_data, check_against_model
from fedutils.loop.aggregators import (Aggregate, WeightedMean, as_aggregator,  # noqa: F401
                                       check_output, server_aggregate)
from fedutils.loop.client import (ClientResult, client_update,  # noqa: F401 (re-export)
                                  scaffold_control_update)
from fedutils.loop.compiled import compile_clients
from fedutils.loop.evaluation import evaluate_weights, loss_and_accuracy  # noqa: F401
from fedutils.loop.history import History, advance, progress_bar
from fedutils.loop.server_optimizers import ServerOptimizer, sgd

Weights = list  # a model's weights: list of NumPy arrays, as model.get_weights() returns


class _ExpectedRetracing(logging.Filter):
    """fedutils compiles one function per model on purpose: the client work of each
    `run_fedavg` call, a prediction and a scoring per evaluated model. After a few models
    TensorFlow warns that "N out of the last M calls ... triggered tf.function retracing",
    which is expected here and only noise in a lesson; this drops that message for fedutils'
    own functions, and for Keras' `predict`, which lessons call on many small models."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "retracing" not in message or not any(
            name in message for name in ("fedutils.loop.compiled", "_graph.<locals>.graph",
                                         "make_predict_function"))


tf.get_logger().addFilter(_ExpectedRetracing())


# One random number per client per round: beyond this many clients, a mistyped count would
# allocate gigabytes inside NumPy, where no Ctrl-C reaches.
MAX_CLIENTS = 10**7


def sample_clients(num_clients: int, clients_per_round: Union[int, float, None],
                   availability: float, rng: np.random.Generator) -> np.ndarray:
    """Pick a round's participants: each client is online with probability `availability`,
    then `clients_per_round` of the online ones (a count, or a fraction of all clients; None
    means all) are drawn without replacement. May return an empty array: nobody came."""
    num_clients = check_int("num_clients", num_clients, minimum=1, maximum=MAX_CLIENTS)
    clients_per_round = check_clients_per_round(clients_per_round, num_clients)
    availability = check_float("availability", availability, low=0.0, high=1.0)
    rng = check_rng(rng)
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
               client_lr: float = 0.1, proximal_mu: float = 0.0, aggregator: Any = None,
               server_optimizer: Optional[ServerOptimizer] = None,
               eval_data: Optional[tuple[np.ndarray, np.ndarray]] = None, eval_every: int = 1,
               initial_weights: Optional[Weights] = None, seed: int = 0,
               progress: bool = True, scaffold: bool = False) -> History:
    """Run `rounds` rounds of FedAvg (FedOpt with a `server_optimizer`); return the `History`.

    Each round: sample participants (`clients_per_round` as a count or fraction, each client
    online with probability `availability`); send them the global weights; each trains
    `local_epochs` epochs of SGD at `client_lr` on its `ClientData` (or tf.data dataset), plus
    FedProx's proximal term when `proximal_mu` > 0; each participant then fails to report with
    probability `dropout`; the survivors' updates (new minus global weights) are combined by
    `aggregator` (default: the example-weighted mean); `server_optimizer` (default: SGD at
    learning rate 1, which adds the mean update) applies minus that update as a gradient. A
    round with no report leaves the model unchanged. The global model is evaluated on
    `eval_data` every `eval_every` rounds.

    With `scaffold=True`, SCAFFOLD (option II) corrects client drift: the server keeps a
    control variate c and one c_i per client (all zero at the start of the run), each client
    steps by w - lr·(g(w) - c_i + c) for its K = batches × `local_epochs` steps, then sets
    c_i+ = c_i - c + (x - y)/(K·lr) and reports Δy = y - x and Δc = c_i+ - c_i; Δy goes through
    `aggregator` and `server_optimizer` as usual, and c += (reporters / all clients)·mean(Δc).
    Both directions then carry two model-sized arrays (x and c down, Δy and Δc up), which
    `download_bytes` and `upload_bytes` count.

    `seed` fixes sampling, drop-outs and the aggregator's randomness; the initial weights come
    from `initial_weights`, else from `model_fn()` (call `fedutils.set_seed` first).
    """
    rounds = check_int("rounds", rounds, minimum=1)
    clients = as_client_data(client_datasets)
    clients_per_round = check_clients_per_round(clients_per_round, len(clients))
    availability = check_float("availability", availability, low=0.0, high=1.0,
                               low_inclusive=False)
    dropout = check_float("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
    local_epochs = check_int("local_epochs", local_epochs, minimum=1)
    client_lr = check_float("client_lr", client_lr, low=0.0, low_inclusive=False)
    proximal_mu = check_float("proximal_mu", proximal_mu, low=0.0)
    scaffold = _check_scaffold(scaffold, proximal_mu)
    eval_every = check_int("eval_every", eval_every, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    aggregator = as_aggregator(aggregator)
    optimizer = _check_optimizer(server_optimizer)
    model = _build_model(model_fn)
    check_against_model(clients, model, "client_datasets")
    if eval_data is not None:
        eval_data = _check_eval_data(eval_data, model)
    global_weights = (check_weights("initial_weights", initial_weights,
                                    like=model.get_weights())
                      if initial_weights is not None else model.get_weights())

    trainer = compile_clients(model, clients, local_epochs, client_lr, proximal_mu, scaffold,
                              reuse=model is not model_fn)  # not a model the caller holds
    # The default aggregator is a weighted mean, which the compiled round computes itself.
    plain_mean = type(aggregator) is WeightedMean and not scaffold
    model_bytes = sum(int(w.nbytes) for w in global_weights)
    copies = 2 if scaffold else 1  # SCAFFOLD sends c beside x, and Δc beside Δy
    controls = ScaffoldState.zeros(global_weights, len(clients)) if scaffold else None
    aggregator_state = aggregator.initialize()
    optimizer_state = optimizer.initialize(global_weights)
    history = History()
    bar = progress_bar(rounds, progress, "FedAvg rounds")
    for r in range(1, rounds + 1):
        started = time.perf_counter()
        rng = np.random.default_rng([seed, r])
        chosen = sample_clients(len(clients), clients_per_round, availability, rng)
        record: dict[str, Any] = {"round": r, "num_selected": len(chosen),
                                  "download_bytes": copies * len(chosen) * model_bytes}
        kept = np.array([], dtype=int)
        if len(chosen):
            corrections = controls.corrections(chosen) if scaffold else None
            kept = np.flatnonzero(rng.random(len(chosen)) >= dropout)
            work = trainer.train(global_weights, chosen, corrections,
                                 mean_of=kept if plain_mean else None)
            counts = work.num_examples
            record["train_loss"] = float(np.average(work.losses, weights=counts))
        record["num_clients"] = len(kept)
        record["num_examples"] = int(np.sum(counts[kept])) if len(kept) else 0
        record["upload_bytes"] = 0
        if len(kept):
            if work.mean is not None:  # the weighted mean, computed with the clients' training
                out = Aggregate(work.mean)
            else:
                updates = [s[kept] - g for s, g in zip(work.stacked, global_weights)]
                out = check_output(aggregator.aggregate_stacked(
                    updates, counts[kept], [int(chosen[i]) for i in kept], rng,
                    aggregator_state), aggregator)
            delta = _check_aggregate(out.delta, global_weights, aggregator)
            aggregator_state = out.state
            record["upload_bytes"] = len(kept) * model_bytes
            record.update(out.measurements)
            if scaffold:
                controls = controls.next(chosen[kept], [work.client(i) for i in kept],
                                         global_weights, trainer.local_steps(chosen[kept]),
                                         client_lr)
                _count_control_upload(record, len(kept) * model_bytes)
            gradient = [-d for d in delta]
            optimizer_state, global_weights = optimizer.next(optimizer_state, global_weights,
                                                             gradient)
        if eval_data is not None and (r % eval_every == 0 or r == rounds):
            trainer.model.set_weights(global_weights)  # its prediction is compiled already
            record["loss"], record["accuracy"] = loss_and_accuracy(trainer.model, *eval_data)
        record["seconds"] = time.perf_counter() - started
        history.rounds.append(record)
        advance(bar, record)
    if bar is not None:
        bar.close()
    model.set_weights(global_weights)
    history.final_weights = global_weights
    return history


@dataclass(frozen=True)
class ScaffoldState:
    """SCAFFOLD's control variates during one run: the server's c and each client's c_i (zero
    until the client first reports; kept across rounds). `next` returns a new state."""
    server: Weights
    clients: tuple  # one Weights per client

    @classmethod
    def zeros(cls, weights: Weights, num_clients: int) -> "ScaffoldState":
        zeros = [np.zeros_like(w) for w in weights]
        return cls(zeros, (zeros,) * num_clients)

    def corrections(self, chosen: np.ndarray) -> list[np.ndarray]:
        """c - c_i of each chosen client, stacked per weight tensor (the compiled round's
        argument)."""
        return [np.stack([c - self.clients[i][t] for i in chosen])
                for t, c in enumerate(self.server)]

    def next(self, reporters: np.ndarray, local_weights: list[Weights], global_weights: Weights,
             local_steps: np.ndarray, learning_rate: float) -> "ScaffoldState":
        """The state after `reporters` (client ids) trained from `global_weights` to
        `local_weights` in `local_steps` steps each: new c_i (option II), and
        c + (|S|/N)·mean(Δc) = c + sum(Δc)/N on the server."""
        clients = list(self.clients)
        total = [np.zeros_like(c) for c in self.server]
        for i, y, steps in zip(reporters, local_weights, local_steps):
            new = scaffold_control_update(self.clients[i], self.server, global_weights, y,
                                          int(steps), learning_rate)
            total = [t + (n - old) for t, n, old in zip(total, new, self.clients[i])]
            clients[i] = new
        server = [c + t / np.asarray(len(clients), dtype=c.dtype)
                  for c, t in zip(self.server, total)]
        return ScaffoldState(server, tuple(clients))


def _check_scaffold(scaffold: Any, proximal_mu: float) -> bool:
    if not isinstance(scaffold, bool):
        raise TypeError(f"scaffold must be True or False, got {type(scaffold).__name__} "
                        f"{scaffold!r}")
    if scaffold and proximal_mu > 0:
        raise ValueError("scaffold=True cannot be combined with proximal_mu > 0: SCAFFOLD's "
                         "control variates and FedProx's proximal term are alternative remedies "
                         "for client drift; choose one (set proximal_mu=0 for SCAFFOLD)")
    return scaffold


def _count_control_upload(record: dict, control_bytes: int) -> None:
    """SCAFFOLD's clients also upload Δc, dense: add it to the aggregator's byte counts."""
    for key in ("upload_bytes", "dense_upload_bytes"):
        if key in record:
            record[key] += control_bytes


def check_clients_per_round(value: Any, num_clients: int) -> Union[int, float, None]:
    """None (every client), a count in [1, num_clients] or a fraction in (0, 1]."""
    if value is None:
        return None
    if isinstance(value, float):
        return check_float("clients_per_round", value, low=0.0, high=1.0, low_inclusive=False)
    return check_int("clients_per_round", value, minimum=1, maximum=num_clients)


def _build_model(model_fn: Any) -> tf.keras.Model:
    if not callable(model_fn):
        raise TypeError(f"model_fn must be a function that returns a Keras model, such as "
                        f"fedutils.models.create_digits_model, got {type(model_fn).__name__}")
    model = model_fn() if not isinstance(model_fn, tf.keras.Model) else model_fn
    if not isinstance(model, tf.keras.Model):
        raise TypeError("model_fn must return a Keras model (or be one), "
                        f"got {type(model).__name__}")
    if len(model.non_trainable_weights) > 0:
        raise ValueError("run_fedavg trains models whose weights are all trainable; freeze "
                         "layers by building the model without them (see lesson 13)")
    return model


def _check_optimizer(optimizer: Any) -> ServerOptimizer:
    if optimizer is None:
        return sgd(1.0)
    if not isinstance(optimizer, ServerOptimizer):
        raise TypeError("server_optimizer must be one of fedutils.server_optimizers (sgd, adam, "
                        f"yogi, adagrad), got {type(optimizer).__name__}")
    return optimizer


def _check_eval_data(eval_data: Any, model: tf.keras.Model) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(eval_data, (tuple, list)) and len(eval_data) == 2
            and all(hasattr(a, "__len__") for a in eval_data)
            and len(eval_data[0]) == len(eval_data[1]) > 0):
        raise ValueError("eval_data must be a pair (x, y) of arrays with the same, "
                         "non-zero number of examples")
    x, y = np.asarray(eval_data[0]), check_labels("eval_data's y", eval_data[1])
    check_against_model([ClientData(x, y, 1)], model, "eval_data")
    return x, y


def _check_aggregate(delta: Any, like: Weights, aggregator: Any) -> Weights:
    """The aggregator's output must be an update shaped like the model, with finite values."""
    if delta is None:
        raise TypeError(f"aggregator {aggregator!r} returned None; it must return the combined "
                        "update: a list of arrays shaped like the model's weights")
    delta = check_weights(f"the update returned by aggregator {aggregator!r}", delta,
                          like=like)
    return [d.astype(w.dtype) if not np.issubdtype(d.dtype, np.floating) else d
            for d, w in zip(delta, like)]
