"""What a device runs: the course's 64-64-10 digits model, trained and evaluated in NumPy.

A phone or a hospital server would not ship TensorFlow (hundreds of MB per process) to train
a 4,810-weight network, so the ClientApp needs only Flower and NumPy. The arithmetic is
fedutils' own `sgd_step` written out by hand: dense ReLU layer, dense softmax layer, the mean
sparse categorical cross-entropy of the batch, one plain SGD step per batch, in float32. The
course's tests check it against `fedutils.fedavg.client_update` and `evaluate_weights`.
"""
import numpy as np

EPSILON = 1e-7   # Keras clips probabilities to [eps, 1 - eps] before the logarithm


def forward(weights: list, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hidden pre-activations and class probabilities for the examples x."""
    w1, b1, w2, b2 = weights
    hidden = x @ w1 + b1
    logits = np.maximum(hidden, 0) @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    odds = np.exp(logits)
    return hidden, odds / odds.sum(axis=1, keepdims=True)


def cross_entropy(probabilities: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example loss: minus the log of the probability given to the true label."""
    picked = probabilities[np.arange(len(y)), y]
    return -np.log(np.clip(picked, EPSILON, 1 - EPSILON))


def sgd_step(weights: list, x: np.ndarray, y: np.ndarray, learning_rate: np.float32) -> float:
    """One SGD step on the batch (x, y), in place; returns the batch's summed loss."""
    w1, b1, w2, b2 = weights
    hidden, probabilities = forward(weights, x)
    loss = float(cross_entropy(probabilities, y).sum())
    d_logits = probabilities
    d_logits[np.arange(len(y)), y] -= 1              # softmax + cross-entropy: p - onehot
    d_logits /= np.float32(len(y))                   # the batch mean
    activated = np.maximum(hidden, 0)
    d_hidden = (d_logits @ w2.T) * (hidden > 0)
    for w, g in ((w2, activated.T @ d_logits), (b2, d_logits.sum(axis=0)),
                 (w1, x.T @ d_hidden), (b1, d_hidden.sum(axis=0))):
        w -= learning_rate * g
    return loss


def train(weights: list, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float,
          batch_size: int) -> tuple[list, float]:
    """Local training from the global weights: `epochs` passes over (x, y) in order, one SGD
    step per batch. Returns the new weights and the mean loss per example."""
    weights = [np.array(w, dtype=np.float32) for w in weights]
    lr, total = np.float32(learning_rate), 0.0
    for _ in range(epochs):
        for start in range(0, len(y), batch_size):
            end = start + batch_size
            total += sgd_step(weights, x[start:end], y[start:end], lr)
    return weights, total / (len(y) * epochs)


def evaluate(weights: list, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean loss and accuracy of the model with `weights` on (x, y)."""
    _, probabilities = forward([np.asarray(w, dtype=np.float32) for w in weights], x)
    loss = float(cross_entropy(probabilities, y).mean())
    return loss, float(np.mean(probabilities.argmax(axis=1) == y))
