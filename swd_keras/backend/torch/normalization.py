"""Batch normalization on PyTorch: ``normalize_from_output`` as an ``autograd.Function``
that saves the output and computes ``swd_keras.normalization.input_gradient``'s formula
in place, and the batch statistics by ``torch.var_mean`` (one pass, where Keras'
``moments`` squares the input into a temporary and reduces it and the input apart)."""

from __future__ import annotations

import torch


class _NormalizeFromOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, shift, mask):
        output = x * scale + shift
        ctx.save_for_backward(output, scale, mask)
        return output

    @staticmethod
    def backward(ctx, grad):
        # input_gradient's formula with one full-size temporary instead of four:
        # PyTorch runs eagerly, and under --remat these temporaries set the peak.
        output, scale, mask = ctx.saved_tensors
        axes = tuple(range(grad.dim() - 1))
        mean_grad = grad.mean(axes)
        mean_projection = (grad * output).mean(axes)
        if mask is not None:
            mean_grad, mean_projection = mean_grad * mask, mean_projection * mask
        result = torch.addcmul(grad, output, mean_projection, value=-1.0)
        return result.sub_(mean_grad).mul_(scale), None, None, None


def normalize_from_output(x, scale, shift, mask):
    """See ``swd_keras.normalization.normalize_from_output``."""
    return _NormalizeFromOutput.apply(x, scale, shift, mask)


def moments(x):
    """The mean and biased variance over all axes but the last (with their gradient)."""
    variance, mean = torch.var_mean(x, dim=tuple(range(x.dim() - 1)), correction=0)
    return mean, variance
