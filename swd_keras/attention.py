"""The dual-attention layers of SWD-NAS (SPEC §2): upper and lower attention, and the
channel selection between them."""

from __future__ import annotations

import keras
from keras import layers, ops

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

    def _mlp(self, v):
        h = ops.matmul(v, self.w1)
        if self.b1 is not None:
            h = h + self.b1
        out = ops.matmul(ops.relu(h), self.w2)
        return out + self.b2 if self.b2 is not None else out

    def call(self, x):
        pooled = []
        if "avg" in self.pooling:
            pooled.append(ops.mean(x, axis=(1, 2)))
        if "max" in self.pooling:
            pooled.append(ops.max(x, axis=(1, 2)))
        # Stacking the poolings runs the shared MLP once: (p, b, c) -> summed over p.
        logits = ops.sum(self._mlp(ops.stack(pooled, axis=0)), axis=0)
        return ops.sigmoid(logits)[:, None, None, :]

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


def select_channels(x, attention, k: int):
    """Channel extraction (Algorithm 2): the top ``c / k`` channels by batch-summed
    attention, one index set for the whole batch.

    The indices are returned in increasing channel order (the paper's mask ``M``
    keeps the channels' order). The selection itself passes no gradient to the
    attention; gradients flow through the gathered values of ``x``.

    Args:
        x: a (b, h, w, c) tensor (in SWD-NAS, the input already scaled by the
            attention).
        attention: the channel attention, shape (b, 1, 1, c) or (b, c).
        k: the selection ratio; must divide ``c``.

    Returns:
        ``(selected, indices)``: the (b, h, w, c / k) gathered channels and the (c / k,)
        int32 channel indices.

    Example:
        >>> x = keras.random.normal((2, 4, 4, 8))
        >>> att = UpperAttention()(x)
        >>> selected, idx = select_channels(x * att, att, k=4)  # 2 channels
    """
    channels = x.shape[-1]
    check_divisible(channels, k)
    score = ops.stop_gradient(ops.sum(ops.reshape(attention, (-1, channels)), axis=0))
    _, top = ops.top_k(score, channels // k, sorted=True)
    indices = ops.cast(ops.sort(top), "int32")
    return ops.take(x, indices, axis=-1), indices
