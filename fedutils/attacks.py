"""Attacks on federated learning (lesson 17): gradient inversion, poisoning, backdoors.

A facade: the public names of the course's API, re-exported from fedutils' layers
(docs/architecture.md)."""
from fedutils.techniques.attacks import (MaliciousClients, Reconstruction,  # noqa: F401
                                         WatchGlobalModel, add_trigger, backdoor_examples,
                                         backdoor_success, batch_gradient, flip_labels,
                                         infer_labels, invert_gradient, poison_clients,
                                         reconstruction_error, scale_update, sign_flip)
