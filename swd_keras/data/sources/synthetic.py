"""A small generated set for smoke runs: smooth random class patterns plus pixel noise
(learnable, deterministic, tiny)."""

from __future__ import annotations

import numpy as np

from swd_keras.data.augment import PadCropFlip
from swd_keras.data.sources import Source
from swd_keras.data.sources.arrays import array_source, channel_statistics

_SEED = 20_240_601
SHAPE = (16, 16, 3)
CLASSES = 10
NUM_TRAIN, NUM_TEST = 512, 128


def load() -> Source:
    """The synthetic source, generated afresh (``sources.in_memory`` caches it)."""
    rng = np.random.default_rng(_SEED)
    height, width, channels = SHAPE
    coarse = rng.uniform(0.0, 1.0, (CLASSES, height // 4, width // 4, channels))
    patterns = coarse.repeat(4, axis=1).repeat(4, axis=2)
    total = NUM_TRAIN + NUM_TEST
    labels = rng.permutation(np.arange(total) % CLASSES)
    noisy = 0.25 + 0.5 * patterns[labels] + rng.normal(0.0, 0.12, (total, *SHAPE))
    images = np.round(np.clip(noisy, 0.0, 1.0) * 255).astype(np.uint8)
    train_indices = np.arange(NUM_TRAIN)
    test_indices = np.arange(NUM_TRAIN, total)
    mean, std = channel_statistics(images[train_indices] / 255.0)
    preprocessing = PadCropFlip(mean, std, SHAPE, max_value=255, pad=2, flip=False)
    return array_source("synthetic", images, labels, train_indices, test_indices, CLASSES,
                        preprocessing)
