import warnings

import numpy as np
import pytest
import tensorflow as tf

from fedutils import models


@pytest.mark.parametrize("build, input_shape, outputs", [
    (models.create_keras_model, (4,), 1),
    (models.create_digits_model, (64,), 10),
    (lambda: models.create_medical_model((8, 8, 1)), (8, 8, 1), 10),
    (models.create_tabular_model, (30,), 1),
    (lambda: models.create_keyboard_model(50, 5, 8, 8), (5,), 50),
])
def test_models_build_without_warnings_and_predict(build, input_shape, outputs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Keras 2.14 itself calls random.randint(1, 1e9) once a seed is set, which Python
        # deprecates; users never see DeprecationWarnings raised inside libraries.
        warnings.simplefilter("ignore", DeprecationWarning)
        model = build()
    dtype = "int32" if outputs == 50 else "float32"
    x = np.ones((3,) + input_shape, dtype=dtype)
    probabilities = model(x).numpy()
    assert probabilities.shape == (3, outputs)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_slide1_model_has_the_slide_shape():
    model = models.create_keras_model()
    assert [w.shape for w in model.get_weights()] == [(4, 10), (10,), (10, 1), (1,)]


def test_digits_model_is_64_64_10():
    assert models.create_digits_model().count_params() == 64 * 64 + 64 + 64 * 10 + 10


def test_transfer_model_freezes_the_base():
    base = tf.keras.Sequential([tf.keras.Input((64,)), tf.keras.layers.Dense(16)])
    model = models.create_transfer_model(base, num_classes=5)
    assert len(model.trainable_weights) == 2  # the new head only
    assert model(np.zeros((2, 64), "float32")).shape == (2, 5)
    with pytest.raises(TypeError, match="base"):
        models.create_transfer_model("mobilenet")


def test_loss_matches_output():
    assert isinstance(models.loss_for(models.create_keras_model()),
                      tf.keras.losses.BinaryCrossentropy)
    assert isinstance(models.loss_for(models.create_digits_model()),
                      tf.keras.losses.SparseCategoricalCrossentropy)


@pytest.mark.parametrize("call, error, match", [
    (lambda: models.create_keras_model(num_features=0), ValueError, "num_features"),
    (lambda: models.create_digits_model(num_classes=1), ValueError, "num_classes"),
    (lambda: models.create_medical_model((8, 8)), ValueError, "input_shape"),
    (lambda: models.create_keyboard_model(vocab_size=1.5), TypeError, "vocab_size"),
    (lambda: models.loss_for("model"), TypeError, "model"),
])
def test_bad_model_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
