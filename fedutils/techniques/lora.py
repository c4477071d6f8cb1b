"""Low-rank adaptation (LoRA, Hu et al. 2021) and federated fine-tuning of its adapters.

LoRA freezes a pretrained projection W and learns a low-rank change to it: with A of shape
(r, d_in), random Gaussian, and B of shape (d_out, r), zero at the start,

    h = W0 x + (alpha / r) · B A x,

so the fine-tuned model starts as the pretrained one and trains r·(d_in + d_out) numbers per
projection instead of d_in·d_out. Keras stores a Dense kernel as (d_in, d_out) = W0ᵀ and
computes x @ kernel, so here the adapted layer computes x @ kernel + bias + s·(x Aᵀ) Bᵀ with
s = alpha / r, and merging gives kernel + s·(B A)ᵀ. (Keras 3's own `Dense.enable_lora(rank)`
keeps lora_kernel_a = Aᵀ and lora_kernel_b = Bᵀ, with the same s = lora_alpha / rank.)

Federated fine-tuning exchanges only the trainable weights of a model (the adapters; or all
weights for full fine-tuning): `LocalTrainer` runs a client's Adam steps in one compiled
function, `run_federated_finetuning` the rounds (sample clients, train, aggregate with any
fedutils aggregator, e.g. `DPFedAvgAggregator` for DP on the adapters, add the mean update),
`train_locally` the personal, never-shared adapters. `factor_averaging_gap` measures how far
FedAvg of the factors, mean(B)·mean(A), is from the mean of the clients' updates, mean(B·A);
freezing A (FFA-LoRA, Sun et al. 2024) makes the two equal.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from fedutils.core.checks import check_float, check_int, check_rng, check_weights
from fedutils.core.transformer import (TransformerConfig, create_char_transformer,
                                       named_weights, projection_names, set_named_weights)
from fedutils.loop.aggregators import as_aggregator
from fedutils.loop.fedavg import sample_clients
from fedutils.loop.history import History

layers = tf.keras.layers
Weights = list  # a list of NumPy arrays, as model.get_weights() returns

__all__ = ["LoRADense", "lora_forward", "lora_delta", "merge_kernel", "create_lora_transformer",
           "lora_layers", "adapter_weights", "set_adapter_weights", "initial_adapters",
           "merge_lora", "merged_weights", "factor_averaging_gap", "LocalTrainer",
           "run_federated_finetuning", "train_locally", "draw_batches", "weights_bytes"]


# --- the arithmetic --------------------------------------------------------------------------

def lora_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, a: np.ndarray,
                 b: np.ndarray, alpha: float) -> np.ndarray:
    """The adapted projection in NumPy: x @ kernel + bias + (alpha / r) · (x Aᵀ) Bᵀ."""
    kernel, a, b = np.asarray(kernel), np.asarray(a), np.asarray(b)
    lora_delta(a, b, alpha)   # checks that A and B fit together
    if kernel.shape != (a.shape[1], b.shape[0]):
        raise ValueError(f"kernel must be (d_in, d_out) = {(a.shape[1], b.shape[0])}, as A and B "
                         f"are, got {kernel.shape}")
    return x @ kernel + bias + (alpha / a.shape[0]) * (x @ a.T) @ b.T


def lora_delta(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """The change LoRA makes to the projection, in the paper's orientation (d_out, d_in):
    (alpha / r) · B A."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
        raise ValueError(f"a must be (r, d_in) and b (d_out, r) with the same r, got {a.shape} "
                         f"and {b.shape}")
    return (alpha / a.shape[0]) * (b @ a)


def merge_kernel(kernel: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """A Keras kernel (d_in, d_out) with the adapter merged in: kernel + (alpha / r)·(B A)ᵀ.
    The merged layer is a plain Dense layer again: no extra cost at inference."""
    return np.asarray(kernel) + lora_delta(a, b, alpha).T


# --- the layer and the model -----------------------------------------------------------------

class LoRADense(layers.Layer):
    """A Dense layer with a frozen kernel and bias and a trainable low-rank adapter (A, B).

    `rank` r, scaling `alpha` / r (alpha defaults to r, as in Keras). A (r, d_in) starts random
    Gaussian with standard deviation 1/sqrt(d_in), B (d_out, r) at zero, so the layer starts as
    the plain Dense layer. With `freeze_a`, A stays fixed too (FFA-LoRA) and only B trains.
    """

    def __init__(self, units: int, rank: int, alpha: Optional[float] = None,
                 activation: Any = None, freeze_a: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units = check_int("units", units, minimum=1)
        self.rank = check_int("rank", rank, minimum=1)
        self.alpha = float(rank) if alpha is None else check_float("alpha", alpha, low=0.0,
                                                                     low_inclusive=False)
        self.activation = tf.keras.activations.get(activation)
        self.freeze_a = bool(freeze_a)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def build(self, input_shape):
        d_in = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(d_in, self.units), trainable=False,
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), trainable=False,
                                    initializer="zeros")
        self.lora_a = self.add_weight(
            name="lora_a", shape=(self.rank, d_in), trainable=not self.freeze_a,
            initializer=tf.keras.initializers.RandomNormal(stddev=1 / math.sqrt(d_in)))
        self.lora_b = self.add_weight(name="lora_b", shape=(self.units, self.rank),
                                      initializer="zeros")
        super().build(input_shape)

    def call(self, x):
        low = tf.tensordot(tf.tensordot(x, tf.transpose(self.lora_a), 1),
                           tf.transpose(self.lora_b), 1)
        return self.activation(tf.tensordot(x, self.kernel, 1) + self.bias + self.scale * low)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "rank": self.rank,
                "alpha": self.alpha, "freeze_a": self.freeze_a,
                "activation": tf.keras.activations.serialize(self.activation)}


def create_lora_transformer(config: TransformerConfig, base_weights: dict, rank: int,
                            alpha: Optional[float] = None, targets: Sequence[str] = ("q", "v"),
                            freeze_a: bool = False, seed: int = 0,
                            sequence_length: Optional[int] = None) -> tf.keras.Model:
    """The character Transformer with LoRA on the `targets` projections of every block ("q"
    and "v", as Hu et al. adapt, by default; any of "q", "k", "v", "o", "up", "down").

    Every pretrained weight (`base_weights`, as `named_weights` or `load_pretrained` give) is
    loaded and frozen; the model's only trainable weights are the adapters, in layer order:
    [A, B] per adapted layer, or [B] with `freeze_a`. A is drawn with NumPy from `seed`, so
    Keras 2 and Keras 3 start from the same adapter.
    """
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    rank = check_int("rank", rank, minimum=1, maximum=min(config.d_model, config.d_ff))
    adapted = set(projection_names(config, targets))

    def dense(units, name, activation=None):
        if name in adapted:
            return LoRADense(units, rank, alpha, activation, freeze_a, name=name)
        return layers.Dense(units, activation=activation, name=name)

    model = create_char_transformer(config, sequence_length, dense=dense)
    _check_base_weights(model, base_weights)
    plain = {k: v for k, v in base_weights.items() if k.split("/")[0] not in adapted}
    for layer in model.layers:
        if isinstance(layer, LoRADense):
            layer.kernel.assign(base_weights[f"{layer.name}/0"])
            layer.bias.assign(base_weights[f"{layer.name}/1"])
        elif layer.weights:
            layer.set_weights([plain[f"{layer.name}/{i}"] for i in range(len(layer.weights))])
            layer.trainable = False
    set_adapter_weights(model, initial_adapters(model, seed))
    return model


def _check_base_weights(model: tf.keras.Model, base_weights: Any) -> None:
    """The pretrained weights must hold every weight of the plain model, shaped alike."""
    if not isinstance(base_weights, dict):
        raise TypeError("base_weights must be a dict of named weights (named_weights(model) or "
                        f"load_pretrained gives one), got {type(base_weights).__name__}")
    for layer in model.layers:
        frozen = [layer.kernel, layer.bias] if isinstance(layer, LoRADense) else layer.weights
        for i, variable in enumerate(frozen):
            key, shape = f"{layer.name}/{i}", tuple(variable.shape)
            if key not in base_weights:
                raise ValueError(f"base_weights must hold the pretrained model's weights: "
                                 f"{key!r} is missing")
            if np.shape(base_weights[key]) != shape:
                raise ValueError(f"base_weights[{key!r}] must have shape {shape}, got "
                                 f"{np.shape(base_weights[key])}")


def lora_layers(model: tf.keras.Model) -> list[LoRADense]:
    """The model's LoRA layers, in order."""
    found = [layer for layer in model.layers if isinstance(layer, LoRADense)]
    if not found:
        raise ValueError("model has no LoRADense layer: build it with create_lora_transformer")
    return found


def adapter_weights(model: tf.keras.Model) -> Weights:
    """Only the adapters: [A, B] of every LoRA layer in order (frozen A included)."""
    return [w for layer in lora_layers(model) for w in (layer.lora_a.numpy(),
                                                        layer.lora_b.numpy())]


def set_adapter_weights(model: tf.keras.Model, weights: Weights) -> None:
    """Load [A, B, A, B, ...] (as `adapter_weights` returns) into the model's LoRA layers."""
    targets = [v for layer in lora_layers(model) for v in (layer.lora_a, layer.lora_b)]
    weights = check_weights("weights", weights, like=[v.numpy() for v in targets])
    for variable, value in zip(targets, weights):
        variable.assign(value.astype(np.float32))


def initial_adapters(model: tf.keras.Model, seed: int = 0) -> Weights:
    """Fresh adapters for `model`: A ~ N(0, 1/d_in) from NumPy's generator seeded with `seed`,
    B = 0 (the model starts as the pretrained one)."""
    rng = np.random.default_rng(check_int("seed", seed, minimum=0))
    out = []
    for layer in lora_layers(model):
        r, d_in = layer.lora_a.shape
        out += [rng.normal(0.0, 1 / math.sqrt(d_in), (r, d_in)).astype(np.float32),
                np.zeros(layer.lora_b.shape, np.float32)]
    return out


def merge_lora(model: tf.keras.Model, config: TransformerConfig) -> tf.keras.Model:
    """A plain character Transformer whose projections are kernel + (alpha/r)·(B A)ᵀ: the same
    function as the LoRA model, at the cost of the original model."""
    plain = create_char_transformer(config)
    set_named_weights(plain, merged_weights(model))
    return plain


def merged_weights(model: tf.keras.Model) -> dict:
    """The LoRA model's weights merged into plain-Transformer named weights (`named_weights`
    format): load them into one plain model with `set_named_weights` to evaluate many adapters
    without building a model for each."""
    merged = {}
    for layer in model.layers:
        if isinstance(layer, LoRADense):
            merged[f"{layer.name}/0"] = merge_kernel(layer.kernel.numpy(), layer.lora_a.numpy(),
                                                     layer.lora_b.numpy(), layer.alpha)
            merged[f"{layer.name}/1"] = layer.bias.numpy()
        else:
            merged.update({f"{layer.name}/{i}": w for i, w in enumerate(layer.get_weights())})
    return merged


def factor_averaging_gap(global_adapters: Weights, client_adapters: Sequence[Weights],
                         num_examples: Optional[Sequence[float]] = None,
                         alpha: Union[float, Sequence[float]] = 1.0) -> tuple[float, float]:
    """How far FedAvg of the factors is from the mean of the clients' updates.

    Adapters are [A, B, A, B, ...] (`adapter_weights`). For each layer, client i's update to
    the projection is ΔW_i = s·(B_i A_i − B A) with s = alpha / r (`alpha`: one number, or one
    per layer). FedAvg averages A and B separately, which gives s·(mean(B_i)·mean(A_i) − B A)
    instead of mean(ΔW_i). Returns (norm of the difference, norm of mean(ΔW_i)), Frobenius over
    all layers together; means weighted by `num_examples` (default: equal weights).
    """
    if not isinstance(client_adapters, (list, tuple)) or len(client_adapters) == 0:
        raise ValueError("client_adapters must be a non-empty list of the clients' adapters")
    g = check_weights("global_adapters", global_adapters)
    clients = [check_weights(f"client_adapters[{i}]", c, like=g)
               for i, c in enumerate(client_adapters)]
    if len(g) % 2:
        raise ValueError("adapters must come in pairs [A, B, ...], got an odd number of arrays")
    alphas = [float(alpha)] * (len(g) // 2) if np.ndim(alpha) == 0 else [float(a) for a in alpha]
    if len(alphas) != len(g) // 2:
        raise ValueError(f"alpha must be one number or one per layer ({len(g) // 2}), got "
                         f"{len(alphas)}")
    w = np.ones(len(clients)) if num_examples is None else np.asarray(num_examples, float)
    w = w / w.sum()
    gap, update = 0.0, 0.0
    for j, s in zip(range(0, len(g), 2), alphas):
        start = lora_delta(g[j], g[j + 1], s)
        mean_product = sum(wi * lora_delta(c[j], c[j + 1], s) for wi, c in zip(w, clients))
        mean_a = sum(wi * c[j] for wi, c in zip(w, clients))
        mean_b = sum(wi * c[j + 1] for wi, c in zip(w, clients))
        gap += float(np.sum((mean_product - lora_delta(mean_a, mean_b, s)) ** 2))
        update += float(np.sum((mean_product - start) ** 2))
    return math.sqrt(gap), math.sqrt(update)


# --- client training -------------------------------------------------------------------------

def weights_bytes(weights: Weights) -> int:
    """Bytes of a list of arrays sent as they are (float32: 4 bytes a number)."""
    return int(sum(np.asarray(w).nbytes for w in weights))


class LocalTrainer:
    """A client's local training of `model`'s trainable weights with Adam.

    `train(weights, x, y, learning_rate)` starts from `weights` (the model's trainable weights,
    e.g. the global adapters) and takes one Adam step per batch x[s], y[s] (fresh Adam state
    each call, gradients clipped to global norm `clip_norm`); it returns the new trainable
    weights and the mean training loss. The step is compiled once per model (tracing a
    Transformer's gradient takes seconds: build one trainer per model and reuse it).
    """

    def __init__(self, model: tf.keras.Model, clip_norm: float = 1.0,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8):
        if not isinstance(model, tf.keras.Model):
            raise TypeError(f"model must be a Keras model, got {type(model).__name__}")
        self.model = model
        self.variables = list(model.trainable_variables)
        if not self.variables:
            raise ValueError("model has no trainable weights to train")
        self.clip_norm = check_float("clip_norm", clip_norm, low=0.0, low_inclusive=False)
        self.betas, self.epsilon = (beta_1, beta_2), epsilon
        self._m = [tf.Variable(tf.zeros(v.shape), trainable=False) for v in self.variables]
        self._v = [tf.Variable(tf.zeros(v.shape), trainable=False) for v in self.variables]
        ids = tf.TensorSpec([None, None], tf.int32)
        self._step = tf.function(self._adam_step, input_signature=[
            ids, ids, tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32)])

    def current(self) -> Weights:
        """The model's trainable weights now."""
        return [v.numpy() for v in self.variables]

    def assign(self, weights: Weights) -> None:
        """Load `weights` (the model's trainable weights, in order) into the model."""
        weights = check_weights("weights", weights, like=[v.numpy() for v in self.variables])
        for variable, value in zip(self.variables, weights):
            variable.assign(value.astype(np.float32))

    def train(self, weights: Weights, x: np.ndarray, y: np.ndarray, learning_rate: float
              ) -> tuple[Weights, float]:
        """Adam steps on the batches x[s], y[s] (shape steps × batch × time) from `weights`."""
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape or x.ndim != 3 or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"x and y must be integer arrays of one shape (steps, batch, time), "
                             f"got {x.shape} {x.dtype} and {y.shape} {y.dtype}")
        learning_rate = check_float("learning_rate", learning_rate, low=0.0, low_inclusive=False)
        self.assign(weights)
        for m, v in zip(self._m, self._v):
            m.assign(tf.zeros_like(m))
            v.assign(tf.zeros_like(v))
        lr = tf.constant(learning_rate, tf.float32)
        losses = [float(self._step(x[s], y[s], lr, tf.constant(s + 1, tf.float32)))
                  for s in range(len(x))]
        return self.current(), float(np.mean(losses))

    def _adam_step(self, x, y, learning_rate, t):
        b1, b2 = self.betas
        with tf.GradientTape() as tape:
            p = self.model(x, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, p))
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, self.variables)]
        grads, _ = tf.clip_by_global_norm(grads, self.clip_norm)
        step = learning_rate * tf.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for var, g, m, v in zip(self.variables, grads, self._m, self._v):
            m.assign(b1 * m + (1 - b1) * g)
            v.assign(b2 * v + (1 - b2) * tf.square(g))
            var.assign_sub(step * m / (tf.sqrt(v) + self.epsilon))
        return loss


Windows = tuple  # one client's next-character examples (x, y), each (windows, time) int ids


def check_clients(clients: Any) -> list[Windows]:
    """A non-empty list of (x, y) pairs of equal-shaped 2-D integer arrays (`windows` gives)."""
    if not isinstance(clients, (list, tuple)) or not clients:
        raise TypeError("clients must be a non-empty list of (x, y) window pairs, one per client "
                        f"(fedutils.core.transformer.windows), got {type(clients).__name__}")
    return [_check_windows(f"clients[{i}]", pair) for i, pair in enumerate(clients)]


def _check_windows(name: str, pair: Any) -> Windows:
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
        raise TypeError(f"{name} must be a pair (x, y) of window arrays")
    x, y = np.asarray(pair[0]), np.asarray(pair[1])
    if x.shape != y.shape or x.ndim != 2 or not len(x) or not (
            np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"{name} must hold integer arrays x and y of one shape "
                         f"(windows, time), got {x.shape} {x.dtype} and {y.shape} {y.dtype}")
    return x, y


def draw_batches(client: Windows, batch_size: int, steps: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`steps` batches of `batch_size` of the client's windows, shape (steps, batch, time):
    windows in a random order, none repeated until every window has been drawn once."""
    x, y = _check_windows("client", client)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    steps = check_int("steps", steps, minimum=1)
    rng = check_rng(rng)
    need = steps * batch_size
    order = np.concatenate([rng.permutation(len(x)) for _ in range(-(-need // len(x)))])[:need]
    shape = (steps, batch_size, x.shape[1])
    return x[order].reshape(shape), y[order].reshape(shape)


def run_federated_finetuning(trainer: LocalTrainer, clients: Sequence[Windows],
                             initial_weights: Weights, rounds: int = 5, local_steps: int = 4,
                             batch_size: int = 8, learning_rate: float = 1e-3,
                             clients_per_round: Union[int, float, None] = None,
                             aggregator: Any = None, seed: int = 0,
                             measure_gap: bool = False) -> History:
    """FedAvg over the trainable weights of `trainer.model` (the adapters of a LoRA model, or
    every weight for full fine-tuning): per round, sample clients, each takes `local_steps`
    Adam steps from the global weights on `batch_size` of its own windows (x, y) at a time,
    the aggregator (default: the
    example-weighted mean; any fedutils aggregator, e.g. `privacy.DPFedAvgAggregator`) combines
    their updates, and the server adds the result. Only those weights travel, both ways:
    `download_bytes` and `upload_bytes` per round count them.

    With `measure_gap` (a LoRA model), each round also records `factor_gap` and
    `product_update` (`factor_averaging_gap` of the clients' adapters, frozen A included). `seed`
    fixes sampling, batches and the aggregator's randomness. Returns the `History`, with
    `final_weights` the global trainable weights.
    """
    clients = check_clients(clients)
    rounds = check_int("rounds", rounds, minimum=1)
    local_steps = check_int("local_steps", local_steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    learning_rate = check_float("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    seed = check_int("seed", seed, minimum=0)
    aggregator = as_aggregator(aggregator)
    weights = check_weights("initial_weights", initial_weights, like=trainer.current())
    model_bytes = weights_bytes(weights)
    alphas = [layer.alpha for layer in lora_layers(trainer.model)] if measure_gap else None
    state, history = aggregator.initialize(), History()
    for r in range(1, rounds + 1):
        rng = np.random.default_rng([seed, r])
        chosen = sample_clients(len(clients), clients_per_round, 1.0, rng)
        new, losses, adapters = [], [], []
        trainer.assign(weights)
        start = adapter_weights(trainer.model) if measure_gap else None
        for c in chosen:
            x, y = draw_batches(clients[c], batch_size, local_steps,
                                np.random.default_rng([seed, r, c]))
            w, loss = trainer.train(weights, x, y, learning_rate)
            new.append(w)
            losses.append(loss)
            if measure_gap:
                adapters.append(adapter_weights(trainer.model))
        counts = np.array([len(clients[c][0]) for c in chosen])
        updates = [[n - g for n, g in zip(w, weights)] for w in new]
        out = aggregator.aggregate(updates, counts, [int(c) for c in chosen], rng, state)
        state = out.state
        record = {"round": r, "num_clients": len(chosen),
                  "download_bytes": len(chosen) * model_bytes,
                  "upload_bytes": len(chosen) * model_bytes,
                  "train_loss": float(np.average(losses, weights=counts))}
        record.update(out.measurements)
        if measure_gap:
            record["factor_gap"], record["product_update"] = factor_averaging_gap(
                start, adapters, counts, alphas)
        weights = [g + d.astype(g.dtype) for g, d in zip(weights, out.delta)]
        history.rounds.append(record)
    history.final_weights = weights
    trainer.assign(weights)
    return history


def train_locally(trainer: LocalTrainer, clients: Sequence[Windows],
                  initial_weights: Weights, steps: int, batch_size: int = 8,
                  learning_rate: float = 1e-3, seed: int = 0) -> list[Weights]:
    """Each client trains its own copy of the trainable weights (a personal adapter) for
    `steps` Adam steps of `batch_size` windows from `initial_weights`, alone; nothing is
    sent. Returns one list of weights per client."""
    clients = check_clients(clients)
    steps = check_int("steps", steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    learning_rate = check_float("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    seed = check_int("seed", seed, minimum=0)
    weights = check_weights("initial_weights", initial_weights, like=trainer.current())
    personal = []
    for c, client in enumerate(clients):
        x, y = draw_batches(client, batch_size, steps, np.random.default_rng([seed, 0, c]))
        personal.append(trainer.train(weights, x, y, learning_rate)[0])
    return personal
