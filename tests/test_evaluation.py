"""fedutils.evaluation: federated evaluation against hand computations."""
import time

import matplotlib
import numpy as np
import pytest
import tensorflow as tf

from fedutils import data, models, partition
from fedutils.evaluation import FederatedEvaluation, federated_evaluate

matplotlib.use("Agg")


def _datasets(xs, ys, batch_size=3):
    return [tf.data.Dataset.from_tensor_slices({"x": x.astype(np.float32),
                                                "y": y.astype(np.int32)}).batch(batch_size)
            for x, y in zip(xs, ys)]


def _sigmoid_model():
    return tf.keras.Sequential([tf.keras.Input(shape=(1,)),
                                tf.keras.layers.Dense(1, activation="sigmoid")])


# Two clients of unequal size: 2 examples (both right) and 6 (2 right, 4 wrong).
XS = [np.array([[2.0], [-1.0]]), np.array([[1.0], [3.0], [-2.0], [0.5], [-0.5], [4.0]])]
YS = [np.array([1, 0]), np.array([1, 0, 1, 1, 1, 0])]


def _hand(x, y, w=1.0, b=0.0):
    """Binary cross-entropy per example and correctness of p > 0.5, for p = sigmoid(w x + b)."""
    p = 1.0 / (1.0 + np.exp(-(w * x[:, 0] + b)))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p)), ((p > 0.5) == y)


def test_sigmoid_model_matches_hand_computation():
    model = _sigmoid_model()
    weights = [np.array([[1.0]], np.float32), np.array([0.0], np.float32)]
    result = federated_evaluate(model, _datasets(XS, YS), weights=weights)
    hand = [_hand(x, y) for x, y in zip(XS, YS)]
    for i, (loss, correct) in enumerate(hand):
        assert result.per_client[i]["client"] == i
        assert result.per_client[i]["num_examples"] == len(YS[i])
        assert result.per_client[i]["loss"] == pytest.approx(loss.mean(), rel=1e-5)
        assert result.per_client[i]["accuracy"] == pytest.approx(correct.mean())
    np.testing.assert_allclose(result.accuracies, [1.0, 2 / 6])
    # Weighted: pooled over the 8 examples. Unweighted: mean of the two client numbers.
    all_loss = np.concatenate([h[0] for h in hand])
    assert result.weighted["accuracy"] == pytest.approx(4 / 8)
    assert result.weighted["loss"] == pytest.approx(all_loss.mean(), rel=1e-5)
    assert result.unweighted["accuracy"] == pytest.approx((1.0 + 2 / 6) / 2)
    assert result.unweighted["loss"] == pytest.approx(
        (hand[0][0].mean() + hand[1][0].mean()) / 2, rel=1e-5)
    assert result.weighted["accuracy"] != pytest.approx(result.unweighted["accuracy"])


def test_zero_weights_give_ln2_and_strict_threshold():
    # p = 0.5 everywhere: loss ln 2, and "p > 0.5" predicts 0, so accuracy = share of label 0.
    model = _sigmoid_model()
    result = federated_evaluate(model, _datasets(XS, YS),
                                weights=[np.zeros((1, 1), np.float32), np.zeros(1, np.float32)])
    assert result.weighted["loss"] == pytest.approx(np.log(2), rel=1e-5)
    assert [c["accuracy"] for c in result.per_client] == pytest.approx([1 / 2, 2 / 6])
    assert result.weighted["accuracy"] == pytest.approx(3 / 8)


def test_softmax_model_matches_numpy():
    rng = np.random.default_rng(0)
    model = tf.keras.Sequential([tf.keras.Input(shape=(4,)),
                                 tf.keras.layers.Dense(3, activation="softmax")])
    weights = [rng.normal(size=(4, 3)).astype(np.float32),
               rng.normal(size=3).astype(np.float32)]
    xs = [rng.normal(size=(n, 4)) for n in (5, 11, 2)]
    ys = [rng.integers(0, 3, size=n) for n in (5, 11, 2)]
    result = federated_evaluate(model, _datasets(xs, ys, batch_size=4), weights)
    for i, (x, y) in enumerate(zip(xs, ys)):
        logits = x.astype(np.float32) @ weights[0] + weights[1]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        assert result.per_client[i]["loss"] == pytest.approx(
            -np.log(p[np.arange(len(y)), y]).mean(), rel=1e-5)
        assert result.per_client[i]["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    n = result.num_examples
    assert n.tolist() == [5, 11, 2]
    assert result.weighted["accuracy"] == pytest.approx(np.sum(result.accuracies * n) / n.sum())
    assert result.unweighted["loss"] == pytest.approx(result.losses.mean())


def test_weights_none_uses_the_model_as_it_is():
    model = _sigmoid_model()
    model.set_weights([np.array([[1.0]], np.float32), np.array([0.0], np.float32)])
    result = federated_evaluate(model, _datasets(XS, YS))
    assert result.weighted["accuracy"] == pytest.approx(4 / 8)
    assert np.array_equal(model.get_weights()[0], [[1.0]])  # evaluation does not train


def test_hundred_digit_clients_are_fast_and_agree_with_pooled_evaluation():
    from fedutils.fedavg import evaluate_weights

    x, y = data.load_digits()
    datasets = data.make_client_datasets(x, y, partition.iid_partition(y, 100, seed=0),
                                         batch_size=20)
    model = models.create_digits_model()
    federated_evaluate(model, datasets)  # first call builds the input pipeline
    started = time.perf_counter()
    result = federated_evaluate(model, datasets)
    assert time.perf_counter() - started < 1.0
    assert len(result.per_client) == 100 and result.num_examples.sum() == len(y)
    loss, accuracy = evaluate_weights(model, model.get_weights(), x, y)
    assert result.weighted["loss"] == pytest.approx(loss, rel=1e-5)
    assert result.weighted["accuracy"] == pytest.approx(accuracy)


def test_summary_and_histogram():
    result = federated_evaluate(_sigmoid_model(), _datasets(XS, YS),
                                [np.array([[1.0]], np.float32), np.array([0.0], np.float32)])
    assert isinstance(result, FederatedEvaluation)
    assert "2 clients, 8 examples" in str(result)
    assert "weighted accuracy 0.500" in result.summary()
    assert "unweighted accuracy 0.667" in result.summary()
    ax = result.plot_histogram()
    xs = sorted(line.get_xdata()[0] for line in ax.get_lines())
    assert xs == pytest.approx([0.5, 2 / 3])
    import matplotlib.pyplot as plt

    plt.close("all")


def test_bad_inputs_raise_clear_errors():
    datasets = _datasets(XS, YS)
    with pytest.raises(TypeError, match="model must be a Keras model"):
        federated_evaluate("not a model", datasets)
    with pytest.raises(ValueError, match="client_datasets is empty"):
        federated_evaluate(_sigmoid_model(), [])
    with pytest.raises(TypeError, match="client_datasets must be a list"):
        federated_evaluate(_sigmoid_model(), datasets[0])
    no_keys = tf.data.Dataset.from_tensor_slices((XS[0].astype(np.float32), YS[0])).batch(2)
    with pytest.raises(TypeError, match=r"\{'x': features, 'y': labels\}"):
        federated_evaluate(_sigmoid_model(), [no_keys])
    with pytest.raises(ValueError, match=r"weights\[0\] must have shape"):
        federated_evaluate(_sigmoid_model(), datasets, [np.zeros((2, 1)), np.zeros(1)])
    empty = datasets[0].filter(lambda b: False)
    with pytest.raises(ValueError, match=r"client_datasets\[1\] is empty"):
        federated_evaluate(_sigmoid_model(), [datasets[0], empty])
    unbatched = tf.data.Dataset.from_tensor_slices({"x": XS[0].astype(np.float32), "y": YS[0]})
    with pytest.raises(ValueError, match=r"call \.batch"):
        federated_evaluate(_sigmoid_model(), [unbatched])
    with pytest.raises(ValueError, match="repeats forever"):
        federated_evaluate(_sigmoid_model(), [datasets[0].repeat()])
