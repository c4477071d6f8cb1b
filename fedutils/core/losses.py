"""The one place that decides how a model's output is read: one sigmoid unit is a binary
classifier, a softmax over classes is a multi-class one. Loss, prediction and the accepted label
range all follow from that rule, in training, evaluation, TFF and Keras alike."""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf


def is_binary(model: tf.keras.Model) -> bool:
    """True for one sigmoid output (labels 0/1), False for a softmax over classes."""
    return model.output_shape[-1] == 1


def num_classes(model: tf.keras.Model) -> int:
    """How many label values the model can output: 2 for a binary model, else its units."""
    return 2 if is_binary(model) else int(model.output_shape[-1])


def per_example_loss(model: tf.keras.Model, y: Any, probabilities: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of each example: binary for one sigmoid output, sparse categorical for a
    softmax. Averaging it over a batch gives the loss Keras and TFF minimise."""
    if is_binary(model):   # labels shaped like the outputs: (batch, 1), or (clients, batch, 1)
        y = tf.reshape(tf.cast(y, probabilities.dtype), tf.shape(probabilities))
        return tf.keras.losses.binary_crossentropy(y, probabilities)
    return tf.keras.losses.sparse_categorical_crossentropy(y, probabilities)


def predicted_labels(probabilities: np.ndarray) -> np.ndarray:
    """Class predictions: probability > 0.5 for one sigmoid output, else the arg-max."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[-1] == 1:
        return (probabilities[..., 0] > 0.5).astype(np.int64)
    return np.argmax(probabilities, axis=-1)


def predicted_label_ops(probabilities: tf.Tensor) -> tf.Tensor:
    """`predicted_labels` as TensorFlow ops, for a compiled function."""
    if probabilities.shape[-1] == 1:
        return tf.cast(probabilities[..., 0] > 0.5, tf.int64)
    return tf.argmax(probabilities, axis=-1)


def keras_loss(model: tf.keras.Model) -> tf.keras.losses.Loss:
    """The Keras loss object for `model` (for `compile` and TFF's `from_keras_model`)."""
    if is_binary(model):
        return tf.keras.losses.BinaryCrossentropy()
    return tf.keras.losses.SparseCategoricalCrossentropy()


def keras_accuracy(model: tf.keras.Model) -> tf.keras.metrics.Metric:
    """The Keras accuracy metric that matches `keras_loss(model)`."""
    if is_binary(model):
        return tf.keras.metrics.BinaryAccuracy(name="accuracy")
    return tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")
