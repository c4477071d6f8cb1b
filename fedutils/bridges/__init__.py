"""Layer 4, bridges to other frameworks: TensorFlow Federated (tff, and tff_workers, which stops the helper process TFF leaves behind) and Flower (flower/). Imports the layers below."""
