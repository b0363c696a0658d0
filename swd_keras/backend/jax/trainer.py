"""The step interface of ``SWDSearchModel`` on JAX: stateless, after the Keras guide
"Customizing what happens in fit() with JAX". Keras runs the step under ``jax.jit``
with all state going in and coming out; the step runs ``SWDSearchModel``'s algorithm
in a ``keras.StatelessScope`` that holds that state, so the algorithm's reads,
assignments, metric updates and optimizer updates are those of the stateful backends.
"""

from __future__ import annotations

import contextlib

import jax
import keras

# JAX differentiates only inside jax.value_and_grad: a pass outside it keeps nothing.
no_gradient = contextlib.nullcontext


def loss_and_gradients(model, x, y, variables):
    """Loss, logits and edge weights of a training-mode pass on ``x``, and the
    gradients of the loss with respect to ``variables``; the pass's BatchNorm
    statistics are assigned to the step's scope."""
    current = [(v, v.value) for v in model.variables]  # the step's values
    statistics = model.non_trainable_variables

    def loss_of(values):
        mapping = current + list(zip(variables, values))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logits, edge_weights = model(x, training=True)
            loss = model.search_loss(y, logits)
        return loss, (logits, edge_weights, [scope.get_current_value(v) for v in statistics])

    (loss, (logits, edge_weights, updated)), grads = jax.value_and_grad(
        loss_of, has_aux=True)([v.value for v in variables])
    for variable, value in zip(statistics, updated):
        variable.assign(value)
    return loss, logits, edge_weights, grads


def _run_in_scope(step, variables, state, data):
    """``step(data)`` with ``variables`` (groups of variables) holding ``state`` (the
    same groups of values); returns its logs and the groups' new values."""
    mapping = [(v, value) for group, values in zip(variables, state)
               for v, value in zip(group, values)]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = step(data)
    return logs, tuple([scope.get_current_value(v) for v in group] for group in variables)


def train_step(model, state, data):
    variables = (model.trainable_variables, model.non_trainable_variables,
                 model.optimizer.variables, model.metrics_variables)
    return _run_in_scope(model.search_step, variables, state, data)


def test_step(model, state, data):
    variables = (model.trainable_variables, model.non_trainable_variables,
                 model.metrics_variables)
    return _run_in_scope(model.evaluation_step, variables, state, data)
