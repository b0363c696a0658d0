"""The dual-attention layers of SWD-NAS (SPEC §2): upper and lower attention, and the
channel selection between them."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from swd_keras import replicas

POOLINGS = ("avg", "max", "avg+max")


@keras.saving.register_keras_serializable(package="swd_keras")
class ChannelAttention(layers.Layer):
    """Channel attention ``sigmoid(sum_p MLP(pool_p(x)))`` with one shared MLP (eq. 5-6).

    The MLP is ``W2 (ReLU(W1 v + b1)) + b2`` with a hidden width of
    ``max(1, c // reduction)``. Its weights, in ``get_weights()`` order, are
    ``[W1 (c, hidden), b1 (hidden,), W2 (hidden, c), b2 (c,)]`` (without the biases
    when ``use_bias=False``).

    Args:
        reduction: the MLP's channel reduction ratio ``r``.
        pooling: ``"avg"``, ``"max"`` or ``"avg+max"``: the global poolings whose MLP
            outputs are summed before the sigmoid.
        use_bias: whether the two dense layers have biases (the paper's eq. 5 does; the
            authors' code does not).

    Call arguments:
        x: a (b, h, w, c) tensor.

    Returns:
        The attention, shape (b, 1, 1, c), values in (0, 1).

    Example:
        >>> att = ChannelAttention(reduction=4)(keras.ops.ones((2, 8, 8, 16)))
    """

    def __init__(self, reduction: int = 2, pooling: str = "avg+max", use_bias: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        if int(reduction) < 1:
            raise ValueError(f"reduction must be a positive integer, got {reduction!r}.")
        self.reduction, self.pooling, self.use_bias = int(reduction), pooling, use_bias

    def build(self, input_shape):
        channels = input_shape[-1]
        hidden = max(1, channels // self.reduction)
        self.w1 = self.add_weight(shape=(channels, hidden), initializer="glorot_uniform",
                                  name="w1")
        self.b1 = (self.add_weight(shape=(hidden,), initializer="zeros", name="b1")
                   if self.use_bias else None)
        self.w2 = self.add_weight(shape=(hidden, channels), initializer="glorot_uniform",
                                  name="w2")
        self.b2 = (self.add_weight(shape=(channels,), initializer="zeros", name="b2")
                   if self.use_bias else None)

    def pool(self, x):
        """The layer's global poolings of ``x`` over (h, w), stacked first: (p, b, ch)
        for a (b, h, w, ch) tensor, whatever ``ch`` (several edges' features side by
        side are pooled in one call)."""
        pooled = []
        if "avg" in self.pooling:
            pooled.append(ops.mean(x, axis=(1, 2)))
        if "max" in self.pooling:
            pooled.append(ops.max(x, axis=(1, 2)))
        return ops.stack(pooled, axis=0)

    @classmethod
    def mlp(cls, layers: Sequence[ChannelAttention], pooled):
        """The shared MLP (eq. 5) of one layer, or of E layers at once.

        Args:
            layers: the built layers of one configuration: one layer (``[self]``),
                or E layers whose weights are stacked so that the E MLPs are batched
                matrix products.
            pooled: one layer: (p, b, c); E layers: (E, p, b, c), layer ``e``'s MLP
                applied to ``pooled[e]``.

        Returns:
            The logits, shaped as ``pooled``.
        """
        if len(pooled.shape) == 4 and len(layers) == 1:
            # A batch of one: the same products without the edge axis.
            return ops.expand_dims(cls.mlp(layers, ops.squeeze(pooled, 0)), 0)
        if len(pooled.shape) == 3:
            (layer,) = layers
            w1, b1, w2, b2, e = layer.w1, layer.b1, layer.w2, layer.b2, ""
        else:
            w1, b1, w2, b2 = (_stack_weights(layers, name) for name in ("w1", "b1", "w2", "b2"))
            # Biases broadcast over the poolings and the batch: (E, 1, 1, width).
            b1, b2 = (None if b is None else ops.reshape(b, (len(layers), 1, 1, -1))
                      for b in (b1, b2))
            e = "e"
        hidden = ops.einsum(f"{e}pbc,{e}ch->{e}pbh", pooled, w1)
        if b1 is not None:
            hidden = hidden + b1
        logits = ops.einsum(f"{e}pbh,{e}hc->{e}pbc", ops.relu(hidden), w2)
        return logits if b2 is None else logits + b2

    @classmethod
    def attention(cls, layers: Sequence[ChannelAttention], pooled):
        """Eq. 6: ``sigmoid(sum_p MLP(pooled_p))`` of one layer or of E layers at once
        (``layers`` and ``pooled`` as in ``mlp``); (b, c), or (E, b, c)."""
        return ops.sigmoid(ops.sum(cls.mlp(layers, pooled), axis=-3))

    def call(self, x):
        attention = self.attention([self], self.pool(x))
        return ops.reshape(attention, (-1, 1, 1, attention.shape[-1]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "reduction": self.reduction,
                "pooling": self.pooling, "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="swd_keras")
class UpperAttention(ChannelAttention):
    """Upper attention (UA, eq. 5-6, Algorithm 1): which input channels matter.

    ``I_mix = sigmoid(MLP(GAP(I)) + MLP(GMP(I)))`` with one MLP shared by both
    poolings. See ``ChannelAttention`` for the weights.

    Args:
        reduction: the MLP's reduction ratio (2 in the paper).
        pooling: ``"avg+max"`` (the paper), ``"avg"`` or ``"max"`` (ablations).
        use_bias: whether the MLP has biases.

    Call arguments:
        x: the edge input ``I``, shape (b, h, w, c).

    Returns:
        ``I_mix``, shape (b, 1, 1, c).

    Example:
        >>> i_mix = UpperAttention()(keras.ops.ones((2, 8, 8, 16)))
    """

    def __init__(self, reduction: int = 2, pooling: str = "avg+max", use_bias: bool = True,
                 **kwargs):
        super().__init__(reduction=reduction, pooling=pooling, use_bias=use_bias, **kwargs)


@keras.saving.register_keras_serializable(package="swd_keras")
class LowerAttention(ChannelAttention):
    """Lower attention (LA, eq. 7-9, Algorithm 3): SE-style attention over the
    concatenated outputs of the candidate operations.

    ``F_att = sigmoid(MLP(GAP(F_in)))``. See ``ChannelAttention`` for the weights.

    Args:
        reduction: the MLP's reduction ratio (8 by default).
        pooling: ``"avg"`` (the paper's best) or ``"avg+max"``.
        use_bias: whether the MLP has biases.

    Call arguments:
        x: ``F_in``, shape (b, h, w, n * c'), the op outputs concatenated in op order.

    Returns:
        ``F_att``, shape (b, 1, 1, n * c').

    Example:
        >>> f_att = LowerAttention()(keras.ops.ones((2, 8, 8, 32)))
    """

    def __init__(self, reduction: int = 8, pooling: str = "avg", use_bias: bool = True,
                 **kwargs):
        super().__init__(reduction=reduction, pooling=pooling, use_bias=use_bias, **kwargs)


def check_divisible(channels: int, k: int) -> None:
    """Raises a ValueError unless ``k`` is a positive divisor of ``channels``."""
    if not isinstance(k, int) or k < 1 or channels % k:
        raise ValueError(
            f"k={k} must be a positive divisor of the channel count c={channels} "
            f"(c/k channels enter the candidate operations).")


def top_channels(attention, k: int):
    """Algorithm 2's selection: the indices of the top ``c / k`` channels by
    batch-summed attention, one index set for the whole batch, for one edge or E edges.

    The indices are in increasing channel order (the paper's mask ``M`` keeps the
    channels' order). The selection passes no gradient to the attention. In a
    data-parallel step the batch sum runs over the global batch (all replicas,
    SPEC §2.2), so every replica selects the same channels.

    Args:
        attention: one edge's (b, c) attention, or E edges' (E, b, c).
        k: the selection ratio; must divide ``c``.

    Returns:
        The int32 channel indices: (c / k,), or (E, c / k).

    Example:
        >>> indices = top_channels(keras.random.uniform((2, 8)), k=4)  # 2 channels
    """
    channels = attention.shape[-1]
    check_divisible(channels, k)
    score = ops.stop_gradient(replicas.sum_over_replicas(ops.sum(attention, axis=-2)))
    _, top = ops.top_k(score, channels // k, sorted=True)
    return ops.cast(ops.sort(top, axis=-1), "int32")


def select_channels(x, attention, k: int):
    """Channel extraction (Algorithm 2): the channels of ``x`` that ``top_channels``
    picks from the attention; gradients flow through the gathered values of ``x``.

    Args:
        x: a (b, h, w, c) tensor (in SWD-NAS, the input already scaled by the
            attention).
        attention: the channel attention, shape (b, 1, 1, c) or (b, c).
        k: the selection ratio; must divide ``c``.

    Returns:
        ``(selected, indices)``: the (b, h, w, c / k) gathered channels and the (c / k,)
        int32 channel indices, in increasing order.

    Example:
        >>> x = keras.random.normal((2, 4, 4, 8))
        >>> att = UpperAttention()(x)
        >>> selected, idx = select_channels(x * att, att, k=4)  # 2 channels
    """
    indices = top_channels(ops.reshape(attention, (-1, x.shape[-1])), k)
    return ops.take(x, indices, axis=-1), indices


def write_back(base, mixed, indices, scale=None):
    """Recombination (SPEC §2.4): ``base`` with its channels ``indices`` replaced by
    ``mixed``, for one edge or E edges at once.

    The replacement is a product with the one-hot matrix of ``indices`` (exact: one
    term per output value), whose gradient is a product too; for E edges it is one
    batched product. ``write_back(base, ..., scale=a)`` equals
    ``write_back(base * a, ...)`` without the full-size ``base * a``: the factor
    meets the kept-channel mask first, so edges that share a base share it unscaled.

    Args:
        base: one edge: a (b, h, w, c) tensor; E edges: a list of E such tensors (the
            same tensor may stand for several edges).
        mixed: (b, h, w, E * c / k): the values to write, edge ``e``'s on channels
            ``e * c / k .. (e + 1) * c / k`` (E = 1 for one edge).
        indices: the channel of each written value: (c / k,), or (E, c / k).
        scale: optional per-sample channel factors of ``base``: (b, c), or (E, b, c).

    Returns:
        One edge: the (b, h, w, c) result; E edges: a list of E results.

    Example:
        >>> base = keras.ops.zeros((2, 4, 4, 8))
        >>> out = write_back(base, keras.ops.ones((2, 4, 4, 2)), keras.ops.array([1, 5]))
    """
    several = len(indices.shape) == 2
    bases = list(base) if several else [base]
    if not several:
        indices = indices[None]
        scale = None if scale is None else scale[None]
    count, width = indices.shape
    _, h, w, channels = bases[0].shape
    onehot = ops.one_hot(indices, channels, dtype=mixed.dtype)  # (E, c/k, c)
    keep = (1.0 - ops.sum(onehot, axis=1))[:, None, :]  # (E, 1, c)
    factors = ops.reshape(keep if scale is None else scale * keep, (count, -1, 1, 1, channels))
    if count == 1:
        scattered = [ops.conv(mixed, ops.reshape(onehot, (1, 1, width, channels)))]
    else:
        edge_major = ops.transpose(ops.reshape(mixed, (-1, count, width)), (1, 0, 2))
        scattered = ops.unstack(ops.reshape(ops.matmul(edge_major, onehot),
                                            (count, -1, h, w, channels)), count, axis=0)
    outputs = [x * factor + values for x, factor, values in
               zip(bases, ops.unstack(factors, count, axis=0), scattered)]
    return outputs if several else outputs[0]


def _stack_weights(layers: Sequence[ChannelAttention], name: str):
    """Weight ``name`` of E layers stacked (E, ...); None where the layers lack it."""
    if getattr(layers[0], name) is None:
        return None
    # Values, not variables: keras' TensorFlow stack does not take variables.
    return ops.stack([getattr(layer, name).value for layer in layers], axis=0)
