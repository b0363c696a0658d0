"""The search cell: 4 intermediate nodes fed by 14 mixed edges (SPEC §1)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from swd_keras.mixed_op import SWDMixedOp, call_edges
from swd_keras.ops import PRIMITIVES, FactorizedReduce, ReLUConvBN, check_primitives
from swd_keras.rematerialize import call_rematerialized, group_size

STEPS = 4
"""Intermediate nodes per cell."""

NUM_EDGES = sum(2 + i for i in range(STEPS))
"""Mixed edges per cell: node i reads the 2 cell inputs and the i earlier nodes (14)."""


def edge_inputs(steps: int = STEPS) -> list[int]:
    """The input node of each edge, in DARTS' edge order (node 0's edges first)."""
    return [j for i in range(steps) for j in range(2 + i)]


@keras.saving.register_keras_serializable(package="swd_keras")
class SearchCell(layers.Layer):
    """A search cell: preprocess the two inputs, then 14 ``SWDMixedOp`` edges.

    Every search cell has its own edges and so its own attention and architecture.

    Args:
        channels: ``C``, the channels of every node.
        reduction: whether this cell halves the resolution (edges leaving the two
            inputs have stride 2).
        reduction_prev: whether the previous cell halved the resolution (then ``s0``
            is factorized-reduced to match ``s1``).
        primitives: candidate operation names.
        rematerialize: in training, recompute each group of edges (see ``call``) for
            its gradient instead of keeping its activations (``call_rematerialized``):
            less memory for more compute; the same values and gradients.
        **edge_options: passed to every ``SWDMixedOp`` (``k``, ``ua_pooling``,
            ``la_pooling``, ``upper_attention``, ``lower_attention``,
            ``shared_alphas``, ...).

    Call arguments:
        s0: the output of the cell before the previous one.
        s1: the output of the previous cell.
        edge_weights: (14, n) mixing weights when the edges use shared alphas.
        training: whether BatchNorm uses batch statistics.

    Returns:
        ``(output, atten)``: the concatenated intermediate nodes (b, h', w', 4C) and
        the (14, n) gradient-free edge weights of this call.

    Example:
        >>> cell = SearchCell(8, reduction=False, reduction_prev=False, k=2)
        >>> x = keras.ops.ones((2, 8, 8, 24))
        >>> out, atten = cell(x, x)  # (2, 8, 8, 32), (14, 8)
    """

    def __init__(self, channels: int, reduction: bool, reduction_prev: bool,
                 primitives: Sequence[str] = PRIMITIVES, rematerialize: bool = False,
                 **edge_options):
        layer_kwargs = {key: edge_options.pop(key) for key in ("name", "dtype", "trainable")
                        if key in edge_options}
        super().__init__(**layer_kwargs)
        self.channels, self.reduction, self.reduction_prev = channels, reduction, reduction_prev
        self.primitives = check_primitives(primitives)
        self.rematerialize = rematerialize
        self.edge_options = dict(edge_options)
        self.preprocess0 = (FactorizedReduce(channels, affine=False, name="preprocess0")
                            if reduction_prev else
                            ReLUConvBN(channels, 1, 1, affine=False, name="preprocess0"))
        self.preprocess1 = ReLUConvBN(channels, 1, 1, affine=False, name="preprocess1")
        self.edges = [
            SWDMixedOp(channels, 2 if reduction and source < 2 else 1,
                       primitives=self.primitives, name=f"edge_{index}", **self.edge_options)
            for index, source in enumerate(edge_inputs())
        ]

    def build(self, s0_shape, s1_shape=None):
        s1_shape = s0_shape if s1_shape is None else s1_shape
        self.preprocess0.build(s0_shape)
        self.preprocess1.build(s1_shape)
        node_shape = tuple(s1_shape[:3]) + (self.channels,)
        for edge in self.edges:
            edge.build(node_shape)

    def call(self, s0, s1, edge_weights=None, training=None):
        states = [self.preprocess0(s0, training=training),
                  self.preprocess1(s1, training=training)]
        sources, results = edge_inputs(), [None] * NUM_EDGES
        first = 0  # the first edge of the next node
        for node in range(STEPS):
            # Every edge leaving a known state is computed now, together (the 8 edges
            # leaving the cell inputs, then 3, 2 and 1 leaving each new node): one
            # group's graph is little larger than one edge's (``call_edges``).
            ready = [e for e, source in enumerate(sources)
                     if source < len(states) and results[e] is None]
            size = len(ready)
            if self.rematerialize and training:
                size = group_size(size)
            for chunk in (ready[i:i + size] for i in range(0, len(ready), size)):
                outputs = self._call_group(
                    [self.edges[e] for e in chunk], [sources[e] for e in chunk], states,
                    None if edge_weights is None else [edge_weights[e] for e in chunk],
                    training)
                for e, output in zip(chunk, outputs):
                    results[e] = output
            node_value = 0
            for e in range(first, first + 2 + node):
                node_value = node_value + results[e][0]
            states.append(node_value)
            first += 2 + node
        return (ops.concatenate(states[2:], axis=-1),
                ops.stack([atten for _, atten in results], axis=0))

    def _call_group(self, edges, sources, states, weights, training):
        """``call_edges``, rematerialized if asked. A group, not a cell, is the unit:
        the 8 edges leaving the cell inputs hold most of a cell's activations, and
        per cell the peak fell by 0.36 GB against 0.44 GB per group
        (docs/BENCHMARKS.md)."""
        if not (self.rematerialize and training):
            return call_edges(edges, [states[s] for s in sources], weights, training=training)
        used = sorted(set(sources))

        def forward(*tensors):
            by_source = dict(zip(used, tensors))
            return call_edges(edges, [by_source[s] for s in sources],
                              list(tensors[len(used):]) or None, training=training)

        return call_rematerialized(
            forward, [states[s] for s in used] + list(weights or []),
            [v for e in edges for v in e.variables],
            [v for e in edges for v in e.non_trainable_variables])

    def compute_output_spec(self, s0, s1, edge_weights=None, training=None):
        # Declared rather than traced: tracing 14 edges x n ops symbolically costs
        # seconds per cell when the functional supernet is built.
        b, h, w, _ = s1.shape
        if self.reduction:
            h, w = (None if d is None else -(-d // 2) for d in (h, w))
        return (keras.KerasTensor((b, h, w, STEPS * self.channels), dtype=s1.dtype),
                keras.KerasTensor((NUM_EDGES, len(self.primitives)), dtype=s1.dtype))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels,
                "reduction": self.reduction, "reduction_prev": self.reduction_prev,
                "primitives": list(self.primitives), "rematerialize": self.rematerialize,
                **self.edge_options}


@keras.saving.register_keras_serializable(package="swd_keras")
class ArchitectureAlphas(layers.Layer):
    """DARTS' architecture parameters for one cell type: a softmax over learnable
    alphas per edge, shared by every cell that receives them.

    Args:
        num_edges: edges per cell (14).
        num_ops: candidate operations per edge.

    Call arguments:
        x: any tensor (ignored; it places the layer in a functional graph).

    Returns:
        The (num_edges, num_ops) softmax weights.

    Example:
        >>> weights = ArchitectureAlphas(14, 8)(keras.ops.ones((1, 4)))
    """

    def __init__(self, num_edges: int = NUM_EDGES, num_ops: int = len(PRIMITIVES), **kwargs):
        super().__init__(**kwargs)
        self.num_edges, self.num_ops = num_edges, num_ops

    def build(self, input_shape=None):
        # DARTS initialises alphas as 1e-3 * randn.
        self.alphas = self.add_weight(
            shape=(self.num_edges, self.num_ops), name="alphas",
            initializer=keras.initializers.RandomNormal(stddev=1e-3))

    def call(self, x):
        return ops.softmax(self.alphas, axis=-1)

    def compute_output_shape(self, input_shape):
        return (self.num_edges, self.num_ops)

    def get_config(self):
        return {**super().get_config(), "num_edges": self.num_edges, "num_ops": self.num_ops}
