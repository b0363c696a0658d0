"""Several SWD edges computed at once: the search cell's fast path.

A search cell's edges that leave nodes already computed can run together: their
candidate operations side by side on one tensor (``fused_ops.compute_candidates``) and
their attention MLPs as batched products of the attention layers' own methods, so the
traced graph has about the operations of one edge, not of every edge. Tracing per-edge
graphs of the paper's search network took minutes on TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from swd_keras.attention import top_channels, write_back
from swd_keras.fused_ops import compute_candidates
from swd_keras.kernels import max_pool
from swd_keras.mixed_op import SWDMixedOp


@keras.saving.register_keras_serializable(package="swd_keras")
class EdgeGroup(layers.Layer):
    """``SWDMixedOp`` edges of one configuration computed together.

    The values, edge weights and gradients are those of calling each edge; the edges
    keep their own variables (a group has none of its own), so a cell's group reads
    the variables the cell's edges created, under their paths.

    Each input's selected channels are one gather (edges are taken in input order);
    the candidate features come op-major, (op, edge, channel), and the lower
    attention, the op sum and the write-back handle that layout with reshapes and
    products instead of slices of the activations.

    Args:
        edges: ``SWDMixedOp`` layers with one ``fusion_key()``.
        sources: for each edge, the position of its input in the call's ``inputs``;
            by default edge ``i`` reads ``inputs[i]``.

    Call arguments:
        inputs: the list of input tensors, (b, h, w, c) with static h and w.
        edge_weights: per edge, its (n,) mixing weights (edges with
            ``shared_alphas=True``), or None.
        training: whether BatchNorms use batch statistics.

    Returns:
        Per edge, ``(output, atten)`` as ``edge(x, edge_weights=...,
        return_edge_weights=True)`` returns it.

    Example:
        >>> edges = [SWDMixedOp(8, k=2) for _ in range(3)]
        >>> group = EdgeGroup(edges, sources=[0, 1, 0])
        >>> x0, x1 = keras.ops.ones((2, 8, 8, 8)), keras.ops.zeros((2, 8, 8, 8))
        >>> (y0, a0), (y1, a1), (y2, a2) = group([x0, x1])
    """

    def __init__(self, edges: Sequence[SWDMixedOp], sources: Sequence[int] | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        edges = list(edges)
        sources = list(range(len(edges))) if sources is None else [int(s) for s in sources]
        if not edges or len(sources) != len(edges):
            raise ValueError(f"EdgeGroup needs one source per edge, got {len(edges)} edges "
                             f"and {len(sources)} sources.")
        if not all(isinstance(e, SWDMixedOp) for e in edges):
            raise ValueError("EdgeGroup's edges must be SWDMixedOp layers.")
        if len({repr(e.fusion_key()) for e in edges}) > 1:
            raise ValueError("EdgeGroup needs edges of one configuration "
                             "(equal SWDMixedOp.fusion_key()).")
        self.edges, self.sources = edges, sources
        # Edges in input order: each input's edges are neighbours, one gather each.
        self._order = sorted(range(len(edges)), key=lambda e: sources[e])
        # The op of each block of compute_candidates' output (its feature order).
        self._feature_ops = [edges[0].primitives.index(p)
                             for p in edges[0].candidate_ops.feature_primitives]

    def build(self, input_shape):
        for edge, source in zip(self.edges, self.sources):
            if not edge.built:
                edge.build(tuple(input_shape[source]))

    def call(self, inputs, edge_weights=None, training=None):
        inputs = list(inputs)
        if len(inputs) <= max(self.sources):
            raise ValueError(f"EdgeGroup reads inputs {sorted(set(self.sources))}, got "
                             f"{len(inputs)} inputs.")
        edges = [self.edges[e] for e in self._order]
        sources = [self.sources[e] for e in self._order]
        if edge_weights is not None:
            edge_weights = [edge_weights[e] for e in self._order]
        first, count = edges[0], len(edges)
        if first.upper is not None:
            pooled = {s: first.upper.pool(inputs[s]) for s in sorted(set(sources))}
            i_mix = first.upper.attention([e.upper for e in edges],
                                          ops.stack([pooled[s] for s in sources]))
            indices = top_channels(i_mix, first.k)  # (E, c/k)
            selected = self._gather(inputs, sources, i_mix, indices)
        else:
            selected = _join([inputs[s] for s in sources])

        features = compute_candidates([e.candidate_ops for e in edges], selected,
                                      training=training)
        if first.lower is not None:
            weights, atten = self._lower_attention(edges, features)
        else:
            weights, atten = self._softmax(edges, edge_weights)
        mixed = features * weights
        h, w, m = mixed.shape[1], mixed.shape[2], len(self._feature_ops)
        if m > 1:  # the sum of the op slices, per edge: (b, h, w, E * c/k), edge-major
            mixed = ops.sum(ops.reshape(mixed, (-1, h, w, m, count * first.op_channels)),
                            axis=3)

        if first.upper is not None:
            bases = {s: inputs[s] if first.strides == 1 else max_pool(inputs[s], 2, 2)
                     for s in sorted(set(sources))}
            # The unselected channels keep I_s = x * i_mix: scale=i_mix applies it, and
            # max_pool(x * a) == max_pool(x) * a for a > 0 (a sigmoid), value for value.
            outputs = write_back([bases[s] for s in sources], mixed, indices, scale=i_mix)
        elif count == 1:
            outputs = [mixed]
        else:
            outputs = ops.unstack(ops.transpose(
                ops.reshape(mixed, (-1, h, w, count, first.op_channels)), (3, 0, 1, 2, 4)),
                count, axis=0)

        results = [None] * count
        for e, output, weights_e in zip(self._order, outputs,
                                        ops.unstack(ops.stop_gradient(atten), count, axis=0)):
            results[e] = (output, weights_e)
        return results

    def _gather(self, inputs, sources, i_mix, indices):
        """The selected channels of every edge, (b, h, w, E * c/k) edge-major, scaled
        by their attention: ``take(x * i_mix, idx) == take(x, idx) * take(i_mix, idx)``
        value for value, and the product runs on the selected channels only."""
        c = i_mix.shape[-1]
        per_source, start = [], 0
        for s in sorted(set(sources)):
            size = sources.count(s)
            rows = indices if size == len(sources) else indices[start:start + size]
            per_source.append(ops.take(inputs[s], ops.reshape(rows, (-1,)), axis=-1))
            start += size
        selected = _join(per_source)
        onehot = ops.one_hot(indices, c, dtype=i_mix.dtype)
        gate = ops.einsum("ebc,ejc->bej", i_mix, onehot)  # the selected i_mix
        return selected * ops.reshape(gate, (-1, 1, 1, gate.shape[1] * gate.shape[2]))

    def _lower_attention(self, edges, features):
        """Eq. 7-9 for every edge: ``F_att`` per feature channel, (b, 1, 1, channels),
        and ``Atten`` (E, n). The zero slices of ``none`` join ``F_in`` only where the
        lower attention pools them (both their average and their maximum are 0)."""
        first, count = edges[0], len(edges)
        n, width, m = first.num_ops, first.op_channels, len(self._feature_ops)
        pooled = first.lower.pool(features)  # (p, b, m * E * c/k)
        p = pooled.shape[0]
        pooled = self._to_op_order(ops.reshape(pooled, (p, -1, m, count, width)), axis=2)
        pooled = ops.reshape(ops.transpose(pooled, (3, 0, 1, 2, 4)), (count, p, -1, n * width))
        f_att = first.lower.attention([e.lower for e in edges], pooled)
        f_att = ops.reshape(f_att, (count, -1, n, width))
        atten = ops.mean(ops.sum(f_att, axis=3), axis=1)  # eq. 7, (E, n)
        per_channel = self._to_feature_order(ops.transpose(f_att, (1, 2, 0, 3)), axis=1)
        return ops.reshape(per_channel, (-1, 1, 1, m * count * width)), atten

    def _softmax(self, edges, edge_weights):
        """DARTS' mixed op: each op's softmax weight per feature channel, and the
        weights (E, n)."""
        first = edges[0]
        if first.shared_alphas:
            if edge_weights is None or any(w is None for w in edge_weights):
                raise ValueError("SWDMixedOp(shared_alphas=True) needs `edge_weights`.")
            weights = ops.stack(edge_weights, axis=0)
        else:
            weights = ops.softmax(ops.stack([e.alphas.value for e in edges], axis=0), axis=-1)
        per_op = self._to_feature_order(ops.transpose(weights, (1, 0)), axis=0)  # (m, E)
        return ops.repeat(ops.reshape(per_op, (-1,)), first.op_channels, axis=0), weights

    def _to_op_order(self, x, axis):
        """Feature-order op blocks on ``axis`` -> all n ops in op order, zeros for
        ``none`` (small tensors only)."""
        n, features = self.edges[0].num_ops, self._feature_ops
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
        features = self._feature_ops
        if features == list(range(features[0], features[-1] + 1)):
            if len(features) == self.edges[0].num_ops:
                return x
            index = [slice(None)] * len(x.shape)  # one slice
            index[axis] = slice(features[0], features[-1] + 1)
            return x[tuple(index)]
        selection = np.zeros((self.edges[0].num_ops, len(features)), dtype="float32")
        selection[features, np.arange(len(features))] = 1.0
        return _permute(x, selection, axis)

    def get_config(self):
        return {**super().get_config(),
                "edges": [keras.saving.serialize_keras_object(e) for e in self.edges],
                "sources": list(self.sources)}

    @classmethod
    def from_config(cls, config):
        edges = [keras.saving.deserialize_keras_object(e) for e in config["edges"]]
        return cls(**{**config, "edges": edges})


def _join(tensors):
    """Concatenates on channels (a single tensor as it is)."""
    return tensors[0] if len(tensors) == 1 else ops.concatenate(tensors, axis=-1)


def _permute(x, matrix, axis):
    """``x`` with ``axis`` mapped through the 0/1 ``matrix`` (rows: x's entries): a
    reordering, selection or zero insertion as one product (exact: one term each)."""
    letters = "abcdefgh"[:len(x.shape)]
    out = letters[:axis] + "z" + letters[axis + 1:]
    return ops.einsum(f"{letters},{letters[axis]}z->{out}", x,
                      ops.convert_to_tensor(matrix, dtype=x.dtype))
