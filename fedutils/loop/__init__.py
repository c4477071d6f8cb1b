"""Layer 2, the federated loop: client work, aggregators, server optimizers, history, evaluation. Imports only core."""
