"""Layer 1, core: data, client data, partitions, models, and the loss/prediction rule. Imports nothing else of fedutils."""
