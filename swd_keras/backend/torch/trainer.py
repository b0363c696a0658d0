"""The bilevel search step on PyTorch (``loss.backward()``), after the Keras guide
"Customizing what happens in fit() with PyTorch"."""

from __future__ import annotations

import torch


def _update(model, x, y, variables, optimizer):
    """Forward ``x``, step ``optimizer`` on ``variables`` with the batch loss."""
    model.zero_grad()
    logits, edge_weights = model(x, training=True)
    loss = model.search_loss(y, logits)
    loss.backward()
    grads = [v.value.grad if v.value.grad is not None else torch.zeros_like(v.value)
             for v in variables]
    with torch.no_grad():
        optimizer.apply(grads, variables)
    return loss.detach(), logits.detach(), edge_weights


def train_step(model, data):
    (x_train, y_train), (x_val, y_val) = data
    optimizer = model.optimizer
    if model.mode == "bilevel":
        arch_loss, _, edge_weights = _update(
            model, x_val, y_val, model.attention_variables, optimizer.attention_optimizer)
    else:
        with torch.no_grad():
            logits, edge_weights = model(x_val, training=True)
            arch_loss = model.search_loss(y_val, logits)
    with torch.no_grad():
        model.accumulate_edge_weights(edge_weights)
    variables = model.weight_variables if model.mode == "bilevel" else model.trainable_variables
    loss, logits, _ = _update(model, x_train, y_train, variables, optimizer.weights_optimizer)
    return model.record_metrics(loss, y_train, logits, arch_loss)


def test_step(model, data):
    x, y = data[:2]
    with torch.no_grad():
        logits, _ = model(x, training=False)
        return model.record_metrics(model.search_loss(y, logits), y, logits)
