"""The search network (SPEC §1): stem, L search cells, classifier, and every edge's
architecture weights as a second output."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers as keras_layers
from keras import ops

from swd_keras.genotype import default_reduction_indices
from swd_keras.mixed_op import SWDMixedOp
from swd_keras.ops import PRIMITIVES, check_primitives, make_batch_norm
from swd_keras.search_cell import NUM_EDGES, ArchitectureAlphas, SearchCell

METHODS = ("swd", "darts")
REMATERIALIZE = ("none", "first-stage", "all")
"""Which cells recompute their edges for the gradient (``build_supernet``)."""


def build_supernet(input_shape: Sequence[int], num_classes: int, channels: int = 16,
                   layers: int = 5, k: int = 4, method: str = "swd",
                   primitives: Sequence[str] = PRIMITIVES, stem_multiplier: int = 3,
                   ua_pooling: str = "avg+max", la_pooling: str = "avg",
                   ua_reduction: int = 2, la_reduction: int = 8,
                   upper_attention: bool = True, lower_attention: bool = True,
                   rematerialize: bool | str = False, name: str = "supernet") -> keras.Model:
    """Builds the SWD-NAS search network as a functional Keras model.

    Args:
        input_shape: (h, w, c) of one image; any size the reductions allow.
        num_classes: classifier outputs.
        channels: ``C`` of the first cells (doubled at each reduction).
        layers: ``L``, the number of search cells (5 in the paper).
        k: ``c / k`` channels of every edge enter the candidate operations.
        method: ``"swd"`` (every cell has its own attention) or ``"darts"`` (all
            channels, a softmax over alphas shared by all normal cells and by all
            reduction cells).
        primitives: candidate operation names.
        stem_multiplier: the stem has ``stem_multiplier * C`` channels.
        ua_pooling, la_pooling, ua_reduction, la_reduction: attention options.
        upper_attention: ``False`` sends all channels into the ops (ablation).
        lower_attention: ``False`` mixes ops by a softmax over per-edge alphas.
        rematerialize: which cells recompute their edges' forward pass for the
            gradient instead of keeping the activations (less memory, more compute;
            the same results): ``"none"`` (or ``False``), ``"all"`` (or ``True``), or
            ``"first-stage"``, the cells up to the first reduction, which read
            full-resolution inputs and hold most of the activations (the paper's
            search on TensorFlow: 2.57 -> 2.03 GB for a 1.3x longer step, against
            2.01 GB and 1.45x for ``"all"``; docs/BENCHMARKS.md).
        name: the model's name.

    Returns:
        A model mapping images (b, h, w, c) to ``[logits (b, num_classes),
        edge_weights (L, 14, n)]``; ``edge_weights`` carry no gradient.

    Example:
        >>> net = build_supernet((8, 8, 1), 10, channels=8, layers=3, k=2)
        >>> logits, weights = net(keras.ops.ones((2, 8, 8, 1)))  # weights: (3, 14, 8)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if layers < 1:
        raise ValueError(f"layers must be at least 1, got {layers}.")
    primitives = check_primitives(primitives)
    reductions = default_reduction_indices(layers)
    darts = method == "darts"
    edge_options = dict(
        k=1 if darts else k, ua_pooling=ua_pooling, la_pooling=la_pooling,
        ua_reduction=ua_reduction, la_reduction=la_reduction,
        upper_attention=upper_attention and not darts,
        lower_attention=lower_attention and not darts, shared_alphas=darts)
    check_channels(channels, k, layers, edge_options["upper_attention"])

    inputs = keras.Input(tuple(input_shape), name="images")
    x = keras_layers.Conv2D(stem_multiplier * channels, 3, padding="same", use_bias=False,
                      name="stem_conv")(inputs)
    s0 = s1 = make_batch_norm(True, name="stem_bn")(x)
    shared = ({"normal": ArchitectureAlphas(NUM_EDGES, len(primitives), name="alphas_normal"),
               "reduce": ArchitectureAlphas(NUM_EDGES, len(primitives), name="alphas_reduce")}
              if darts else None)
    shared_weights = ({kind: layer(inputs) for kind, layer in shared.items()}
                      if darts else None)

    remat_cells = rematerialized_cells(rematerialize, layers)
    c, reduction_prev, attens = channels, False, []
    for index in range(layers):
        reduction = index in reductions
        if reduction:
            c *= 2
        cell = SearchCell(c, reduction, reduction_prev, primitives,
                          rematerialize=index in remat_cells, name=f"cell_{index}",
                          **edge_options)
        weights = shared_weights["reduce" if reduction else "normal"] if darts else None
        out, atten = cell(s0, s1, edge_weights=weights)
        s0, s1, reduction_prev = s1, out, reduction
        attens.append(atten)

    pooled = keras_layers.GlobalAveragePooling2D(name="global_pool")(s1)
    logits = keras_layers.Dense(num_classes, name="classifier")(pooled)
    # float32 whatever the compute dtype: these are accumulated over an epoch.
    edge_weights = ops.cast(ops.stack(attens, axis=0), "float32")
    return keras.Model(inputs, [logits, edge_weights], name=name)


def rematerialized_cells(rematerialize: bool | str, layers: int) -> set[int]:
    """The indices of the cells that ``build_supernet(rematerialize=...)`` recomputes,
    or a ValueError naming the allowed values."""
    policy = ({False: "none", True: "all"}[rematerialize] if isinstance(rematerialize, bool)
              else rematerialize)
    if policy not in REMATERIALIZE:
        raise ValueError(f"rematerialize must be one of {REMATERIALIZE} (or a bool), "
                         f"got {rematerialize!r}.")
    reductions = default_reduction_indices(layers)
    last = {"none": -1, "all": layers - 1,
            "first-stage": reductions[0] if reductions else layers - 1}[policy]
    return set(range(last + 1))


def check_channels(channels: int, k: int, layers: int, upper_attention: bool = True) -> None:
    """Raises a ValueError unless a supernet of ``layers`` cells with ``channels`` and
    ``k`` can be built: ``k`` divides C and reduction edges get ``C/k >= 2`` channels."""
    reductions = default_reduction_indices(layers)
    if channels < 2:
        raise ValueError(f"channels must be at least 2, got {channels}.")
    if upper_attention:
        # Channels only double, so k dividing C means k divides every cell's width.
        if channels % k:
            raise ValueError(f"k={k} must divide the channel count c={channels} "
                             f"(c/k channels enter the candidate operations).")
        if reductions and channels // k < 2:
            raise ValueError(f"channels={channels} with k={k} leaves {channels // k} channel "
                             f"per edge; reduction edges need at least 2 (c/k >= 2).")


def attention_variables(model: keras.Model) -> list:
    """The architecture parameters of a supernet: every edge's UA/LA MLP weights (or
    alphas), and DARTS' shared alphas."""
    variables = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, SWDMixedOp):
            variables += layer.attention_variables
        elif isinstance(layer, ArchitectureAlphas):
            variables.append(layer.alphas)
    return variables
