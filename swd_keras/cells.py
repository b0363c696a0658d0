"""Cells: ``Cell``, the fixed cell of a retrain network built from a ``CellGenotype``.

(The search cell is added below by the search code.)
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from swd_keras.genotype import DEFAULT_CONCAT, CellGenotype
from swd_keras.ops import FactorizedReduce, Identity, ReLUConvBN, make_op


def _ceil_half(size: int | None) -> int | None:
    return None if size is None else -(-size // 2)


def as_cell_genotype(genotype: CellGenotype | dict[str, Any]) -> CellGenotype:
    """A ``CellGenotype`` from itself or from its JSON dictionary (``CellGenotype.to_dict``).

    Args:
        genotype: a CellGenotype, or ``{"type": ..., "edges": [[op, input], ...],
            "concat": [...]}``.

    Returns:
        The CellGenotype (validated).

    Raises:
        ValueError: a dictionary that is not a valid cell (a ``GenotypeError``).
    """
    if isinstance(genotype, CellGenotype):
        return genotype
    if not isinstance(genotype, dict) or "type" not in genotype or "edges" not in genotype:
        raise ValueError(
            "genotype must be a CellGenotype or a dict with 'type', 'edges' (and optionally "
            f"'concat'); got {genotype!r}.")
    return CellGenotype(genotype["type"], tuple(tuple(edge) for edge in genotype["edges"]),
                        tuple(genotype.get("concat", DEFAULT_CONCAT)))


@keras.saving.register_keras_serializable(package="swd_keras")
class Cell(layers.Layer):
    """DARTS' retrain cell: the 8 fixed operations of a ``CellGenotype``.

    The two inputs are preprocessed to ``channels`` channels: ``s0`` (the output of the
    cell two back) by a FactorizedReduce when the previous cell halved the resolution,
    else by ReLU-conv1x1-BN; ``s1`` (the previous cell's output) by ReLU-conv1x1-BN. Each
    intermediate node sums its two operations (affine BatchNorm; stride 2 for the
    operations that read inputs 0 or 1 of a reduction cell). The output concatenates the
    ``concat`` nodes.

    Drop path (DARTS' ``drop_path``): in training, the output of every operation except
    the stride-1 ``skip_connect`` (an identity) is zeroed per sample with probability
    ``p`` and otherwise scaled by ``1 / (1 - p)``. ``p`` lives in the non-trainable
    scalar variable ``drop_path_rate``, so a callback can change it between epochs
    without retracing the training step (``training.DropPathSchedule``). At inference
    the cell is deterministic.

    Args:
        genotype: the cell's CellGenotype, or its JSON dictionary.
        channels: C, the channels of every node (the output has ``C * len(concat)``).
        reduction_prev: whether ``s0`` has twice the resolution of ``s1`` (the previous
            cell was a reduction cell, or an ImageNet stem).
        drop_path_rate: the initial drop-path probability, in [0, 1).
        seed: seed of the drop-path masks (None: drawn from Keras' global seed).
        **kwargs: Layer arguments (e.g. ``name``).

    Call arguments:
        s0: the (b, h0, w0, c0) output of the cell two back (h0 = 2 h when
            ``reduction_prev``, else h).
        s1: the (b, h, w, c1) output of the previous cell.
        training: whether BatchNorm uses batch statistics and drop path is active.

    Returns:
        A (b, h', w', C * len(concat)) tensor; h' = ceil(h / 2) in a reduction cell,
        else h.

    Example:
        >>> from swd_keras.genotype import get_genotype
        >>> cell = Cell(get_genotype("darts_v2").cells[0], channels=8, reduction_prev=False)
        >>> y = cell(keras.ops.ones((2, 8, 8, 16)), keras.ops.ones((2, 8, 8, 16)))
        >>> tuple(y.shape)
        (2, 8, 8, 32)
    """

    def __init__(self, genotype: CellGenotype | dict[str, Any], channels: int,
                 reduction_prev: bool = False, drop_path_rate: float = 0.0,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.genotype = as_cell_genotype(genotype)
        if not isinstance(channels, int) or channels < 2:
            raise ValueError(f"channels must be an integer >= 2, got {channels!r}.")
        check_drop_path_rate(drop_path_rate)
        self.channels = channels
        self.reduction_prev = bool(reduction_prev)
        self.initial_drop_path_rate = float(drop_path_rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="drop_path_seed")
        self.preprocess0 = (FactorizedReduce(channels, affine=True, name="preprocess0")
                            if self.reduction_prev
                            else ReLUConvBN(channels, 1, 1, affine=True, name="preprocess0"))
        self.preprocess1 = ReLUConvBN(channels, 1, 1, affine=True, name="preprocess1")
        self.edge_ops = []
        for position, (op_name, index) in enumerate(self.genotype.edges):
            strides = 2 if self.genotype.is_reduction and index < 2 else 1
            self.edge_ops.append(make_op(op_name, channels, strides, affine=True,
                                         name=f"edge{position}_{op_name}"))
        # Identities pass through untouched (DARTS never drops them).
        self._drops = [not isinstance(op, Identity) for op in self.edge_ops]

    @property
    def is_reduction(self) -> bool:
        """Whether the cell halves the resolution."""
        return self.genotype.is_reduction

    @property
    def multiplier(self) -> int:
        """How many nodes the output concatenates (output channels / C)."""
        return len(self.genotype.concat)

    def _node_shapes(self, s0_shape, s1_shape) -> list[tuple]:
        """The shapes of nodes 0..5, building nothing."""
        b = s1_shape[0]
        _, h, w, _ = s1_shape
        states = [tuple(self.preprocess0.compute_output_shape(tuple(s0_shape))),
                  (b, h, w, self.channels)]
        if self.is_reduction:
            h, w = _ceil_half(h), _ceil_half(w)
        states += [(b, h, w, self.channels)] * (len(self.genotype.edges) // 2)
        return states

    def build(self, s0_shape, s1_shape):
        s0_shape, s1_shape = tuple(s0_shape), tuple(s1_shape)
        if self.reduction_prev:
            expected = (_ceil_half(s0_shape[1]), _ceil_half(s0_shape[2]))
        else:
            expected = tuple(s0_shape[1:3])
        if expected != tuple(s1_shape[1:3]):
            raise ValueError(
                f"{self.name}: s0 {s0_shape} and s1 {s1_shape} do not fit "
                f"reduction_prev={self.reduction_prev}.")
        # Sublayers are built directly from known shapes (no symbolic trace; KERAS-NOTES).
        self.preprocess0.build(s0_shape)
        self.preprocess1.build(s1_shape)
        states = self._node_shapes(s0_shape, s1_shape)
        for op, (_, index) in zip(self.edge_ops, self.genotype.edges, strict=True):
            op.build(states[index])
        self.drop_path_rate = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.initial_drop_path_rate),
            trainable=False, name="drop_path_rate")

    def compute_output_shape(self, s0_shape, s1_shape):
        b, h, w, _ = self._node_shapes(tuple(s0_shape), tuple(s1_shape))[-1]
        return (b, h, w, self.channels * self.multiplier)

    def _drop_path(self, x):
        keep = 1.0 - ops.cast(self.drop_path_rate, x.dtype)
        noise = keras.random.uniform((ops.shape(x)[0], 1, 1, 1), dtype=x.dtype,
                                     seed=self.seed_generator)
        return x * (ops.cast(noise < keep, x.dtype) / keep)

    def call(self, s0, s1, training=None):
        states = [self.preprocess0(s0, training=training),
                  self.preprocess1(s1, training=training)]
        for node in range(len(self.edge_ops) // 2):
            total = None
            for position in (2 * node, 2 * node + 1):
                _, index = self.genotype.edges[position]
                y = self.edge_ops[position](states[index], training=training)
                if training and self._drops[position]:
                    y = self._drop_path(y)
                total = y if total is None else total + y
            states.append(total)
        return ops.concatenate([states[i] for i in self.genotype.concat], axis=-1)

    def get_config(self):
        return {**super().get_config(), "genotype": self.genotype.to_dict(),
                "channels": self.channels, "reduction_prev": self.reduction_prev,
                "drop_path_rate": self.initial_drop_path_rate, "seed": self.seed}


def check_drop_path_rate(rate: float, name: str = "drop_path_rate") -> float:
    """Returns ``rate`` as a float, or raises a ValueError unless 0 <= rate < 1."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}.")
    return float(rate)
