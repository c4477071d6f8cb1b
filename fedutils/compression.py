"""Sparsification, quantization and error feedback of client updates; bytes sent.

A facade: the public names of the course's API, re-exported from fedutils' layers
(docs/architecture.md)."""
from fedutils.techniques.compression import (CompressionAggregator, ErrorFeedback,  # noqa: F401
                                             Quantized, dequantize, index_bytes, num_kept,
                                             payload_bytes, quantize, random_k_sparsify,
                                             top_k_sparsify)
