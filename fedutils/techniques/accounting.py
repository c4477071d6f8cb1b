"""Privacy accounting: the epsilon that a noise level buys, computed by dp-accounting.

Noise only means something once it is turned into a privacy budget. Both of the course's DP
recipes (DP-FedAvg over clients, DP-SGD over examples) are compositions of the Poisson-subsampled
Gaussian mechanism; Google's dp-accounting library turns (noise multiplier, sample rate, steps,
delta) into epsilon.
"""
from __future__ import annotations

import logging
import math
import warnings

from fedutils.core.checks import check_float, check_int


class _UnconvergedOrders(logging.Filter):
    """Drops dp-accounting's absl warning "... failed to converge ... Excluding this order from
    the epsilon computation". Its RDP accountant (0.6+) leaves out every Renyi order whose series
    does not converge: normal operation, not a problem to report. Installed on absl's logger when
    this module is imported, it also covers dp_accounting called directly (lesson 06's check)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("failed to converge" in message and "Excluding this order" in message)


def _quiet_unconverged_orders() -> None:
    try:
        from absl import logging as absl_logging   # comes with TensorFlow and dp-accounting
    except ImportError:
        return
    logger = absl_logging.get_absl_logger()
    if not any(type(f).__name__ == _UnconvergedOrders.__name__ for f in logger.filters):
        logger.addFilter(_UnconvergedOrders())


_quiet_unconverged_orders()

# dp-accounting's PLD accountant discretizes the privacy loss on a grid of this step (its
# default). Building one step's grid costs about 10-50 microseconds a point and composing
# steps about 80 bytes a point; at noise 0.1 a PLD took minutes and gigabytes. Above these
# estimated sizes (a few seconds, a few hundred MB) "pld" falls back to "rdp".
PLD_INTERVAL = 1e-4
MAX_PLD_STEP_POINTS = 800_000
MAX_PLD_POINTS = 5_000_000


def compute_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                    accountant: str = "rdp") -> float:
    """Epsilon of `steps` compositions of the Poisson-subsampled Gaussian mechanism.

    Each step includes each unit (an example in DP-SGD, a client in DP-FedAvg) independently
    with probability `sample_rate` and adds Gaussian noise of `noise_multiplier` times the
    sensitivity. The result, with `delta`, is an (epsilon, delta)-DP guarantee under
    add-or-remove-one adjacency, computed by dp-accounting: "rdp" (Rényi DP, fast, a slightly
    loose upper bound) or "pld" (privacy loss distributions, tighter, slower). At small noise a
    PLD would need a grid of millions of points (gigabytes); then the RDP bound is returned
    instead, with a warning that says so (`pld_points` gives the estimate).
    """
    noise_multiplier = check_float("noise_multiplier", noise_multiplier, low=0.0,
                                   low_inclusive=False)
    sample_rate = check_float("sample_rate", sample_rate, low=0.0, high=1.0, low_inclusive=False)
    steps = check_int("steps", steps, minimum=1)
    delta = check_float("delta", delta, low=0.0, high=1.0, low_inclusive=False,
                        high_inclusive=False)
    if accountant not in ("rdp", "pld"):
        raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}")
    if accountant == "pld":
        one_step, composed = pld_points(noise_multiplier, sample_rate, steps)
        if one_step > MAX_PLD_STEP_POINTS or composed > MAX_PLD_POINTS:
            warnings.warn(f"compute_epsilon: a PLD at noise_multiplier={noise_multiplier:g} over "
                          f"{steps} steps needs a grid of about {max(one_step, composed):.2g} "
                          "points (minutes and gigabytes); returning the RDP bound instead, a "
                          "slightly looser upper bound on epsilon", stacklevel=2)
            accountant = "rdp"
    return _epsilon(noise_multiplier, sample_rate, steps, delta, accountant)


def pld_points(noise_multiplier: float, sample_rate: float, steps: int) -> tuple[float, float]:
    """About how many grid points dp-accounting's PLD holds for one step and for all `steps`
    (upper estimates, within a factor of about 3, measured against dp-accounting 0.4 and 0.6).

    One step spans about 1/z² + 20/z in privacy loss (the Gaussian's tails, cut at about 10
    standard deviations; sampling only narrows it); the composition spans about twice its RDP
    epsilon at delta 1e-15, where the PLD's tails are cut."""
    z = noise_multiplier
    one_step = (1 / z**2 + 20 / z) / PLD_INTERVAL
    composed = 2 * _epsilon(z, sample_rate, steps, 1e-15, "rdp") / PLD_INTERVAL
    return one_step, max(one_step, composed)


def _epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
             accountant: str) -> float:
    import dp_accounting

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps)
    acc = (dp_accounting.rdp.RdpAccountant() if accountant == "rdp"
           else dp_accounting.pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL))
    return float(acc.compose(event).get_epsilon(delta))


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
