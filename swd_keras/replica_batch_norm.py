"""ReplicaBatchNormalization: Keras' BatchNormalization with cross-replica statistics."""

from __future__ import annotations

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="swd_keras")
class ReplicaBatchNormalization(layers.BatchNormalization):
    """Keras' ``BatchNormalization`` with cross-replica statistics
    (``synchronized=True``), saved without that setting.

    Where a layer's statistics come from is a property of where it runs, not of the
    model: a network trained on several TensorFlow replicas loads as a plain
    BatchNormalization on one device and on every backend (Keras refuses
    ``synchronized=True`` outside TensorFlow).

    Args:
        **kwargs: ``keras.layers.BatchNormalization`` arguments.

    Example:
        >>> with tf.distribute.MirroredStrategy().scope():
        ...     bn = ReplicaBatchNormalization(synchronized=True)
    """

    def get_config(self):
        config = super().get_config()
        config.pop("synchronized", None)
        return config
