"""The bilevel search step against a hand-written reference, on every backend."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from swd_keras.optimizers import TorchSGD
from swd_keras.search import SWDSearchModel
from swd_keras.supernet import build_supernet
from tests.grads import layer_gradients, layer_outputs

to_np = keras.ops.convert_to_numpy
SMALL_OPS = ("sep_conv_3x3", "skip_connect", "max_pool_3x3", "none")
LR, WD, CLIP, MOMENTUM = 0.1, 0.05, 0.5, 0.9


def tiny_model(mode="bilevel", method="swd", rematerialize=False, layers=1):
    """A compiled search model of ``layers`` cells; one by default (a reduction cell): the
    step's algorithm does not depend on the cell count, and tracing and compiling it
    grow with it."""
    net = build_supernet((8, 8, 1), 5, channels=4, layers=layers, k=2, method=method,
                         primitives=SMALL_OPS, rematerialize=rematerialize)
    model = SWDSearchModel(net, mode=mode, method=method)
    model.compile(
        weights_optimizer=TorchSGD(LR, momentum=MOMENTUM, weight_decay=WD, global_clipnorm=CLIP),
        attention_optimizer=TorchSGD(LR, momentum=MOMENTUM, weight_decay=WD,
                                     global_clipnorm=CLIP))
    return model


@pytest.fixture(scope="module")
def bilevel_model():
    """One compiled bilevel model for the module (compiling the step is the slow part);
    ``fresh`` puts it back to its initial state, optimizer included."""
    model = tiny_model()
    initial = [to_np(v.value).copy() for v in model.variables + model.optimizer.variables]

    def fresh():
        for variable, value in zip(model.variables + model.optimizer.variables, initial):
            variable.assign(value)
        return model

    return fresh


def batches(steps=1, seed=0):
    rng = np.random.default_rng(seed)
    make = lambda: (rng.normal(size=(steps * 4, 8, 8, 1)).astype("float32"),  # noqa: E731
                    rng.integers(0, 5, steps * 4).astype("int32"))
    train, val = make(), make()
    return train, val, tf.data.Dataset.from_tensor_slices((train, val)).batch(4)


def snapshot(variables):
    return {v.path: to_np(v.value).copy() for v in variables}


def sgd_step(values, grads):
    """torch.optim.SGD's first step after clip_grad_norm_, in NumPy."""
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    scale = min(1.0, CLIP / norm)
    return {p: values[p] - LR * (grads[p] * scale + WD * values[p]) for p in grads}, scale


def restore(model, values):
    for v in model.variables:
        if v.path in values:
            v.assign(values[v.path])


@pytest.mark.backend
def test_one_bilevel_step_equals_the_reference(bilevel_model):
    model = bilevel_model()
    (x_t, y_t), (x_v, y_v), data = batches()
    before = snapshot(model.variables)
    attention = {v.path for v in model.attention_variables}
    weights = {v.path for v in model.weight_variables}
    assert attention and weights and not attention & weights
    assert attention | weights == {v.path for v in model.trainable_variables}

    def loss_of(x, y):
        return lambda out: model.search_loss(y, out[0])

    # (a) attention parameters: gradient of the validation loss at the start.
    grads = layer_gradients(model, loss_of(x_v, y_v), x_v, training=True)
    expected_attention, scale = sgd_step(before, {p: grads[p] for p in attention})
    assert scale < 1.0  # clipping is exercised
    expected_edge_weights = layer_outputs(model, x_v, training=True)[1]
    # (b) network weights: gradient of the training loss after the attention update.
    restore(model, before | expected_attention)
    grads = layer_gradients(model, loss_of(x_t, y_t), x_t, training=True)
    expected_weights, _ = sgd_step(before, {p: grads[p] for p in weights})
    restore(model, before)

    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
    after = snapshot(model.variables)
    for path, value in (expected_attention | expected_weights).items():
        np.testing.assert_allclose(after[path], value, rtol=1e-4, atol=1e-6, err_msg=path)
    np.testing.assert_allclose(to_np(model.edge_weight_sum), expected_edge_weights, atol=1e-5)
    assert float(to_np(model.edge_weight_count)) == 1.0
    # Nothing else moved: only BN statistics and the accumulators may change.
    for path in set(before) - attention - weights:
        if not ("moving_" in path or "edge_weight" in path):
            np.testing.assert_array_equal(after[path], before[path], err_msg=path)


@pytest.mark.backend
def test_joint_mode_updates_everything_on_the_training_batch():
    model = tiny_model(mode="joint")
    (x_t, y_t), (x_v, y_v), data = batches()
    before = snapshot(model.variables)
    expected_edge_weights = layer_outputs(model, x_v, training=True)[1]
    restore(model, before)
    grads = layer_gradients(model, lambda out: model.search_loss(y_t, out[0]), x_t,
                            training=True)
    expected, _ = sgd_step(before, grads)
    restore(model, before)
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
    after = snapshot(model.variables)
    for path, value in expected.items():
        np.testing.assert_allclose(after[path], value, rtol=1e-4, atol=1e-6, err_msg=path)
    np.testing.assert_allclose(to_np(model.edge_weight_sum), expected_edge_weights, atol=1e-5)


@pytest.mark.backend
def test_accumulator_is_the_epoch_mean_and_resets_each_epoch(bilevel_model):
    model = bilevel_model()
    (x_t, y_t), (x_v, y_v), data = batches(steps=3)
    per_step = []

    class Record(keras.callbacks.Callback):
        # Each step adds the edge weights of its validation forward pass.
        def on_train_batch_end(self, batch, logs=None):
            if hasattr(model, "jax_state_sync"):  # JAX keeps the state outside the model
                model.jax_state_sync()
            per_step.append(to_np(model.edge_weight_sum).copy())

    model.fit(data, epochs=1, steps_per_epoch=3, verbose=0, callbacks=[Record()])
    increments = np.diff(np.stack([np.zeros_like(per_step[0])] + per_step), axis=0)
    assert float(to_np(model.edge_weight_count)) == 3.0
    assert (increments > 0).all()
    np.testing.assert_allclose(model.edge_weights(), increments.mean(axis=0), atol=1e-6)
    # Each increment is a batch mean of the LA weights: per edge they sum to at most
    # the op channels times n (sigmoids) and vary between steps.
    assert not np.allclose(increments[0], increments[2])
    # The next epoch starts from zero.
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
    assert float(to_np(model.edge_weight_count)) == 1.0
    np.testing.assert_allclose(to_np(model.edge_weight_sum), model.edge_weights(), atol=1e-6)


@pytest.mark.backend
def test_evaluate_reports_loss_and_accuracy(bilevel_model):
    model = bilevel_model()
    (x_t, y_t), _, _ = batches(steps=2)
    logs = model.evaluate(tf.data.Dataset.from_tensor_slices((x_t, y_t)).batch(4), verbose=0,
                          return_dict=True)
    # Per batch: the channel selection depends on the batch (one index set per batch).
    logits = np.concatenate([to_np(model(x_t[i:i + 4], training=False)[0]) for i in (0, 4)])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert set(logs) == {"loss", "accuracy"}
    np.testing.assert_allclose(logs["loss"], -log_probs[np.arange(8), y_t].mean(), rtol=1e-4)
    np.testing.assert_allclose(logs["accuracy"], (logits.argmax(1) == y_t).mean(), atol=1e-6)


def test_darts_method_gives_a_two_cell_genotype():
    model = tiny_model(method="darts", layers=2)
    _, _, data = batches()
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
    genotype = model.genotype()
    assert [c.type for c in genotype.cells] == ["normal", "reduce"]
    assert {op for c in genotype.cells for op, _ in c.edges} <= set(SMALL_OPS) - {"none"}


def test_compile_rejects_a_loss():
    model = SWDSearchModel(build_supernet((8, 8, 1), 5, channels=4, layers=1, k=2,
                                          primitives=SMALL_OPS))
    with pytest.raises(ValueError, match="no loss"):
        model.compile(loss="mse")
    with pytest.raises(ValueError, match="mode must be one of"):
        SWDSearchModel(model.supernet, mode="alternating")


def test_frozen_layers_after_a_recompile_stay_unchanged():
    # The step follows a changed set of trainable variables (the TensorFlow step caches
    # its forward/backward function per set; JAX and PyTorch take the set each step).
    model = tiny_model()
    _, _, data = batches(steps=2)
    model.fit(data.take(1), epochs=1, verbose=0)
    stem = [layer for layer in model.supernet.layers if "stem" in layer.name]
    assert stem
    for layer in stem:
        layer.trainable = False
    model.compile(weights_optimizer=TorchSGD(LR, momentum=MOMENTUM),
                  attention_optimizer=TorchSGD(LR, momentum=MOMENTUM))
    frozen = snapshot([v for layer in stem for v in layer.trainable_weights + layer.weights])
    trained = snapshot(model.weight_variables)
    model.fit(data.skip(1), epochs=1, verbose=0)
    for path, value in frozen.items():
        if "moving_" not in path:
            np.testing.assert_array_equal(snapshot(model.variables)[path], value, err_msg=path)
    after = snapshot(model.weight_variables)
    assert any(not np.array_equal(after[p], trained[p]) for p in trained)


# The recomputation is one backend code path for both methods: checked on every
# backend for one of them (each case compiles two search steps).
@pytest.mark.parametrize("method", [pytest.param("swd", marks=pytest.mark.backend), "darts"])
def test_rematerialized_edges_give_the_same_step(method, bilevel_model):
    # Recomputing the edges for the gradient is the same arithmetic: the same weights,
    # attention and BatchNorm statistics (updated once, not again by the recomputation).
    plain = bilevel_model() if method == "swd" else tiny_model(method=method)
    remat = tiny_model(method=method, rematerialize=True)
    for source, target in zip(plain.supernet.variables, remat.supernet.variables):
        target.assign(to_np(source.value).copy())  # JAX donates the buffers it steps
    initial = snapshot(plain.supernet.variables)
    _, _, data = batches(steps=2)
    for model in (plain, remat):
        model.fit(data, epochs=1, verbose=0)
    expected, actual = snapshot(plain.supernet.variables), snapshot(remat.supernet.variables)
    assert expected.keys() == actual.keys()
    for path, value in expected.items():
        np.testing.assert_allclose(actual[path], value, rtol=1e-4, atol=1e-5, err_msg=path)
    moved = {p for p in expected if not np.allclose(expected[p], initial[p])}
    attention = {v.path for v in remat.attention_variables}
    assert any("moving_" in p for p in moved) and moved & attention
    cell = remat.supernet.get_layer("cell_0")
    assert type(cell).from_config(cell.get_config()).rematerialize


def test_fit_traces_without_op_stack_traces_and_restores_tensorflow_settings():
    from tensorflow.python.util import tf_stack

    from swd_keras.backend.tensorflow.trainer import fit_scope

    def traced_ops():
        return tf.function(lambda x: x * 2.0).get_concrete_function(
            tf.TensorSpec([2])).graph.get_operations()

    extract, options = tf_stack.extract_stack, tf.config.optimizer.get_experimental_options()
    assert any(len(op.traceback) for op in traced_ops())
    with fit_scope(tiny_model()):
        assert all(len(op.traceback) == 0 for op in traced_ops())
        assert tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"]
    assert tf_stack.extract_stack is extract
    assert tf.config.optimizer.get_experimental_options() == options
    assert any(len(op.traceback) for op in traced_ops())


def test_fit_restores_tensorflow_settings_after_an_exception():
    from tensorflow.python.util import tf_stack

    model = tiny_model()
    extract, options = tf_stack.extract_stack, tf.config.optimizer.get_experimental_options()
    seen = []

    class Fail(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(tf.config.optimizer.get_experimental_options())
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        model.fit(batches()[2], epochs=1, verbose=0, callbacks=[Fail()])
    assert seen[0]["disable_meta_optimizer"]  # the setting was on inside fit
    assert tf_stack.extract_stack is extract
    assert tf.config.optimizer.get_experimental_options() == options


def test_internals_follow_the_environment_variable_and_the_version(monkeypatch):
    from swd_keras.backend.tensorflow import internals

    monkeypatch.delenv(internals.ENVIRONMENT_VARIABLE, raising=False)
    assert all(internals.enabled(piece) for piece in internals.PIECES)  # TF 2.21 here
    monkeypatch.setenv(internals.ENVIRONMENT_VARIABLE, "op_stack_traces")
    assert internals.enabled("op_stack_traces") and not internals.enabled("graph_release")
    monkeypatch.setenv(internals.ENVIRONMENT_VARIABLE, "none")
    assert not any(internals.enabled(piece) for piece in internals.PIECES)
    monkeypatch.setenv(internals.ENVIRONMENT_VARIABLE, "stacks")
    with pytest.raises(ValueError, match=internals.ENVIRONMENT_VARIABLE):
        internals.enabled("graph_release")
    monkeypatch.delenv(internals.ENVIRONMENT_VARIABLE)
    monkeypatch.setattr(tf, "__version__", "2.99.0")
    assert not any(internals.enabled(piece) for piece in internals.PIECES)


def _live_func_graphs() -> int:
    import gc

    from tensorflow.python.framework.func_graph import FuncGraph

    gc.collect()
    return sum(isinstance(o, FuncGraph) for o in gc.get_objects())


def test_internals_and_their_public_fallback_give_the_same_step(monkeypatch):
    # The fallback (no TensorFlow internals: Keras' own train function, op stacks
    # recorded, custom gradients left registered) steps exactly as the default does;
    # the default lets every traced graph and registered custom gradient go.
    from tensorflow.python.framework import ops as tf_ops

    from swd_keras.backend.tensorflow import internals

    ours, public = tiny_model(), tiny_model()
    for source, target in zip(ours.variables, public.variables):
        target.assign(to_np(source.value).copy())
    _, _, data = batches(steps=2)
    with monkeypatch.context() as patch:
        patch.setenv(internals.ENVIRONMENT_VARIABLE, "none")
        public.fit(data, epochs=1, verbose=0)
    assert not isinstance(public.train_function, internals.TrainFunction)
    graphs, gradients = _live_func_graphs(), len(tf_ops.gradient_registry.list())
    history = ours.fit(data, epochs=1, verbose=0)
    assert isinstance(ours.train_function, internals.TrainFunction)
    # Nothing traced for the step is left: no graph, no registered custom gradient.
    assert _live_func_graphs() == graphs
    assert len(tf_ops.gradient_registry.list()) == gradients
    assert np.isfinite(history.history["loss"]).all()
    for expected, actual in zip(public.variables, ours.variables):
        np.testing.assert_allclose(to_np(actual.value), to_np(expected.value), rtol=1e-6,
                                   atol=1e-7, err_msg=actual.path)


def test_train_function_traces_once_per_batch_shape(monkeypatch):
    from swd_keras.backend.tensorflow import internals

    model = tiny_model()
    (x_t, y_t), (x_v, y_v), _ = batches(steps=2)
    pairs = tf.data.Dataset.from_tensor_slices(((x_t, y_t), (x_v, y_v)))
    traces = []
    trace = internals.TrainFunction._trace

    def counted(self, iterator):
        traces.append(iterator.element_spec[0][0].shape)
        return trace(self, iterator)

    monkeypatch.setattr(internals.TrainFunction, "_trace", counted)
    for batch_size in (4, 2, 4):
        before = snapshot(model.trainable_variables)
        model.fit(pairs.batch(batch_size, drop_remainder=True), epochs=1, verbose=0)
        assert any(not np.array_equal(v, before[p])
                   for p, v in snapshot(model.trainable_variables).items())
    assert traces == [(4, 8, 8, 1), (2, 8, 8, 1)]


# How the pair is unpacked is backend-independent (search_step): each backend's
# train_on_batch is checked once.
@pytest.mark.parametrize("packed", [pytest.param("pair", marks=pytest.mark.backend),
                                    "x_and_y"])
def test_train_on_batch_steps_and_returns_the_logs(packed, bilevel_model):
    # Keras hands train_step (x, y, sample_weight); the step finds its pair in either
    # way of passing it, and takes the same step as fit (one model, put back to its
    # initial state in between: the two share the compiled step).
    model = bilevel_model()
    train, val, data = batches()
    before = snapshot(model.trainable_variables)
    if packed == "pair":
        logs = model.train_on_batch((train, val), return_dict=True)
    else:
        logs = model.train_on_batch(train, val, return_dict=True)
    assert set(logs) == {"loss", "accuracy", "arch_loss"}
    assert np.isfinite(list(logs.values())).all()
    stepped = snapshot(model.trainable_variables)
    assert any(not np.array_equal(stepped[p], before[p]) for p in before)
    model = bilevel_model()
    model.fit(data, epochs=1, verbose=0)
    for path, value in snapshot(model.trainable_variables).items():
        np.testing.assert_allclose(stepped[path], value, rtol=1e-5, atol=1e-6, err_msg=path)


def test_jit_compile_on_tensorflow_steps_as_without_it():
    # XLA reads each op's stack trace while compiling: fit keeps them under XLA (an
    # empty trace crashed the process).
    def one_layer_model(jit_compile):
        model = SWDSearchModel(build_supernet((8, 8, 1), 5, channels=4, layers=1, k=2,
                                              primitives=("skip_connect", "none")))
        model.compile(jit_compile=jit_compile)
        return model

    plain, compiled = one_layer_model(False), one_layer_model(True)
    for source, target in zip(plain.variables, compiled.variables):
        target.assign(to_np(source.value).copy())
    _, _, data = batches()
    for model in (plain, compiled):
        model.fit(data, epochs=1, verbose=0)
    assert compiled.jit_compile
    for expected, actual in zip(plain.trainable_variables, compiled.trainable_variables):
        np.testing.assert_allclose(to_np(actual.value), to_np(expected.value), rtol=1e-4,
                                   atol=1e-5, err_msg=actual.path)
