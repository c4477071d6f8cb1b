"""Lesson 02 builds client datasets by hand and counts bytes; these tests run the lesson's own
cells (found by their name tags) and hold them to fedutils."""
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import lesson_code

NOTEBOOK = Path(__file__).resolve().parent.parent / "lessons" / "02_core_principles.ipynb"

run_cells = partial(lesson_code.run_cells, NOTEBOOK)


def test_slide_dataset_is_one_element_that_cannot_be_indexed_by_x():
    ns = run_cells("slide-client-dataset")
    tf = ns["tf"]
    for client_data in (ns["client_data_1"], ns["client_data_2"]):
        assert int(tf.data.Dataset.from_tensor_slices(client_data).cardinality()) == 1
        batch = next(iter(ns["create_tf_dataset_for_client"](client_data)))
        assert isinstance(batch, tuple) and len(batch) == 2
        assert batch[0]["x"].dtype == tf.int32
        with pytest.raises(TypeError, match="tuple indices must be integers"):
            batch["x"]


@pytest.mark.parametrize("split, batch_size", [("iid", 7), ("shard", 16), ("dirichlet", 5)])
def test_datasets_by_hand_agree_with_make_client_datasets(digits_split, split, batch_size):
    from fedutils import data, partition

    x, _, y, _ = digits_split
    x, y = x[:300], y[:300]
    parts = {"iid": lambda: partition.iid_partition(y, 4, seed=1),
             "shard": lambda: partition.shard_partition(y, 5, seed=2),
             "dirichlet": lambda: partition.dirichlet_partition(y, 3, alpha=0.3, seed=3)}[split]()
    ns = run_cells("datasets-by-hand", x=x, y=y, parts=parts, BATCH_SIZE=batch_size)
    by_hand = ns["make_datasets_by_hand"](x, y, parts, batch_size, seed=4)
    ns = run_cells("same-datasets", x=x, y=y, parts=parts, BATCH_SIZE=batch_size,
                   by_hand=by_hand)
    packaged = data.make_client_datasets(x, y, parts, batch_size=batch_size, seed=4)
    assert ns["same_datasets"](by_hand, packaged)
    for ds_a, ds_b in zip(by_hand, packaged):  # independently of the lesson's comparison
        for p, q in zip(ds_a, ds_b):
            np.testing.assert_array_equal(p["x"], q["x"])
            np.testing.assert_array_equal(p["y"], q["y"])
    other_seed = data.make_client_datasets(x, y, parts, batch_size=batch_size, seed=5)
    assert not ns["same_datasets"](by_hand, other_seed), "the comparison must be able to fail"


def test_bytes_both_ways_and_kept(digits_split):
    """The lesson's byte counts: the model down equals the weights up, and both equal what
    run_fedavg records per participating client and round."""
    from fedutils import data, fedavg, models, partition

    x, y = data.load_iris_binary()
    parts = partition.iid_partition(y, 3, seed=0)
    packaged = data.make_client_datasets(x, y, parts, batch_size=20, seed=0)
    ns = run_cells("bytes-both-ways", x=x, y=y, parts=parts, packaged=packaged)
    digits_model = models.create_digits_model()
    assert ns["weight_bytes"](digits_model.get_weights()) == 4 * digits_model.count_params()
    assert ns["weight_bytes"](ns["received"]) == ns["weight_bytes"](ns["result"].weights) == 4 * 61
    assert ns["kept"] == len(parts[0]) * (4 * 4 + 4)
    assert ns["result"].num_examples == len(parts[0])
    history = fedavg.run_fedavg(models.create_keras_model, packaged, rounds=2, progress=False)
    assert history["download_bytes"] == history["upload_bytes"] == [3 * 4 * 61] * 2


def exercise_3_names(budget):
    from fedutils import data, models

    x_digits, y_digits = data.load_digits()
    ns = run_cells("exercise-3-setup", x_digits=x_digits, y_digits=y_digits,
                   model_bytes=4 * models.create_digits_model().count_params())
    ns["BUDGET"] = budget  # a smaller budget: fewer rounds, same decision to make
    return ns


def test_byte_budget_check_accepts_the_solution_and_rejects_wrong_answers():
    names = exercise_3_names(150_000)  # 3 participations per phone
    names = {k: v for k, v in names.items() if not k.startswith("__")}
    solved = run_cells("exercise-3-solution", "exercise-3-check", **names)
    assert solved["plan_rounds"] == {"A": 3, "B": 12}
    assert solved["most_traffic"] == 3 * 2 * 4 * 4810  # every phone in every round of A
    answer = {k: solved[k] for k in ("plan_rounds", "plan_accuracy", "most_traffic", "choice")}
    wrong_choice = {"A": "B", "B": "A"}[solved["choice"]]
    for wrong in ({"choice": wrong_choice},
                  {"plan_rounds": {"A": 3, "B": 3}},  # forgot that B's phones sit out rounds
                  {"most_traffic": 2 * 150_000}):
        with pytest.raises(AssertionError):
            run_cells("exercise-3-check", **{**names, **answer, **wrong})
