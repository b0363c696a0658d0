"""The DARTS candidate operations as Keras layers (SPEC §1), and the registry that
names them for search spaces, genotypes and retraining (``register_primitive``; users
add their own operations the same way the built-ins are added).

Layouts are channels-last. Convolutions and pools use ``padding="same"``; at stride 2
this pads (0, 1) where DARTS' PyTorch code pads (1, 1): the parameter counts are the
same, the sampling grid is shifted by one pixel (see ``docs/DESIGN.md``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Mapping, Set
from pathlib import Path
from types import ModuleType

import keras
from keras import layers, ops

from swd_keras import replicas
from swd_keras.kernels import pointwise_conv, same_padding
from swd_keras.replica_batch_norm import ReplicaBatchNormalization

PRIMITIVES: tuple[str, ...] = (
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "skip_connect",
    "avg_pool_3x3",
    "max_pool_3x3",
    "none",
)
"""The paper's candidate operations of an edge, in the order that fixes their channel
slices; ``register_primitive`` adds others to choose from."""

# PyTorch's BatchNorm2d momentum=0.1 and eps=1e-5, in Keras' convention.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def make_batch_norm(affine: bool, name: str | None = None) -> layers.BatchNormalization:
    """A BatchNormalization with DARTS' settings; ``affine=False`` drops gamma and beta.

    Made under a ``tf.distribute`` strategy with several replicas, it normalises with
    the global batch's statistics (``ReplicaBatchNormalization``); elsewhere it is
    Keras' own layer, whose (two-pass) statistics are the global batch's there.
    """
    synchronized = replicas.batch_norm_synchronized()
    kind = ReplicaBatchNormalization if synchronized else layers.BatchNormalization
    return kind(momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, center=affine, scale=affine,
                name=name, synchronized=synchronized)


class _Composite(layers.Layer):
    """A layer made of a fixed chain of sublayers, built directly in ``build()``.

    Building the sublayers here (instead of letting Keras trace ``call`` symbolically)
    keeps model construction fast; see KERAS-NOTES.
    """

    def _chain(self) -> list[layers.Layer]:
        raise NotImplementedError

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._chain():
            layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._chain():
            shape = tuple(layer.compute_output_shape(shape))
        return shape


@keras.saving.register_keras_serializable(package="swd_keras")
class ReLUConvBN(_Composite):
    """ReLU, a bias-free convolution, then BatchNorm.

    A 1x1 convolution of stride 1 (the cells' preprocessing) is computed by
    ``kernels.pointwise_conv`` with the ``conv`` layer's kernel: on PyTorch one matrix
    product of the channels-last pixels, where Keras' ``Conv2D`` copies its input to
    channels-first and its output back.

    Args:
        filters: output channels.
        kernel_size: convolution window.
        strides: convolution stride.
        affine: whether the BatchNorm learns a scale and an offset.

    Call arguments:
        x: a (b, h, w, c) tensor.
        training: whether BatchNorm uses batch statistics.

    Returns:
        A (b, h / strides, w / strides, filters) tensor.

    Example:
        >>> y = ReLUConvBN(16)(keras.ops.ones((2, 8, 8, 4)))
    """

    def __init__(self, filters: int, kernel_size: int = 1, strides: int = 1,
                 affine: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides, self.affine = (
            filters, kernel_size, strides, affine)
        self.conv = layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                                  use_bias=False, name="conv")
        self.bn = make_batch_norm(affine, name="bn")

    def _chain(self):
        return [self.conv, self.bn]

    def call(self, x, training=None):
        x = ops.relu(x)
        if self.kernel_size == 1 and self.strides == 1:
            x = pointwise_conv(x, self.conv.kernel)
        else:
            x = self.conv(x)
        return self.bn(x, training=training)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "affine": self.affine}


@keras.saving.register_keras_serializable(package="swd_keras")
class DilConv(_Composite):
    """ReLU, depthwise (dilated) convolution, pointwise convolution, BatchNorm.

    A stride above 1 together with a dilation above 1 (DARTS' ``dil_conv`` in a
    reduction edge) is computed as the stride-1 depthwise convolution subsampled on
    the grid that a strided ``padding="same"`` convolution uses, since TensorFlow's
    kernels refuse that combination; the result is that strided convolution exactly.
    It needs static spatial sizes.

    Args:
        filters: output channels of the pointwise convolution.
        kernel_size: depthwise window.
        strides: spatial stride.
        dilation_rate: depthwise dilation.
        affine: whether the BatchNorm learns a scale and an offset.

    Call arguments:
        x: a (b, h, w, c) tensor.
        training: whether BatchNorm uses batch statistics.

    Returns:
        A (b, ceil(h / strides), ceil(w / strides), filters) tensor.

    Example:
        >>> y = DilConv(8, 3, strides=2, dilation_rate=2)(keras.ops.ones((2, 8, 8, 8)))
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1,
                 dilation_rate: int = 1, affine: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = filters, kernel_size, strides
        self.dilation_rate, self.affine = dilation_rate, affine
        self._subsample = strides > 1 and dilation_rate > 1
        self.depthwise = layers.DepthwiseConv2D(
            kernel_size, strides=1 if self._subsample else strides, padding="same",
            dilation_rate=dilation_rate, use_bias=False, name="depthwise")
        self.pointwise = layers.Conv2D(filters, 1, use_bias=False, name="pointwise")
        self.bn = make_batch_norm(affine, name="bn")

    def _chain(self):
        return [self.depthwise, self.pointwise, self.bn]

    def build(self, input_shape):
        b, h, w, c = input_shape
        self.depthwise.build((b, h, w, c))
        out_h = None if h is None else -(-h // self.strides)
        out_w = None if w is None else -(-w // self.strides)
        self.pointwise.build((b, out_h, out_w, c))
        self.bn.build((b, out_h, out_w, self.filters))

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        s = self.strides
        return (b, None if h is None else -(-h // s), None if w is None else -(-w // s),
                self.filters)

    def call(self, x, training=None):
        y = self.depthwise(ops.relu(x))
        if self._subsample:
            y = self._subsample_like_same_padding(y, x.shape[1], x.shape[2])
        return self.bn(self.pointwise(y), training=training)

    def _subsample_like_same_padding(self, y, h, w):
        """Picks from the stride-1 output the positions that a strided convolution with
        ``padding="same"`` computes, so the result equals that convolution exactly."""
        span = self.dilation_rate * (self.kernel_size - 1) + 1
        s = self.strides

        def offset(size):
            return (span - 1) // 2 - same_padding(size, span, s)[0]

        return y[:, offset(h)::s, offset(w)::s, :][:, : -(-h // s), : -(-w // s), :]

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "dilation_rate": self.dilation_rate, "affine": self.affine}


@keras.saving.register_keras_serializable(package="swd_keras")
class SepConv(_Composite):
    """DARTS' separable convolution: two stacked DilConv blocks without dilation.

    The first block has the stride and keeps the input's channels; the second maps
    to ``filters``.

    Args:
        filters: output channels.
        kernel_size: depthwise window of both blocks.
        strides: stride of the first block.
        affine: whether the BatchNorms learn a scale and an offset.

    Call arguments:
        x: a (b, h, w, c) tensor.
        training: whether BatchNorm uses batch statistics.

    Returns:
        A (b, ceil(h / strides), ceil(w / strides), filters) tensor.

    Example:
        >>> y = SepConv(8, 5)(keras.ops.ones((2, 8, 8, 8)))
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1,
                 affine: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides, self.affine = (
            filters, kernel_size, strides, affine)
        self._kwargs_first = dict(kernel_size=kernel_size, strides=strides, affine=affine)
        self.first: DilConv | None = None
        self.second = DilConv(filters, kernel_size, 1, 1, affine, name="second")

    def _chain(self):
        return [self.first, self.second]

    def build(self, input_shape):
        # The first block keeps the input's channel count, known only here.
        self.first = DilConv(input_shape[-1], name="first", **self._kwargs_first)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        s = self.strides
        return (b, None if h is None else -(-h // s), None if w is None else -(-w // s),
                self.filters)

    def call(self, x, training=None):
        return self.second(self.first(x, training=training), training=training)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "affine": self.affine}


@keras.saving.register_keras_serializable(package="swd_keras")
class FactorizedReduce(_Composite):
    """Halves the resolution with two 1x1 stride-2 convolutions, the second shifted.

    ReLU, then one 1x1 stride-2 convolution on the input and one on the input shifted
    by one pixel down and right, concatenated on channels, then BatchNorm. For even
    sizes this is DARTS' operation exactly; odd sizes are padded so both halves
    agree.

    Args:
        filters: output channels (split ``filters // 2`` and the rest).
        affine: whether the BatchNorm learns a scale and an offset.

    Call arguments:
        x: a (b, h, w, c) tensor.
        training: whether BatchNorm uses batch statistics.

    Returns:
        A (b, ceil(h / 2), ceil(w / 2), filters) tensor.

    Example:
        >>> y = FactorizedReduce(16)(keras.ops.ones((2, 8, 8, 8)))
    """

    def __init__(self, filters: int, affine: bool = True, **kwargs):
        super().__init__(**kwargs)
        if filters < 2:
            raise ValueError(f"FactorizedReduce needs filters >= 2, got filters={filters}.")
        self.filters, self.affine = filters, affine
        # Applied to the stride-2 grid's pixels: a 1x1 convolution at stride 2 is the
        # 1x1 convolution of those pixels, and PyTorch's weight gradient of the strided
        # one came out wrong, at random, on an AMD EPYC CPU (docs/BENCHMARKS.md).
        self.conv_1 = layers.Conv2D(filters // 2, 1, use_bias=False, name="conv_1")
        self.conv_2 = layers.Conv2D(filters - filters // 2, 1, use_bias=False, name="conv_2")
        self.bn = make_batch_norm(affine, name="bn")

    def build(self, input_shape):
        self.conv_1.build(input_shape)
        self.conv_2.build(input_shape)
        self.bn.build(self.compute_output_shape(input_shape))

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, None if h is None else -(-h // 2), None if w is None else -(-w // 2),
                self.filters)

    def call(self, x, training=None):
        x = ops.relu(x)
        # Shift by one pixel; the zero row/column added at the end is never sampled by
        # the stride-2 grid for even sizes, and keeps both halves aligned for odd ones.
        shifted = ops.pad(x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
        y = ops.concatenate([self.conv_1(x[:, ::2, ::2, :]),
                             self.conv_2(shifted[:, ::2, ::2, :])], axis=-1)
        return self.bn(y, training=training)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "affine": self.affine}


@keras.saving.register_keras_serializable(package="swd_keras")
class Zero(layers.Layer):
    """The ``none`` operation: zeros, subsampled by the stride.

    Args:
        strides: spatial stride.

    Call arguments:
        x: a (b, h, w, c) tensor.

    Returns:
        Zeros of shape (b, ceil(h / strides), ceil(w / strides), c).

    Example:
        >>> y = Zero(2)(keras.ops.ones((1, 4, 4, 3)))  # (1, 2, 2, 3) zeros
    """

    def __init__(self, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.strides = strides

    def call(self, x, training=None):
        # `training` is accepted so that all candidate ops share one call signature.
        return ops.zeros_like(x[:, :: self.strides, :: self.strides, :])

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        s = self.strides
        return (b, None if h is None else -(-h // s), None if w is None else -(-w // s), c)

    def get_config(self):
        return {**super().get_config(), "strides": self.strides}


@keras.saving.register_keras_serializable(package="swd_keras")
class Pool(layers.Layer):
    """An average or max pool, optionally followed by a non-affine BatchNorm.

    The average does not count padded positions (PyTorch's
    ``count_include_pad=False``), as in DARTS. Search edges put a BatchNorm after
    their pools (DARTS' ``MixedOp``); retrain cells do not.

    Args:
        pool_type: ``"avg"`` or ``"max"``.
        strides: spatial stride.
        batch_norm: whether a non-affine BatchNorm follows the pool.
        pool_size: the pooling window.

    Call arguments:
        x: a (b, h, w, c) tensor.
        training: whether BatchNorm uses batch statistics.

    Returns:
        A (b, ceil(h / strides), ceil(w / strides), c) tensor.

    Example:
        >>> y = Pool("max", strides=2)(keras.ops.ones((1, 8, 8, 3)))
    """

    def __init__(self, pool_type: str, strides: int = 1, batch_norm: bool = False,
                 pool_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        if pool_type not in ("avg", "max"):
            raise ValueError(f"pool_type must be 'avg' or 'max', got {pool_type!r}.")
        self.pool_type, self.strides, self.batch_norm = pool_type, strides, batch_norm
        self.pool_size = pool_size
        self.bn = make_batch_norm(False, name="bn") if batch_norm else None

    def build(self, input_shape):
        if self.bn is not None:
            self.bn.build(self.compute_output_shape(input_shape))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        s = self.strides
        return (b, None if h is None else -(-h // s), None if w is None else -(-w // s), c)

    def call(self, x, training=None):
        size, s = self.pool_size, self.strides
        if self.pool_type == "max":
            y = ops.max_pool(x, size, s, padding="same")
        else:
            # Backends disagree on "same" average pooling at stride 2 (Keras' torch
            # backend pads by replicating edges), so pad with zeros explicitly and divide
            # by the pooled mask: an average over the real pixels only, on every backend.
            padding = ((0, 0), same_padding(x.shape[1], size, s),
                       same_padding(x.shape[2], size, s), (0, 0))
            mask = ops.pad(ops.ones_like(x[:1, :, :, :1]), padding)
            y = (ops.average_pool(ops.pad(x, padding), size, s, padding="valid")
                 / ops.average_pool(mask, size, s, padding="valid"))
        return self.bn(y, training=training) if self.bn is not None else y

    def get_config(self):
        return {**super().get_config(), "pool_type": self.pool_type,
                "strides": self.strides, "batch_norm": self.batch_norm,
                "pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package="swd_keras")
class Identity(layers.Layer):
    """The stride-1 ``skip_connect``: returns its input.

    Call arguments:
        x: any tensor.

    Returns:
        ``x`` unchanged.

    Example:
        >>> y = Identity()(keras.ops.ones((1, 4, 4, 3)))
    """

    def call(self, x, training=None):
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


# -- the registry of candidate operations --------------------------------------------

OpFactory = Callable[..., layers.Layer]
"""``factory(channels, strides, affine, **layer_kwargs) -> keras.layers.Layer``."""

FUSED_KINDS: tuple[str, ...] = ("sep_conv", "dil_conv", "avg_pool", "max_pool", "skip", "zero")
"""The forms ``fused_ops.CandidateOps`` computes together with the other ops of an edge:
DARTS' separable and dilated (dilation 2) convolutions and pools of any odd size, the
skip connection (identity, or factorized reduce at stride 2) and the zero op."""

_SIZED_KINDS = ("sep_conv", "dil_conv", "avg_pool", "max_pool")
_POOL_KINDS = ("avg_pool", "max_pool")


@dataclasses.dataclass(frozen=True)
class FusedKernel:
    """A fused form of ``FUSED_KINDS``, with its window (odd) where it has one.

    The search puts a non-affine BatchNorm after fused pools, as DARTS' search edge
    does, so ``make_op`` passes ``batch_norm=`` to the factory of a primitive with a
    pool form (the built-in ones build ``Pool(..., batch_norm=...)``).

    Example:
        >>> FusedKernel("sep_conv", 7)  # what SepConv(c, 7, ...) computes
    """

    kind: str
    size: int = 0

    def __post_init__(self):
        if self.kind not in FUSED_KINDS:
            raise ValueError(f"FusedKernel kind must be one of {list(FUSED_KINDS)}, "
                             f"got {self.kind!r}.")
        sized = self.kind in _SIZED_KINDS
        if sized != (isinstance(self.size, int) and self.size > 0) or (
                sized and self.size % 2 == 0):
            raise ValueError(f"FusedKernel({self.kind!r}) needs "
                             f"{'an odd size >= 1' if sized else 'no size'}, got "
                             f"size={self.size!r}.")


@dataclasses.dataclass(frozen=True)
class Primitive:
    """A registered candidate operation (see ``register_primitive``)."""

    name: str
    factory: OpFactory
    parameter_free: bool = False
    fused: FusedKernel | None = None


_REGISTRY: dict[str, Primitive] = {}

OPS: Mapping[str, Primitive] = types.MappingProxyType(_REGISTRY)
"""The registered candidate operations by name (read-only; ``register_primitive``
adds to it)."""


class _ParameterFree(Set):
    """The registered primitives declared parameter-free, read from the registry."""

    def __contains__(self, name) -> bool:
        entry = _REGISTRY.get(name)
        return entry is not None and entry.parameter_free

    def __iter__(self):
        return (name for name, entry in _REGISTRY.items() if entry.parameter_free)

    def __len__(self) -> int:
        return sum(entry.parameter_free for entry in _REGISTRY.values())

    def __repr__(self) -> str:
        return f"PARAMETER_FREE({sorted(self)})"


PARAMETER_FREE: Set[str] = _ParameterFree()
"""Operations without weights at stride 1 (the 'collapse' ops of DARTS), built-in or
registered with ``parameter_free=True``."""


def register_primitive(name: str, factory: OpFactory, *, parameter_free: bool = False,
                       fused: FusedKernel | None = None,
                       override: bool = False) -> Primitive:
    """Adds a candidate operation that search spaces, genotypes and retraining can name.

    The search computes a primitive with a ``fused`` form together with the other ops
    of its edge (``fused_ops.CandidateOps``); any other primitive runs as its own layer
    ``factory(channels, strides, affine=False)`` in each search edge, which must bring
    its own BatchNorm if it wants one (DARTS ends every search op but identity and
    ``none`` in a non-affine BatchNorm). Retraining builds ``factory(channels, strides,
    affine=True, name=...)``.

    A new process finds a primitive by importing the module that registers it
    (``import_primitives``) before it reads a genotype or a model: a genotype's JSON
    names its primitives only, and a saved ``.keras`` model needs the op's layer class
    registered with ``keras.saving.register_keras_serializable``, which that import
    does too (the ``@register_keras_serializable`` decorator runs on import).

    Args:
        name: the op's name in ``primitives`` lists and genotypes.
        factory: ``factory(channels, strides, affine, **layer_kwargs)`` returns a new
            Keras layer mapping (b, h, w, channels) to (b, ceil(h / strides),
            ceil(w / strides), channels), passing ``layer_kwargs`` (``name``, ...) to
            the layer; ``strides`` is 1, or 2 in a reduction edge.
        parameter_free: the op has no weights at stride 1 (it counts in the genotype's
            ``parameter_free_count``, the collapse measure).
        fused: the fused form that computes exactly what ``factory`` builds, if any.
        override: replace a primitive already registered under ``name``.

    Returns:
        The registry entry.

    Example:
        >>> register_primitive(
        ...     "conv_3x3", lambda c, s, affine, **kw: ReLUConvBN(c, 3, s, affine, **kw))
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}.")
    if not callable(factory):
        raise ValueError(f"factory must be callable, got {factory!r}.")
    if fused is not None and not isinstance(fused, FusedKernel):
        raise ValueError(f"fused must be a FusedKernel or None, got {fused!r}.")
    if name in _REGISTRY and not override:
        raise ValueError(f"primitive {name!r} is already registered; pass override=True "
                         f"to replace it.")
    entry = Primitive(name, factory, bool(parameter_free), fused)
    _REGISTRY[name] = entry
    return entry


def get_primitive(name: str) -> Primitive:
    """The registry entry of ``name``, or a ValueError listing the registered ones."""
    check_primitives([name])
    return _REGISTRY[name]


def check_primitives(primitives) -> tuple[str, ...]:
    """Returns ``primitives`` as a tuple, or raises a ValueError naming the unknown ones
    and the registered ones."""
    primitives = (primitives,) if isinstance(primitives, str) else tuple(primitives)
    unknown = [p for p in primitives if p not in _REGISTRY]
    if unknown or not primitives:
        raise ValueError(
            f"Unknown primitive(s) {unknown or '(empty list)'}; allowed: {list(_REGISTRY)} "
            f"(the registered ones; swd_keras.ops.register_primitive adds others).")
    if len(set(primitives)) != len(primitives):
        raise ValueError(f"primitives has repeated names: {list(primitives)}.")
    return primitives


_IMPORTED_FILES: dict[Path, ModuleType] = {}


def import_primitives(module: str) -> ModuleType:
    """Imports the module that registers a user's primitives, so that search spaces,
    genotypes and saved models can name them.

    Args:
        module: a dotted module name (``my_package.my_ops``) or the path of a ``.py``
            file; a file is imported once per process.

    Returns:
        The imported module.

    Example:
        >>> import_primitives("my_ops.py")  # runs its register_primitive calls
    """
    path = Path(module)
    if path.suffix != ".py":
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name and (module + ".").startswith(error.name + "."):
                raise ValueError(f"primitives module {module!r} not found (a dotted module "
                                 f"name on sys.path or a .py file).") from None
            raise
    if not path.is_file():
        raise ValueError(f"primitives module file {str(path)!r} does not exist.")
    path = path.resolve()
    if path in _IMPORTED_FILES:
        return _IMPORTED_FILES[path]
    # Registered in sys.modules while it runs, as an import would, for the dataclasses,
    # pickling and typing helpers that look their module up there.
    name = f"swd_keras_primitives_{path.stem}"
    if name in sys.modules:
        raise ValueError(f"another primitives file named {path.name!r} was imported "
                         f"already; rename one of them.")
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    try:
        spec.loader.exec_module(loaded)
    except BaseException:
        del sys.modules[name]
        raise
    _IMPORTED_FILES[path] = loaded
    return loaded


def make_op(primitive: str, channels: int, strides: int = 1, affine: bool = True,
            pool_batch_norm: bool = False, **kwargs) -> layers.Layer:
    """Builds the candidate operation ``primitive``.

    Args:
        primitive: a registered name (``PRIMITIVES`` or one of ``register_primitive``).
        channels: input and output channels.
        strides: 1, or 2 in a reduction edge.
        affine: whether BatchNorms learn a scale and an offset (False in the search
            network, True when retraining).
        pool_batch_norm: put a non-affine BatchNorm after the built-in pools, as search
            edges do.
        **kwargs: passed to the layer (e.g. ``name``).

    Returns:
        A new Keras layer mapping (b, h, w, channels) to
        (b, ceil(h / strides), ceil(w / strides), channels).

    Example:
        >>> op = make_op("dil_conv_5x5", 16, strides=2, affine=False)
    """
    entry = get_primitive(primitive)
    if entry.fused is not None and entry.fused.kind in _POOL_KINDS:
        kwargs["batch_norm"] = pool_batch_norm
    return entry.factory(channels, strides, affine, **kwargs)


def _pool(pool_type: str) -> OpFactory:
    def factory(channels, strides, affine, batch_norm=False, **kwargs):
        return Pool(pool_type, strides, batch_norm, **kwargs)
    return factory


for _name, _factory, _parameter_free, _fused in (
        ("sep_conv_3x3", lambda c, s, affine, **kw: SepConv(c, 3, s, affine, **kw), False,
         FusedKernel("sep_conv", 3)),
        ("sep_conv_5x5", lambda c, s, affine, **kw: SepConv(c, 5, s, affine, **kw), False,
         FusedKernel("sep_conv", 5)),
        ("dil_conv_3x3", lambda c, s, affine, **kw: DilConv(c, 3, s, 2, affine, **kw), False,
         FusedKernel("dil_conv", 3)),
        ("dil_conv_5x5", lambda c, s, affine, **kw: DilConv(c, 5, s, 2, affine, **kw), False,
         FusedKernel("dil_conv", 5)),
        ("skip_connect", lambda c, s, affine, **kw: (
            Identity(**kw) if s == 1 else FactorizedReduce(c, affine=affine, **kw)), True,
         FusedKernel("skip")),
        ("avg_pool_3x3", _pool("avg"), True, FusedKernel("avg_pool", 3)),
        ("max_pool_3x3", _pool("max"), True, FusedKernel("max_pool", 3)),
        ("none", lambda c, s, affine, **kw: Zero(s, **kw), True, FusedKernel("zero"))):
    register_primitive(_name, _factory, parameter_free=_parameter_free, fused=_fused)
del _name, _factory, _parameter_free, _fused
