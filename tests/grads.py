"""Gradients of a scalar function of a layer's output, on whichever backend runs."""

from __future__ import annotations

import keras
import numpy as np


def layer_gradients(layer, loss_fn, *args, **kwargs):
    """Returns {variable path: gradient as NumPy} for ``loss_fn(layer(*args, **kwargs))``
    with respect to every trainable variable of the (built) layer; a variable the loss
    does not depend on gets zeros."""
    backend = keras.backend.backend()
    variables = layer.trainable_variables
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(layer(*args, **kwargs))
        grads = tape.gradient(loss, [v.value for v in variables])
    elif backend == "jax":
        import jax

        non_trainable = [v.value for v in layer.non_trainable_variables]

        def compute(trainable):
            out, _ = layer.stateless_call(trainable, non_trainable, *args, **kwargs)
            return loss_fn(out)

        # Compiled: eager JAX dispatches (and compiles) every op of a supernet on its
        # own, several times slower than compiling the whole gradient once.
        grads = jax.jit(jax.grad(compute))([v.value for v in variables])
    elif backend == "torch":
        for v in variables:
            v.value.grad = None
        loss = loss_fn(layer(*args, **kwargs))
        if loss.requires_grad:  # a loss cut off by stop_gradient has no graph at all
            loss.backward()
        grads = [v.value.grad for v in variables]
    else:
        raise NotImplementedError(backend)
    return {
        v.path: np.zeros(v.shape) if g is None else keras.ops.convert_to_numpy(g)
        for v, g in zip(variables, grads)
    }


def layer_outputs(layer, *args, **kwargs):
    """``layer(*args, **kwargs)`` without changing its variables (BatchNorm statistics
    included), compiled on JAX for the reason of ``layer_gradients``; a nested structure
    of NumPy arrays."""
    if keras.backend.backend() == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        outputs, _ = jax.jit(lambda t, n: layer.stateless_call(t, n, *args, **kwargs))(
            trainable, non_trainable)
    else:
        values = [keras.ops.convert_to_numpy(v.value).copy() for v in layer.variables]
        outputs = layer(*args, **kwargs)
        for variable, value in zip(layer.variables, values):
            variable.assign(value)
    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)


def input_gradient(fn, x):
    """The gradient of the scalar ``fn(x)`` with respect to the NumPy array ``x``."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = fn(x)
        grad = tape.gradient(loss, x)
    elif backend == "jax":
        import jax

        grad = jax.jit(jax.grad(fn))(x)  # compiled, as in layer_gradients
    elif backend == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        fn(x).backward()
        grad = x.grad
    else:
        raise NotImplementedError(backend)
    return keras.ops.convert_to_numpy(grad)
