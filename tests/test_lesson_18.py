"""Lesson 18 (federated fine-tuning with LoRA): the lesson's own cells against fedutils.

The lesson builds a LoRA projection in the open, an aggregator that records update norms and
its own per-client evaluation; these must equal fedutils' LoRADense, merge_kernel,
server_aggregate and next_char_metrics. Its adapter sizes must be what the LoRA models train.
The exercise checks must accept the solutions and reject the classic wrong answers: a clip norm
outside every recorded update norm, and freezing B. The federated runs themselves are covered
by tests/test_lora.py and by nbval.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

import lesson_code

NOTEBOOK = (Path(__file__).resolve().parent.parent / "lessons"
            / "18_federated_fine_tuning_with_lora.ipynb")


run = partial(lesson_code.exec_cells, NOTEBOOK)  # run(namespace, *tags): no setup cell


@pytest.fixture(scope="module")
def lesson() -> dict:
    """Setup, the pretrained model, the clients and the in-the-open LoRA cell."""
    return lesson_code.run_cells(NOTEBOOK, "pretrained-model", "tragedy-clients",
                                 "lora-projection")


def test_lora_projection_equals_fedutils_layer_and_formula(lesson):
    lora, np_rng = lesson["lora"], np.random.default_rng(1)
    layer = lora.LoRADense(6, rank=3, alpha=5.0)
    layer.build((None, 4))
    values = [np_rng.normal(size=s).astype(np.float32) for s in ((4, 6), (6,), (3, 4), (6, 3))]
    for var, value in zip((layer.kernel, layer.bias, layer.lora_a, layer.lora_b), values):
        var.assign(value)
    x = np_rng.normal(size=(7, 4)).astype(np.float32)
    ours = lesson["lora_projection"](x, *values, 5.0)
    np.testing.assert_allclose(ours, layer(x).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, lora.lora_forward(x, *values, 5.0), rtol=1e-6)
    merged = lora.merge_kernel(values[0], values[2], values[3], 5.0)
    np.testing.assert_allclose(ours, x @ merged + values[1], rtol=1e-5, atol=1e-5)


def test_the_lesson_resets_the_adapter_it_perturbed(lesson):
    ns = run(dict(lesson), "keras-enable-lora")
    layer = ns["lora_model"].get_layer("block0_q")
    assert not layer.lora_b.numpy().any(), "B must be zero again before fine-tuning"


def test_adapter_sizes_are_what_lora_models_train(lesson):
    ns = run(dict(lesson), "adapter-size")
    lora, config, base = ns["lora"], ns["config"], ns["base"]
    for rank, targets in ((1, ("q", "v")), (2, ("up", "down", "o"))):
        model = lora.create_lora_transformer(config, base, rank, targets=targets)
        assert ns["adapter_size"](rank, targets) == lora.num_parameters(model, trainable_only=True)


def test_clients_are_one_role_per_tragedy_with_disjoint_splits(lesson):
    lora, genres = lesson["lora"], lesson["genres"]
    plays = [lora.play_of(c, genres) for c in lesson["CLIENTS"]]
    assert sorted(plays) == sorted(p for p, g in genres.items() if g == "tragedies")
    for cid in lesson["CLIENTS"]:
        parts = lora.split_lines(lesson["tragedies"][cid], 0.2, 0.2)
        assert "".join(parts).replace("\n", "") == lesson["tragedies"][cid].replace("\n", "")
    assert all(len(x) == len(y) for x, y in lesson["TRAIN"])


def test_recording_mean_is_fedavg_and_records_norms(lesson):
    ns = run(dict(lesson), "recording-mean")
    fedavg_privacy = ns["privacy"]
    rng = np.random.default_rng(0)
    updates = [[rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)]
               for _ in range(3)]
    out = ns["recording_mean"](updates, np.array([1, 2, 5]), [0, 1, 2], rng)
    for got, want in zip(out.delta, ns["server_aggregate"](updates, [1, 2, 5])):
        np.testing.assert_allclose(got, want)
    assert out.measurements["update_norms"] == pytest.approx(
        [fedavg_privacy.update_norm(u) for u in updates])
    assert out.measurements["upload_bytes"] == 3 * (6 + 2) * 4


def test_evaluate_is_next_char_metrics_per_client(lesson):
    ns = run(dict(lesson), "evaluate-per-client")
    lora, model, base = ns["lora"], ns["model"], ns["base"]
    for row, (x, y, new) in zip(ns["pretrained_val"], ns["VALIDATION"]):
        lora.set_named_weights(model, base)
        assert row[:2] == pytest.approx(lora.next_char_metrics(model, x, y), abs=1e-6)
        assert row[2] == pytest.approx(lora.next_char_metrics(model, x, y, new)[1], abs=1e-6)
    # One set of weights per client: each client is scored with its own.
    shifted = dict(base, **{"head/1": base["head/1"] + np.linspace(-1, 1, base["head/1"].size)})
    personal = ns["evaluate"]([base, shifted] * 3, ns["VALIDATION"])
    np.testing.assert_allclose(personal[0::2], ns["pretrained_val"][0::2], atol=1e-6)
    assert not np.allclose(personal[1::2, 0], ns["pretrained_val"][1::2, 0])


class FakeHistory(dict):
    """What the exercise reads from a History: per-round lists by key."""


def exercise_1_namespace(lesson) -> dict:
    """The names exercise 1 reads, with recorded norms and runs faked (no training)."""
    ns = run(dict(lesson), "adapter-size")
    ns["RANK"], ns["ROUNDS"], ns["LR"] = 8, 5, {8: 3e-3}
    norms = [[0.2, 0.4, 0.5], [0.3, 0.6, 0.7]]
    ns["histories"] = {"LoRA r=8": [FakeHistory(update_norms=norms)]}
    ns["reference"] = np.zeros((len(ns["CLIENTS"]), 3))
    ns["fine_tune"] = lambda *args, **kwargs: (
        FakeHistory(clipped_fraction=[0.5] * 5, noise_stddev=[0.1] * 5), None)
    ns["evaluate"] = lambda weights, split: np.zeros((len(ns["CLIENTS"]), 3))
    return ns


def test_exercise_1_check_accepts_the_solution_and_rejects_a_clip_norm_outside(lesson):
    ns = exercise_1_namespace(lesson)
    run(ns, "exercise-1-solution")
    assert 0.2 <= ns["clip_norm"] <= 0.7
    run(ns, "exercise-1-check")                             # its check passes
    for wrong in (10.0, 0.01):                              # clips nothing, or everything
        ns["clip_norm"] = wrong
        with pytest.raises(AssertionError, match="inside the recorded norms"):
            run(ns, "exercise-1-check")


def test_exercise_1_check_asks_for_the_solution_first(lesson):
    ns = exercise_1_namespace(lesson)
    with pytest.raises(AssertionError, match="run your solution first"):
        run(ns, "exercise-1-check")


def test_exercise_2_check_accepts_the_solution_and_rejects_freezing_b(lesson):
    ns = run(dict(lesson), "exercise-2-solution")
    assert ns["grad_norm_a"] == 0.0 < ns["grad_norm_b"]
    run(ns, "exercise-2-check")
    ns["freeze"] = "B"
    with pytest.raises(AssertionError, match="nothing would learn"):
        run(ns, "exercise-2-check")
