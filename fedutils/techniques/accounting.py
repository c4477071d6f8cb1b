"""Privacy accounting: the epsilon that a noise level buys, computed by dp-accounting.

Noise only means something once it is turned into a privacy budget. Both of the course's DP
recipes (DP-FedAvg over clients, DP-SGD over examples) are compositions of the Poisson-subsampled
Gaussian mechanism; Google's dp-accounting library turns (noise multiplier, sample rate, steps,
delta) into epsilon.
"""
from __future__ import annotations

import logging
import math

from fedutils.core.checks import check_float, check_int

def compute_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                    accountant: str = "rdp") -> float:
    """Epsilon of `steps` compositions of the Poisson-subsampled Gaussian mechanism.

    Each step includes each unit (an example in DP-SGD, a client in DP-FedAvg) independently
    with probability `sample_rate` and adds Gaussian noise of `noise_multiplier` times the
    sensitivity. The result, with `delta`, is an (epsilon, delta)-DP guarantee under
    add-or-remove-one adjacency, computed by dp-accounting: "rdp" (Rényi DP, fast, a slightly
    loose upper bound) or "pld" (privacy loss distributions, tighter, slower).
    """
    noise_multiplier = check_float("noise_multiplier", noise_multiplier, low=0.0,
                                   low_inclusive=False)
    sample_rate = check_float("sample_rate", sample_rate, low=0.0, high=1.0, low_inclusive=False)
    steps = check_int("steps", steps, minimum=1)
    delta = check_float("delta", delta, low=0.0, high=1.0, low_inclusive=False,
                        high_inclusive=False)
    if accountant not in ("rdp", "pld"):
        raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}")
    import dp_accounting

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps)
    acc = (dp_accounting.rdp.RdpAccountant() if accountant == "rdp"
           else dp_accounting.pld.PLDAccountant())
    # dp-accounting 0.6 logs (through absl) every Renyi order whose series does not converge
    # and that it therefore leaves out; that is its normal operation, not a problem to report.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        return float(acc.compose(event).get_epsilon(delta))
    finally:
        absl_logger.setLevel(level)


def dp_sgd_epsilon(num_examples: int, batch_size: int, epochs: int, noise_multiplier: float,
                   delta: float, accountant: str = "rdp", used_microbatching: bool = False
                   ) -> float:
    """Epsilon of one client's DP-SGD: sample rate batch_size/num_examples, and
    epochs·ceil(num_examples/batch_size) steps (the batches a tf.data pipeline runs).

    This is tensorflow-privacy's "epsilon assuming Poisson sampling" from
    `compute_dp_sgd_privacy_statement`, which counts ceil(epochs·num_examples/batch_size) steps
    instead (the same when batch_size divides num_examples). With microbatches of more than one
    example (`used_microbatching=True`) one example can change a clipped microbatch gradient by
    twice the clip norm, so the effective noise multiplier is halved, as tensorflow-privacy does.
    """
    num_examples = check_int("num_examples", num_examples, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1, maximum=num_examples)
    epochs = check_int("epochs", epochs, minimum=1)
    noise_multiplier = check_float("noise_multiplier", noise_multiplier, low=0.0,
                                   low_inclusive=False)
    steps = epochs * math.ceil(num_examples / batch_size)
    if used_microbatching:
        noise_multiplier /= 2
    return compute_epsilon(noise_multiplier, batch_size / num_examples, steps, delta, accountant)
