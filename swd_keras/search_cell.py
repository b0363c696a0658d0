"""The search cell: 4 intermediate nodes fed by 14 mixed edges (SPEC §1)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from swd_keras.edge_group import EdgeGroup
from swd_keras.mixed_op import SWDMixedOp
from swd_keras.ops import PRIMITIVES, FactorizedReduce, ReLUConvBN, check_primitives
from swd_keras.rematerialize import call_rematerialized, group_size

STEPS = 4
"""Intermediate nodes per cell."""

NUM_EDGES = sum(2 + i for i in range(STEPS))
"""Mixed edges per cell: node i reads the 2 cell inputs and the i earlier nodes (14)."""


def edge_inputs(steps: int = STEPS) -> list[int]:
    """The input node of each edge, in DARTS' edge order (node 0's edges first)."""
    return [j for i in range(steps) for j in range(2 + i)]


def _ready_edges(steps: int = STEPS) -> list[list[int]]:
    """Per intermediate node, the edges whose input is known before it is computed:
    those leaving the two cell inputs first, then those leaving each new node."""
    # Before node i is computed, state i + 1 is new (for node 0: both cell inputs).
    new = [{0, 1}] + [{node + 1} for node in range(1, steps)]
    return [[e for e, source in enumerate(edge_inputs(steps)) if source in new[node]]
            for node in range(steps)]


@keras.saving.register_keras_serializable(package="swd_keras")
class SearchCell(layers.Layer):
    """A search cell: preprocess the two inputs, then 14 ``SWDMixedOp`` edges.

    Every search cell has its own edges and so its own attention and architecture.
    The edges are computed in ``EdgeGroup``s (``groups``): every edge whose input is
    known is computed with the others ready at that point (the 8 edges leaving the
    cell inputs, then 3, 2 and 1 leaving each new node), so that one group's graph is
    little larger than one edge's.

    Args:
        channels: ``C``, the channels of every node.
        reduction: whether this cell halves the resolution (edges leaving the two
            inputs have stride 2).
        reduction_prev: whether the previous cell halved the resolution (then ``s0``
            is factorized-reduced to match ``s1``).
        primitives: candidate operation names.
        rematerialize: in training, recompute each group of edges for its gradient
            instead of keeping its activations (``call_rematerialized``): less memory
            for more compute; the same values and gradients.
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
        self.groups, self._schedule = [], []
        for node, members in enumerate(_ready_edges()):
            # A group, not a cell, is the unit of recomputation: the 8 edges leaving
            # the cell inputs hold most of a cell's activations (docs/BENCHMARKS.md).
            size = group_size(len(members)) if rematerialize else len(members)
            for chunk in (members[i:i + size] for i in range(0, len(members), size)):
                used = sorted({edge_inputs()[e] for e in chunk})
                self.groups.append(EdgeGroup(
                    [self.edges[e] for e in chunk],
                    [used.index(edge_inputs()[e]) for e in chunk],
                    name=f"group_{len(self.groups)}"))
                self._schedule.append((node, chunk, used))

    def build(self, s0_shape, s1_shape=None):
        s1_shape = s0_shape if s1_shape is None else s1_shape
        self.preprocess0.build(s0_shape)
        self.preprocess1.build(s1_shape)
        node_shape = tuple(s1_shape[:3]) + (self.channels,)
        for edge in self.edges:
            edge.build(node_shape)
        for group, (_, _, used) in zip(self.groups, self._schedule):
            group.build([node_shape] * len(used))

    def call(self, s0, s1, edge_weights=None, training=None):
        states = [self.preprocess0(s0, training=training),
                  self.preprocess1(s1, training=training)]
        results = [None] * NUM_EDGES
        first = 0  # the first edge of the next node
        for node in range(STEPS):
            for group, (ready_at, chunk, used) in zip(self.groups, self._schedule):
                if ready_at == node:
                    weights = (None if edge_weights is None
                               else [edge_weights[e] for e in chunk])
                    outputs = self._call_group(group, [states[s] for s in used], weights,
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

    def _call_group(self, group, inputs, weights, training):
        """The group's edges, recomputed for their gradient if asked."""
        if not (self.rematerialize and training):
            return group(inputs, edge_weights=weights, training=training)
        count = len(inputs)

        def forward(*tensors):
            return group(list(tensors[:count]), edge_weights=list(tensors[count:]) or None,
                         training=training)

        return call_rematerialized(
            forward, inputs + list(weights or []),
            [v for e in group.edges for v in e.variables],
            [v for e in group.edges for v in e.non_trainable_variables])

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
