"""All candidate operations of search edges, computed together (SPEC §1-2).

In a search edge every candidate operation reads the same input, and most of them
end in a non-affine BatchNorm. Computing them one layer at a time (``ops.py``) gives
the training graph hundreds of small operations per edge, which TensorFlow spends
minutes tracing and optimising before the first step (docs/BENCHMARKS.md).
``CandidateOps`` computes the same functions with far fewer, larger operations:

- one ReLU shared by the convolutions and factorized reduce;
- each depthwise convolution of an op as one convolution over all the edges'
  channels, at the op's own kernel size (3x3 kernels padded into the 5x5 ones'
  convolution would multiply zeros: 50 taps per channel where 34 do the work); at
  stride 2 the dilated ones run undilated on the input's sampled pixel parity, which
  is exactly the strided dilated convolution;
- the pointwise convolutions of a stage as one 1x1 convolution with a block-diagonal
  kernel assembled each call from the per-op kernels;
- the BatchNorms of a stage as one BatchNorm over their concatenated channels (the
  statistics are per channel, so ``BN(concat) == concat(BN)``); every op's final
  BatchNorm, the pools' included, is one BatchNorm over the edge's features; the
  statistics, and a whole BatchNorm whose output is not kept, by the backend's fused
  kernels (``swd_keras.normalization``);
- the average pool's divisor (the count of real pixels) as a constant.

Which of these forms computes a primitive is part of its registration
(``ops.register_primitive(..., fused=FusedKernel(kind, size))``). A primitive without
a fused form runs as its own layer (``make_op``), owned by the ``CandidateOps`` of its
edge; its output follows the fused ones.

Everything above is per channel or block-diagonal, so the same holds across edges:
``compute_candidates`` runs the candidate ops of several edges (several
``CandidateOps`` layers with one configuration) on their inputs side by side, with the
graph operations of one.

The trainable variables keep the shapes of the per-op layers in ``ops.py`` (DARTS'
parameter counts); only the BatchNorms' moving statistics are stored concatenated, one
pair of vectors per fused BatchNorm. The ``none`` operation is not computed: its output
is the constant zero, which callers add where they need it.

The convolutions and pools come from ``swd_keras.kernels``: on JAX and PyTorch the
backend's own forms, picked once at import.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from swd_keras import replicas
from swd_keras.kernels import average_pool, depthwise_conv, max_pool, pointwise_conv, same_padding
from swd_keras.normalization import batch_normalize, batch_statistics, normalize_from_output
from swd_keras.ops import (
    _BN_EPSILON,
    _BN_MOMENTUM,
    check_primitives,
    get_primitive,
    make_op,
)

_DILATION = 2
# Grouped pointwise convolutions up to this many channels use one block-diagonal kernel.
_BLOCK_DIAGONAL_MAX_CHANNELS = 64


@functools.lru_cache(maxsize=64)
def _real_pixel_scale(h: int, w: int, window: int, strides: int) -> np.ndarray:
    """window² / (real pixels in each "same" window), shape (1, h', w', 1): turns a
    zero-padded average into the average over the real pixels only (PyTorch's
    ``count_include_pad=False``)."""
    counts = []
    for size in (h, w):
        real = np.pad(np.ones(size), same_padding(size, window, strides))
        counts.append(np.lib.stride_tricks.sliding_window_view(real, window)[::strides]
                      .sum(axis=1))
    return (window * window / np.outer(*counts))[None, :, :, None].astype("float32")


def _concat(tensors: list, axis: int = -1):
    return tensors[0] if len(tensors) == 1 else ops.concatenate(tensors, axis=axis)


def _eye(n: int, like) -> np.ndarray:
    return np.eye(n, dtype=keras.backend.standardize_dtype(like.dtype))


def _stack(kernels: list):
    """Same-shape (1, 1, r, c) kernels as one (n, r, c) tensor."""
    return ops.reshape(_concat(kernels, axis=0), (len(kernels),) + tuple(kernels[0].shape[-2:]))


def _block_kernel(blocks, edges: int, rows: str, cols: str):
    """A (1, 1, R, C) 1x1-convolution kernel with the (r, c) matrices ``blocks``
    (E * G, r, c), block (e, g) = ``blocks[e * G + g]``, on its block diagonal.

    ``rows`` and ``cols`` order the kernel's rows and columns by the letters ``e``
    (edge), ``g`` (op) and ``i`` (row) or ``j`` (column): e.g. rows ``"egi"`` for
    edge-major input, columns ``"gej"`` for op-major output.
    """
    count, r, c = blocks.shape
    groups = count // edges
    if count == 1:
        return ops.reshape(blocks, (1, 1, r, c))
    # Letters e, g index the block; f, h repeat them for the columns (a diagonal).
    # A letter of extent 1 is left out.
    cols = cols.replace("e", "f").replace("g", "h")
    operands, inputs = [], ""
    for letter, twin, size in (("e", "f", edges), ("g", "h", groups)):
        if size == 1:
            rows, cols = rows.replace(letter, ""), cols.replace(twin, "")
        else:
            operands.append(_eye(size, blocks))
            inputs += f",{letter}{twin}"
    block_letters = "".join(x for x, size in (("e", edges), ("g", groups)) if size > 1)
    full = ops.einsum(f"{block_letters}ij{inputs}->{rows}{cols}",
                      ops.reshape(blocks, tuple(n for n in (edges, groups) if n > 1) + (r, c)),
                      *operands)
    return ops.reshape(full, (1, 1, count * r, count * c))


def concat_channel_ranges(pieces: list):
    """Concatenates ``(tensor, start, stop)`` channel ranges, merging adjacent ranges of
    one tensor first; a whole tensor is used without slicing."""
    merged = []
    for tensor, start, stop in pieces:
        if merged and merged[-1][0] is tensor and merged[-1][2] == start:
            merged[-1] = (tensor, merged[-1][1], stop)
        else:
            merged.append((tensor, start, stop))
    return _concat([t if (start, stop) == (0, t.shape[-1]) else t[..., start:stop]
                    for t, start, stop in merged])


@keras.saving.register_keras_serializable(package="swd_keras")
class CandidateOps(layers.Layer):
    """The candidate operations of a search edge on one input, as one layer.

    Computes exactly what the per-op layers of ``ops.py`` compute for a search edge
    (``make_op(name, channels, strides, affine, pool_batch_norm=True)`` for each name),
    with far fewer graph operations for the primitives registered with a fused form
    (see the module docstring); the others run as their own layers
    (``per_op_layers``, in op order).

    Variables, per operation (``op_weights(name)``), with the shapes of ``ops.py``:
    sep convs ``first_depthwise`` (k, k, c, 1), ``first_pointwise`` (1, 1, c, c),
    ``second_depthwise``, ``second_pointwise``; dil convs ``depthwise``, ``pointwise``;
    factorized reduce ``conv_1`` (1, 1, c, c // 2), ``conv_2`` (1, 1, c, c - c // 2);
    with ``affine=True`` also ``gamma``/``beta`` (sep convs: ``first_gamma``, ...).
    Non-trainable: ``sep_bn_moving_mean``/``_variance`` (the separable ops' first
    BatchNorms, concatenated in op order) and ``bn_moving_mean``/``_variance`` (every
    op's final BatchNorm, concatenated in op order). Primitives without a fused form
    keep their layer's variables.

    Args:
        channels: input and output channels ``c`` of every operation.
        strides: 1, or 2 in a reduction edge.
        primitives: registered operation names (``ops.PRIMITIVES`` or any subset, any
            order, with registered ones; at most one skip connection).
        affine: whether the conv ops' BatchNorms learn scale and offset (the pools'
            BatchNorms never do, as in DARTS' search edge).

    Call arguments:
        x: a (b, h, w, c) tensor; h and w must be static (known when traced).
        training: whether BatchNorms use (and update) batch statistics.

    Returns:
        The outputs of the operations in ``computed_primitives`` (all but the zero
        ops, ``none``), concatenated on channels in that order: (b, ceil(h / strides),
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
        forms = {p: get_primitive(p).fused for p in self.primitives}
        self._sizes = {p: form.size for p, form in forms.items() if form is not None}

        def of_kind(kind):
            return [p for p, form in forms.items() if form is not None and form.kind == kind]

        self._sep, self._dil = of_kind("sep_conv"), of_kind("dil_conv")
        self._pools = {p: kind for kind in ("avg_pool", "max_pool") for p in of_kind(kind)}
        skips, zeros = of_kind("skip"), of_kind("zero")
        if len(skips) > 1:
            raise ValueError(f"primitives may hold one skip connection, got {skips}.")
        self._skip = skips[0] if skips else None
        self._reduce = strides == 2 and self._skip is not None
        if self._reduce and self.channels < 2:
            raise ValueError(f"A stride-2 {self._skip} (factorized reduce) needs channels "
                             f">= 2, got channels={self.channels}.")
        self.computed_primitives = tuple(p for p in self.primitives if p not in zeros)
        self._per_op = [p for p, form in forms.items() if form is None]
        # Every fused op but identity and the zero ops ends in a BatchNorm.
        self._normalised = [p for p in self.computed_primitives if p not in self._per_op
                            and not (p == self._skip and strides == 1)]
        identity = [self._skip] if self._skip is not None and strides == 1 else []
        self.feature_primitives = (tuple(self._normalised + identity + self._per_op)
                                   or tuple(zeros[:1]))
        """The op order of ``compute_candidates``' output: the fused ops that end in a
        BatchNorm, then identity (putting identity back between them would cost slices
        of the activations and their gradients), then the per-op layers' ops; the zero
        op alone if nothing else."""
        self.per_op_layers = [make_op(p, self.channels, strides, affine, name=p,
                                      dtype=self.dtype_policy) for p in self._per_op]
        self._weights: dict[str, dict[str, keras.Variable]] = {}

    def fusion_key(self) -> tuple:
        """Layers with equal keys can be computed together by ``compute_candidates``."""
        return (self.channels, self.strides, self.primitives, self.affine, self.trainable,
                self.dtype_policy.name)

    # -- variables ----------------------------------------------------------------

    def build(self, input_shape):
        c = self.channels
        if input_shape[-1] != c:
            raise ValueError(f"CandidateOps(channels={c}) got an input with "
                             f"{input_shape[-1]} channels.")
        for name in self._sep:
            k = self._sizes[name]
            for stage in ("first", "second"):
                self._add(name, f"{stage}_depthwise", (k, k, c, 1))
                self._add(name, f"{stage}_pointwise", (1, 1, c, c))
        for name in self._dil:
            k = self._sizes[name]
            self._add(name, "depthwise", (k, k, c, 1))
            self._add(name, "pointwise", (1, 1, c, c))
        if self._reduce:
            self._add(self._skip, "conv_1", (1, 1, c, c // 2))
            self._add(self._skip, "conv_2", (1, 1, c, c - c // 2))
        if self.affine:
            for name, prefix in self._affine_batch_norms():
                self._add(name, f"{prefix}gamma", (c,), "ones")
                self._add(name, f"{prefix}beta", (c,), "zeros")
        if self._sep:
            self.sep_bn_moving_mean, self.sep_bn_moving_variance = self._add_statistics(
                "sep_bn", len(self._sep) * c)
        if self._normalised:
            self.bn_moving_mean, self.bn_moving_variance = self._add_statistics(
                "bn", len(self._normalised) * c)
        for layer in self.per_op_layers:
            layer.build(tuple(input_shape))

    def _affine_batch_norms(self):
        """(op, variable prefix) of every affine BatchNorm (all but the pools')."""
        return ([(p, stage) for p in self._sep for stage in ("first_", "second_")]
                + [(p, "") for p in self._dil]
                + ([(self._skip, "")] if self._reduce else []))

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
        docstring; a per-op layer's by variable path); empty for parameter-free
        operations."""
        if primitive not in self.primitives:
            raise ValueError(f"{primitive!r} is not one of this layer's primitives "
                             f"{list(self.primitives)}.")
        if primitive in self._per_op:
            layer = self.per_op_layers[self._per_op.index(primitive)]
            return {v.path: v for v in layer.trainable_variables}
        return dict(self._weights.get(primitive, {}))

    def call(self, x, training=None):
        features = compute_candidates([self], x, training=training)
        if not self.computed_primitives:
            return features[..., :0]
        if self.feature_primitives == self.computed_primitives:
            return features
        c, order = self.channels, self.feature_primitives
        return concat_channel_ranges([(features, order.index(p) * c, (order.index(p) + 1) * c)
                                      for p in self.computed_primitives])

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        if self.strides == 2:
            h, w = (None if d is None else -(-d // 2) for d in (h, w))
        return (b, h, w, len(self.computed_primitives) * self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "strides": self.strides,
                "primitives": list(self.primitives), "affine": self.affine}


def compute_candidates(candidate_layers: Sequence[CandidateOps], x, training=None):
    """Runs the candidate ops of several edges at once.

    Args:
        candidate_layers: E built ``CandidateOps`` layers with one ``fusion_key()``
            (one per edge; each uses its own variables).
        x: (b, h, w, E * c): the inputs of the E layers side by side, layer ``e`` on
            channels ``e * c .. (e + 1) * c``; h and w static.
        training: whether BatchNorms use (and update) batch statistics.

    Returns:
        (b, h', w', len(feature_primitives) * E * c): the outputs of the ops but
        ``none`` (zeros for ``none`` alone), op-major: op ``o`` (in the layers'
        ``feature_primitives`` order) of layer ``e`` on channels ``(o * E + e) * c``.
    """
    first = candidate_layers[0]
    if any(layer.fusion_key() != first.fusion_key() for layer in candidate_layers):
        raise ValueError("compute_candidates needs layers of one configuration.")
    return _Fused(candidate_layers, training)(x)


class _Fused:
    """The computation of ``compute_candidates`` for one list of layers.

    Channel orders: the input is edge-major (e, i); op outputs and the convolutions'
    intermediate results are op-major (g, e, i).
    """

    def __init__(self, candidate_layers, training):
        self.layers = list(candidate_layers)
        self.first = first = self.layers[0]
        self.edges = len(self.layers)
        self.c, self.s = first.channels, first.strides
        self.training = bool(training) and first.trainable

    def weights(self, name, part):
        """Op ``name``'s ``part`` of every layer."""
        return [layer._weights[name][part] for layer in self.layers]

    def __call__(self, x):
        f, s, width = self.first, self.s, self.edges * self.c
        h, w = x.shape[1], x.shape[2]
        outputs = {}  # op -> (tensor, start, stop): its (e, j) channels
        if f._sep or f._dil or f._reduce:
            relu = ops.relu(x)
        if f._sep:
            outputs.update(self._by_op(f._sep, self._sep_convs(relu)))
        if f._dil:
            outputs.update(self._by_op(f._dil, self._dil_convs(relu, h, w)))
        if f._reduce:
            outputs[f._skip] = (self._factorized_reduce(relu, h, w), 0, width)
        for p, kind in f._pools.items():
            outputs[p] = (self._pool(x, kind, f._sizes[p]), 0, width)
        for index, p in enumerate(f._per_op):
            outputs[p] = (_concat([layer.per_op_layers[index](part, training=self.training)
                                   for layer, part in zip(self.layers, self._per_edge(x))]),
                          0, width)

        identity = s == 1 and f._skip is not None
        if f._normalised:
            # The identity's channels ride along unchanged after the normalised ones,
            # so that the features are this one tensor (see _batch_norm).
            normalised = self._batch_norm(
                concat_channel_ranges([outputs[p] for p in f._normalised]
                                      + ([(x, 0, width)] if identity else [])),
                [(layer.bn_moving_mean, layer.bn_moving_variance) for layer in self.layers],
                op_major=True,
                affine=[(p, None if p in f._pools else "second_" if p in f._sep else "")
                        for p in f._normalised],
                passthrough=width if identity else 0, output_kept=True)
            outputs.update(self._by_op(f._normalised + [f._skip] * identity, normalised))
        elif identity:
            outputs[f._skip] = (x, 0, width)
        if not f.computed_primitives:  # `none` alone: its zeros
            return ops.zeros_like(x[:, ::s, ::s, :])
        return concat_channel_ranges([outputs[p] for p in f.feature_primitives])

    def _per_edge(self, x):
        """The layers' inputs: channels ``e * c .. (e + 1) * c`` of ``x`` for layer e."""
        c = self.c
        return [x] if self.edges == 1 else [x[..., e * c:(e + 1) * c]
                                            for e in range(self.edges)]

    def _pool(self, x, kind, size):
        """A "same" pool of every channel; the average counts real pixels only."""
        s, h, w = self.s, x.shape[1], x.shape[2]
        if kind == "max_pool":
            return max_pool(x, size, s)
        padding = ((0, 0), same_padding(h, size, s), same_padding(w, size, s), (0, 0))
        pooled = average_pool(ops.pad(x, padding), size, s)
        scale = _real_pixel_scale(h, w, size, s)
        return pooled * ops.convert_to_tensor(scale, dtype=pooled.dtype)

    def _by_op(self, names, tensor):
        """{op: its channel range} of an op-major tensor of the ops ``names``."""
        width = self.edges * self.c
        return {n: (tensor, i * width, (i + 1) * width) for i, n in enumerate(names)}

    # -- the convolutions -----------------------------------------------------------

    def _depthwise_convs(self, x, names, part, strides=1, dilation_rate=1, per_op=False):
        """Op ``names[g]``'s depthwise convolution of every layer, each at its own kernel
        size, channels (g, e, i): of ``x``'s (e, i) channels for every op, or, with
        ``per_op``, of the channels (g, e, i) of ``x`` for op g."""
        count = len(names)
        inputs = ops.split(x, count, axis=-1) if per_op and count > 1 else [x] * count
        return _concat([depthwise_conv(y, _concat(self.weights(name, part), axis=2),
                                       strides=strides, dilation_rate=dilation_rate)
                        for y, name in zip(inputs, names)])

    def _pointwise(self, y, names, part, rows, cols):
        """Applies op ``names[g]``'s pointwise kernel of layer e to channel group (e, g);
        ``rows``, ``cols``: the input and output channel orders (see ``_block_kernel``).

        Few channels: one 1x1 convolution with a block-diagonal kernel. Many: its zero
        blocks would cost more than moving the groups to a batch axis, so a batched
        matrix product (measured on CPU: equal at 64 channels, 2-4x faster at 128-256).
        """
        blocks = _stack([layer._weights[n][part] for layer in self.layers for n in names])
        count, c, c_out = blocks.shape
        if count * c <= _BLOCK_DIAGONAL_MAX_CHANNELS:
            return pointwise_conv(y, _block_kernel(blocks, self.edges, rows, cols))
        b, h, w = y.shape[:3]
        sizes = {"e": self.edges, "g": count // self.edges, "i": c}
        grouped = ops.reshape(y, (-1,) + tuple(sizes[x] for x in rows))  # (N, *rows)
        grouped = ops.transpose(grouped, [1 + rows.index(x) for x in "eg"] + [0]
                                + [1 + rows.index("i")])  # (E, G, N, c)
        out = ops.matmul(ops.reshape(grouped, (count, -1, c)), blocks)  # (E * G, N, c')
        out = ops.reshape(out, (sizes["e"], sizes["g"], -1, c_out))  # (E, G, N, c')
        out = ops.transpose(out, [2] + [{"e": 0, "g": 1, "j": 3}[x] for x in cols])
        return ops.reshape(out, (-1, h, w, count * c_out))

    def _sep_convs(self, relu):
        """The separable convolutions, channels (op, e, j)."""
        names = self.first._sep
        y = self._depthwise_convs(relu, names, "first_depthwise", strides=self.s)
        y = self._pointwise(y, names, "first_pointwise", "gei", "gej")
        y = self._batch_norm(y, [(layer.sep_bn_moving_mean, layer.sep_bn_moving_variance)
                                 for layer in self.layers], op_major=True,
                             affine=[(n, "first_") for n in names])
        y = self._depthwise_convs(ops.relu(y), names, "second_depthwise", per_op=True)
        return self._pointwise(y, names, "second_pointwise", "gei", "gej")

    def _dil_convs(self, relu, h, w):
        """The dilated convolutions, channels (op, e, j)."""
        names = self.first._dil
        if self.s == 1:
            y = self._depthwise_convs(relu, names, "depthwise", dilation_rate=_DILATION)
        else:
            # A stride-2 "same" convolution with dilation 2 reads only the pixels of one
            # parity (odd for even sizes, even for odd ones): it is the undilated
            # stride-1 convolution of those pixels.
            y = self._depthwise_convs(relu[:, 1 - h % 2::2, 1 - w % 2::2, :], names,
                                      "depthwise")
        return self._pointwise(y, names, "pointwise", "gei", "gej")

    def _factorized_reduce(self, relu, h, w):
        """DARTS' factorized reduce, channels (e, j): 1x1 convolutions of the even
        pixels (``conv_1``, the first c // 2 outputs) and of the input shifted by one
        pixel (``conv_2``), as one convolution of both samplings side by side."""
        c = self.c
        # The shifted input's zero row/column at the end is sampled for odd sizes only.
        odd = relu[:, 1::2, 1::2, :]
        if h % 2 or w % 2:
            odd = ops.pad(odd, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        halves = []
        for part, before, after in (("conv_1", 0, c - c // 2), ("conv_2", c // 2, 0)):
            kernel = _block_kernel(_stack(self.weights(self.first._skip, part)), self.edges,
                                   "egi", "egj")
            halves.append(ops.pad(ops.reshape(kernel, (self.edges, c, self.edges, -1)),
                                  ((0, 0), (0, 0), (0, 0), (before, after))))
        kernel = ops.reshape(ops.concatenate(halves, axis=0),
                             (1, 1, 2 * self.edges * c, self.edges * c))
        return pointwise_conv(ops.concatenate([relu[:, ::2, ::2, :], odd], axis=-1), kernel)

    # -- the BatchNorms -------------------------------------------------------------

    def _batch_norm(self, x, statistics, op_major, affine, passthrough=0,
                    output_kept=False):
        """keras' BatchNormalization (momentum 0.9, epsilon 1e-5: PyTorch's
        BatchNorm2d) on channels-last ``x``.

        ``statistics``: per layer, its (moving mean, moving variance) variables, each
        the BatchNorm's ops side by side; x's channels are (op, e, j) if ``op_major``,
        else (e, op, j). ``affine``: (op, prefix) of each BatchNorm in one layer's
        statistics order; a ``None`` prefix is not affine (a pool). The last
        ``passthrough`` channels of ``x`` are returned as they are.

        ``output_kept``: the caller keeps the result for its own gradient; then, in
        training without affine BatchNorms, the gradient is computed from the result
        (``normalization.normalize_from_output``) and ``x`` is not kept.

        In training the batch statistics are the backend's one-kernel ones
        (``normalization.batch_statistics``); a BatchNorm with neither kept output nor
        passthrough channels (the separable ops' first) is the backend's fused batch
        norm with its own gradient (``normalization.batch_normalize``).
        """
        dtype = x.dtype
        x = ops.cast(x, keras.backend.result_type(dtype, "float32"))
        reorder = op_major and self.edges > 1 and len(affine) > 1
        shape = (self.edges, len(affine), self.c)
        width = x.shape[-1] - passthrough

        def to_x(vectors):  # per layer, in its order -> x's channel order
            joined = _concat(vectors, axis=0)
            if reorder:
                joined = ops.reshape(ops.transpose(ops.reshape(joined, shape), (1, 0, 2)),
                                     (-1,))
            return joined

        from_output = output_kept and self.training and not self.first.affine
        # Without kept output or passthrough channels, the backend's fused batch norm.
        fused = self.training and not from_output and not passthrough
        if self.first.affine:
            c = self.c
            gamma = to_x([ops.ones((c,)) if prefix is None else
                          layer._weights[n][f"{prefix}gamma"]
                          for layer in self.layers for n, prefix in affine])
            beta = to_x([ops.zeros((c,)) if prefix is None else
                         layer._weights[n][f"{prefix}beta"]
                         for layer in self.layers for n, prefix in affine])
        else:
            gamma = beta = None
        if self.training:
            # Over the global batch: a data-parallel step equals a one-device step.
            if fused:
                y, mean, variance = batch_normalize(x, gamma, beta, _BN_EPSILON)
            elif from_output:
                mean, variance = batch_statistics(x)
            else:
                mean, variance = replicas.moments(x, axes=(0, 1, 2))
            if passthrough:
                mean, variance = mean[:width], variance[:width]
            for moving, batch in ((0, mean), (1, variance)):
                if reorder:  # x's order -> the layers' order
                    batch = ops.reshape(ops.transpose(
                        ops.reshape(batch, (shape[1], shape[0], shape[2])), (1, 0, 2)), (-1,))
                variables = [pair[moving] for pair in statistics]
                updated = (_concat(variables, axis=0) * _BN_MOMENTUM
                           + batch * (1.0 - _BN_MOMENTUM))
                if len(variables) == 1:
                    variables[0].assign(updated)
                    continue
                for variable, value in zip(variables, ops.split(updated, len(variables))):
                    variable.assign(value)
            if fused:
                return ops.cast(y, dtype)
        else:
            mean = to_x([pair[0] for pair in statistics])
            variance = to_x([pair[1] for pair in statistics])
        scale = ops.rsqrt(variance + _BN_EPSILON)
        if gamma is not None:
            scale = scale * gamma
            shift = beta - mean * scale
        else:
            shift = -mean * scale
        mask = None
        if passthrough:  # scale 1 and shift 0
            scale = ops.pad(scale, ((0, passthrough),), constant_values=1.0)
            shift = ops.pad(shift, ((0, passthrough),))
            mask = ops.convert_to_tensor(np.repeat([1.0, 0.0], [width, passthrough]), x.dtype)
        if from_output:
            y = normalize_from_output(x, scale, shift, mask)
        else:
            y = x * scale + shift
        return ops.cast(y, dtype)
