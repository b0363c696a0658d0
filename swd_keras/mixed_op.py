"""The SWD mixed edge (SPEC §2), and its DARTS softmax variant for the ablations."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from swd_keras.attention import LowerAttention, UpperAttention, check_divisible, select_channels
from swd_keras.fused_ops import CandidateOps, concat_channel_ranges
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
        if self.upper is not None:
            i_mix = self.upper(x)
            scaled = x * i_mix
            selected, indices = select_channels(scaled, i_mix, self.k)
        else:
            scaled = selected = x

        features = self.candidate_ops(selected, training=training)
        if self.lower is not None:
            mixed, atten = self._lower_attention_mix(features)
        else:
            mixed, atten = self._softmax_mix(features, edge_weights)

        if self.upper is not None:
            out = self._write_back(scaled, mixed, indices)
        else:
            out = mixed
        if return_edge_weights:
            return out, ops.stop_gradient(atten)
        return out

    def _lower_attention_mix(self, features):
        """Eq. 7-9: reweight the concatenated op outputs ``F_in``, sum the op slices.

        ``features`` lacks the ``none`` slices (zeros): they enter ``F_in`` only where
        the lower attention pools, and add nothing to the sum.
        """
        if self.la_pooling == "avg":
            # The global average of a 1x1 map is the map itself: pooling here lets the
            # zero slices join as (b, 1, 1, c') constants instead of full-size maps.
            f_att = self.lower(self._with_zeros(ops.mean(features, axis=(1, 2),
                                                         keepdims=True)))
        else:
            f_att = self.lower(self._with_zeros(features))
        f_out = features * self._computed_slices(f_att)
        mixed = self._sum_op_slices(f_out, len(self.candidate_ops.computed_primitives))
        per_op = ops.sum(ops.reshape(f_att, (-1, self.num_ops, self.op_channels)), axis=2)
        return mixed, ops.mean(per_op, axis=0)

    def _softmax_mix(self, features, edge_weights):
        """DARTS' mixed op: a softmax-weighted sum of the op outputs."""
        if self.shared_alphas:
            if edge_weights is None:
                raise ValueError("SWDMixedOp(shared_alphas=True) needs `edge_weights`.")
            weights = edge_weights
        else:
            weights = ops.softmax(self.alphas)
        computed = self._computed_slices(ops.repeat(weights, self.op_channels, axis=0))
        mixed = self._sum_op_slices(features * computed,
                                    len(self.candidate_ops.computed_primitives))
        return mixed, weights

    def _sum_op_slices(self, x, num_slices):
        if num_slices == 1:
            return x
        b, h, w = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        return ops.sum(ops.reshape(x, (b, h, w, num_slices, self.op_channels)), axis=3)

    def _with_zeros(self, features):
        """``F_in`` from ``features``: the zero slices of ``none`` put back in op order."""
        computed = self.candidate_ops.computed_primitives
        if len(computed) == self.num_ops:
            return features
        c = self.op_channels
        zeros = ops.zeros_like(features[..., :c])
        return concat_channel_ranges([
            (features, computed.index(p) * c, (computed.index(p) + 1) * c)
            if p in computed else (zeros, 0, c) for p in self.primitives])

    def _computed_slices(self, per_channel):
        """The channels of the computed ops (all but ``none``) of an (..., n * c')
        tensor."""
        computed = self.candidate_ops.computed_primitives
        if len(computed) == self.num_ops:
            return per_channel
        c = self.op_channels
        return concat_channel_ranges([(per_channel, i * c, (i + 1) * c)
                                      for i, p in enumerate(self.primitives)
                                      if p in computed])

    def _write_back(self, scaled, mixed, indices):
        """Puts the mixed output into the selected channel positions; the others keep
        the (stride-2: max-pooled) scaled input."""
        base = scaled
        if self.strides == 2:
            base = ops.max_pool(scaled, pool_size=2, strides=2, padding="same")
        scatter = ops.one_hot(indices, self.channels, dtype=mixed.dtype)  # (c/k, c)
        keep = 1.0 - ops.sum(scatter, axis=0)
        return base * keep + ops.matmul(mixed, scatter)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "strides": self.strides,
                "k": self.k, "primitives": list(self.primitives),
                "ua_reduction": self.ua_reduction, "ua_pooling": self.ua_pooling,
                "la_reduction": self.la_reduction, "la_pooling": self.la_pooling,
                "upper_attention": self.upper_attention,
                "lower_attention": self.lower_attention,
                "shared_alphas": self.shared_alphas, "use_bias": self.use_bias,
                "affine": self.affine}

