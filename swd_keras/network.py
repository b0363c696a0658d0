"""The retrain network: a genotype's cells stacked into a CIFAR or ImageNet network (SPEC §5).

``build_network`` returns a functional Keras model. With ``auxiliary=True`` it is the
*training* model: its output is the dictionary ``{"logits": ..., "aux_logits": ...}``,
the second from DARTS' auxiliary head after the second reduction cell, so that
``model.fit`` trains both heads with ``loss_weights={"logits": 1, "aux_logits": 0.4}``.
``inference_model(model)`` gives the single-output model (``logits``) that shares every
weight and leaves the auxiliary head out; it is what is saved, evaluated and exported.
With ``auxiliary=False`` the model already is the inference model.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np
from keras import ops

from swd_keras.cells import Cell, check_drop_path_rate
from swd_keras.genotype import Genotype, get_genotype
from swd_keras.ops import make_batch_norm

HEADS: tuple[str, ...] = ("cifar", "imagenet")
STEM_MULTIPLIER = 3
"""The CIFAR stem has ``3 C`` channels (DARTS)."""
LOGITS, AUX_LOGITS = "logits", "aux_logits"
"""Output names of the training model."""
AUX_HEAD_NAME = "auxiliary_head"


def _reduction_positions(layers_count: int) -> tuple[int, int]:
    return layers_count // 3, 2 * layers_count // 3


def stacking_plan(genotype: Genotype, layers: int) -> tuple[int, ...]:
    """Which genotype cell sits at each of the network's ``layers`` positions.

    Reduction cells sit at ``layers // 3`` and ``2 * layers // 3`` (DARTS). Three
    layouts are accepted:

    * 5 cells (SWD-NAS: normal, reduce, normal, reduce, normal): cell 0 fills the
      positions before the first reduction, cell 1 is the first reduction, cell 2 fills
      the positions between the reductions, cell 3 is the second reduction and cell 4
      fills the rest; for ``layers=20``: 6 x cell 0, cell 1, 6 x cell 2, cell 3,
      6 x cell 4. Needs ``layers >= 5`` so that every cell is used.
    * 2 cells (DARTS: normal, reduce): the normal cell everywhere except at the two
      reduction positions. Needs ``layers >= 3``.
    * as many cells as ``layers``: cell i at position i (their types must put the
      reductions at ``layers // 3`` and ``2 * layers // 3``).

    Args:
        genotype: the Genotype.
        layers: the network's number of cells L.

    Returns:
        A tuple of ``layers`` genotype cell indices.

    Raises:
        ValueError: any other combination; the message names the cell count and
            ``layers``.

    Example:
        >>> stacking_plan(get_genotype("swd_nas_paper"), 8)
        (0, 0, 1, 2, 2, 3, 4, 4)
    """
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive integer, got {layers!r}.")
    types = [cell.type for cell in genotype.cells]
    first, second = _reduction_positions(layers)
    count = genotype.num_cells
    if count == 5 and layers >= 5:
        _require_types(types, ["normal", "reduce", "normal", "reduce", "normal"], layers)
        return tuple(0 if i < first else 1 if i == first else 2 if i < second
                     else 3 if i == second else 4 for i in range(layers))
    if count == 2 and layers >= 3:
        _require_types(types, ["normal", "reduce"], layers)
        return tuple(1 if i in (first, second) else 0 for i in range(layers))
    if count == layers and count not in (2, 5):
        _require_types(types, ["reduce" if i in (first, second) else "normal"
                               for i in range(layers)], layers)
        return tuple(range(layers))
    raise ValueError(
        f"a genotype with {count} cells cannot be stacked into layers={layers}: use a "
        "5-cell genotype with layers >= 5, a 2-cell (normal, reduce) genotype with "
        f"layers >= 3, or a genotype with exactly {layers} cells.")


def _require_types(types: list[str], expected: list[str], layers: int) -> None:
    if types != expected:
        raise ValueError(
            f"a {len(types)}-cell genotype stacked into layers={layers} needs cell types "
            f"{expected}, got {types}.")


@keras.saving.register_keras_serializable(package="swd_keras")
class AuxiliaryHead(keras.layers.Layer):
    """DARTS' auxiliary classifier (``AuxiliaryHeadCIFAR`` / ``AuxiliaryHeadImageNet``).

    ReLU, 5x5 average pool without padding (stride 3 for CIFAR, 2 for ImageNet),
    conv1x1 to 128 + BN + ReLU, conv2x2 to 768 (+ BN for CIFAR only, as DARTS' ImageNet
    head omits it) + ReLU, then a dense classifier. DARTS assumes an 8x8 (CIFAR) or 7x7
    (ImageNet) input, pooled to 2x2 and convolved to 1x1; smaller inputs (tiny test
    images) shrink the pool window and the 2x2 kernel to fit, and a final global average
    pool stands in for DARTS' flatten (identical at 1x1).

    Args:
        num_classes: classifier outputs.
        head: ``"cifar"`` or ``"imagenet"``.
        **kwargs: Layer arguments.

    Call arguments:
        x: the (b, h, w, c) output of the second reduction cell.
        training: whether BatchNorm uses batch statistics.

    Returns:
        (b, num_classes) logits.

    Example:
        >>> logits = AuxiliaryHead(10)(keras.ops.ones((2, 8, 8, 64)))
    """

    def __init__(self, num_classes: int, head: str = "cifar", **kwargs):
        super().__init__(**kwargs)
        _check_head(head)
        self.num_classes, self.head = num_classes, head
        self.pool: keras.layers.AveragePooling2D | None = None
        self.conv1 = keras.layers.Conv2D(128, 1, use_bias=False, name="conv1")
        self.bn1 = make_batch_norm(True, name="bn1")
        self.conv2: keras.layers.Conv2D | None = None
        self.bn2 = make_batch_norm(True, name="bn2") if head == "cifar" else None
        self.classifier = keras.layers.Dense(num_classes, name="classifier")

    def build(self, input_shape):
        b, h, w, c = input_shape
        window = min(5, h, w)
        self.pool = keras.layers.AveragePooling2D(window, strides=3 if self.head == "cifar" else 2,
                                            padding="valid", name="pool")
        ph, pw = self.pool.compute_output_shape(input_shape)[1:3]
        self.conv2 = keras.layers.Conv2D(768, min(2, ph, pw), use_bias=False, name="conv2")
        self.conv1.build((b, ph, pw, c))
        self.bn1.build((b, ph, pw, 128))
        self.conv2.build((b, ph, pw, 128))
        shape = self.conv2.compute_output_shape((b, ph, pw, 128))
        if self.bn2 is not None:
            self.bn2.build(shape)
        self.classifier.build((b, 768))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def call(self, x, training=None):
        x = self.bn1(self.conv1(self.pool(ops.relu(x))), training=training)
        x = self.conv2(ops.relu(x))
        if self.bn2 is not None:
            x = self.bn2(x, training=training)
        return self.classifier(ops.mean(ops.relu(x), axis=(1, 2)))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "head": self.head}


def _check_head(head: str) -> None:
    if head not in HEADS:
        raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}.")


def _conv_bn(x, filters: int, strides: int, name: str):
    """conv3x3 (no bias) with PyTorch's padding=1, then affine BN."""
    if strides > 1:
        # Explicit symmetric padding: "same" would pad (0, 1) at stride 2 (KERAS-NOTES).
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="valid" if strides > 1 else "same",
                      use_bias=False, name=f"{name}_conv")(x)
    return make_batch_norm(True, name=f"{name}_bn")(x)


def build_network(genotype: Genotype | str | os.PathLike, input_shape: tuple[int, int, int],
                  num_classes: int, channels: int = 36, layers: int = 20,
                  auxiliary: bool = True, drop_path: float = 0.2, head: str = "cifar",
                  name: str = "network") -> keras.Model:
    """The retrain network of a genotype (DARTS' NetworkCIFAR / NetworkImageNet).

    CIFAR head: stem conv3x3 to ``3 C`` + BN, then the cells, then global average
    pooling and a dense classifier. ImageNet head: DARTS' stem0 (conv3x3 stride 2 to
    C/2, BN, ReLU, conv3x3 stride 2 to C, BN) and stem1 (ReLU, conv3x3 stride 2 to C,
    BN), which reduce 224 to 28 (the first cell sees stem0's output as ``s0``, twice the
    resolution). Channels double at each reduction cell. BatchNorm is affine. The
    auxiliary head (if any) reads the second reduction cell's output.

    Args:
        genotype: a Genotype, a built-in name (``"darts_v2"``, ``"swd_nas_paper"``) or a
            genotype JSON path; its cells are stacked by ``stacking_plan``.
        input_shape: (h, w, channels) of the (normalised float) images.
        num_classes: classifier outputs.
        channels: C, the first cells' channels (36 for CIFAR, 48 for ImageNet).
        layers: the number of cells L (20 in the paper).
        auxiliary: add the auxiliary head; the model then outputs
            ``{"logits", "aux_logits"}`` (see the module docstring).
        drop_path: the cells' drop-path probability until a ``DropPathSchedule`` sets it.
        head: ``"cifar"`` or ``"imagenet"`` (stem and auxiliary head).
        name: the model's name.

    Returns:
        A functional ``keras.Model`` mapping (b, h, w, c) images to (b, num_classes)
        logits, or to the dictionary of logits and auxiliary logits.

    Raises:
        ValueError: an unknown genotype name, a genotype that does not fit ``layers``,
            or an invalid argument (the message names it).

    Example:
        >>> model = build_network("darts_v2", (32, 32, 3), 10, channels=36, layers=20)
        >>> count_parameters(model)
        3349342
    """
    genotype = get_genotype(genotype)
    _check_head(head)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2:
        raise ValueError(f"channels must be an integer >= 2, got {channels!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if len(tuple(input_shape)) != 3 or not all(isinstance(d, int) and d > 0
                                               for d in input_shape):
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}.")
    check_drop_path_rate(drop_path, "drop_path")
    plan = stacking_plan(genotype, layers)

    images = keras.Input(tuple(input_shape), name="images")
    if head == "cifar":
        s0 = s1 = _conv_bn(images, STEM_MULTIPLIER * channels, 1, "stem")
        reduction_prev = False
    else:
        s0 = _conv_bn(images, channels // 2, 2, "stem0_a")
        s0 = _conv_bn(keras.layers.ReLU(name="stem0_relu")(s0), channels, 2, "stem0_b")
        s1 = _conv_bn(keras.layers.ReLU(name="stem1_relu")(s0), channels, 2, "stem1")
        reduction_prev = True

    cell_channels = channels
    aux_position = _reduction_positions(layers)[1]
    aux_logits = None
    for position, cell_index in enumerate(plan):
        cell_genotype = genotype.cells[cell_index]
        if cell_genotype.is_reduction:
            cell_channels *= 2
        cell = Cell(cell_genotype, cell_channels, reduction_prev=reduction_prev,
                    drop_path_rate=drop_path, name=f"cell_{position}")
        s0, s1 = s1, cell(s0, s1)
        reduction_prev = cell_genotype.is_reduction
        if auxiliary and position == aux_position:
            aux_logits = AuxiliaryHead(num_classes, head, name=AUX_HEAD_NAME)(s1)

    pooled = keras.layers.GlobalAveragePooling2D(name="global_pooling")(s1)
    logits = keras.layers.Dense(num_classes, name="classifier")(pooled)
    outputs: Any = {LOGITS: logits, AUX_LOGITS: aux_logits} if auxiliary else logits
    return keras.Model(images, outputs, name=name)


def has_auxiliary_head(model: keras.Model) -> bool:
    """Whether ``model`` is a training model with the auxiliary output."""
    output = getattr(model, "output", None)  # None for a model never called
    return isinstance(output, dict) and AUX_LOGITS in output


def inference_model(model: keras.Model) -> keras.Model:
    """The single-output model (logits) of a retrain network, without the auxiliary head.

    It shares every layer and weight with ``model``: training ``model`` trains it.

    Args:
        model: a model from ``build_network`` (with or without the auxiliary head).

    Returns:
        ``model`` itself when it has no auxiliary output, else a functional model from the
        same input to the ``logits`` output.

    Example:
        >>> train_model = build_network("darts_v2", (16, 16, 3), 10, 8, 5)
        >>> infer = inference_model(train_model)
    """
    if not has_auxiliary_head(model):
        return model
    return keras.Model(model.input, model.output[LOGITS], name=model.name)


def load_network(path: str | os.PathLike) -> keras.Model:
    """Loads a saved retrain network (``.keras``) as its inference model.

    Args:
        path: a ``.keras`` file (e.g. a run's ``model.keras``).

    Returns:
        The single-output (logits) model; a saved training model loses its auxiliary
        output (``inference_model``).

    Raises:
        ValueError: no such file, or a file that is not a Keras model (one line naming
            the file and the reason).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such model file.")
    if not path.endswith(".keras"):
        raise ValueError(f"{path} is not a Keras model file (expected a .keras file).")
    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001 (zip, JSON, h5 and Keras errors alike)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is not a loadable Keras model ({reason}).") from None
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a model.")
    return inference_model(model)


def count_parameters(model: keras.Model, include_auxiliary: bool = False) -> int:
    """The number of trainable parameters, as DARTS counts them.

    DARTS' ``count_parameters_in_MB`` skips the auxiliary head; so does this by default.
    BatchNorm moving statistics are not trainable and never count (PyTorch buffers).

    Args:
        model: any Keras model (a retrain network, with or without auxiliary head).
        include_auxiliary: count the auxiliary head's weights too.

    Returns:
        The parameter count.

    Example:
        >>> count_parameters(build_network("swd_nas_paper", (32, 32, 3), 10))
        3169198
    """
    excluded: set[int] = set()
    if not include_auxiliary:
        for layer in _all_layers(model):
            if isinstance(layer, AuxiliaryHead):
                excluded.update(id(w) for w in layer.trainable_weights)
    return int(sum(np.prod(w.shape) for w in model.trainable_weights if id(w) not in excluded))


PAPER_SETTINGS: tuple[tuple[str, tuple[int, int, int], int, int, int, str], ...] = (
    ("CIFAR-10, C=36, 20 cells", (32, 32, 3), 10, 36, 20, "cifar"),
    ("CIFAR-100, C=36, 20 cells", (32, 32, 3), 100, 36, 20, "cifar"),
    ("ImageNet, C=48, 20 cells", (224, 224, 3), 1000, 48, 20, "imagenet"),
    ("ImageNet, C=48, 14 cells (DARTS' mobile setting)", (224, 224, 3), 1000, 48, 14,
     "imagenet"),
)
"""(label, input_shape, num_classes, channels, layers, head) of the published networks."""


def paper_parameter_counts(genotype: Genotype | str | os.PathLike) -> list[tuple[str, int | None]]:
    """Parameter counts of ``genotype``'s retrain networks in the published settings.

    Args:
        genotype: a Genotype, built-in name or JSON path.

    Returns:
        ``(label, count)`` per entry of ``PAPER_SETTINGS``; ``count`` is None where the
        genotype does not stack into that many cells.

    Example:
        >>> dict(paper_parameter_counts("darts_v2"))["CIFAR-10, C=36, 20 cells"]
        3349342
    """
    genotype = get_genotype(genotype)
    counts = []
    for label, shape, classes, channels, layers, head in PAPER_SETTINGS:
        try:
            stacking_plan(genotype, layers)
        except ValueError:
            counts.append((label, None))
            continue
        model = build_network(genotype, shape, classes, channels, layers, auxiliary=False,
                              head=head)
        counts.append((label, count_parameters(model)))
    return counts


def _all_layers(model: keras.layers.Layer):
    """Every layer of ``model``, depth first, including layers of nested models."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def cells_of(model: keras.Model) -> list[Cell]:
    """The retrain ``Cell`` layers of ``model`` in network order (nested models included)."""
    return [layer for layer in _all_layers(model) if isinstance(layer, Cell)]
