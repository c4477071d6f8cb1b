"""Server optimizers: how the server applies a round's combined update (FedOpt, Reddi et al. 2021).

Plain FedAvg adds the mean client update to the global model. FedOpt treats minus that mean as a
*pseudo-gradient* and hands it to an optimizer on the server: SGD with momentum (FedAvgM), Adam,
Yogi or Adagrad. The optimizers here follow TFF 0.87's `tff.learning.optimizers` contract and
formulas exactly (tests/test_server_optimizers.py checks them against TFF):

    opt = sgd(1.0)                      # immutable configuration
    state = opt.initialize(weights)     # explicit state: step count and NumPy slot arrays
    state, weights = opt.next(state, weights, gradient)   # gradient = global - mean client

Everything is NumPy, one tensor at a time, in the weights' own dtype (float32 stays float32),
so `sgd(1.0)` reproduces plain FedAvg bit for bit: w - 1.0·(-mean_delta) = w + mean_delta.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np

from fedutils.core.checks import check_float, check_weights, float_dtype

Weights = list  # a model's weights: list of NumPy arrays, as model.get_weights() returns


@dataclass(frozen=True)
class ServerOptimizerState:
    """What a server optimizer remembers between rounds; `next` returns a new one.

    step: how many updates have been applied. accumulator: the first moment (Adam, Yogi) or the
    momentum buffer (SGD with momentum), one array per weight tensor, else None.
    preconditioner: the second moment (Adam, Yogi) or the sum of squares (Adagrad), else None.
    The names are TFF's.
    """
    step: int
    accumulator: Optional[Weights] = None
    preconditioner: Optional[Weights] = None


@dataclass(frozen=True)
class ServerOptimizer:
    """Base class: the configuration of a server optimizer (no state lives on the object).

    Subclasses implement `_slots` (the state arrays of a fresh run) and `_update` (one step on
    already-checked float arrays); `initialize` and `next` check the arguments.
    """
    learning_rate: float

    def initialize(self, weights: Weights) -> ServerOptimizerState:
        """The state at the start of a run for a model with these weights (only their shapes
        and dtypes matter), as TFF's `optimizer.initialize(specs)`."""
        weights = _as_float(check_weights("weights", weights, allow_nan=True))
        return ServerOptimizerState(0, **self._slots(weights))

    def next(self, state: ServerOptimizerState, weights: Weights, gradient: Weights
             ) -> tuple[ServerOptimizerState, Weights]:
        """One server step: the new state and the new weights (new arrays, same dtypes).

        `gradient` is the pseudo-gradient, global weights minus the (weighted) mean of the
        clients' weights, i.e. minus the mean update.
        """
        if not isinstance(state, ServerOptimizerState):
            raise TypeError("state must be the ServerOptimizerState that initialize() or next() "
                            f"returned, got {type(state).__name__}")
        weights = _as_float(check_weights("weights", weights))
        gradient = check_weights("gradient", gradient, like=weights)
        gradient = [g.astype(w.dtype, copy=False) for g, w in zip(gradient, weights)]
        self._check_state(state, weights)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            new_state, new_weights = self._update(state, weights, gradient)
        new_weights = [n.astype(w.dtype, copy=False) for n, w in zip(new_weights, weights)]
        if not all(np.all(np.isfinite(w)) for w in new_weights):
            raise ValueError(
                f"{self!r} turned this gradient into NaN or infinite weights: with epsilon=0 a "
                "coordinate whose pseudo-gradient has always been 0 divides 0 by 0 (use "
                "epsilon > 0); otherwise lower learning_rate")
        return new_state, new_weights

    def _slots(self, weights: Weights) -> dict:
        return {}

    def _update(self, state: ServerOptimizerState, weights: Weights, gradient: Weights
                ) -> tuple[ServerOptimizerState, Weights]:
        raise NotImplementedError

    def _check_state(self, state: ServerOptimizerState, weights: Weights) -> None:
        expected = self._slots([np.zeros(())])  # only the slots' names matter here
        for name in ("accumulator", "preconditioner"):
            slot = getattr(state, name)
            if (slot is None) != (name not in expected):
                raise ValueError(f"state does not belong to {self!r} (its {name} is "
                                 f"{'missing' if slot is None else 'unexpected'}): pass the "
                                 "state this optimizer's initialize() or next() returned")
            if slot is not None:
                check_weights(f"state.{name}", slot, like=weights)


@dataclass(frozen=True)
class SGD(ServerOptimizer):
    """Server SGD, with optional momentum (FedAvgM, Hsu et al. 2019); TFF's `build_sgdm`.

    Without momentum (momentum=0):  w = w - lr * g
    With momentum m (buffer v, starting at 0):
        v = m * v + g
        w = w - lr * v
    sgd(1.0) is plain FedAvg; sgd(lr) is FedAvg with server learning rate lr. Flower 1.39's
    FedAvgM uses the same rule: server_learning_rate=1.0 and server_momentum=0.0 by default.
    """

    momentum: float = 0.0

    def __post_init__(self):
        _set(self, learning_rate=_lr(self.learning_rate),
             momentum=_fraction("momentum", self.momentum))

    def _slots(self, weights: Weights) -> dict:
        return {"accumulator": _zeros(weights)} if self.momentum > 0 else {}

    def _update(self, state, weights, gradient):
        if self.momentum == 0:
            return (replace(state, step=state.step + 1),
                    [w - _cast(self.learning_rate, w) * g for w, g in zip(weights, gradient)])
        velocity = [_cast(self.momentum, g) * v + g for v, g in zip(state.accumulator, gradient)]
        new_weights = [w - _cast(self.learning_rate, w) * v for w, v in zip(weights, velocity)]
        return replace(state, step=state.step + 1, accumulator=velocity), new_weights


@dataclass(frozen=True)
class Adam(ServerOptimizer):
    """Server Adam (FedAdam); TFF's `build_adam`, bias-corrected through the learning rate.

        acc  = acc + (1 - beta_1) * (g - acc)              # = beta_1*acc + (1-beta_1)*g
        s    = s + (1 - beta_2) * (g**2 - s)               # acc and s start at 0
        lr_t = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)  # t = 1, 2, ...
        w    = w - lr_t * acc / (sqrt(s) + epsilon)        # epsilon outside the sqrt

    epsilon is added to sqrt of the *uncorrected* s (Kingma & Ba's "epsilon hat" form), so the
    first step moves each coordinate by about lr (exactly lr·|g|/(|g| + epsilon/sqrt(1-beta_2))).
    Reddi et al. 2021's FedAdam (their Algorithm 2) has no bias correction,
    w = w + eta·m/(sqrt(v) + tau) with v starting at v_{-1} >= tau², where their tau (the
    "degree of adaptivity") plays epsilon's role; they use beta_1=0.9, beta_2=0.99.
    Flower 1.39's FedAdam does bias-correct, but with t = round + 1 (round 1 uses t=2); its
    defaults: eta=0.1, eta_l=0.1, beta_1=0.9, beta_2=0.99, tau=1e-9 (flwr.server.strategy) or
    tau=1e-3 (flwr.serverapp.strategy).
    """

    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7

    def __post_init__(self):
        _set(self, learning_rate=_lr(self.learning_rate),
             beta_1=_fraction("beta_1", self.beta_1), beta_2=_fraction("beta_2", self.beta_2),
             epsilon=check_float("epsilon", self.epsilon, low=0.0))

    def _slots(self, weights: Weights) -> dict:
        return {"accumulator": _zeros(weights), "preconditioner": _zeros(weights)}

    def _update(self, state, weights, gradient):
        step = state.step + 1
        acc = [a + (g - a) * _one_minus(self.beta_1, g)
               for a, g in zip(state.accumulator, gradient)]
        pre = [p + (np.square(g) - p) * _one_minus(self.beta_2, g)
               for p, g in zip(state.preconditioner, gradient)]
        return (ServerOptimizerState(step, acc, pre),
                _adaptive_step(self, step, weights, acc, pre))


@dataclass(frozen=True)
class Yogi(ServerOptimizer):
    """Server Yogi (FedYogi); TFF's `build_yogi`: Adam with an additive second moment.

        acc  = acc + (1 - beta_1) * (g - acc)            # acc starts at 0
        s    = s + (1 - beta_2) * sign(g**2 - s) * g**2  # s starts at initial_preconditioner_value
        lr_t = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        w    = w - lr_t * acc / (sqrt(s) + epsilon)

    s moves towards g**2 by (1 - beta_2)·g**2, where Adam moves it by (1 - beta_2)·(g**2 - s):
    after a burst of large pseudo-gradients Yogi's s falls slowly, so the step size does not
    jump back up. (TFF's docstring writes sign(g - s); its code, and Zaheer et al. 2018, use
    g**2.) Reddi et al. 2021's FedYogi has the same s update, no bias correction, and starts at
    v_{-1} >= tau². Flower 1.39's FedYogi has no bias correction, starts s at 0, and defaults to
    eta=0.01, eta_l=0.0316, beta_1=0.9, beta_2=0.99, tau=1e-3.
    """

    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-3
    initial_preconditioner_value: float = 1e-6

    def __post_init__(self):
        _set(self, learning_rate=_lr(self.learning_rate),
             beta_1=_fraction("beta_1", self.beta_1), beta_2=_fraction("beta_2", self.beta_2),
             epsilon=check_float("epsilon", self.epsilon, low=0.0),
             initial_preconditioner_value=check_float(
                 "initial_preconditioner_value", self.initial_preconditioner_value, low=0.0))

    def _slots(self, weights: Weights) -> dict:
        return {"accumulator": _zeros(weights),
                "preconditioner": _full(weights, self.initial_preconditioner_value)}

    def _update(self, state, weights, gradient):
        step = state.step + 1
        acc = [a + (g - a) * _one_minus(self.beta_1, g)
               for a, g in zip(state.accumulator, gradient)]
        pre = [p + _one_minus(self.beta_2, g) * np.sign(np.square(g) - p) * np.square(g)
               for p, g in zip(state.preconditioner, gradient)]
        return (ServerOptimizerState(step, acc, pre),
                _adaptive_step(self, step, weights, acc, pre))


@dataclass(frozen=True)
class Adagrad(ServerOptimizer):
    """Server Adagrad (FedAdagrad); TFF's `build_adagrad`.

        s = s + g**2                          # s starts at initial_preconditioner_value
        w = w - lr * g / sqrt(s + epsilon)    # epsilon inside the sqrt

    No momentum and no bias correction: each coordinate's step shrinks as its squared
    pseudo-gradients add up. Reddi et al. 2021's FedAdagrad keeps momentum (m with beta_1),
    puts tau outside the sqrt, w = w + eta·m/(sqrt(v) + tau), and starts at v_{-1} >= tau².
    Flower 1.39's FedAdagrad uses beta_1=0 (no momentum), starts s at 0, tau outside the sqrt;
    defaults eta=0.1, eta_l=0.1, tau=1e-9 (flwr.server.strategy) or tau=1e-3
    (flwr.serverapp.strategy).
    """

    initial_preconditioner_value: float = 0.1
    epsilon: float = 1e-7

    def __post_init__(self):
        initial = check_float("initial_preconditioner_value", self.initial_preconditioner_value,
                              low=0.0)
        epsilon = check_float("epsilon", self.epsilon, low=0.0)
        if initial + epsilon == 0:
            raise ValueError("initial_preconditioner_value and epsilon cannot both be 0: a "
                             "coordinate whose first pseudo-gradient is 0 would divide 0 by 0")
        _set(self, learning_rate=_lr(self.learning_rate), epsilon=epsilon,
             initial_preconditioner_value=initial)

    def _slots(self, weights: Weights) -> dict:
        return {"preconditioner": _full(weights, self.initial_preconditioner_value)}

    def _update(self, state, weights, gradient):
        pre = [p + np.square(g) for p, g in zip(state.preconditioner, gradient)]
        new_weights = [w - _cast(self.learning_rate, g) * g / np.sqrt(p + _cast(self.epsilon, p))
                       for w, p, g in zip(weights, pre, gradient)]
        return replace(state, step=state.step + 1, preconditioner=pre), new_weights


def sgd(learning_rate: float, momentum: float = 0.0) -> SGD:
    """Server SGD with optional momentum: w = w - lr·g, or v = m·v + g, w = w - lr·v.
    `sgd(1.0)` is plain FedAvg. See `SGD`."""
    return SGD(learning_rate, momentum)


def adam(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999,
         epsilon: float = 1e-7) -> Adam:
    """Server Adam with TFF's bias correction (FedAdam). See `Adam` for the formula."""
    return Adam(learning_rate, beta_1, beta_2, epsilon)


def yogi(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-3,
         initial_preconditioner_value: float = 1e-6) -> Yogi:
    """Server Yogi with TFF's bias correction (FedYogi). See `Yogi` for the formula."""
    return Yogi(learning_rate, beta_1, beta_2, epsilon, initial_preconditioner_value)


def adagrad(learning_rate: float, initial_preconditioner_value: float = 0.1,
            epsilon: float = 1e-7) -> Adagrad:
    """Server Adagrad (FedAdagrad): s = s + g², w = w - lr·g/sqrt(s + epsilon). See `Adagrad`."""
    return Adagrad(learning_rate, initial_preconditioner_value, epsilon)


def _lr(learning_rate: Any) -> float:
    return check_float("learning_rate", learning_rate, low=0.0, low_inclusive=False)


def _fraction(name: str, value: Any) -> float:
    return check_float(name, value, low=0.0, high=1.0, high_inclusive=False)


def _set(config: ServerOptimizer, **checked: float) -> None:
    """Store checked hyperparameters on a frozen configuration (in __post_init__ only)."""
    for name, value in checked.items():
        object.__setattr__(config, name, value)


def _adaptive_step(opt: Any, step: int, weights: Weights, acc: Weights, pre: Weights) -> Weights:
    """Adam's and Yogi's shared last line: w - lr_t·acc/(sqrt(s) + epsilon), bias-corrected.
    lr_t is computed in the weights' dtype, as TFF does in float32 (float64 would differ from
    TFF by a few units in the last place)."""
    return [w - _bias_corrected_lr(opt, step, a.dtype.type) * a
            / (np.sqrt(p) + _cast(opt.epsilon, p)) for w, a, p in zip(weights, acc, pre)]


def _bias_corrected_lr(opt: Any, step: int, real: type) -> np.generic:
    """lr·sqrt(1 - beta_2**t)/(1 - beta_1**t) in the float type `real`."""
    t, one = real(step), real(1.0)
    return (real(opt.learning_rate) * np.sqrt(one - real(opt.beta_2) ** t)
            / (one - real(opt.beta_1) ** t))


def _as_float(weights: Weights) -> Weights:
    return [w.astype(float_dtype(w), copy=False) for w in weights]


def _zeros(weights: Weights) -> Weights:
    return [np.zeros_like(w) for w in weights]


def _full(weights: Weights, value: float) -> Weights:
    return [np.full_like(w, value) for w in weights]


def _cast(value: float, like: np.ndarray) -> np.generic:
    """A Python float as a scalar of `like`'s dtype, as TFF's tf.cast(value, x.dtype)."""
    return like.dtype.type(value)


def _one_minus(beta: float, like: np.ndarray) -> np.generic:
    """1 - beta computed in `like`'s dtype, as TFF's 1.0 - tf.cast(beta, x.dtype)."""
    return like.dtype.type(1.0) - like.dtype.type(beta)
