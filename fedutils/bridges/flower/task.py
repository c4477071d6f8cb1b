"""What the Flower app's two sides share, as in Flower's own `task.py`: the data split every
party agrees on, the model, and the `run_fedavg` run a Flower federation must reproduce.

The ServerApp and ClientApp (`app/digits_app/`) import this module, never the launcher that
starts their processes.
"""
from __future__ import annotations

import functools

from fedutils.core.checks import check_int


@functools.lru_cache(maxsize=4)
def federation_data(num_clients: int, seed: int = 0, batch_size: int = 20, alpha: float = 1.0):
    """The digits split every party agrees on: (client data, (x_test, y_test)).

    The course's standard digits setting (`fedutils.data.federated_digits`) with Dirichlet
    (alpha) label skew across `num_clients` clients (unequal sizes, so weighting by examples
    matters). Each SuperNode calls this and keeps only its own partition; a real client would
    load its own files.
    """
    from fedutils.core.clientdata import federated_digits

    num_clients = check_int("num_clients", num_clients, minimum=1, maximum=100)
    split = federated_digits(num_clients, "dirichlet", alpha=alpha, batch_size=batch_size,
                             seed=seed)
    return split.clients, (split.x_test, split.y_test)


def digits_model(seed: int = 0):
    """The lessons' 64-64-10 digits model with the initial weights fixed by `seed`."""
    from fedutils import set_seed
    from fedutils.core.models import create_digits_model

    set_seed(seed)
    return create_digits_model()


def simulate(num_clients: int = 3, rounds: int = 3, local_epochs: int = 1,
             client_lr: float = 0.1, batch_size: int = 20, seed: int = 0):
    """`run_fedavg` on the federation's split and initial weights: the reference a Flower run
    with every client in every round must reproduce."""
    from fedutils.loop.fedavg import run_fedavg

    clients, test = federation_data(num_clients, seed, batch_size)
    return run_fedavg(lambda: digits_model(seed), clients, rounds=rounds,
                      local_epochs=local_epochs, client_lr=client_lr, eval_data=test,
                      seed=seed, progress=False)
