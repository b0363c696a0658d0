"""TorchSGD's momentum step on TensorFlow as one fused kernel per variable.

``ResourceApplyMomentum`` (without Nesterov) computes ``accum = momentum * accum +
grad; var -= lr * accum``, which is ``torch.optim.SGD``'s ``buf = momentum * buf + g;
w -= lr * buf`` up to rounding (the kernel may fuse a product and a sum, as PyTorch's
own ``add_(buf, alpha=-lr)`` does). One graph operation replaces the generic update's
six (two reads, two products, a sum and two assignments, less what they share), and
the search step updates about 1,450 variables: its optimizer was over half of the step
graph's operations, whose tracing and executor set-up are most of the time before the
first step. For the same reason the scalar factors are made once (``_scalar``) and
captured by each step graph, instead of as two constants per variable, and the learning
rate is read once per graph (``_learning_rate``), instead of once per variable.
"""

from __future__ import annotations

import functools
import weakref

import keras
import tensorflow as tf


@functools.cache
def _scalar(value: float, dtype: tf.DType) -> tf.Tensor:
    """``value`` as an eager tensor, which a traced function captures once however many
    of its operations read it."""
    with tf.init_scope():
        return tf.constant(value, dtype)


# For each graph being traced: {(id(learning_rate), dtype): weak references to the
# learning rate and its read}. Weak, so that the cache keeps no graph alive.
_READS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _learning_rate(learning_rate, dtype: tf.DType) -> tf.Tensor:
    """``learning_rate`` (Keras passes its variable to every update) as a ``dtype``
    tensor, read once per traced graph: converting the variable for each update adds a
    read per variable. Each ``tf.distribute`` device's copy of the variable, and each
    branch or loop-body graph, has its own read."""
    if not tf.inside_function():
        return tf.cast(learning_rate, dtype)
    reads = _READS.setdefault(tf.compat.v1.get_default_graph(), {})
    key = (id(learning_rate), dtype)
    source, read = reads.get(key, (None, None))
    if source is None or source() is not learning_rate or read() is None:
        read = weakref.ref(tf.cast(learning_rate, dtype))
        reads[key] = (weakref.ref(learning_rate), read)
    return read()


def momentum_step(variable, buffer, gradient, learning_rate, momentum: float,
                  weight_decay: float) -> None:
    """``g = gradient + weight_decay * variable; buffer = momentum * buffer + g;
    variable -= learning_rate * buffer``.

    Args:
        variable: the variable updated, a ``keras.Variable`` or ``tf.Variable``
            (inside ``tf.distribute``'s update, the replica's copy).
        buffer: its momentum buffer, the same kinds, on the same device.
        gradient: the (clipped) gradient, of ``variable``'s dtype.
        learning_rate: a scalar tensor or variable.
        momentum: the momentum factor.
        weight_decay: the L2 coefficient; 0: none.
    """
    variable, buffer = (v.value if isinstance(v, keras.Variable) else v
                        for v in (variable, buffer))
    if weight_decay:
        gradient = gradient + _scalar(weight_decay, variable.dtype) * variable
    tf.raw_ops.ResourceApplyMomentum(
        var=variable.handle, accum=buffer.handle,
        lr=_learning_rate(learning_rate, variable.dtype), grad=gradient,
        momentum=_scalar(momentum, variable.dtype), use_locking=False,
        use_nesterov=False)
