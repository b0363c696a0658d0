"""DARTS' retraining optimizer and loss, and compiling a retrain network with them."""

from __future__ import annotations

import keras
from keras import ops

from swd_keras.network import AUX_LOGITS, LOGITS, has_auxiliary_head
from swd_keras.optimizers import EpochCosineDecay, TorchSGD


def make_optimizer(learning_rate: float, epochs: int, steps_per_epoch: int,
                   momentum: float = 0.9, weight_decay: float = 3e-4,
                   grad_clip: float | None = 5.0,
                   minimum_learning_rate: float = 0.0) -> TorchSGD:
    """DARTS' retraining optimizer: ``TorchSGD`` on an ``EpochCosineDecay`` schedule.

    ``TorchSGD`` is ``torch.optim.SGD``: the weight decay is L2 added to the (clipped)
    gradient inside the momentum, not Keras' decoupled decay. The cosine schedule is
    stepped once per epoch and computed from the optimizer's step counter, so a
    restored optimizer resumes it exactly (DARTS' ``CosineAnnealingLR``).

    Args:
        learning_rate: the initial learning rate (0.025 for CIFAR).
        epochs: training epochs (the cosine period).
        steps_per_epoch: optimizer steps per epoch.
        momentum: momentum factor.
        weight_decay: L2 coefficient, added to the gradient (PyTorch semantics).
        grad_clip: global-norm clip of the gradients; None or 0 for none.
        minimum_learning_rate: where the cosine ends (0 for retraining).

    Returns:
        The optimizer.
    """
    if not 0.0 <= minimum_learning_rate <= learning_rate:
        raise ValueError(f"minimum_learning_rate must be in [0, learning_rate={learning_rate}], "
                         f"got {minimum_learning_rate!r}.")
    schedule = EpochCosineDecay(learning_rate, minimum_learning_rate, epochs, steps_per_epoch)
    return TorchSGD(schedule, momentum=momentum, weight_decay=weight_decay,
                    global_clipnorm=grad_clip or None)


@keras.saving.register_keras_serializable(package="swd_keras")
class LabelSmoothingCrossentropy(keras.losses.Loss):
    """Cross-entropy of logits against integer labels, with optional label smoothing.

    The target distribution is ``(1 - label_smoothing) * one_hot + label_smoothing / n``
    (DARTS' ``CrossEntropyLabelSmooth`` for ImageNet); 0 gives the plain sparse
    cross-entropy.

    Args:
        label_smoothing: in [0, 1).
        name: the loss's name.
        **kwargs: ``keras.losses.Loss`` arguments (``reduction``, ...).

    Call arguments:
        y_true: (b,) or (b, 1) integer labels.
        y_pred: (b, n) logits.

    Returns:
        The mean loss over the batch (per the reduction).

    Example:
        >>> loss = LabelSmoothingCrossentropy(0.1)
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        target = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            target, y_pred, from_logits=True, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def compile_network(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    label_smoothing: float = 0.0, auxiliary_weight: float = 0.4,
                    top5: bool = False) -> keras.Model:
    """Compiles a retrain network for ``fit``: cross-entropy, auxiliary loss, accuracy.

    A model with the auxiliary output gets the loss ``main + auxiliary_weight * aux``
    (targets: ``with_auxiliary_targets``); accuracy is measured on the main logits.

    Args:
        model: from ``build_network``.
        optimizer: e.g. ``make_optimizer(...)``.
        label_smoothing: see ``LabelSmoothingCrossentropy``.
        auxiliary_weight: weight of the auxiliary loss (0.4 in DARTS).
        top5: also track top-5 accuracy (ImageNet).

    Returns:
        ``model``, compiled.
    """
    def metrics():
        found = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if top5:
            found.append(keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5"))
        return found

    if has_auxiliary_head(model):
        model.compile(
            optimizer=optimizer,
            loss={LOGITS: LabelSmoothingCrossentropy(label_smoothing),
                  AUX_LOGITS: LabelSmoothingCrossentropy(label_smoothing)},
            loss_weights={LOGITS: 1.0, AUX_LOGITS: float(auxiliary_weight)},
            metrics={LOGITS: metrics()})
    else:
        model.compile(optimizer=optimizer, loss=LabelSmoothingCrossentropy(label_smoothing),
                      metrics=metrics())
    return model


def with_auxiliary_targets(dataset):
    """Maps ``(x, y)`` batches to ``(x, {"logits": y, "aux_logits": y})`` (a tf.data map)."""
    return dataset.map(lambda x, y: (x, {LOGITS: y, AUX_LOGITS: y}))
