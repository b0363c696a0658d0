"""The SWD mixed edge (SPEC §2), and its DARTS softmax variant for the ablations.

``SWDMixedOp.call`` computes one edge as the paper describes it; a search cell
computes its edges with ``edge_group.EdgeGroup``, several at once from the same
layers' methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from swd_keras.attention import (
    LowerAttention,
    UpperAttention,
    check_divisible,
    select_channels,
    write_back,
)
from swd_keras.fused_ops import CandidateOps
from swd_keras.kernels import max_pool
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

    The candidate ops are computed together (``fused_ops.CandidateOps``); a search
    cell computes several edges at once with ``EdgeGroup``, which gives the same
    values.

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
            i_mix = self.upper(x)  # eq. 5-6
            i_s = x * i_mix
            selected, indices = select_channels(i_s, i_mix, self.k)  # Algorithm 2
        else:
            selected = x
        f_in = self._op_outputs(selected, training)
        n, width = self.num_ops, self.op_channels
        if self.lower is not None:
            f_att = self.lower(f_in)  # eq. 8
            # Eq. 7: each op's attention summed over its channels, averaged over the batch.
            atten = ops.mean(ops.sum(ops.reshape(f_att, (-1, n, width)), axis=-1), axis=0)
        else:
            atten = self._softmax_weights(edge_weights)
            f_att = ops.repeat(atten, width)
        f_out = f_in * f_att  # eq. 9
        mixed = ops.sum(ops.reshape(f_out, (-1, *f_out.shape[1:3], n, width)), axis=3)
        if self.upper is None:
            out = mixed
        else:
            base = i_s if self.strides == 1 else max_pool(i_s, 2, 2)
            out = write_back(base, mixed, indices)
        atten = ops.stop_gradient(atten)
        return (out, atten) if return_edge_weights else out

    def _op_outputs(self, selected, training):
        """``F_in``: every candidate op's output on the selected channels, in op order.
        ``none`` is not computed; its zeros join here because ``F_in`` has n slices."""
        features = self.candidate_ops(selected, training=training)
        if "none" not in self.primitives:
            return features
        s = self.strides
        zeros = ops.zeros_like(selected[:, ::s, ::s, :] if s > 1 else selected)
        computed = self.candidate_ops.computed_primitives
        outputs = iter(ops.split(features, len(computed), axis=-1) if computed else ())
        return ops.concatenate([zeros if p == "none" else next(outputs)
                                for p in self.primitives], axis=-1)

    def _softmax_weights(self, edge_weights):
        """The DARTS edge's mixing weights: its own ``softmax(alphas)``, or the
        caller's shared ones."""
        if self.shared_alphas:
            if edge_weights is None:
                raise ValueError("SWDMixedOp(shared_alphas=True) needs `edge_weights`.")
            return ops.convert_to_tensor(edge_weights)
        return ops.softmax(self.alphas)

    def fusion_key(self) -> tuple:
        """Edges with equal keys can be computed together by one ``EdgeGroup``."""
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
