"""The course's Keras models, uncompiled, built with `tf.keras.Input` so that they run without
warnings on Keras 2 (TensorFlow 2.14, with TFF) and Keras 3 (current TensorFlow, Colab).

Each returns probabilities (sigmoid or softmax), as the slides' models do; fedutils picks the
matching loss with `loss_for`. Call `fedutils.set_seed` first for reproducible initial weights.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import tensorflow as tf

from fedutils.core.checks import check_int
from fedutils.core.losses import keras_accuracy, keras_loss

layers = tf.keras.layers
# The course's models have thousands to a few hundred thousand weights; a size argument off by a
# few digits would otherwise allocate gigabytes (or fail deep inside TensorFlow).
MAX_WEIGHTS = 50_000_000


def create_keras_model(num_features: int = 4, hidden_units: int = 10) -> tf.keras.Model:
    """Slide 1's model: a 10-unit ReLU layer and one sigmoid output, for a binary task."""
    num_features = check_int("num_features", num_features, minimum=1)
    hidden_units = check_int("hidden_units", hidden_units, minimum=1)
    _check_size("num_features and hidden_units", (num_features + 2) * hidden_units + 1)
    return tf.keras.Sequential([
        tf.keras.Input(shape=(num_features,)),
        layers.Dense(hidden_units, activation="relu"),
        layers.Dense(1, activation="sigmoid"),
    ], name="slide1_model")


def create_digits_model(hidden_units: int = 64, num_classes: int = 10,
                        num_features: int = 64) -> tf.keras.Model:
    """A dense 64-64-10 network for the 8x8 digits, flattened to 64 pixels (4,810 weights)."""
    hidden_units = check_int("hidden_units", hidden_units, minimum=1)
    num_classes = check_int("num_classes", num_classes, minimum=2)
    num_features = check_int("num_features", num_features, minimum=1)
    _check_size("num_features, hidden_units and num_classes",
                (num_features + 1) * hidden_units + (hidden_units + 1) * num_classes)
    return tf.keras.Sequential([
        tf.keras.Input(shape=(num_features,)),
        layers.Dense(hidden_units, activation="relu"),
        layers.Dense(num_classes, activation="softmax"),
    ], name="digits_model")


def create_medical_model(input_shape: Sequence[int] = (8, 8, 1), num_classes: int = 10,
                         filters: int = 32) -> tf.keras.Model:
    """Slide 9's convolutional classifier (Conv2D 3x3, max-pool, dense softmax), sized by
    default for the 8x8 digits images instead of the slide's 64x64x3 random noise."""
    shape = _image_shape(input_shape)
    num_classes = check_int("num_classes", num_classes, minimum=2)
    filters = check_int("filters", filters, minimum=1)
    height, width, channels = shape
    _check_size("input_shape, num_classes and filters",
                (9 * channels + 1) * filters
                + ((height - 2) // 2 * ((width - 2) // 2) * filters + 1) * num_classes)
    return tf.keras.Sequential([
        tf.keras.Input(shape=shape),
        layers.Conv2D(filters, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(num_classes, activation="softmax"),
    ], name="medical_model")


def _check_size(arguments: str, num_weights: int) -> None:
    if num_weights > MAX_WEIGHTS:
        raise ValueError(f"{arguments} make a model of {num_weights:,} weights, more than "
                         f"{MAX_WEIGHTS:,} (the course's models have at most a few hundred "
                         "thousand): check the sizes")


def _image_shape(input_shape: Any) -> tuple[int, int, int]:
    """(height, width, channels) as ints: height and width >= 4 (a 3x3 convolution, then 2x2
    pooling), channels >= 1."""
    wanted = ("input_shape must be (height, width, channels) with height and width >= 4 and "
              f"channels >= 1, got {input_shape!r}")
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(wanted) from None
    if len(shape) != 3:
        raise ValueError(wanted)
    for i, (size, low) in enumerate(zip(shape, (4, 4, 1))):
        check_int(f"input_shape[{i}]", size, minimum=low)
    return tuple(int(s) for s in shape)


def create_tabular_model(num_features: int = 30, hidden_units: int = 16) -> tf.keras.Model:
    """A small binary classifier for tabular records such as the breast-cancer features."""
    return create_keras_model(num_features=num_features, hidden_units=hidden_units)


def create_keyboard_model(vocab_size: int = 2000, sequence_length: int = 5,
                          embedding_dim: int = 32, lstm_units: int = 64) -> tf.keras.Model:
    """Slide 10's next-word model (embedding, LSTM, softmax over the vocabulary), sized for a
    laptop CPU. The input is `sequence_length` word ids; the output, the next word's
    probabilities. Keras 3 dropped `input_length`; the Input layer carries the length instead."""
    vocab_size = check_int("vocab_size", vocab_size, minimum=2)
    sequence_length = check_int("sequence_length", sequence_length, minimum=1)
    embedding_dim = check_int("embedding_dim", embedding_dim, minimum=1)
    lstm_units = check_int("lstm_units", lstm_units, minimum=1)
    _check_size("vocab_size, embedding_dim and lstm_units",
                vocab_size * embedding_dim + 4 * lstm_units * (embedding_dim + lstm_units + 1)
                + (lstm_units + 1) * vocab_size)
    return tf.keras.Sequential([
        tf.keras.Input(shape=(sequence_length,), dtype="int32"),
        layers.Embedding(vocab_size, embedding_dim),
        layers.LSTM(lstm_units, unroll=sequence_length <= 20),
        layers.Dense(vocab_size, activation="softmax"),
    ], name="keyboard_model")


def create_transfer_model(base: tf.keras.Model, num_classes: int = 10,
                          hidden_units: Optional[int] = None) -> tf.keras.Model:
    """Slide 13's transfer learning: a frozen, pretrained `base` that maps inputs to features,
    with a new trainable head. Only the head's weights are trained (and sent in FL)."""
    if not isinstance(base, tf.keras.Model):
        raise TypeError(f"base must be a Keras model, got {type(base).__name__}")
    num_classes = check_int("num_classes", num_classes, minimum=2)
    if hidden_units is not None:
        hidden_units = check_int("hidden_units", hidden_units, minimum=1)
    base.trainable = False
    inputs = tf.keras.Input(shape=base.input_shape[1:])
    x = base(inputs, training=False)
    if len(x.shape) > 2:
        x = layers.Flatten()(x)
    if hidden_units is not None:
        x = layers.Dense(hidden_units, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return tf.keras.Model(inputs, outputs, name="transfer_model")


def loss_for(model: tf.keras.Model) -> tf.keras.losses.Loss:
    """The loss that matches a model's output: binary cross-entropy for one sigmoid unit,
    sparse categorical cross-entropy (integer labels) for a softmax over classes."""
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"model must be a Keras model, got {type(model).__name__}")
    return keras_loss(model)


def accuracy_metric(model: tf.keras.Model) -> tf.keras.metrics.Metric:
    """The accuracy metric that matches `loss_for(model)`."""
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"model must be a Keras model, got {type(model).__name__}")
    return keras_accuracy(model)
