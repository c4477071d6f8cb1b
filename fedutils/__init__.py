"""fedutils: the tested helpers behind the course "Federated Learning with Python".

One module per idea, each imported on its own so that `import fedutils` stays instant:

- fedutils.data         the course's data sets (all offline) and per-client tf.data datasets
- fedutils.partition    IID, shard and Dirichlet splits of a data set across clients
- fedutils.models       the Keras models of the slides, runnable on Keras 2 and Keras 3
- fedutils.fedavg       client update, server aggregation, the FedAvg loop
- fedutils.privacy      clipping, Gaussian noise, DP-FedAvg, epsilon accounting, secure sums
- fedutils.compression  top-k / random-k sparsification, quantization, error feedback, bytes
- fedutils.evaluation   federated evaluation with per-client and aggregate metrics
- fedutils.tff_bridge   the same model and data run through TensorFlow Federated, when present
- fedutils.federation   the same model and client training as a real Flower federation of
                        processes on this machine (lesson 15; current-TF environment only)
- fedutils.interactive  sliders in live notebooks, a one-line note in headless runs
- fedutils.capstone     the final exercise's fixed data split and its automatic checker
- fedutils.workers      stops the helper process TFF leaves behind
- fedutils.check        `python -m fedutils.check`: is this environment ready for the course?
"""
from __future__ import annotations

import contextlib
import os
import random
import sys

# Keep TensorFlow's C++ start-up log lines out of notebook outputs. This only works if it is set
# before TensorFlow is first imported, which is why lessons import fedutils first.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# oneDNN's fused CPU kernels can round differently on different processors; without them the
# lessons print the same numbers on every x86-64 machine (and TensorFlow prints one line less).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "1.0.0"


def set_seed(seed: int = 0) -> None:
    """Seed Python, NumPy and TensorFlow (and so Keras weight initializers) in one call.

    Lessons call this in their setup cell so every number and plot is the same on every run.
    """
    from fedutils._validate import check_int

    check_int("seed", seed, minimum=0)
    import numpy as np
    import tensorflow as tf

    random.seed(seed)
    np.random.seed(seed)
    tf.keras.utils.set_random_seed(seed)


@contextlib.contextmanager
def quiet_native_logs():
    """Send file descriptor 2 to /dev/null for the duration of the block.

    TensorFlow 2.16+ writes CUDA-probing notices from C++ before its log settings take effect,
    so TF_CPP_MIN_LOG_LEVEL cannot hide them; importing TensorFlow inside this block does.
    Python exceptions still propagate normally.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)
