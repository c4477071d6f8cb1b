"""The same Keras model and client datasets, run through TensorFlow Federated (TFF) 0.87.

Lessons show TFF side by side with fedutils: `build_fedavg` and friends wrap a fedutils model
for TFF's current API (the slides' `tff.learning.build_federated_averaging_process` and
`tff.learning.from_keras_model` are gone), `set_weights`/`get_weights` move weights between a
Keras model and TFF's server state, and `run_tff_fedavg` is `fedutils.fedavg.run_fedavg`'s
TFF twin: same sampled clients, same starting point, same `History`.

TFF needs Python < 3.12 and TensorFlow 2.14, so it is absent on Colab; `tff_available()` lets a
lesson skip its TFF cells there with `TFF_MISSING_NOTE` and show the fedutils result alone.
Importing TFF through `import_tff()` also makes sure the `worker_binary` helper that TFF starts
is stopped when this Python process exits (see fedutils.bridges.tff_workers).
"""
from __future__ import annotations

import time
import weakref
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from fedutils.core.checks import check_float, check_int, check_weights
from fedutils.core.clientdata import as_datasets
from fedutils.core.losses import keras_accuracy, keras_loss
from fedutils.bridges import tff_workers as workers
from fedutils.loop.evaluation import evaluate_weights
from fedutils.loop.fedavg import check_clients_per_round, sample_clients
from fedutils.loop.history import History, advance, progress_bar

TFF_MISSING_NOTE = ("TFF is not installed here (it needs Python < 3.12 and TensorFlow 2.14); "
                    "showing the fedutils result only.")

_available: Optional[bool] = None
_import_error = ""
# Where each Keras weight goes in TFF's (trainable, non_trainable) split, per built process.
_orders: "weakref.WeakKeyDictionary[Any, tuple[list[int], list[int]]]" = \
    weakref.WeakKeyDictionary()


class TFFUnavailableError(RuntimeError):
    """TensorFlow Federated cannot be imported in this environment."""


def tff_available() -> bool:
    """True when `tensorflow_federated` imports here (the answer is cached)."""
    global _available, _import_error
    if _available is None:
        try:
            import tensorflow_federated  # noqa: F401
            _available = True
        except Exception as exc:  # ImportError, or a broken install failing on import
            _available, _import_error = False, f"{type(exc).__name__}: {exc}"
    return _available


def import_tff():
    """Return the `tensorflow_federated` module, with its helper process stopped at exit.

    Raises TFFUnavailableError (a RuntimeError) with a one-sentence explanation where TFF is
    missing, instead of an ImportError traceback.
    """
    if not tff_available():
        raise TFFUnavailableError(
            "TensorFlow Federated is not available here: it needs Python >=3.9,<3.12 and "
            "TensorFlow 2.14 (the lesson's fedutils path shows the same thing without it; "
            f"import failed with {_import_error}).")
    import tensorflow_federated as tff

    workers.stop_on_exit()
    return tff


def tff_model_fn(create_model: Callable[[], tf.keras.Model], element_spec: Any
                 ) -> Callable[[], Any]:
    """A no-argument `model_fn` for TFF: a fresh `create_model()` wrapped by
    `tff.learning.models.from_keras_model` with the loss and accuracy fedutils uses."""
    tff = import_tff()
    if not callable(create_model) or isinstance(create_model, tf.keras.Model):
        raise TypeError("create_model must be a function that returns a new Keras model "
                        f"(TFF builds the model itself), got {type(create_model).__name__}")

    def model_fn():
        model = create_model()
        return tff.learning.models.from_keras_model(
            model, input_spec=element_spec, loss=keras_loss(model),
            metrics=[lambda: keras_accuracy(model)])

    return model_fn


def build_fedavg(create_model: Callable[[], tf.keras.Model], element_spec: Any,
                 client_lr: float = 0.1, server_lr: float = 1.0, weighted: bool = True,
                 server_optimizer_fn: Any = None):
    """TFF's FedAvg process with plain SGD on clients and server, the settings of
    `run_fedavg`. `weighted=False` builds the unweighted variant (every client counts once).
    `server_optimizer_fn` (a `tff.learning.optimizers` optimizer, e.g. `build_adam(0.01)`)
    replaces the server's SGD at `server_lr`, as `run_fedavg(..., server_optimizer=...)`."""
    tff = import_tff()
    client_lr, server_lr = _check_lrs(client_lr, server_lr)
    if server_optimizer_fn is None:
        server_optimizer_fn = tff.learning.optimizers.build_sgdm(server_lr)
    elif server_lr != 1.0:
        raise ValueError("server_lr must stay 1.0 when server_optimizer_fn is given: the "
                         f"optimizer carries its own learning rate, got server_lr={server_lr}")
    build = (tff.learning.algorithms.build_weighted_fed_avg if weighted
             else tff.learning.algorithms.build_unweighted_fed_avg)
    process = build(tff_model_fn(create_model, element_spec),
                    client_optimizer_fn=tff.learning.optimizers.build_sgdm(client_lr),
                    server_optimizer_fn=server_optimizer_fn)
    return _register(process, create_model)


def build_fedprox(create_model: Callable[[], tf.keras.Model], element_spec: Any,
                  proximal_mu: float, client_lr: float = 0.1, server_lr: float = 1.0):
    """TFF's FedProx process (`build_weighted_fed_prox`) with plain SGD, `proximal_mu` as its
    `proximal_strength`.

    Beware: TFF 0.87 gets the sign of the proximal term wrong. FedProx adds
    (mu/2)·||w - w_global||² to the client loss, whose gradient is mu·(w - w_global), as
    `run_fedavg(..., proximal_mu=mu)` does; TFF's client work
    (templates/proximal_client_work.py) adds mu·(w_global - w) to each gradient instead, which
    pushes the local model away from the global one. tests/test_tff_bridge.py checks both.
    """
    tff = import_tff()
    proximal_mu = check_float("proximal_mu", proximal_mu, low=0.0)
    client_lr, server_lr = _check_lrs(client_lr, server_lr)
    process = tff.learning.algorithms.build_weighted_fed_prox(
        tff_model_fn(create_model, element_spec), proximal_strength=proximal_mu,
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(client_lr),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(server_lr))
    return _register(process, create_model)


def build_fed_eval(create_model: Callable[[], tf.keras.Model], element_spec: Any):
    """TFF's federated evaluation process (`build_fed_eval`): no training, only metrics."""
    tff = import_tff()
    process = tff.learning.algorithms.build_fed_eval(tff_model_fn(create_model, element_spec))
    return _register(process, create_model)


def tff_federated_evaluate(create_model: Callable[[], tf.keras.Model], element_spec: Any,
                           weights: list, client_datasets: Sequence[Any],
                           process: Any = None) -> dict:
    """TFF's aggregate evaluation metrics (accuracy, loss, num_examples, num_batches) of the
    Keras `weights` over `client_datasets`; pass `process` from `build_fed_eval` to reuse it."""
    datasets = as_datasets(client_datasets)
    process = process or build_fed_eval(create_model, element_spec)
    state = set_weights(process, process.initialize(), weights)
    output = process.next(state, datasets)
    return dict(output.metrics["client_work"]["eval"]["current_round_metrics"])


def set_weights(process: Any, state: Any, keras_weights: list,
                model: Optional[tf.keras.Model] = None) -> Any:
    """Return `state` with its model replaced by `keras_weights` (in `model.get_weights()`
    order). TFF keeps trainable and non-trainable weights apart; `model` tells where each goes
    when `process` was not built by this module."""
    tff = import_tff()
    trainable, non_trainable = _order(process, model)
    current = process.get_model_weights(state)
    keras_weights = check_weights("keras_weights", keras_weights,
                                  like=_keras_order(current, trainable, non_trainable))
    return process.set_model_weights(state, tff.learning.models.ModelWeights(
        trainable=[keras_weights[i] for i in trainable],
        non_trainable=[keras_weights[i] for i in non_trainable]))


def get_weights(process: Any, state: Any, model: Optional[tf.keras.Model] = None) -> list:
    """The model weights held in TFF's `state`, in Keras `model.get_weights()` order."""
    current = process.get_model_weights(state)
    return _keras_order(current, *_order(process, model))


def run_tff_fedavg(create_model: Callable[[], tf.keras.Model], client_datasets: Sequence[Any],
                   rounds: int, clients_per_round: Union[int, float, None] = None,
                   seed: int = 0, client_lr: float = 0.1, server_lr: float = 1.0,
                   initial_weights: Optional[list] = None,
                   eval_data: Optional[tuple[np.ndarray, np.ndarray]] = None,
                   process: Any = None, progress: bool = False) -> History:
    """TFF's twin of `fedutils.fedavg.run_fedavg` (plain FedAvg, every client available).

    Each round picks the same clients as `run_fedavg(..., seed=seed)` would, runs one
    `process.next` on their datasets, and records the same `History` fields. The model starts
    from `initial_weights` (default: a fresh `create_model()`'s). `process` (default:
    `build_fedavg(create_model, ..., client_lr, server_lr)`) may be any learning process for
    this model, e.g. one from `build_fedprox` or with a compression aggregator.
    """
    rounds = check_int("rounds", rounds, minimum=1)
    datasets = as_datasets(client_datasets)
    num_clients = len(datasets)
    clients_per_round = check_clients_per_round(clients_per_round, num_clients)
    seed = check_int("seed", seed, minimum=0)
    model = _new_model(create_model)
    if eval_data is not None and not (isinstance(eval_data, (tuple, list)) and len(eval_data) == 2
                                      and len(eval_data[0]) == len(eval_data[1]) > 0):
        raise ValueError("eval_data must be a pair (x, y) of arrays with the same, non-zero "
                         "number of examples")
    if process is None:
        process = build_fedavg(create_model, datasets[0].element_spec, client_lr,
                               server_lr)
    state = set_weights(process, process.initialize(),
                        initial_weights if initial_weights is not None else model.get_weights(),
                        model)
    history = History()
    bar = progress_bar(rounds, progress, "TFF FedAvg rounds")
    for r in range(1, rounds + 1):
        started = time.perf_counter()
        chosen = sample_clients(num_clients, clients_per_round, 1.0,
                                       np.random.default_rng([seed, r]))
        output = process.next(state, [datasets[i] for i in chosen])
        state, train = output.state, output.metrics["client_work"]["train"]
        record = {"round": r, "num_selected": len(chosen), "num_clients": len(chosen),
                  "num_examples": int(train["num_examples"]), "train_loss": float(train["loss"])}
        if eval_data is not None:
            record["loss"], record["accuracy"] = evaluate_weights(
                model, get_weights(process, state, model), *eval_data)
        record["seconds"] = time.perf_counter() - started
        history.rounds.append(record)
        advance(bar, record)
    if bar is not None:
        bar.close()
    history.final_weights = get_weights(process, state, model)
    return history


def _check_lrs(client_lr: Any, server_lr: Any) -> tuple[float, float]:
    return (check_float("client_lr", client_lr, low=0.0, low_inclusive=False),
            check_float("server_lr", server_lr, low=0.0, low_inclusive=False))


def _new_model(create_model: Callable[[], tf.keras.Model]) -> tf.keras.Model:
    is_factory = callable(create_model) and not isinstance(create_model, tf.keras.Model)
    model = create_model() if is_factory else None
    if not isinstance(model, tf.keras.Model):
        raise TypeError("create_model must be a function that returns a new Keras model "
                        "(TFF builds the model itself, more than once)")
    return model


def _split(model: tf.keras.Model) -> tuple[list[int], list[int]]:
    """Positions, in `model.get_weights()`, of the trainable and the non-trainable weights,
    in the order TFF's ModelWeights lists them."""
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"model must be a Keras model, got {type(model).__name__}")
    position = {id(v): i for i, v in enumerate(model.weights)}
    return ([position[id(v)] for v in model.trainable_weights],
            [position[id(v)] for v in model.non_trainable_weights])


def _register(process: Any, create_model: Callable[[], tf.keras.Model]) -> Any:
    _orders[process] = _split(_new_model(create_model))
    return process


def _order(process: Any, model: Optional[tf.keras.Model]) -> tuple[list[int], list[int]]:
    if model is not None:
        return _split(model)
    if process in _orders:
        return _orders[process]
    weights = process.get_model_weights(process.initialize())
    if len(weights.non_trainable):
        raise ValueError("model is needed: this process's model has non-trainable weights, and "
                         "only the Keras model tells where they sit in model.get_weights()")
    return list(range(len(weights.trainable))), []


def _keras_order(model_weights: Any, trainable: list[int], non_trainable: list[int]) -> list:
    """TFF ModelWeights -> list of arrays in Keras `get_weights()` order."""
    out: list = [None] * (len(trainable) + len(non_trainable))
    for i, w in zip(trainable + non_trainable,
                    list(model_weights.trainable) + list(model_weights.non_trainable)):
        out[i] = np.asarray(w)
    return out
