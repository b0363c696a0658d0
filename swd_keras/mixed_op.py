"""The SWD mixed edge (SPEC §2), and its DARTS softmax variant for the ablations.

``call_edges`` computes several edges at once (the edges of a cell that leave nodes
already computed): their candidate operations run side by side on one tensor
(``fused_ops.compute_candidates``) and their attention MLPs as one batched product,
so the traced graph has the operations of one edge, not of every edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from swd_keras.attention import LowerAttention, UpperAttention, check_divisible
from swd_keras.fused_ops import CandidateOps, compute_candidates, max_pool
from swd_keras.ops import PRIMITIVES, check_primitives


@keras.saving.register_keras_serializable(package="swd_keras")
class SWDMixedOp(layers.Layer):
    """One edge of the SWD-NAS search cell (SPEC §2).

    Upper attention scores the input's channels and scales the input by them; the top
    ``c / k`` channels enter all candidate operations; lower attention reweights the
    concatenated op outputs, whose ``n`` slices are summed; the sum is written back into
    the selected channel positions of the scaled input (max-pooled 2x2 at stride 2).
    The edge's architecture weights ``Atten`` (eq. 7) are the batch mean of the lower
    attention summed over each op's channels, without gradient.

    The candidate ops are computed together (``fused_ops.CandidateOps``), and the edge
    is computed by ``call_edges``, which can also compute several edges at once.

    With ``lower_attention=False`` the op outputs are mixed by a softmax over learnable
    ``alphas`` (a DARTS / PC-DARTS edge), and ``Atten`` is that softmax. With
    ``upper_attention=False`` all channels enter the ops and the mixed output is the
    edge output.

    Args:
        channels: the edge's input and output channels ``c``.
        strides: 1, or 2 for edges leaving the inputs of a reduction cell.
        k: ``c / k`` channels enter the candidate operations; must divide ``c``.
        primitives: names of the candidate operations, in channel-slice order.
        ua_reduction: reduction ratio of the upper-attention MLP.
        ua_pooling: upper-attention pooling: ``"avg+max"``, ``"avg"`` or ``"max"``.
        la_reduction: reduction ratio of the lower-attention MLP.
        la_pooling: lower-attention pooling: ``"avg"`` or ``"avg+max"``.
        upper_attention: ``False`` sends all channels to the ops (no selection).
        lower_attention: ``False`` mixes the ops by a softmax over alphas instead.
        shared_alphas: with ``lower_attention=False``, take the softmax weights from
            the caller (``edge_weights``) instead of owning alphas, so that several
            edges share them as in DARTS.
        use_bias: whether the attention MLPs have biases.
        affine: whether the ops' BatchNorms learn scale and offset (False in search).

    Call arguments:
        x: the edge input, shape (b, h, w, c).
        edge_weights: (n,) mixing weights; required with ``shared_alphas=True``.
        training: whether BatchNorm uses batch statistics.
        return_edge_weights: also return ``Atten``.

    Returns:
        The edge output, shape (b, ceil(h / strides), ceil(w / strides), c); with
        ``return_edge_weights=True`` the tuple ``(output, atten)`` with ``atten`` of
        shape (n,), gradient-free.

    Example:
        >>> edge = SWDMixedOp(16, strides=1, k=4)
        >>> y, atten = edge(keras.random.normal((2, 8, 8, 16)), return_edge_weights=True)
    """

    def __init__(self, channels: int, strides: int = 1, k: int = 4,
                 primitives: Sequence[str] = PRIMITIVES, ua_reduction: int = 2,
                 ua_pooling: str = "avg+max", la_reduction: int = 8,
                 la_pooling: str = "avg", upper_attention: bool = True,
                 lower_attention: bool = True, shared_alphas: bool = False,
                 use_bias: bool = True, affine: bool = False, **kwargs):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides!r}.")
        if upper_attention:
            check_divisible(channels, k)
        if shared_alphas and lower_attention:
            raise ValueError("shared_alphas=True needs lower_attention=False.")
        self.channels, self.strides, self.k = channels, strides, k
        self.primitives = check_primitives(primitives)
        self.ua_reduction, self.ua_pooling = ua_reduction, ua_pooling
        self.la_reduction, self.la_pooling = la_reduction, la_pooling
        self.upper_attention, self.lower_attention = upper_attention, lower_attention
        self.shared_alphas, self.use_bias, self.affine = shared_alphas, use_bias, affine

        self.op_channels = channels // k if upper_attention else channels
        self.candidate_ops = CandidateOps(self.op_channels, strides, self.primitives, affine,
                                          name="candidate_ops")
        self.upper = (UpperAttention(ua_reduction, ua_pooling, use_bias, name="upper")
                      if upper_attention else None)
        self.lower = (LowerAttention(la_reduction, la_pooling, use_bias, name="lower")
                      if lower_attention else None)
        self.alphas = None

    @property
    def num_ops(self) -> int:
        return len(self.primitives)

    @property
    def attention_variables(self) -> list:
        """The architecture parameters: UA and LA MLP weights, or the edge's alphas."""
        variables = []
        for layer in (self.upper, self.lower):
            if layer is not None:
                variables += layer.trainable_variables
        if self.alphas is not None:
            variables.append(self.alphas)
        return variables

    def build(self, input_shape):
        b, h, w, c = input_shape
        if c != self.channels:
            raise ValueError(f"SWDMixedOp(channels={self.channels}) got an input with "
                             f"{c} channels.")
        if self.upper is not None:
            self.upper.build(input_shape)
        self.candidate_ops.build((b, h, w, self.op_channels))
        out_h = None if h is None else -(-h // self.strides)
        out_w = None if w is None else -(-w // self.strides)
        if self.lower is not None:
            self.lower.build((b, out_h, out_w, self.num_ops * self.op_channels))
        elif not self.shared_alphas:
            self.alphas = self.add_weight(
                shape=(self.num_ops,), name="alphas",
                initializer=keras.initializers.RandomNormal(stddev=1e-3))

    def call(self, x, edge_weights=None, training=None, return_edge_weights=False):
        ((out, atten),) = call_edges([self], [x], [edge_weights], training=training)
        return (out, atten) if return_edge_weights else out

    def fusion_key(self) -> tuple:
        """Edges with equal keys are computed together by ``call_edges``."""
        return (self.get_config() | {"name": None}, self.trainable,
                self.candidate_ops.fusion_key())

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "strides": self.strides,
                "k": self.k, "primitives": list(self.primitives),
                "ua_reduction": self.ua_reduction, "ua_pooling": self.ua_pooling,
                "la_reduction": self.la_reduction, "la_pooling": self.la_pooling,
                "upper_attention": self.upper_attention,
                "lower_attention": self.lower_attention,
                "shared_alphas": self.shared_alphas, "use_bias": self.use_bias,
                "affine": self.affine}


def call_edges(edges: Sequence[SWDMixedOp], inputs: Sequence, edge_weights=None,
               training=None) -> list[tuple]:
    """Computes several built edges at once; the same as calling each edge.

    Edges of one configuration (``fusion_key()``) are computed together, with the
    graph operations of one edge; edges may share inputs (a cell's edges leaving one
    node) or not.

    Args:
        edges: the edges.
        inputs: each edge's input, (b, h, w, c) with static h and w.
        edge_weights: per edge, its (n,) mixing weights (edges with
            ``shared_alphas=True``) or None; None for all.
        training: whether BatchNorms use batch statistics.

    Returns:
        Per edge, ``(output, atten)`` as ``edge(x, edge_weights=...,
        return_edge_weights=True)`` returns it.

    Example:
        >>> edges = [SWDMixedOp(8, k=2) for _ in range(3)]
        >>> x = keras.ops.ones((2, 8, 8, 8))
        >>> for edge in edges:
        ...     edge.build(x.shape)
        >>> (y0, a0), (y1, a1), (y2, a2) = call_edges(edges, [x, x, x])
    """
    edges, inputs = list(edges), list(inputs)
    if len(edges) != len(inputs):
        raise ValueError(f"call_edges got {len(edges)} edges and {len(inputs)} inputs.")
    tensors: dict[int, object] = {}  # NumPy inputs as tensors, shared inputs still shared
    for x in inputs:
        if id(x) not in tensors:
            tensors[id(x)] = ops.convert_to_tensor(x)
    inputs = [tensors[id(x)] for x in inputs]
    for edge, x in zip(edges, inputs):
        if not edge.built:  # what calling the edge would do first
            edge.build(tuple(x.shape))
    edge_weights = [None] * len(edges) if edge_weights is None else list(edge_weights)
    groups: dict = {}
    for index, edge in enumerate(edges):
        groups.setdefault(repr(edge.fusion_key()), []).append(index)
    results = [None] * len(edges)
    for members in groups.values():
        outputs = _EdgeGroup([edges[i] for i in members], training)(
            [inputs[i] for i in members], [edge_weights[i] for i in members])
        for index, output in zip(members, outputs):
            results[index] = output
    return results


def _stacked(tensors):
    """(E, *shape) from E same-shape tensors."""
    # Variables by value: keras' TensorFlow stack does not take variables.
    tensors = [t.value if isinstance(t, keras.Variable) else t for t in tensors]
    return ops.stack(tensors, axis=0) if len(tensors) > 1 else ops.expand_dims(tensors[0], 0)


def _channel_attention(attention_layers, pooled):
    """``ChannelAttention`` (eq. 5-6) of E layers at once: ``sigmoid(sum_p MLP(pooled))``
    with each layer's MLP, on pooled (E, p, b, c); returns (E, b, c)."""
    first, count = attention_layers[0], len(attention_layers)
    if count == 1:  # the same products, without the edge axis
        pooled = ops.squeeze(pooled, 0)
        (layer,) = attention_layers
        w1, w2, b1, b2, e = layer.w1, layer.w2, layer.b1, layer.b2, ""
    else:
        def stacked(name):
            if getattr(first, name) is None:
                return None
            return _stacked([getattr(layer, name) for layer in attention_layers])

        w1, w2, e = stacked("w1"), stacked("w2"), "e"
        b1, b2 = (None if b is None else ops.reshape(b, (count, 1, 1, -1))
                  for b in (stacked("b1"), stacked("b2")))
    hidden = ops.einsum(f"{e}pbc,{e}ch->{e}pbh", pooled, w1)
    if b1 is not None:
        hidden = hidden + b1
    logits = ops.einsum(f"{e}pbh,{e}hc->{e}pbc", ops.relu(hidden), w2)
    if b2 is not None:
        logits = logits + b2
    attention = ops.sigmoid(ops.sum(logits, axis=-3))
    return attention if count > 1 else ops.expand_dims(attention, 0)


def _global_poolings(x, pooling: str):
    """The global poolings of ``ChannelAttention`` over (h, w), stacked first."""
    pooled = []
    if "avg" in pooling:
        pooled.append(ops.mean(x, axis=(1, 2)))
    if "max" in pooling:
        pooled.append(ops.max(x, axis=(1, 2)))
    return ops.stack(pooled, axis=0)


def _permute(x, matrix, axis):
    """``x`` with ``axis`` mapped through the 0/1 ``matrix`` (rows: x's entries): a
    reordering, selection or zero insertion as one product (exact: one term each)."""
    letters = "abcdefgh"[:len(x.shape)]
    out = letters[:axis] + "z" + letters[axis + 1:]
    return ops.einsum(f"{letters},{letters[axis]}z->{out}", x,
                      ops.convert_to_tensor(matrix, dtype=x.dtype))


def _join(tensors):
    """Concatenates on channels (a single tensor as it is)."""
    return tensors[0] if len(tensors) == 1 else ops.concatenate(tensors, axis=-1)


def _per_edge(x, count):
    """Splits the first axis into a list of ``count`` tensors."""
    return ops.unstack(x, count, axis=0) if count > 1 else [ops.squeeze(x, 0)]


class _EdgeGroup:
    """The computation of ``call_edges`` for edges of one configuration.

    Internally the edges are ordered by input, so that each input's selected channels
    are one gather; the candidate features are op-major, (op, edge, channel), which
    the lower attention, the op sum and the write-back handle with reshapes and 1x1
    convolution kernels instead of slices of the activations.
    """

    def __init__(self, edges, training):
        self.first = edges[0]
        self.edges = edges
        self.training = training
        self.count = len(edges)
        # The op (index) of each block of the candidate features.
        self.feature_ops = [self.first.primitives.index(p)
                            for p in self.first.candidate_ops.feature_primitives]

    def __call__(self, inputs, edge_weights):
        first, count = self.first, self.count
        c, ck = first.channels, first.op_channels
        m = len(self.feature_ops)
        # Internal order: edges grouped by input (inputs compared by identity).
        sources: dict[int, int] = {}
        for x in inputs:
            sources.setdefault(id(x), len(sources))
        source_of = [sources[id(x)] for x in inputs]
        order = sorted(range(count), key=lambda e: source_of[e])
        unique = {sources[id(x)]: x for x in inputs}
        edges = [self.edges[e] for e in order]

        if first.upper is not None:
            pooled = {u: _global_poolings(x, first.ua_pooling) for u, x in unique.items()}
            i_mix = _channel_attention([e.upper for e in edges],
                                       ops.stack([pooled[source_of[e]] for e in order]))
            # Algorithm 2: the top c/k channels by batch-summed attention, in channel
            # order; the selection passes no gradient.
            score = ops.stop_gradient(ops.sum(i_mix, axis=1))  # (E, c)
            _, top = ops.top_k(score, ck, sorted=True)
            indices = ops.sort(top, axis=-1)  # (E, c/k)
            onehot = ops.one_hot(indices, c, dtype=i_mix.dtype)  # (E, c/k, c)
            # take(x * i_mix, idx) == take(x, idx) * take(i_mix, idx), value for value.
            per_source, start = [], 0
            for u in sorted(unique):
                size = source_of.count(u)
                rows = indices if size == count else indices[start:start + size]
                per_source.append(ops.take(unique[u], ops.reshape(rows, (-1,)), axis=-1))
                start += size
            gate = ops.einsum("ebc,ejc->bej", i_mix, onehot)  # the selected i_mix
            selected = _join(per_source) * ops.reshape(gate, (-1, 1, 1, count * ck))
        else:
            selected = _join([inputs[e] for e in order])

        features = compute_candidates([e.candidate_ops for e in edges], selected,
                                      training=self.training)
        if first.lower is not None:
            weights, atten = self._lower_attention(edges, features)
        else:
            weights, atten = self._softmax(edges, [edge_weights[e] for e in order])
        mixed = features * weights
        h, w = mixed.shape[1], mixed.shape[2]
        if m > 1:  # the sum of the op slices, per edge
            mixed = ops.sum(ops.reshape(mixed, (-1, h, w, m, count * ck)), axis=3)

        if first.upper is not None:
            # Write back: channel j of edge e goes to output channel indices[e, j].
            if count == 1:
                scattered = [ops.conv(mixed, ops.reshape(onehot, (1, 1, ck, c)))]
            else:
                edge_major = ops.transpose(ops.reshape(mixed, (-1, count, ck)), (1, 0, 2))
                scattered = _per_edge(ops.reshape(ops.matmul(edge_major, onehot),
                                                  (count, -1, h, w, c)), count)
            keep = 1.0 - ops.sum(onehot, axis=1)  # (E, c)
            base = {u: x if first.strides == 1 else
                    max_pool(x, 2, 2)
                    for u, x in unique.items()}
            # The unselected channels keep I_s = x * i_mix; max_pool(x * a) ==
            # max_pool(x) * a for a > 0 (a sigmoid), value for value.
            gates = _per_edge(ops.reshape(i_mix * keep[:, None, :], (count, -1, 1, 1, c)),
                              count)
            outputs = [base[source_of[e]] * gates[i] + scattered[i]
                       for i, e in enumerate(order)]
        elif count == 1:
            outputs = [mixed]
        else:
            outputs = _per_edge(ops.transpose(ops.reshape(mixed, (-1, h, w, count, ck)),
                                              (3, 0, 1, 2, 4)), count)

        attens = _per_edge(ops.stop_gradient(atten), count)
        results = [None] * count
        for i, e in enumerate(order):
            results[e] = (outputs[i], attens[i])
        return results

    def _to_op_order(self, x, axis):
        """Feature-order op blocks on ``axis`` -> all n ops in op order, zeros for
        ``none`` (small tensors only)."""
        n, features = self.first.num_ops, self.feature_ops
        start = features[0]
        if features == list(range(start, start + len(features))):  # one pad
            padding = [(0, 0)] * len(x.shape)
            padding[axis] = (start, n - start - len(features))
            return ops.pad(x, padding)
        placement = np.zeros((len(features), n), dtype="float32")
        placement[np.arange(len(features)), features] = 1.0
        return _permute(x, placement, axis)

    def _to_feature_order(self, x, axis):
        """All n op blocks on ``axis`` -> the feature order (small tensors only)."""
        features = self.feature_ops
        if features == list(range(features[0], features[-1] + 1)):
            if len(features) == self.first.num_ops:
                return x
            index = [slice(None)] * len(x.shape)  # one slice
            index[axis] = slice(features[0], features[-1] + 1)
            return x[tuple(index)]
        selection = np.zeros((self.first.num_ops, len(features)), dtype="float32")
        selection[features, np.arange(len(features))] = 1.0
        return _permute(x, selection, axis)

    def _lower_attention(self, edges, features):
        """Eq. 7-9: ``F_att`` per feature channel, (b, 1, 1, channels), and ``Atten``
        (E, n) (eq. 7). The zero slices of ``none`` join ``F_in`` only where the lower
        attention pools them (both their average and their maximum are 0)."""
        first, count = self.first, self.count
        n, ck, m = first.num_ops, first.op_channels, len(self.feature_ops)
        pooled = _global_poolings(features, first.la_pooling)  # (p, b, m * E * c/k)
        pooled = self._to_op_order(ops.reshape(pooled, (pooled.shape[0], -1, m, count, ck)),
                                   axis=2)
        pooled = ops.reshape(ops.transpose(pooled, (3, 0, 1, 2, 4)),
                             (count, pooled.shape[0], -1, n * ck))
        f_att = ops.reshape(_channel_attention([e.lower for e in edges], pooled),
                            (count, -1, n, ck))
        atten = ops.mean(ops.sum(f_att, axis=3), axis=1)  # (E, n)
        per_channel = self._to_feature_order(ops.transpose(f_att, (1, 2, 0, 3)), axis=1)
        return ops.reshape(per_channel, (-1, 1, 1, m * count * ck)), atten

    def _softmax(self, edges, edge_weights):
        """DARTS' mixed op: each op's softmax weight per feature channel, and the
        weights (E, n)."""
        first = self.first
        if first.shared_alphas:
            if any(w is None for w in edge_weights):
                raise ValueError("SWDMixedOp(shared_alphas=True) needs `edge_weights`.")
            weights = _stacked(edge_weights)
        else:
            weights = ops.softmax(_stacked([e.alphas for e in edges]), axis=-1)
        per_op = self._to_feature_order(ops.transpose(weights, (1, 0)), axis=0)  # (m, E)
        return ops.repeat(ops.reshape(per_op, (-1,)), first.op_channels, axis=0), weights


