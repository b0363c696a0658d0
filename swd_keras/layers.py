"""The public Keras layers of swd-keras, for use in your own models.

Example:
    >>> import keras
    >>> from swd_keras.layers import UpperAttention
    >>> x = keras.Input((32, 32, 64))
    >>> scaled = x * UpperAttention(reduction=4)(x)
"""

from swd_keras.attention import ChannelAttention, LowerAttention, UpperAttention, select_channels
from swd_keras.edge_group import EdgeGroup
from swd_keras.mixed_op import SWDMixedOp
from swd_keras.ops import (
    DilConv,
    FactorizedReduce,
    Identity,
    Pool,
    ReLUConvBN,
    SepConv,
    Zero,
)
from swd_keras.search_cell import ArchitectureAlphas, SearchCell

__all__ = [
    "ArchitectureAlphas", "ChannelAttention", "DilConv", "EdgeGroup", "FactorizedReduce",
    "Identity", "LowerAttention", "Pool", "ReLUConvBN", "SWDMixedOp", "SearchCell",
    "SepConv", "UpperAttention", "Zero", "select_channels",
]
