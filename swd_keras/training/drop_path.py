"""Drop path in retraining: setting the cells' rate, and DARTS' linear ramp over epochs."""

from __future__ import annotations

import keras

from swd_keras.cells import check_drop_path_rate
from swd_keras.network import cells_of
from swd_keras.training.config import check_positive_int


def set_drop_path_rate(model: keras.Model, rate: float) -> int:
    """Sets the drop-path probability of every retrain ``Cell`` of ``model``.

    Args:
        model: a model holding ``Cell`` layers.
        rate: the probability, in [0, 1).

    Returns:
        How many cells were set.

    Raises:
        ValueError: ``rate`` out of range, or no cell in ``model``.
    """
    rate = check_drop_path_rate(rate, "rate")
    cells = cells_of(model)
    if not cells:
        raise ValueError(f"model {model.name!r} has no retrain Cell layers to set.")
    for cell in cells:
        cell.drop_path_rate.assign(rate)
    return len(cells)


class DropPathSchedule(keras.callbacks.Callback):
    """Ramps the cells' drop-path probability linearly: ``p_e = max_rate * e / epochs``.

    Set at the start of every (0-based) epoch ``e``, as DARTS' ``train.py`` does: 0 in the
    first epoch, ``max_rate * (epochs - 1) / epochs`` in the last. The rate goes into a
    variable, so the compiled training step is not retraced. The epoch's rate is added to
    the logs as ``drop_path_rate``.

    Args:
        max_rate: the maximum probability (0.2 in the paper), in [0, 1).
        epochs: the total number of training epochs.

    Example:
        >>> model.fit(data, epochs=600, callbacks=[DropPathSchedule(0.2, 600)])
    """

    def __init__(self, max_rate: float, epochs: int):
        super().__init__()
        self.max_rate = check_drop_path_rate(max_rate, "max_rate")
        self.epochs = check_positive_int(epochs, "epochs")
        self._rate = 0.0

    def rate(self, epoch: int) -> float:
        """The probability during (0-based) ``epoch``."""
        return self.max_rate * epoch / self.epochs

    def on_epoch_begin(self, epoch, logs=None):
        self._rate = self.rate(epoch)
        set_drop_path_rate(self.model, self._rate)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["drop_path_rate"] = self._rate
