"""scikit-learn's bundled 8x8 digits (1,797 images, no download)."""

from __future__ import annotations

import numpy as np

from swd_keras.data.augment import PadCropFlip
from swd_keras.data.sources import Source
from swd_keras.data.sources.arrays import array_source, channel_statistics
from swd_keras.data.splits import stratified_parts

# The held-out test part is the same for every run seed: a stratified fifth of the set.
_TEST_SEED = 0
_TEST_PARTS = 5
PIXEL_MAX = 16


def load() -> Source:
    """The digits source: a fixed stratified fifth as the test split; 1-pixel shifts,
    no mirroring (a mirrored digit is another symbol)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[..., None]  # integer values 0..16
    labels = bunch.target.astype(np.int64)
    parts = stratified_parts(labels, _TEST_PARTS, np.random.default_rng(_TEST_SEED))
    test_indices, train_indices = parts[0], np.concatenate(parts[1:])
    mean, std = channel_statistics(images[train_indices] / PIXEL_MAX)
    preprocessing = PadCropFlip(mean, std, images.shape[1:], max_value=PIXEL_MAX, pad=1,
                                flip=False)
    return array_source("digits", images, labels, train_indices, test_indices, 10,
                        preprocessing)
