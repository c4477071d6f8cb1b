"""What the parties of lesson 15's federation agree on, and the simulation it must reproduce.

The data split (each node's training examples and its own held-out set), the initial model,
and `simulate`: `fedutils.run_fedavg` on the same split and weights. The Flower app itself
(`app/digits_app/`) imports none of this: each SuperNode reads its own data file, written by
the launcher from `node_data`, as a real device reads its own storage.
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from fedutils.core.checks import check_int

NUM_CLASSES = 10


@functools.lru_cache(maxsize=4)
def federation_data(num_clients: int, seed: int = 0, batch_size: int = 20, alpha: float = 1.0):
    """The digits split every party agrees on: (client data, (x_test, y_test)).

    The course's standard digits setting (`fedutils.data.federated_digits`) with Dirichlet
    (alpha) label skew across `num_clients` clients (unequal sizes, so weighting by examples
    matters).
    """
    from fedutils.core.clientdata import federated_digits

    num_clients = check_int("num_clients", num_clients, minimum=1, maximum=100)
    split = federated_digits(num_clients, "dirichlet", alpha=alpha, batch_size=batch_size,
                             seed=seed)
    return split.clients, (split.x_test, split.y_test)


def held_out_split(num_clients: int, seed: int = 0, alpha: float = 1.0) -> list[np.ndarray]:
    """Each client's held-out data, as index arrays into the test set.

    Every test example goes to one client, drawn with probability equal to that client's share
    of the example's label in the training data: a node's held-out set has its own label mix,
    as a hospital's held-out patients look like its other patients. Together the sets are the
    whole test set, so the example-weighted mean of the clients' accuracies is the test
    accuracy.
    """
    clients, (_, y_test) = federation_data(num_clients, seed, alpha=alpha)
    counts = np.stack([np.bincount(c.y, minlength=NUM_CLASSES) for c in clients])
    share = counts / counts.sum(axis=0)              # clients x labels; columns sum to 1
    rng = np.random.default_rng([seed, 1])
    owner = np.array([rng.choice(num_clients, p=share[:, label]) for label in y_test])
    return [np.flatnonzero(owner == i) for i in range(num_clients)]


def node_data(num_clients: int, seed: int = 0, batch_size: int = 20) -> list[dict]:
    """What each SuperNode holds: training examples in batch order (`x_train`, `y_train`) and
    its held-out set (`x_test`, `y_test`)."""
    clients, (x_test, y_test) = federation_data(num_clients, seed, batch_size)
    return [{"x_train": c.x, "y_train": c.y, "x_test": x_test[i], "y_test": y_test[i]}
            for c, i in zip(clients, held_out_split(num_clients, seed))]


def digits_model(seed: int = 0):
    """The lessons' 64-64-10 digits model with the initial weights fixed by `seed`."""
    from fedutils import set_seed
    from fedutils.core.models import create_digits_model

    set_seed(seed)
    return create_digits_model()


def simulate(num_clients: int = 3, rounds: int = 3, local_epochs: int = 1,
             client_lr: float = 0.1, batch_size: int = 20, seed: int = 0,
             lost_client: Optional[int] = None, lost_from_round: int = 2):
    """`run_fedavg` on the federation's split and initial weights: the reference a Flower run
    must reproduce (a `History`; accuracy on the whole test set). With `lost_client`, that
    client takes part only in the rounds before `lost_from_round` (it crashed), the others in
    every round."""
    from fedutils.loop.fedavg import run_fedavg
    from fedutils.loop.history import History

    clients, test = federation_data(num_clients, seed, batch_size)
    stretches = [(list(clients), rounds)]
    if lost_client is not None:
        lost_client = check_int("lost_client", lost_client, minimum=0, maximum=num_clients - 1)
        lost_from_round = check_int("lost_from_round", lost_from_round, minimum=1,
                                    maximum=rounds)
        survivors = [c for i, c in enumerate(clients) if i != lost_client]
        stretches = [(list(clients), lost_from_round - 1),
                     (survivors, rounds - lost_from_round + 1)]
    history = History()
    for participants, count in stretches:
        if count == 0:
            continue
        part = run_fedavg(lambda: digits_model(seed), participants, rounds=count,
                          local_epochs=local_epochs, client_lr=client_lr, eval_data=test,
                          seed=seed, progress=False, initial_weights=history.final_weights)
        history.rounds += [{**r, "round": r["round"] + len(history)} for r in part.rounds]
        history.final_weights = part.final_weights
    return history
