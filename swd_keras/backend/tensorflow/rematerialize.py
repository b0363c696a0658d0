"""Recomputation for ``swd_keras.rematerialize`` on TensorFlow: one custom gradient
per recomputed group."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

# The cells up to the first reduction hold most of the activations: the paper's step
# in 2.03 instead of 2.57 GB for a 1.3x longer step (docs/BENCHMARKS.md).
AUTO = "first-stage"
"""What ``--remat auto`` recomputes on this backend."""
# A graph pays for each group in tracing and graph memory: whole groups.
MAX_GROUP_EDGES = None


def state_mapping(variables):
    """None: a TensorFlow step reads its variables themselves (the tape watches them)."""
    return None


def recompute(function: Callable) -> Callable:
    """``tf.recompute_grad`` with one custom gradient where TensorFlow's nests two.

    TensorFlow's own wraps its gradient function in a second ``tf.custom_gradient``, and
    in a graph each custom gradient looks for the variables its function reads by
    walking the graph back from its outputs to its inputs: for the nested one, from
    the recomputed gradients back to the upstream gradients, that is through the whole
    forward network before the group, once per group. In the paper's search step that
    cost seconds of tracing (docs/BENCHMARKS.md). Here the function's
    own inputs bound the one walk, and the recomputation is differentiated by a plain
    ``tf.GradientTape`` inside the gradient function.
    """

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
