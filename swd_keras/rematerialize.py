"""Recomputing a layer's forward pass in the backward pass instead of keeping its
activations (gradient checkpointing), with its BatchNorm statistics updated once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
from keras import ops

# Keras exports StatelessScope but not the getter of the active one.
from keras.src.backend.common.stateless_scope import get_stateless_scope


def call_rematerialized(forward: Callable, tensors: Sequence, variables: Sequence,
                        statistics: Sequence):
    """``forward(*tensors)``, whose activations are recomputed for the gradient
    (``_recompute_tensorflow`` on TensorFlow, ``keras.remat`` elsewhere:
    ``jax.checkpoint``, torch's ``checkpoint``) instead of being kept from the forward
    pass to the backward pass.

    A recomputed forward would assign the BatchNorm moving statistics a second time
    (and, on JAX, leak values out of the checkpointed trace). So ``forward`` runs in a
    ``keras.StatelessScope`` that catches its assignments: the new statistics leave the
    recomputed function as outputs and are assigned here, once. The recomputation is
    the same arithmetic on the same inputs, so values and gradients do not change.

    Args:
        forward: the computation; it may assign ``statistics`` and nothing else.
        tensors: its positional arguments (tensors).
        variables: every variable ``forward`` reads (a JAX step's values of them are
            handed to the inner scope).
        statistics: the non-trainable variables ``forward`` assigns.

    Returns:
        ``forward(*tensors)``.

    Example:
        >>> bn = keras.layers.BatchNormalization()
        >>> x = keras.ops.ones((2, 4))
        >>> bn.build(x.shape)
        >>> y = call_rematerialized(lambda t: bn(t, training=True), [x], bn.variables,
        ...                         bn.non_trainable_variables)
    """
    outer = get_stateless_scope()
    # Under a JAX step every variable is read from the step's stateless scope.
    values = [] if outer is None else [(v, outer.get_current_value(v)) for v in variables]
    mapping = [(v, value) for v, value in values if value is not None] or None

    def run(*tensors):
        with keras.StatelessScope(state_mapping=mapping, initialize_variables=False) as scope:
            outputs = forward(*tensors)
        updated = [scope.get_current_value(v) for v in statistics]
        updated = [v.value if value is None else value for v, value in zip(statistics, updated)]
        return outputs, [ops.stop_gradient(value) for value in updated]

    remat = _recompute_tensorflow if keras.backend.backend() == "tensorflow" else keras.remat
    outputs, updated = remat(run)(*tensors)
    for variable, value in zip(statistics, updated):
        variable.assign(value)
    return outputs


def group_size(edges: int) -> int:
    """Edges per recomputed group, for ``edges`` edges ready together.

    PyTorch runs eagerly, so smaller groups only lower its peak (docs/BENCHMARKS.md,
    item 11); a graph backend pays for each group in tracing and graph memory, so it
    keeps whole groups."""
    return min(edges, 2) if keras.backend.backend() == "torch" else edges


def _recompute_tensorflow(function: Callable) -> Callable:
    """``tf.recompute_grad`` with one custom gradient where TensorFlow's nests two.

    TensorFlow's own wraps its gradient function in a second ``tf.custom_gradient``, and
    in a graph each custom gradient looks for the variables its function reads by
    walking the graph back from its outputs to its inputs: for the nested one, from
    the recomputed gradients back to the upstream gradients, that is through the whole
    forward network before the group, once per group. In the paper's search step that
    was 6 s of the 17 s of tracing (docs/BENCHMARKS.md, item 18). Here the function's
    own inputs bound the one walk, and the recomputation is differentiated by a plain
    ``tf.GradientTape`` inside the gradient function.
    """
    import tensorflow as tf

    def recomputed(*tensors):
        @tf.custom_gradient
        def forward(*tensors):
            outputs = function(*tensors)

            def gradient(*upstream, variables=()):
                # Recompute only once the upstream gradient exists; computed earlier,
                # the recomputed activations would be held as long as the kept ones.
                with tf.control_dependencies(upstream):
                    inputs = [tf.identity(t) for t in tensors]
                with tf.GradientTape() as tape:
                    tape.watch(inputs)
                    tape.watch(variables)
                    again = tf.nest.flatten(function(*inputs))
                grads = tape.gradient(again, inputs + list(variables), output_gradients=upstream,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
                return grads[:len(inputs)], grads[len(inputs):]

            return outputs, gradient

        return forward(*tensors)

    return recomputed
