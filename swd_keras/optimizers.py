"""Optimizers: PyTorch-faithful SGD, and the pair of optimizers of the bilevel search."""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
from keras import ops

from swd_keras import backend, replicas

# The running backend's fused momentum step (``backend/<name>/sgd.py``), or None:
# then ``TorchSGD.update_step`` writes it with ``keras.ops``.
_FUSED_SGD = backend.module("sgd")


@keras.saving.register_keras_serializable(package="swd_keras")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum and L2 weight decay exactly as ``torch.optim.SGD`` does it.

    ``g = clip(grad) + weight_decay * w; buf = momentum * buf + g; w -= lr * buf``.
    Keras' own ``SGD`` differs in two ways that change DARTS-style training: its
    ``weight_decay`` is decoupled (it bypasses the momentum), and its momentum buffer
    holds ``lr * grad`` (so a changing learning rate acts differently).
    Gradient clipping (``global_clipnorm``) happens before the decay term is added, as
    ``clip_grad_norm_`` before ``optimizer.step()`` does, and on the gradient of the
    whole step: in a data-parallel step the norm is that of the gradient summed over
    the replicas (``replicas.clip_by_global_norm``), where Keras' own clipping would
    clip each replica's share before the all-reduce.

    Args:
        learning_rate: a float or a ``keras.optimizers.schedules`` schedule.
        momentum: momentum factor.
        weight_decay: L2 coefficient added to the gradient.
        global_clipnorm: the largest global norm of the step's gradient; None: no
            clipping. Not with ``gradient_accumulation_steps`` (the step's gradient
            is clipped, not the accumulated one).
        **kwargs: base optimizer arguments (``name``, ``loss_scale_factor``, ...).

    Example:
        >>> opt = TorchSGD(0.025, momentum=0.9, weight_decay=3e-4, global_clipnorm=5.0)
    """

    def __init__(self, learning_rate=0.025, momentum: float = 0.9,
                 weight_decay: float = 0.0, name: str = "torch_sgd",
                 global_clipnorm: float | None = None, **kwargs):
        kwargs.pop("use_ema", None)
        if global_clipnorm is not None and (kwargs.get("clipnorm") is not None
                                            or kwargs.get("clipvalue") is not None):
            raise ValueError("Only one of clipnorm, clipvalue and global_clipnorm can be set, "
                             f"got global_clipnorm={global_clipnorm}, "
                             f"clipnorm={kwargs.get('clipnorm')}, "
                             f"clipvalue={kwargs.get('clipvalue')}.")
        if global_clipnorm is not None and kwargs.get("gradient_accumulation_steps"):
            raise ValueError("global_clipnorm cannot be combined with "
                             "gradient_accumulation_steps in TorchSGD, got "
                             f"gradient_accumulation_steps="
                             f"{kwargs['gradient_accumulation_steps']}.")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got momentum={momentum}, "
                             f"weight_decay={weight_decay}.")
        self.momentum, self.l2 = float(momentum), float(weight_decay)
        # Held here, not by Keras: Keras' apply would clip each replica's share of the
        # gradient before its all-reduce (its own ``global_clipnorm`` stays None).
        self.clip_norm = None if global_clipnorm is None else float(global_clipnorm)

    def apply(self, grads, trainable_variables=None):
        """Clips ``grads`` to ``clip_norm`` over all replicas, then Keras' ``apply``
        (which sums the replicas' gradients and calls ``update_step``)."""
        if self.clip_norm:
            # Keras unscales the gradients after this; the threshold scales with them.
            grads = replicas.clip_by_global_norm(
                list(grads), self.clip_norm * (self.loss_scale_factor or 1.0))
        return super().apply(grads, trainable_variables)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.momentum_buffers = self.add_optimizer_variables(var_list, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        """``torch.optim.SGD.step`` for one variable; ``apply`` has clipped
        ``gradient`` already (``global_clipnorm``), as ``clip_grad_norm_`` does before
        the step, and Keras calls this only for the variables that have a gradient."""
        buffer = self.momentum_buffers[self._get_variable_index(variable)]
        gradient = ops.cast(gradient, variable.dtype)
        if _FUSED_SGD is not None:
            _FUSED_SGD.momentum_step(variable, buffer, gradient, learning_rate, self.momentum,
                                     self.l2)
            return
        if self.l2:
            gradient = gradient + self.l2 * variable
        step = self.momentum * buffer + gradient
        self.assign(buffer, step)
        self.assign_sub(variable, ops.cast(learning_rate, variable.dtype) * step)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, weight_decay=self.l2,
                      global_clipnorm=self.clip_norm)
        return config


class BilevelOptimizer(keras.optimizers.Optimizer):
    """Owns the two optimizers of a bilevel search as one Keras optimizer.

    Keras carries ``model.optimizer.variables`` through a stateless (JAX) train step;
    this wrapper exposes the variables of both inner optimizers there, its own first,
    then the network-weight optimizer's, then the attention optimizer's.

    Args:
        weights_optimizer: updates the network weights.
        attention_optimizer: updates the architecture (attention) parameters.
        is_attention: tells, for a variable, whether it is an attention parameter.
    """

    def __init__(self, weights_optimizer: keras.optimizers.Optimizer,
                 attention_optimizer: keras.optimizers.Optimizer,
                 is_attention: Callable[[keras.Variable], bool], name: str = "bilevel"):
        super().__init__(learning_rate=0.0, name=name)
        self.weights_optimizer = weights_optimizer
        self.attention_optimizer = attention_optimizer
        self._is_attention = is_attention

    def build(self, var_list):
        if self.built:
            return
        self.weights_optimizer.build([v for v in var_list if not self._is_attention(v)])
        self.attention_optimizer.build([v for v in var_list if self._is_attention(v)])
        super().build(var_list)

    @property
    def variables(self):
        return (self._variables + self.weights_optimizer.variables
                + self.attention_optimizer.variables)

    def apply(self, grads, trainable_variables=None):
        raise NotImplementedError(
            "BilevelOptimizer updates through weights_optimizer and attention_optimizer.")

    def get_config(self):
        raise NotImplementedError("BilevelOptimizer is rebuilt by SWDSearchModel.compile().")


@keras.saving.register_keras_serializable(package="swd_keras")
class EpochCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine annealing stepped once per epoch, as PyTorch's ``CosineAnnealingLR``
    is in DARTS: ``min + (initial - min) * (1 + cos(pi * epoch / epochs)) / 2``.

    Args:
        initial: the learning rate of epoch 0.
        minimum: the learning rate that epoch ``epochs`` would have.
        epochs: the schedule's length.
        steps_per_epoch: optimizer steps per epoch.
    """

    def __init__(self, initial: float, minimum: float, epochs: int, steps_per_epoch: int):
        self.initial, self.minimum = float(initial), float(minimum)
        self.epochs, self.steps_per_epoch = int(epochs), int(steps_per_epoch)

    def __call__(self, step):
        epoch = keras.ops.floor_divide(keras.ops.cast(step, "float32"), self.steps_per_epoch)
        cosine = (1.0 + keras.ops.cos(math.pi * epoch / self.epochs)) / 2.0
        return self.minimum + (self.initial - self.minimum) * cosine

    def get_config(self):
        return {"initial": self.initial, "minimum": self.minimum, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch}
