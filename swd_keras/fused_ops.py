"""All candidate operations of one search edge, computed together (SPEC §1-2).

In a search edge every candidate operation reads the same input, and most of them
end in a non-affine BatchNorm. Computing them one layer at a time (``ops.py``) gives
the training graph hundreds of small operations per edge: a traced bilevel step of the
paper's supernet had about 150,000 graph operations, which TensorFlow spends minutes
tracing and optimising before the first step. ``CandidateOps`` computes the same
functions with far fewer, larger operations:

- one ReLU shared by the convolutions and factorized reduce;
- the first depthwise convolutions of the separable ops as one depthwise convolution
  with a depth multiplier (the smaller kernels zero-padded to the largest each call),
  and likewise the dilated ops; at stride 2 the dilated ones run undilated on the
  input's sampled pixel parity, which is exactly the strided dilated convolution;
- the pointwise convolutions of a stage as one 1x1 convolution with a block-diagonal
  kernel assembled each call from the per-op kernels;
- the BatchNorms of a stage as one BatchNorm over their concatenated channels (the
  statistics are per channel, so ``BN(concat) == concat(BN)``); every op's final
  BatchNorm, the pools' included, is one BatchNorm over the edge's features;
- the average pool's divisor (the count of real pixels) as a constant.

The trainable variables keep the shapes of the per-op layers in ``ops.py`` (DARTS'
parameter counts); only the BatchNorms' moving statistics are stored concatenated, one
pair of vectors per fused BatchNorm. The ``none`` operation is not computed: its output
is the constant zero, which callers add where they need it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from swd_keras.ops import _BN_EPSILON, _BN_MOMENTUM, check_primitives, same_padding

_SEP_CONV = {"sep_conv_3x3": 3, "sep_conv_5x5": 5}
_DIL_CONV = {"dil_conv_3x3": 3, "dil_conv_5x5": 5}
_POOLS = ("avg_pool_3x3", "max_pool_3x3")
_DILATION = 2


def _ceil_half(size):
    return None if size is None else -(-size // 2)


@functools.lru_cache(maxsize=64)
def _real_pixel_scale(h: int, w: int, strides: int) -> np.ndarray:
    """9 / (real pixels in each 3x3 "same" window), shape (1, h', w', 1): turns a
    zero-padded average into the average over the real pixels only (PyTorch's
    ``count_include_pad=False``)."""
    counts = []
    for size in (h, w):
        real = np.pad(np.ones(size), same_padding(size, 3, strides))
        counts.append(np.lib.stride_tricks.sliding_window_view(real, 3)[::strides].sum(axis=1))
    return (9.0 / np.outer(*counts))[None, :, :, None].astype("float32")


def _embed(kernel, size: int):
    """Zero-pads a (k, k, c, m) depthwise kernel to (size, size, c, m), centred; the
    padded taps multiply by zero, so the convolution is unchanged."""
    pad = (size - kernel.shape[0]) // 2
    if pad == 0:
        return kernel
    return ops.pad(kernel, ((pad, pad), (pad, pad), (0, 0), (0, 0)))


def _grouped_pointwise_kernel(kernels: list, interleaved: bool):
    """One (1, 1, G * c, G * c') kernel applying each (1, 1, c, c') kernel to its own
    group of input channels, output groups side by side.

    Input group ``g`` is channels ``g * c .. (g + 1) * c``, or, ``interleaved``, channels
    ``i * G + g``: the channel order of a depthwise convolution with depth multiplier G.
    """
    if len(kernels) == 1:
        return kernels[0]
    groups, (_, _, c, c_out) = len(kernels), kernels[0].shape
    stacked = ops.reshape(ops.concatenate(kernels, axis=0), (groups, c, c_out))
    # Block-diagonal: entry (input i of group g, output j of group h) is
    # kernel_g[i, j] if g == h, else 0.
    pattern = "gij,gh->ighj" if interleaved else "gij,gh->gihj"
    eye = np.eye(groups, dtype=keras.backend.standardize_dtype(stacked.dtype))
    blocks = ops.einsum(pattern, stacked, eye)
    return ops.reshape(blocks, (1, 1, groups * c, groups * c_out))


def concat_channel_ranges(pieces: list):
    """Concatenates on channels, merging adjacent slices of one tensor first.

    ``pieces`` holds ``(tensor, start, stop)`` channel ranges; a whole tensor is
    returned without slicing, and a single piece without concatenation.
    """
    merged = []
    for tensor, start, stop in pieces:
        if merged and merged[-1][0] is tensor and merged[-1][2] == start:
            merged[-1] = (tensor, merged[-1][1], stop)
        else:
            merged.append((tensor, start, stop))
    parts = [t if (start, stop) == (0, t.shape[-1]) else t[..., start:stop]
             for t, start, stop in merged]
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)


@keras.saving.register_keras_serializable(package="swd_keras")
class CandidateOps(layers.Layer):
    """The candidate operations of a search edge on one input, as one layer.

    Computes exactly what the per-op layers of ``ops.py`` compute for a search edge
    (``make_op(name, channels, strides, affine, pool_batch_norm=True)`` for each name),
    with far fewer graph operations; see the module docstring.

    Variables, per operation (``op_weights(name)``), with the shapes of ``ops.py``:
    sep convs ``first_depthwise`` (k, k, c, 1), ``first_pointwise`` (1, 1, c, c),
    ``second_depthwise``, ``second_pointwise``; dil convs ``depthwise``, ``pointwise``;
    factorized reduce ``conv_1`` (1, 1, c, c // 2), ``conv_2`` (1, 1, c, c - c // 2);
    with ``affine=True`` also ``gamma``/``beta`` (sep convs: ``first_gamma``, ...).
    Non-trainable: ``sep_bn_moving_mean``/``_variance`` (the separable ops' first
    BatchNorms, concatenated in op order) and ``bn_moving_mean``/``_variance`` (every
    op's final BatchNorm, concatenated in op order).

    Args:
        channels: input and output channels ``c`` of every operation.
        strides: 1, or 2 in a reduction edge.
        primitives: operation names (``ops.PRIMITIVES`` or any subset, any order).
        affine: whether the conv ops' BatchNorms learn scale and offset (the pools'
            BatchNorms never do, as in DARTS' search edge).

    Call arguments:
        x: a (b, h, w, c) tensor; h and w must be static (known when traced).
        training: whether BatchNorms use (and update) batch statistics.

    Returns:
        The outputs of the operations in ``computed_primitives`` (all but ``none``),
        concatenated on channels in that order: (b, ceil(h / strides),
        ceil(w / strides), len(computed_primitives) * c).

    Example:
        >>> candidates = CandidateOps(4, strides=2)
        >>> features = candidates(keras.ops.ones((2, 8, 8, 4)))  # (2, 4, 4, 28)
    """

    def __init__(self, channels: int, strides: int = 1,
                 primitives: Sequence[str] = ("sep_conv_3x3",), affine: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides!r}.")
        self.channels, self.strides, self.affine = int(channels), strides, affine
        self.primitives = check_primitives(primitives)
        if strides == 2 and "skip_connect" in self.primitives and self.channels < 2:
            raise ValueError(f"A stride-2 skip_connect (factorized reduce) needs channels "
                             f">= 2, got channels={self.channels}.")
        self.computed_primitives = tuple(p for p in self.primitives if p != "none")
        self._sep = [p for p in self.primitives if p in _SEP_CONV]
        self._dil = [p for p in self.primitives if p in _DIL_CONV]
        self._reduce = strides == 2 and "skip_connect" in self.primitives
        # Every op but identity and none ends in a BatchNorm: these are normalised
        # together, in op order.
        self._normalised = [p for p in self.computed_primitives
                            if not (p == "skip_connect" and strides == 1)]
        self._weights: dict[str, dict[str, keras.Variable]] = {}

    # -- variables ----------------------------------------------------------------

    def build(self, input_shape):
        c = self.channels
        if input_shape[-1] != c:
            raise ValueError(f"CandidateOps(channels={c}) got an input with "
                             f"{input_shape[-1]} channels.")
        for name in self._sep:
            k = _SEP_CONV[name]
            self._add(name, "first_depthwise", (k, k, c, 1))
            self._add(name, "first_pointwise", (1, 1, c, c))
            self._add(name, "second_depthwise", (k, k, c, 1))
            self._add(name, "second_pointwise", (1, 1, c, c))
            if self.affine:
                for stage in ("first", "second"):
                    self._add(name, f"{stage}_gamma", (c,), "ones")
                    self._add(name, f"{stage}_beta", (c,), "zeros")
        for name in self._dil:
            k = _DIL_CONV[name]
            self._add(name, "depthwise", (k, k, c, 1))
            self._add(name, "pointwise", (1, 1, c, c))
        if self._reduce:
            self._add("skip_connect", "conv_1", (1, 1, c, c // 2))
            self._add("skip_connect", "conv_2", (1, 1, c, c - c // 2))
        if self.affine:
            for name in self._dil + (["skip_connect"] if self._reduce else []):
                self._add(name, "gamma", (c,), "ones")
                self._add(name, "beta", (c,), "zeros")
        if self._sep:
            self.sep_bn_moving_mean, self.sep_bn_moving_variance = self._add_statistics(
                "sep_bn", len(self._sep) * c)
        if self._normalised:
            self.bn_moving_mean, self.bn_moving_variance = self._add_statistics(
                "bn", len(self._normalised) * c)

    def _add(self, primitive, part, shape, initializer="glorot_uniform"):
        # BatchNorm's gamma and beta stay float32 under mixed precision, as in keras.
        variable = self.add_weight(shape=shape, initializer=initializer,
                                   autocast=initializer == "glorot_uniform",
                                   name=f"{primitive}_{part}")
        self._weights.setdefault(primitive, {})[part] = variable

    def _add_statistics(self, prefix, size):
        # autocast=False as in keras' BatchNormalization: statistics stay float32.
        mean = self.add_weight(shape=(size,), initializer="zeros", trainable=False,
                               autocast=False, name=f"{prefix}_moving_mean")
        variance = self.add_weight(shape=(size,), initializer="ones", trainable=False,
                                   autocast=False, name=f"{prefix}_moving_variance")
        return mean, variance

    def op_weights(self, primitive: str) -> dict[str, keras.Variable]:
        """The trainable variables of one operation, by part name (see the class
        docstring); empty for parameter-free operations."""
        if primitive not in self.primitives:
            raise ValueError(f"{primitive!r} is not one of this layer's primitives "
                             f"{list(self.primitives)}.")
        return dict(self._weights.get(primitive, {}))

    # -- computation --------------------------------------------------------------

    def call(self, x, training=None):
        c, s = self.channels, self.strides
        h, w = x.shape[1], x.shape[2]
        pieces = {}  # primitive -> its (tensor, start, stop) channel ranges
        if self._sep or self._dil or self._reduce:
            relu = ops.relu(x)
        if self._sep:
            pieces.update(self._split(self._sep, self._sep_convs(relu, training)))
        if self._dil:
            pieces.update(self._split(self._dil, self._dil_convs(relu, h, w)))
        if self._reduce:
            kernels = self._weights["skip_connect"]
            # DARTS' second half sees the input shifted by one pixel; the zero
            # row/column it adds at the end is sampled only for odd sizes.
            shifted = relu[:, 1:, 1:, :]
            if h % 2 or w % 2:
                shifted = ops.pad(shifted, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
            pieces["skip_connect"] = [
                (ops.conv(relu, kernels["conv_1"], strides=2, padding="same"), 0, c // 2),
                (ops.conv(shifted, kernels["conv_2"], strides=2, padding="same"),
                 0, c - c // 2)]
        if "avg_pool_3x3" in self.primitives:
            padding = ((0, 0), same_padding(h, 3, s), same_padding(w, 3, s), (0, 0))
            pooled = ops.average_pool(ops.pad(x, padding), 3, s, padding="valid")
            scale = ops.convert_to_tensor(_real_pixel_scale(h, w, s), dtype=pooled.dtype)
            pieces["avg_pool_3x3"] = [(pooled * scale, 0, c)]
        if "max_pool_3x3" in self.primitives:
            pieces["max_pool_3x3"] = [(ops.max_pool(x, 3, s, padding="same"), 0, c)]

        if self._normalised:
            features = concat_channel_ranges(
                [piece for p in self._normalised for piece in pieces[p]])
            gamma, beta = self._affine_parameters(
                [(p, "second_" if p in _SEP_CONV else None if p in _POOLS else "")
                 for p in self._normalised])
            features = self._batch_norm(features, self.bn_moving_mean,
                                        self.bn_moving_variance, gamma, beta, training)
            pieces.update(self._split(self._normalised, features))
        if s == 1 and "skip_connect" in self.primitives:
            pieces["skip_connect"] = [(x, 0, c)]
        if not self.computed_primitives:  # only `none`: no features
            return x[:, ::s, ::s, :0]
        return concat_channel_ranges(
            [piece for p in self.computed_primitives for piece in pieces[p]])

    def _sep_convs(self, relu, training):
        """The separable convolutions: (b, h', w', len(sep) * c), in op order."""
        weights = [self._weights[p] for p in self._sep]
        size = max(_SEP_CONV[p] for p in self._sep)
        y = ops.depthwise_conv(
            relu, self._multiplier_kernel([v["first_depthwise"] for v in weights], size),
            strides=self.strides, padding="same")
        y = self._pointwise(y, [v["first_pointwise"] for v in weights], interleaved=True)
        gamma, beta = self._affine_parameters([(p, "first_") for p in self._sep])
        y = ops.relu(self._batch_norm(y, self.sep_bn_moving_mean,
                                      self.sep_bn_moving_variance, gamma, beta, training))
        kernel = ops.concatenate([_embed(v["second_depthwise"], size) for v in weights],
                                 axis=2)
        y = ops.depthwise_conv(y, kernel, strides=1, padding="same")
        return self._pointwise(y, [v["second_pointwise"] for v in weights])

    def _dil_convs(self, relu, h, w):
        """The dilated convolutions: (b, h', w', len(dil) * c), in op order."""
        weights = [self._weights[p] for p in self._dil]
        size = max(_DIL_CONV[p] for p in self._dil)
        kernel = self._multiplier_kernel([v["depthwise"] for v in weights], size)
        if self.strides == 1:
            y = ops.depthwise_conv(relu, kernel, strides=1, padding="same",
                                   dilation_rate=_DILATION)
        else:
            # A stride-2 "same" convolution with dilation 2 reads only the pixels of one
            # parity (odd for even sizes, even for odd ones): it is the undilated
            # stride-1 convolution of those pixels.
            y = ops.depthwise_conv(relu[:, 1 - h % 2::2, 1 - w % 2::2, :], kernel,
                                   strides=1, padding="same")
        return self._pointwise(y, [v["pointwise"] for v in weights], interleaved=True)

    @staticmethod
    def _multiplier_kernel(kernels: list, size: int):
        """Per-op (k, k, c, 1) kernels as one (size, size, c, n) kernel: depth
        multiplier j of channel i is op j's filter of channel i."""
        embedded = [_embed(k, size) for k in kernels]
        return embedded[0] if len(embedded) == 1 else ops.concatenate(embedded, axis=3)

    @staticmethod
    def _pointwise(y, kernels: list, interleaved: bool = False):
        """One 1x1 convolution applying each (1, 1, c, c) kernel to its own group of
        channels; ``interleaved``: the groups are interleaved as a depth multiplier's."""
        return ops.conv(y, _grouped_pointwise_kernel(kernels, interleaved), padding="valid")

    def _affine_parameters(self, parts):
        """Concatenated gamma and beta of the BatchNorms ``parts``, (op, prefix) pairs
        naming ``{prefix}gamma`` and ``{prefix}beta``, or (None, None) without
        ``affine``. A ``None`` prefix (a pool: never affine) gets ones and zeros."""
        if not self.affine:
            return None, None
        c = self.channels
        gammas = [ops.ones((c,)) if prefix is None else self._weights[p][f"{prefix}gamma"]
                  for p, prefix in parts]
        betas = [ops.zeros((c,)) if prefix is None else self._weights[p][f"{prefix}beta"]
                 for p, prefix in parts]
        if len(parts) == 1:
            return gammas[0], betas[0]
        return ops.concatenate(gammas, axis=0), ops.concatenate(betas, axis=0)

    def _batch_norm(self, x, moving_mean, moving_variance, gamma, beta, training):
        """keras' BatchNormalization (momentum 0.9, epsilon 1e-5 as DARTS' PyTorch
        BatchNorm2d) on channels-last ``x``, with the statistics in the given variables."""
        dtype = x.dtype
        x = ops.cast(x, keras.backend.result_type(dtype, "float32"))
        if training and self.trainable:
            mean, variance = ops.moments(x, axes=(0, 1, 2))
            moving_mean.assign(moving_mean * _BN_MOMENTUM + mean * (1.0 - _BN_MOMENTUM))
            moving_variance.assign(
                moving_variance * _BN_MOMENTUM + variance * (1.0 - _BN_MOMENTUM))
        else:
            mean, variance = moving_mean, moving_variance
        y = ops.batch_normalization(x, mean, variance, axis=-1, offset=beta, scale=gamma,
                                    epsilon=_BN_EPSILON)
        return ops.cast(y, dtype)

    def _split(self, names, tensor):
        """{name: [its channel range of ``tensor``]} for ops stored side by side."""
        c = self.channels
        return {name: [(tensor, i * c, (i + 1) * c)] for i, name in enumerate(names)}

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        if self.strides == 2:
            h, w = _ceil_half(h), _ceil_half(w)
        return (b, h, w, len(self.computed_primitives) * self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "strides": self.strides,
                "primitives": list(self.primitives), "affine": self.affine}
