"""The bilevel search step on JAX: stateless, after the Keras guide "Customizing what
happens in fit() with JAX". Runs under ``jax.jit``; all state goes in and comes out.

The optimizer state is the ``BilevelOptimizer``'s: its own variables, then the
weights optimizer's, then the attention optimizer's.
"""

from __future__ import annotations

import jax


def _split(model, trainable):
    """(attention, weights) values, in ``model.trainable_variables`` order."""
    flags = [model.is_attention(v) for v in model.trainable_variables]
    attention = [t for t, f in zip(trainable, flags) if f]
    weights = [t for t, f in zip(trainable, flags) if not f]
    return attention, weights, flags


def _merge(flags, attention, weights):
    attention, weights = iter(attention), iter(weights)
    return [next(attention) if f else next(weights) for f in flags]


def _loss_and_grads(model, trainable, non_trainable, x, y, wrt_attention):
    """Loss, outputs and new non-trainable state of one forward pass, and the gradient
    with respect to the attention (or the weight) values only."""
    attention, weights, flags = _split(model, trainable)

    def loss_fn(part):
        merged = _merge(flags, part, weights) if wrt_attention else _merge(
            flags, attention, part)
        (logits, edge_weights), new_non_trainable = model.stateless_call(
            merged, non_trainable, x, training=True)
        return model.search_loss(y, logits), (logits, edge_weights, new_non_trainable)

    part = attention if wrt_attention else weights
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(part)
    return loss, aux, grads, attention, weights, flags


def _update_metrics(model, metrics_variables, loss, y, logits, arch_loss):
    new_variables, logs, offset = [], {}, 0
    for metric in model.metrics:
        size = len(metric.variables)
        state = metrics_variables[offset:offset + size]
        offset += size
        if metric is model.loss_tracker:
            state = metric.stateless_update_state(state, loss)
        elif metric is model.accuracy_tracker:
            state = metric.stateless_update_state(state, y, logits)
        elif metric is model.arch_loss_tracker and arch_loss is not None:
            state = metric.stateless_update_state(state, arch_loss)
        logs[metric.name] = metric.stateless_result(state)
        new_variables += state
    return logs, new_variables


def _accumulate(model, non_trainable, edge_weights):
    """Adds this pass's edge weights to the running-mean variables."""
    positions = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    non_trainable = list(non_trainable)
    total = positions[id(model.edge_weight_sum)]
    count = positions[id(model.edge_weight_count)]
    non_trainable[total] = non_trainable[total] + edge_weights
    non_trainable[count] = non_trainable[count] + 1.0
    return non_trainable


def train_step(model, state, data):
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    (x_train, y_train), (x_val, y_val) = data
    optimizer = model.optimizer
    own, weights_opt, attention_opt = optimizer.split_variables(optimizer_variables)

    if model.mode == "bilevel":
        arch_loss, (_, edge_weights, non_trainable), grads, attention, weights, flags = (
            _loss_and_grads(model, trainable, non_trainable, x_val, y_val, True))
        attention, attention_opt = optimizer.attention_optimizer.stateless_apply(
            attention_opt, grads, attention)
        trainable = _merge(flags, attention, weights)
    else:
        (logits, edge_weights), non_trainable = model.stateless_call(
            trainable, non_trainable, x_val, training=True)
        arch_loss = model.search_loss(y_val, logits)
    non_trainable = _accumulate(model, non_trainable, edge_weights)

    if model.mode == "bilevel":
        loss, (logits, _, non_trainable), grads, attention, weights, flags = (
            _loss_and_grads(model, trainable, non_trainable, x_train, y_train, False))
        weights, weights_opt = optimizer.weights_optimizer.stateless_apply(
            weights_opt, grads, weights)
        trainable = _merge(flags, attention, weights)
    else:
        def loss_fn(values):
            (logits, _), new_non_trainable = model.stateless_call(
                values, non_trainable, x_train, training=True)
            return model.search_loss(y_train, logits), (logits, new_non_trainable)

        (loss, (logits, non_trainable)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(trainable)
        trainable, weights_opt = optimizer.weights_optimizer.stateless_apply(
            weights_opt, grads, trainable)

    logs, metrics_variables = _update_metrics(
        model, metrics_variables, loss, y_train, logits, arch_loss)
    return logs, (trainable, non_trainable, own + weights_opt + attention_opt,
                  metrics_variables)


def test_step(model, state, data):
    trainable, non_trainable, metrics_variables = state
    x, y = data[:2]
    (logits, _), non_trainable = model.stateless_call(trainable, non_trainable, x,
                                                      training=False)
    loss = model.search_loss(y, logits)
    logs, metrics_variables = _update_metrics(model, metrics_variables, loss, y, logits, None)
    logs.pop(model.arch_loss_tracker.name)
    return logs, (trainable, non_trainable, metrics_variables)
