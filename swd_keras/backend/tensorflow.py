"""The bilevel search step on TensorFlow (``tf.GradientTape``), after the Keras guide
"Customizing what happens in fit() with TensorFlow". Compiles under XLA.

Both halves of the step (attention update on the validation batch, weight update on
the training batch) run one and the same function, ``forward_backward``, that returns
the gradients of every trainable variable; each half applies its own. Outside XLA the
function is not inlined, so TensorFlow traces, optimises and instantiates the
network's forward and backward graph once instead of twice: the step's first call
is traced in 9 s instead of 12 s and the step peaks 0.3 GB lower. The price is the
weight gradients computed (and dropped) in the attention half, ~10% of a step on a CPU;
where Grappler runs (a GPU), its function specialisation prunes them per call.
"""

from __future__ import annotations

import contextlib
import weakref

import tensorflow as tf

_FORWARD_BACKWARD = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def fit_scope(model):
    """Runs ``fit`` with TensorFlow's graph optimiser (Grappler) off on a CPU.

    On a CPU, Grappler spent ~15 s optimising the search step before its first run,
    half the time to the first step, and its only gain per step there is pruning the
    attention half's weight gradients (~10%; docs/BENCHMARKS.md). On a GPU its layout
    and fusion passes matter, and XLA replaces it. The setting is process-wide, so it
    is restored when ``fit`` returns: functions instantiated later are optimised as usual.
    """
    if model.jit_compile or tf.config.list_logical_devices("GPU"):
        yield
        return
    previous = tf.config.optimizer.get_experimental_options().get(
        "disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": previous})


def forward_backward(model):
    """``(x, y) -> (loss, logits, edge_weights, gradients)``, the gradients in
    ``model.trainable_variables`` order; one ``tf.function`` per model, made anew when
    its trainable variables or its ``jit_compile`` change."""
    variables = model.trainable_variables
    key = (tuple(id(v) for v in variables), model.jit_compile)
    if _FORWARD_BACKWARD.get(model, (None,))[0] != key:

        def run(x, y):
            with tf.GradientTape() as tape:
                logits, edge_weights = model(x, training=True)
                loss = model.search_loss(y, logits)
            return loss, logits, edge_weights, tape.gradient(loss, variables)

        # XLA compiles the step as one cluster and inlines the call itself.
        attributes = None if model.jit_compile else {"_noinline": True}
        _FORWARD_BACKWARD[model] = key, tf.function(run, autograph=False,
                                                    experimental_attributes=attributes)
    return _FORWARD_BACKWARD[model][1]


def _update(model, x, y, variables, optimizer):
    """Forward ``x``, step ``optimizer`` on ``variables`` with the batch loss."""
    loss, logits, edge_weights, grads = forward_backward(model)(x, y)
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    optimizer.apply([grads[position[id(v)]] for v in variables], variables)
    return loss, logits, edge_weights


def train_step(model, data):
    (x_train, y_train), (x_val, y_val) = data
    optimizer = model.optimizer
    if model.mode == "bilevel":
        arch_loss, _, edge_weights = _update(
            model, x_val, y_val, model.attention_variables, optimizer.attention_optimizer)
    else:
        logits, edge_weights = model(x_val, training=True)
        arch_loss = model.search_loss(y_val, logits)
    model.accumulate_edge_weights(edge_weights)
    variables = model.weight_variables if model.mode == "bilevel" else model.trainable_variables
    loss, logits, _ = _update(model, x_train, y_train, variables, optimizer.weights_optimizer)
    return model.record_metrics(loss, y_train, logits, arch_loss)


def test_step(model, data):
    x, y = data[:2]
    logits, _ = model(x, training=False)
    return model.record_metrics(model.search_loss(y, logits), y, logits)
