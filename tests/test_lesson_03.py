"""Lesson 03 (the TFF environment): the code the lesson writes in the open does what it says.

The lesson's own cells are read from the notebook and executed here on small data: its TFF
loop (`make_model_fn`, `build_process`, `tff_fedavg_loop`) must train the same model as
`fedutils.fedavg.run_fedavg`, and its `unmet_requirements` must find exactly the unmet pins.
"""
import time
from importlib import metadata
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pytest
import tensorflow as tf
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import fedutils
from fedutils import data, fedavg, models, tff_bridge

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "03_tff_environment.ipynb"
needs_tff = pytest.mark.skipif(
    not tff_bridge.tff_available(),
    reason="TensorFlow Federated is not installed (it needs Python < 3.12 and TensorFlow 2.14)")


cell = partial(lesson_code.cell_source, NOTEBOOK, unique=True)


def run_cells(namespace: dict, *markers: str) -> dict:
    for marker in markers:
        exec(cell(marker), namespace)
    return namespace


@needs_tff
def test_lesson_tff_loop_trains_the_same_model_as_run_fedavg():
    tff = tff_bridge.import_tff()
    ns = run_cells({"tff": tff, "tf": tf, "np": np, "time": time, "models": models,
                    "fedavg": fedavg, "CLIENT_LR": 0.1, "SERVER_LR": 1.0},
                   "def make_model_fn(", "def tff_fedavg_loop(")
    x, y = data.load_digits()
    order = np.random.default_rng(1).permutation(len(y))
    parts = [order[:13], order[13:60], order[60:90]]  # unequal clients, partial last batches
    datasets = data.make_client_datasets(x, y, parts, batch_size=20, seed=0)
    x_test, y_test = x[order[100:300]], y[order[100:300]]
    fedutils.set_seed(0)
    initial = models.create_digits_model().get_weights()

    process = ns["build_process"](datasets[0].element_spec)
    state, records, first_metrics = ns["tff_fedavg_loop"](process, datasets, initial, 2,
                                                          x_test, y_test)
    ours = fedavg.run_fedavg(models.create_digits_model, datasets, rounds=2, client_lr=0.1,
                             initial_weights=initial,
                             eval_data=(x_test, y_test), progress=False)
    theirs = list(process.get_model_weights(state).trainable)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(theirs, ours.final_weights))
    print(f"lesson 03 TFF loop vs run_fedavg, 2 rounds: max weight difference {diff:.1e}")
    assert diff < 1e-5
    assert [r["num_examples"] for r in records] == ours["num_examples"] == [90, 90]
    np.testing.assert_allclose([r["train_loss"] for r in records], ours["train_loss"],
                               atol=1e-5)
    np.testing.assert_allclose([r["accuracy"] for r in records], ours["accuracy"], atol=1e-9)
    assert set(first_metrics) >= {"client_work", "aggregator", "finalizer"}
    assert records[1]["train_loss"] < records[0]["train_loss"]


def test_unmet_requirements_finds_missing_and_mismatched_pins():
    ns = run_cells({"metadata": metadata, "Requirement": Requirement,
                    "canonicalize_name": canonicalize_name}, "def installed_version(")
    exec(cell("def unmet_requirements("), ns)
    fake = SimpleNamespace(
        requires=lambda name: ["numpy==0.0.1", "surely-not-an-installed-package>=1",
                               "pywin32; sys_platform == 'win32' and sys_platform == 'linux'",
                               "pytest[testing]; extra == 'dev'", "tensorflow>=2"],
        version=metadata.version, PackageNotFoundError=metadata.PackageNotFoundError)
    ns["metadata"] = fake
    assert ns["unmet_requirements"]("anything") == {
        "numpy": ("==0.0.1", np.__version__), "surely-not-an-installed-package": (">=1", None)}
    ns["metadata"] = metadata
    assert ns["unmet_requirements"]("nbformat") == {}
    if ns["installed_version"]("tensorflow-federated"):
        unmet = ns["unmet_requirements"]("tensorflow-federated")
        assert set(unmet) == {"jax", "jaxlib", "typing-extensions"}, unmet


def test_migration_table_names_every_replacement():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for current in ["tff.learning.algorithms.build_weighted_fed_avg",
                    "tff.learning.models.from_keras_model",
                    "tff.learning.optimizers.build_sgdm(learning_rate=",
                    "LearningProcessOutput", "tff.learning.algorithms.build_fed_eval",
                    "--no-deps", "jaxlib==0.4.14"]:
        assert current in text, current
