"""The course's capstone (lesson 14): one fixed task, and a checker that measures it.

The task: train `fedutils.models.create_digits_model` with FedAvg on the digits spread over
`NUM_CLIENTS` clients with Dirichlet(`ALPHA`) label skew, in at most `MAX_ROUNDS` rounds, with an
aggregator that clips, compresses and adds differential-privacy noise, and reach every target
in `TARGETS`: test accuracy, user-level epsilon at `DELTA`, and upload bytes as a fraction of
what dense float32 updates would have cost.

`load_capstone_data` gives everyone the same train/test split, so numbers are comparable.
`check_capstone` trusts as little as it can: it evaluates the final weights itself on the
held-out test set it loads itself, computes epsilon from the configuration and the number of
rounds actually run, and compares the bytes the history records with the dense cost of the
clients that actually reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from fedutils.core.checks import check_float, check_int, check_weights
from fedutils.core.clientdata import FederatedDigits, federated_digits

NUM_CLIENTS = 100
ALPHA = 0.5
DELTA = 1e-3
MAX_ROUNDS = 60
TEST_FRACTION = 0.25
TARGETS = {"accuracy": 0.80, "epsilon": 8.0, "upload_fraction": 0.20}


def load_capstone_data(seed: int = 0, batch_size: int = 10) -> FederatedDigits:
    """The course's digits setting (`fedutils.data.federated_digits`: always the same test
    set) with the training examples spread over `NUM_CLIENTS` clients with Dirichlet(`ALPHA`)
    label skew drawn with `seed`, batched by `batch_size`. Seed 0 is the official split
    everyone reports on."""
    seed = check_int("seed", seed, minimum=0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    return federated_digits(NUM_CLIENTS, "dirichlet", alpha=ALPHA, batch_size=batch_size,
                            seed=seed, test_fraction=TEST_FRACTION)


@dataclass
class CapstoneReport:
    """One line per target: its name, the measured value, the bound, and whether it is met."""
    results: list = field(default_factory=list)  # dicts: name, value, bound, passed, text

    @property
    def passed(self) -> bool:
        return all(r["passed"] for r in self.results)

    def __getitem__(self, name: str) -> dict:
        for r in self.results:
            if r["name"] == name:
                return r
        raise KeyError(f"no target named {name!r}; targets: {[r['name'] for r in self.results]}")

    def __str__(self) -> str:
        lines = [("[PASS] " if r["passed"] else "[FAIL] ") + r["text"] for r in self.results]
        lines.append("capstone passed" if self.passed else "capstone not passed yet")
        return "\n".join(lines)


def check_capstone(history: Any, config: Any, verbose: bool = True) -> CapstoneReport:
    """Measure a capstone run against `TARGETS` and `MAX_ROUNDS`; print one [PASS]/[FAIL] line
    per target when `verbose`, and return the `CapstoneReport`.

    `history` is what `fedutils.fedavg.run_fedavg` returned. `config` (a dict, or any object
    with these attributes) holds `noise_multiplier` (z, the noise standard deviation on the sum
    of clipped updates divided by the clip norm; 0 for no noise) and `clients_per_round`.
    Epsilon is computed by `fedutils.privacy.compute_epsilon` with sample rate
    clients_per_round / NUM_CLIENTS and one step per round, at `DELTA`.
    """
    from fedutils.core.models import create_digits_model
    from fedutils.loop.evaluation import evaluate_weights
    from fedutils.techniques.accounting import compute_epsilon
    from fedutils.techniques.compression import payload_bytes

    z, per_round = _check_config(config)
    rounds = _check_history(history, per_round)
    model = create_digits_model()
    weights = check_weights("history.final_weights", history.final_weights,
                            like=model.get_weights())
    split = load_capstone_data()
    _, accuracy = evaluate_weights(model, weights, split.x_test, split.y_test)
    q = per_round / NUM_CLIENTS
    epsilon = compute_epsilon(z, q, rounds, DELTA) if z > 0 else math.inf
    dense = sum(history["num_clients"]) * payload_bytes(weights, "dense")
    sent = sum(history["upload_bytes"])
    fraction = sent / dense if dense else math.inf

    report = CapstoneReport()
    _add(report, "rounds", rounds, MAX_ROUNDS, rounds <= MAX_ROUNDS,
         f"rounds run: {rounds} <= {MAX_ROUNDS}")
    _add(report, "accuracy", accuracy, TARGETS["accuracy"], accuracy >= TARGETS["accuracy"],
         f"test accuracy: {accuracy:.3f} >= {TARGETS['accuracy']:.2f} "
         f"({len(split.y_test)} held-out digits)")
    _add(report, "epsilon", epsilon, TARGETS["epsilon"], epsilon <= TARGETS["epsilon"],
         f"user-level epsilon: {epsilon:.2f} <= {TARGETS['epsilon']:g} at delta={DELTA:g} "
         f"(z={z:g}, q={q:g}, {rounds} rounds)")
    _add(report, "upload_fraction", fraction, TARGETS["upload_fraction"],
         fraction <= TARGETS["upload_fraction"],
         f"upload: {fraction:.3f} of dense <= {TARGETS['upload_fraction']:.2f} "
         f"({sent:,} of {dense:,} bytes)")
    if verbose:
        print(report)
    return report


def _add(report: CapstoneReport, name: str, value: float, bound: float, passed: bool,
         text: str) -> None:
    report.results.append({"name": name, "value": value, "bound": bound, "passed": bool(passed),
                           "text": text})


def _check_config(config: Any) -> tuple[float, int]:
    get = config.get if isinstance(config, Mapping) else lambda k: getattr(config, k, None)
    missing = [k for k in ("noise_multiplier", "clients_per_round") if get(k) is None]
    if missing:
        raise ValueError(f"config must give noise_multiplier and clients_per_round "
                         f"(a dict or an object with these attributes); missing {missing}")
    z = check_float("config noise_multiplier", get("noise_multiplier"), low=0.0)
    per_round = check_int("config clients_per_round", get("clients_per_round"), minimum=1,
                          maximum=NUM_CLIENTS)
    return z, per_round


def _check_history(history: Any, per_round: int) -> int:
    from fedutils.loop.fedavg import History

    if not isinstance(history, History):
        raise TypeError("history must be the History that fedutils.fedavg.run_fedavg returns, "
                        f"got {type(history).__name__}")
    if len(history) == 0 or history.final_weights is None:
        raise ValueError("history holds no finished run: it needs at least one round and "
                         "final_weights")
    for r in history.rounds:
        if "upload_bytes" not in r or "num_clients" not in r:
            raise ValueError(f"history round {r.get('round')} lacks upload_bytes or num_clients: "
                             "pass the History of run_fedavg unchanged")
        if r.get("num_selected", 0) > per_round:
            raise ValueError(f"history round {r['round']} selected {r['num_selected']} clients, "
                             f"more than config clients_per_round={per_round}: the epsilon of "
                             "this config would not describe the run")
    return len(history)
