"""The Keras models of the slides, runnable on Keras 2 and Keras 3.

A facade: the public names of the course's API, re-exported from fedutils' layers
(docs/architecture.md)."""
from fedutils.core.losses import per_example_loss, predicted_labels  # noqa: F401
from fedutils.core.models import (accuracy_metric, create_digits_model,  # noqa: F401
                                  create_keras_model, create_keyboard_model, create_medical_model,
                                  create_tabular_model, create_transfer_model, loss_for)
