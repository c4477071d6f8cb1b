"""fedutils.server_optimizers: TFF 0.87's server optimizers, in NumPy with explicit state.

References: TFF's own `tff.learning.optimizers` fed the same pseudo-gradients (TFF environment),
hand computations of each formula, and three rounds of `run_fedavg(..., server_optimizer=...)`
against TFF's `build_weighted_fed_avg` with the same server optimizer.
"""
import dataclasses
import inspect

import numpy as np
import pytest

from fedutils import server_optimizers as so

SHAPES = [(4, 3), (3,), (3, 1)]  # a small dense model: kernel, bias, next kernel
STEPS = 5

# (fedutils optimizer, name of TFF's builder, its arguments): the same optimizer twice.
PAIRS = [
    (so.sgd(0.5), "build_sgdm", dict(learning_rate=0.5)),
    (so.sgd(0.5, momentum=0.9), "build_sgdm", dict(learning_rate=0.5, momentum=0.9)),
    (so.adam(0.01), "build_adam", dict(learning_rate=0.01)),
    (so.adam(0.05, beta_1=0.5, beta_2=0.9, epsilon=1e-3), "build_adam",
     dict(learning_rate=0.05, beta_1=0.5, beta_2=0.9, epsilon=1e-3)),
    (so.yogi(0.01), "build_yogi", dict(learning_rate=0.01)),
    (so.yogi(0.05, beta_1=0.5, beta_2=0.9, epsilon=1e-2, initial_preconditioner_value=1e-3),
     "build_yogi", dict(learning_rate=0.05, beta_1=0.5, beta_2=0.9, epsilon=1e-2,
                        initial_preconditioner_value=1e-3)),
    (so.adagrad(0.1), "build_adagrad", dict(learning_rate=0.1)),
    (so.adagrad(0.2, initial_preconditioner_value=0.5, epsilon=1e-3), "build_adagrad",
     dict(learning_rate=0.2, initial_preconditioner_value=0.5, epsilon=1e-3)),
]
BUILDERS = {"sgd": "build_sgdm", "adam": "build_adam", "yogi": "build_yogi",
            "adagrad": "build_adagrad"}


def random_weights(rng, scale=1.0, dtype=np.float32):
    return [(scale * rng.standard_normal(s)).astype(dtype) for s in SHAPES]


def gradient_sequence(seed=0, dtype=np.float32):
    """STEPS pseudo-gradients of mixed sizes: some coordinates stay 0 (a unit no client
    moved), some flip sign and shrink after a large step (Yogi's sign(g² - s) then differs)."""
    rng = np.random.default_rng(seed)
    grads = [random_weights(rng, scale, dtype) for scale in (0.1, 1.0, 0.01, 0.1, 0.001)[:STEPS]]
    for g in grads:
        g[1][0] = 0.0
    return grads


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(a, b))


def run(opt, weights, grads):
    state = opt.initialize(weights)
    for g in grads:
        state, weights = opt.next(state, weights, g)
    return state, weights


# --- TFF's optimizers, fed the same pseudo-gradients ------------------------------------------

@pytest.fixture(scope="module")
def tff():
    pytest.importorskip("tensorflow_federated")
    from fedutils import tff_bridge

    return tff_bridge.import_tff()   # the root conftest stops TFF's helper at session end


def tff_run(tff, builder, kwargs, weights, grads):
    import tensorflow as tf

    opt = getattr(tff.learning.optimizers, builder)(**kwargs)
    state = opt.initialize([tf.TensorSpec(w.shape, tf.float32) for w in weights])
    current = [tf.constant(w) for w in weights]
    for g in grads:
        state, current = opt.next(state, current, [tf.constant(x) for x in g])
    return [w.numpy() for w in current]


@pytest.mark.parametrize("opt, builder, kwargs", PAIRS, ids=[repr(p[0]) for p in PAIRS])
def test_same_steps_as_tff_optimizer(tff, opt, builder, kwargs):
    w0 = random_weights(np.random.default_rng(1))
    grads = gradient_sequence()
    theirs = tff_run(tff, builder, kwargs, w0, grads)
    state, ours = run(opt, w0, grads)
    diff = max_diff(ours, theirs)
    print(f"{opt!r}: {STEPS} steps, max |fedutils - TFF| = {diff:.2e}")
    assert diff < 1e-6
    assert max_diff(ours, w0) > 1e-3  # the steps did move the weights
    assert state.step == STEPS
    assert all(w.dtype == np.float32 for w in ours)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_defaults_are_tffs(tff, name):
    """Every default hyperparameter is TFF's (sgd's momentum=0.0 is TFF's None: no momentum)."""
    ours = inspect.signature(getattr(so, name)).parameters
    theirs = inspect.signature(getattr(tff.learning.optimizers, BUILDERS[name])).parameters
    assert list(ours) == list(theirs)
    for key, parameter in ours.items():
        if key == "learning_rate":
            assert parameter.default is inspect.Parameter.empty
        elif name == "sgd":
            assert parameter.default == 0.0 and theirs[key].default is None
        else:
            assert parameter.default == theirs[key].default, key


# --- hand computations -------------------------------------------------------------------------

def test_sgd_one_is_plain_fedavg_exactly():
    rng = np.random.default_rng(0)
    global_weights = random_weights(rng)
    clients = [random_weights(rng) for _ in range(3)]
    mean_delta = [np.mean([c[i] - global_weights[i] for c in clients], axis=0).astype(np.float32)
                  for i in range(len(SHAPES))]
    gradient = [-d for d in mean_delta]
    opt = so.sgd(1.0)
    state, new = opt.next(opt.initialize(global_weights), global_weights, gradient)
    for n, g, d, grad in zip(new, global_weights, mean_delta, gradient):
        assert n.dtype == np.float32
        assert np.array_equal(n, g + d)
        assert np.array_equal(n, g - grad)
    assert state == so.ServerOptimizerState(step=1)


def test_sgd_learning_rate_and_momentum_by_hand():
    w0 = random_weights(np.random.default_rng(2), dtype=np.float64)
    g1, g2 = gradient_sequence(dtype=np.float64)[:2]
    _, ours = run(so.sgd(0.3), w0, [g1, g2])
    assert max_diff(ours, [w - 0.3 * a - 0.3 * b for w, a, b in zip(w0, g1, g2)]) < 1e-12
    state, ours = run(so.sgd(0.3, momentum=0.9), w0, [g1, g2])
    velocity = [0.9 * a + b for a, b in zip(g1, g2)]
    expected = [w - 0.3 * a - 0.3 * v for w, a, v in zip(w0, g1, velocity)]
    assert max_diff(ours, expected) < 1e-12
    assert max_diff(state.accumulator, velocity) < 1e-12


def test_adam_steps_about_learning_rate_per_coordinate():
    """With bias correction each step moves a coordinate by about lr in the direction of
    -sign(g), whatever the gradient's size; without it the first step would be
    lr·(1-beta_1)/sqrt(1-beta_2) ≈ 3.2·lr."""
    lr, w0 = 0.01, random_weights(np.random.default_rng(3), dtype=np.float64)
    g = [np.where(np.abs(x) < 1e-3, 1e-3, x)
         for x in random_weights(np.random.default_rng(4), dtype=np.float64)]
    opt, eps_hat = so.adam(lr), 1e-7 / np.sqrt(1 - 0.999)
    state = opt.initialize(w0)
    state, w1 = opt.next(state, w0, g)
    for a, b, x in zip(w0, w1, g):
        np.testing.assert_allclose(a - b, lr * x / (np.abs(x) + eps_hat), rtol=1e-6)
        np.testing.assert_allclose(a - b, lr * np.sign(x), rtol=1e-2)
    weights = w1
    for _ in range(9):  # the same gradient again: bias-corrected m/sqrt(v) stays sign(g)
        previous = weights
        state, weights = opt.next(state, weights, g)
    for a, b, x in zip(previous, weights, g):
        np.testing.assert_allclose(a - b, lr * np.sign(x), rtol=1e-2)
    assert state.step == 10


def test_yogi_first_steps_by_hand():
    lr, b1, b2, eps, v0 = 0.01, 0.9, 0.999, 1e-3, 1e-6
    w0 = random_weights(np.random.default_rng(5), dtype=np.float64)
    g1, g2 = gradient_sequence(dtype=np.float64)[1:3]  # a large step, then a small one
    opt = so.yogi(lr)
    state = opt.initialize(w0)
    assert all(np.all(p == v0) for p in state.preconditioner)
    m, s, w, ours = [0 * x for x in w0], [np.full_like(x, v0) for x in w0], w0, w0
    for t, g in enumerate([g1, g2], start=1):
        state, ours = opt.next(state, ours, g)
        m = [b1 * a + (1 - b1) * x for a, x in zip(m, g)]
        s = [p - (1 - b2) * x ** 2 * np.sign(p - x ** 2) for p, x in zip(s, g)]
        lr_t = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        w = [v - lr_t * a / (np.sqrt(p) + eps) for v, a, p in zip(w, m, s)]
        assert max_diff(ours, w) < 1e-12
        assert max_diff(state.preconditioner, s) < 1e-15
    # Where g2² < s, s fell by (1-b2)·g2² (additive), not by (1-b2)·(s - g2²) as Adam's would.
    after_first = v0 + (1 - b2) * np.sign(g1[0] ** 2 - v0) * g1[0] ** 2
    shrunk = g2[0] ** 2 < after_first
    assert np.sum(shrunk) >= 3
    np.testing.assert_allclose(state.preconditioner[0][shrunk],
                               (after_first - (1 - b2) * g2[0] ** 2)[shrunk], rtol=1e-12)


def test_adagrad_by_hand():
    lr, w0 = 0.1, random_weights(np.random.default_rng(6), dtype=np.float64)
    g1, g2 = gradient_sequence(dtype=np.float64)[:2]
    state, ours = run(so.adagrad(lr), w0, [g1, g2])
    s1 = [0.1 + x ** 2 for x in g1]
    s2 = [p + x ** 2 for p, x in zip(s1, g2)]
    expected = [w - lr * a / np.sqrt(p + 1e-7) - lr * b / np.sqrt(q + 1e-7)
                for w, a, b, p, q in zip(w0, g1, g2, s1, s2)]
    assert max_diff(ours, expected) < 1e-12
    assert max_diff(state.preconditioner, s2) < 1e-15
    assert state.accumulator is None


@pytest.mark.parametrize("opt", [p[0] for p in PAIRS], ids=[repr(p[0]) for p in PAIRS])
def test_state_is_explicit_and_inputs_untouched(opt):
    w0 = random_weights(np.random.default_rng(7))
    g = gradient_sequence()[0]
    state = opt.initialize(w0)
    copies = [[a.copy() for a in x] for x in (w0, g)]
    slots = {k: [a.copy() for a in v] for k, v in vars(state).items() if isinstance(v, list)}
    new_state, w1 = opt.next(state, w0, g)
    assert max_diff(w0, copies[0]) == 0 and max_diff(g, copies[1]) == 0
    assert all(max_diff(getattr(state, k), v) == 0 for k, v in slots.items())
    assert state.step == 0 and new_state.step == 1
    # The same state and inputs give the same step: nothing is remembered on the object.
    assert max_diff(opt.next(state, w0, g)[1], w1) == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        opt.learning_rate = 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_in_is_dtype_out(dtype):
    w0 = random_weights(np.random.default_rng(8), dtype=dtype)
    state, w1 = run(so.adam(0.01), w0, gradient_sequence()[:2])
    assert all(w.dtype == dtype for w in w1 + state.accumulator + state.preconditioner)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("factory, kwargs, name", [
    (so.sgd, dict(learning_rate=0.0), "learning_rate"),
    (so.sgd, dict(learning_rate=-1.0), "learning_rate"),
    (so.sgd, dict(learning_rate=float("nan")), "learning_rate"),
    (so.sgd, dict(learning_rate=1.0, momentum=1.0), "momentum"),
    (so.sgd, dict(learning_rate=1.0, momentum=-0.1), "momentum"),
    (so.adam, dict(learning_rate=0.1, beta_1=1.0), "beta_1"),
    (so.adam, dict(learning_rate=0.1, beta_2=-0.5), "beta_2"),
    (so.adam, dict(learning_rate=0.1, epsilon=-1e-7), "epsilon"),
    (so.yogi, dict(learning_rate=0.1, beta_2=1.5), "beta_2"),
    (so.yogi, dict(learning_rate=0.1, initial_preconditioner_value=-1.0),
     "initial_preconditioner_value"),
    (so.adagrad, dict(learning_rate=0.1, epsilon=-1.0), "epsilon"),
    (so.adagrad, dict(learning_rate=0.1, initial_preconditioner_value=0.0, epsilon=0.0),
     "initial_preconditioner_value"),
    (so.adagrad, dict(learning_rate=float("inf")), "learning_rate"),
])
def test_bad_hyperparameters_raise_value_error(factory, kwargs, name):
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


@pytest.mark.parametrize("value", ["0.1", None, True, [0.1]])
def test_non_numbers_raise_type_error(value):
    with pytest.raises(TypeError, match="learning_rate"):
        so.adam(value)
    with pytest.raises(TypeError, match="momentum"):
        so.sgd(1.0, momentum=value)


def test_bad_weights_gradients_and_states():
    rng = np.random.default_rng(9)
    w0, g = random_weights(rng), random_weights(rng)
    opt = so.adam(0.01)
    state = opt.initialize(w0)
    with pytest.raises(ValueError, match=r"gradient\[1\] must have shape \(3,\)"):
        opt.next(state, w0, [g[0], np.zeros(4, np.float32), g[2]])
    with pytest.raises(ValueError, match="gradient must hold 3 tensors"):
        opt.next(state, w0, g[:2])
    with pytest.raises(ValueError, match=r"gradient\[0\] contains NaN"):
        opt.next(state, w0, [np.full((4, 3), np.nan, np.float32)] + g[1:])
    with pytest.raises(TypeError, match="gradient must be a list"):
        opt.next(state, w0, np.zeros(3))
    other = [np.zeros((5, 3), np.float32)] + w0[1:]
    with pytest.raises(ValueError, match=r"state.accumulator\[0\] must have shape \(5, 3\)"):
        opt.next(state, other, [np.zeros((5, 3), np.float32)] + g[1:])
    with pytest.raises(TypeError, match="state must be the ServerOptimizerState"):
        opt.next({"step": 0}, w0, g)
    with pytest.raises(ValueError, match="state does not belong"):
        opt.next(so.sgd(1.0).initialize(w0), w0, g)
    with pytest.raises(ValueError, match="state does not belong"):
        so.sgd(1.0).next(state, w0, g)
    with pytest.raises(TypeError, match="weights must be a list"):
        opt.initialize(np.zeros(3))


def test_zero_epsilon_on_a_never_moved_coordinate_is_explained():
    w0 = random_weights(np.random.default_rng(10))
    g = gradient_sequence()[0]  # g[1][0] == 0
    opt = so.adam(0.01, epsilon=0.0)
    with pytest.raises(ValueError, match="epsilon > 0"):
        opt.next(opt.initialize(w0), w0, g)


# --- the full loop against TFF's FedAvg with the same server optimizer ------------------------

ROUNDS = 3
SIZES = (13, 47, 100, 30)  # unequal clients, most with a partial last batch (batch size 20)
LOOP_PAIRS = [
    (so.sgd(0.5, momentum=0.9), "build_sgdm", dict(learning_rate=0.5, momentum=0.9)),
    (so.adam(0.01), "build_adam", dict(learning_rate=0.01)),
    (so.yogi(0.01), "build_yogi", dict(learning_rate=0.01)),
    (so.adagrad(0.1), "build_adagrad", dict(learning_rate=0.1)),
]


@pytest.fixture(scope="module")
def clients():
    from fedutils import data

    x, y = data.load_digits()
    order = np.random.default_rng(0).permutation(len(y))
    ends = np.cumsum(SIZES)
    parts = [order[end - size:end] for end, size in zip(ends, SIZES)]
    return data.make_client_datasets(x, y, parts, batch_size=20, seed=0)


@pytest.fixture(scope="module")
def initial_weights():
    import fedutils
    from fedutils.models import create_digits_model

    fedutils.set_seed(0)
    return create_digits_model().get_weights()


@pytest.mark.parametrize("opt, builder, kwargs", LOOP_PAIRS, ids=[repr(p[0]) for p in LOOP_PAIRS])
def test_run_fedavg_with_server_optimizer_equals_tff(tff, clients, initial_weights, opt, builder,
                                                     kwargs):
    from fedutils import fedavg, tff_bridge
    from fedutils.models import create_digits_model

    common = dict(rounds=ROUNDS, seed=0, client_lr=0.1, initial_weights=initial_weights)
    process = tff_bridge.build_fedavg(
        create_digits_model, clients[0].element_spec, client_lr=0.1,
        server_optimizer_fn=getattr(tff.learning.optimizers, builder)(**kwargs))
    theirs = tff_bridge.run_tff_fedavg(create_digits_model, clients, process=process, **common)
    ours = fedavg.run_fedavg(create_digits_model, clients, server_optimizer=opt, progress=False,
                             **common)
    plain = fedavg.run_fedavg(create_digits_model, clients, progress=False, **common)
    diff = max_diff(ours.final_weights, theirs.final_weights)
    print(f"{opt!r}: {ROUNDS} rounds, max |fedutils - TFF| = {diff:.2e}, "
          f"vs plain FedAvg {max_diff(ours.final_weights, plain.final_weights):.2e}")
    assert diff < 1e-5
    assert max_diff(ours.final_weights, plain.final_weights) > 1e-3  # the optimizer mattered
