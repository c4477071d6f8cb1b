"""Lesson 09 builds its hospitals, its evaluation and the slide's missing FedAvg round in the
open; these tests run the lesson's own cells (found by a marker they contain) on small data and
hold them to fedutils and scikit-learn."""
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "09_healthcare.ipynb"


lesson_cell = partial(lesson_code.cell_source, NOTEBOOK)
run_cells = partial(lesson_code.run_cells, NOTEBOOK)


@pytest.fixture(scope="module")
def hospitals():
    """The lesson's hospitals (split and train/test cells), run on the real data."""
    return run_cells("def split_hospitals(", "def hospital_data(")


def test_hospitals_follow_the_plan_and_share_no_patient(hospitals):
    y, plan = hospitals["y"], hospitals["HOSPITALS"]
    for seed in (0, 1, 2):
        split = hospitals["split_hospitals"](y, plan, seed=seed)
        assert list(split) == list(plan)
        everything = np.concatenate(list(split.values()))
        assert len(np.unique(everything)) == len(everything), "no patient in two hospitals"
        for name, (malignant, benign) in plan.items():
            assert y[split[name]].sum() == malignant
            assert (y[split[name]] == 0).sum() == benign
    first = hospitals["split_hospitals"](y, plan, seed=0)
    again = hospitals["split_hospitals"](y, plan, seed=0)
    other = hospitals["split_hospitals"](y, plan, seed=1)
    assert all(np.array_equal(first[name], again[name]) for name in plan), "same seed, same split"
    assert not np.array_equal(first["Rural clinic"], other["Rural clinic"])


def test_split_refuses_a_plan_larger_than_the_data(hospitals):
    with pytest.raises(ValueError, match="more patients"):
        hospitals["split_hospitals"](np.array([0, 1, 1, 0]), {"a": (3, 0)})


def test_each_hospital_keeps_its_own_stratified_test_set(hospitals):
    train, test = hospitals["hospital_data"](seed=3)
    for name, (malignant, benign) in hospitals["HOSPITALS"].items():
        (x_tr, y_tr), (x_te, y_te) = train[name], test[name]
        assert len(y_tr) + len(y_te) == malignant + benign
        assert y_tr.sum() + y_te.sum() == malignant
        assert y_te.sum() == round(0.3 * malignant)
        rows = {row.tobytes() for row in x_tr}
        assert not any(row.tobytes() in rows for row in x_te), "a test patient is in training"


def test_counts_agree_with_scikit_learn(hospitals):
    from sklearn.metrics import accuracy_score, recall_score

    from fedutils import models

    ns = run_cells("def test_counts(", eval_model=models.create_tabular_model(),
                   weights={}, test={}, HOSPITALS={})
    x, y = hospitals["x"][:120], hospitals["y"][:120]
    weights = models.create_tabular_model().get_weights()
    for threshold in (0.3, 0.5, 0.7):
        counts = ns["test_counts"](weights, x, y, threshold)
        accuracy, recall = ns["accuracy_and_recall"](counts)
        ns["eval_model"].set_weights(weights)
        predicted = (ns["eval_model"](x).numpy()[:, 0] > threshold).astype(int)
        assert accuracy == pytest.approx(accuracy_score(y, predicted))
        assert recall == pytest.approx(recall_score(y, predicted))
        assert counts[0] == len(y) and counts[2] == y.sum()


def test_single_client_training_is_plain_sgd(hospitals):
    from fedutils import data, fedavg, models

    x, y = hospitals["x"], hospitals["y"]
    small = {"A": (x[:40], y[:40]), "B": (x[40:70], y[40:70])}
    ns = run_cells("def train_clients(", train=small, data=data, fedavg=fedavg, models=models)
    ns["ROUNDS"] = 4
    by_lesson = ns["train_clients"]([small["A"]])
    model = models.create_tabular_model()
    model.set_weights(ns["initial_weights"])
    dataset = data.make_client_datasets(*small["A"], [np.arange(40)], batch_size=ns["BATCH"],
                                        seed=0)[0]
    by_sgd = fedavg.client_update(model, dataset, epochs=4, learning_rate=ns["LR"]).weights
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(by_lesson, by_sgd)) < 1e-5
    three = ns["train_three_ways"](small)
    assert set(three) == {"local only", "federated", "pooled"}
    assert set(three["local only"]) == {"A", "B"}


def test_federated_round_agrees_with_run_fedavg():
    from fedutils import data, models, partition

    x, y = data.load_digits(images=True)
    parts = partition.dirichlet_partition(y[:300], 3, alpha=0.5, seed=1)
    datasets = data.make_client_datasets(x[:300], y[:300], parts, batch_size=16, seed=2)
    ns = run_cells("def federated_round(", image_model=models.create_medical_model(),
                   image_datasets=datasets)
    assert ns["difference"] < 1e-5
    # A round is the example-weighted mean of the hospitals' updates: check it by hand too.
    from fedutils import fedavg

    start = ns["image_start"]
    locals_, counts = [], []
    for ds in datasets:
        ns["image_model"].set_weights(start)
        result = fedavg.client_update(ns["image_model"], ds, epochs=1,
                                      learning_rate=ns["IMAGE_LR"])
        locals_.append(result.weights)
        counts.append(result.num_examples)
    assert counts == [len(p) for p in parts]
    share = np.array(counts) / sum(counts)
    by_formula = [sum(s * w[i] for s, w in zip(share, locals_)) for i in range(len(start))]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(ns["by_hand"], by_formula)) < 1e-6
