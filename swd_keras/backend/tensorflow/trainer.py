"""The step interface of ``SWDSearchModel`` on TensorFlow (``tf.GradientTape``), after
the Keras guide "Customizing what happens in fit() with TensorFlow".

Both halves of the step (attention update on the validation batch, weight update on
the training batch) run one and the same function, ``forward_backward``, that returns
the gradients of every trainable variable; each half applies its own. Outside XLA the
function is not inlined, so TensorFlow traces, optimises and instantiates the
network's forward and backward graph once instead of twice: a shorter first step and
a lower peak. The price is the weight gradients computed (and dropped) in the
attention half, ~10% of a step on a CPU; where Grappler runs (a GPU), its function
specialisation prunes them per call (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import weakref

import tensorflow as tf

from swd_keras import replicas
from swd_keras.backend.tensorflow import internals

_FORWARD_BACKWARD = weakref.WeakKeyDictionary()

# TensorFlow records gradients only inside a tape: a pass outside one keeps nothing.
no_gradient = contextlib.nullcontext


@contextlib.contextmanager
def fit_scope(model):
    """Runs ``fit`` outside XLA without op stack traces
    (``internals.without_op_stack_traces``) and, on a CPU, without TensorFlow's graph
    optimiser (Grappler); both are restored when ``fit`` returns or raises.

    XLA keeps its stack traces: its compiler reads every op's trace for the compiled
    program's metadata and crashes the process (a segmentation fault) on the empty
    ones.

    On a CPU, Grappler spends seconds optimising the search step before its first run,
    and its only gain per step there is pruning the attention half's weight gradients
    (docs/BENCHMARKS.md). On a GPU its layout and fusion passes matter, and XLA
    replaces it.
    """
    with contextlib.ExitStack() as stack:
        if not model.jit_compile:
            stack.enter_context(internals.without_op_stack_traces())
        if not (model.jit_compile or tf.config.list_logical_devices("GPU")):
            previous = tf.config.optimizer.get_experimental_options().get(
                "disable_meta_optimizer", False)
            tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
            stack.callback(tf.config.optimizer.set_experimental_options,
                           {"disable_meta_optimizer": previous})
        yield


def forward_backward(model):
    """``(x, y) -> (loss, logits, edge_weights, gradients)``, the gradients in
    ``model.trainable_variables`` order; one ``tf.function`` per model, made anew when
    its trainable variables or its ``jit_compile`` change.

    On several replicas (a ``tf.distribute`` strategy) each replica's gradients are
    those of its share of the global batch's mean loss, ``loss / replicas``, which
    Keras' optimizer sums over the replicas; the loss returned is the local batch's
    mean, for the metrics. There the function runs inline in the step: a nested
    ``tf.function`` cannot hold the cross-replica reductions of the forward and
    backward passes.
    """
    variables = model.trainable_variables
    count = replicas.num_replicas()

    def run(x, y):
        with tf.GradientTape() as tape:
            logits, edge_weights = model(x, training=True)
            loss = model.search_loss(y, logits)
            share = loss if count == 1 else loss * (1.0 / count)
        return loss, logits, edge_weights, tape.gradient(share, variables)

    if count > 1:
        return run
    key = (tuple(id(v) for v in variables), model.jit_compile)
    if _FORWARD_BACKWARD.get(model, (None,))[0] != key:
        # XLA compiles the step as one cluster and inlines the call itself.
        attributes = None if model.jit_compile else {"_noinline": True}
        _FORWARD_BACKWARD[model] = key, tf.function(run, autograph=False,
                                                    experimental_attributes=attributes)
    return _FORWARD_BACKWARD[model][1]


def loss_and_gradients(model, x, y, variables):
    """Loss, logits and edge weights of a training-mode pass on ``x``, and the
    gradients of the loss with respect to ``variables``."""
    loss, logits, edge_weights, grads = forward_backward(model)(x, y)
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    return loss, logits, edge_weights, [grads[position[id(v)]] for v in variables]


def make_train_function(model, keras_function):
    """``internals.TrainFunction`` where it applies (its internals usable, a graph step
    outside XLA under the default strategy, one step per execution), else Keras' own
    ``keras_function``."""
    graph_step = (not model.run_eagerly and not model.jit_compile
                  and model.steps_per_execution == 1)
    default_strategy = (not tf.distribute.has_strategy()
                        and model.distribute_strategy is tf.distribute.get_strategy())
    if not (graph_step and default_strategy and internals.enabled("graph_release")):
        return keras_function
    return internals.TrainFunction(model, keras_function,
                                   release=lambda: _FORWARD_BACKWARD.pop(model, None))


def train_step(model, data):
    with internals.registered_gradients_dropped():
        return model.search_step(data)


def test_step(model, data):
    return model.evaluation_step(data)
