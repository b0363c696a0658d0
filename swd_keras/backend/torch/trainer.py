"""The step interface of ``SWDSearchModel`` on PyTorch (``loss.backward()``), after the
Keras guide "Customizing what happens in fit() with PyTorch"."""

from __future__ import annotations

import torch

# Passes that need no gradient record no autograd graph.
no_gradient = torch.no_grad


def loss_and_gradients(model, x, y, variables):
    """Loss, logits and edge weights of a training-mode pass on ``x`` (detached), and
    the gradients of the loss with respect to ``variables`` (zeros where the loss does
    not depend on one)."""
    model.zero_grad()
    logits, edge_weights = model(x, training=True)
    loss = model.search_loss(y, logits)
    loss.backward()
    grads = [v.value.grad if v.value.grad is not None else torch.zeros_like(v.value)
             for v in variables]
    return loss.detach(), logits.detach(), edge_weights.detach(), grads


def train_step(model, data):
    return model.search_step(data)


def test_step(model, data):
    return model.evaluation_step(data)
