"""fedutils: the tested helpers behind the course "Federated Learning with Python".

The public API (what lessons import) is a set of small facade modules, each re-exporting one
idea from fedutils' layers; `import fedutils` itself stays instant:

- fedutils.data               data sets (all offline), ClientData, the standard digits setting
- fedutils.partition          IID, shard and Dirichlet splits of a data set across clients
- fedutils.models             the Keras models of the slides, runnable on Keras 2 and Keras 3
- fedutils.fedavg             client update, aggregation, the round loop (`run_fedavg`)
- fedutils.server_optimizers  SGD (momentum), Adam, Yogi, Adagrad on the server, as TFF's
- fedutils.evaluation         federated evaluation with per-client and aggregate metrics
- fedutils.privacy            clipping, noise, DP-FedAvg, DP-SGD, epsilon, secure sums
- fedutils.compression        top-k / random-k, quantization, error feedback, bytes
- fedutils.robust             median, trimmed mean, Krum, norm bounding
- fedutils.attacks            gradient inversion, poisoning, backdoors (lesson 17)
- fedutils.personalization    local fine-tuning, FedPer, FedRep, Ditto (lesson 13)
- fedutils.lora               a pretrained character Transformer and LoRA fine-tuning (lesson 18)
- fedutils.tff_bridge         the same model and data through TensorFlow Federated, if present

The layers, imports only downward (docs/architecture.md): core → loop → techniques → bridges
(tff, tff_workers, flower) → course (check, interactive, capstone).
"""
from __future__ import annotations

import contextlib
import importlib.abc
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
    from fedutils.core.checks import check_int

    check_int("seed", seed, minimum=0, maximum=2**32 - 1)
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


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Loads TensorFlow inside `quiet_native_logs` the first time anything imports it.

    TensorFlow 2.16+ on a machine without a GPU (Colab's CPU runtime, a laptop) writes "Could not
    find cuda drivers on your machine" twice from C++ while it loads, before any log setting
    applies, and a notebook shows those lines under the cell. Lessons import fedutils first, so
    whichever import then loads TensorFlow (the lesson's or a fedutils module's) loads it quietly.
    Only that one module's loading is silenced, once; Python warnings and errors still show.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        load = getattr(spec.loader, "exec_module", None)
        if load is not None:
            def exec_module(module):
                with quiet_native_logs():
                    load(module)
            spec.loader.exec_module = exec_module
        return spec


if "tensorflow" not in sys.modules and not any(
        type(f).__name__ == _QuietTensorFlowImport.__name__ for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlowImport())
