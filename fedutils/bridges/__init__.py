"""Layer 4, bridges to other frameworks: TensorFlow Federated (tff) and Flower (flower/). Imports the layers below."""
