"""SWDSearchModel: the supernet trained by a bilevel ``train_step`` (SPEC §3-4).

The step's algorithm is written once, here (``search_step``), against a small
interface that each backend's ``swd_keras/backend/<name>/trainer.py`` implements:

    loss_and_gradients(model, x, y, variables)
        ``(loss, logits, edge_weights, gradients)`` of a training-mode pass, the
        gradients with respect to ``variables`` only;
    no_gradient()
        a context for passes and updates that need no gradient;
    train_step(model, *args), test_step(model, *args)
        how the backend runs a step: stateful ``(data)`` on TensorFlow and PyTorch,
        stateless ``(state, data)`` on JAX, which holds the state in a
        ``keras.StatelessScope`` around the same algorithm;
    fit_scope(model), make_train_function(model, keras_function)
        optional: settings while ``fit`` runs, and the backend's own train function.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
from keras import ops

from swd_keras import backend, replicas
from swd_keras.distribute import to_numpy
from swd_keras.genotype import Genotype, default_reduction_indices, derive_genotype
from swd_keras.optimizers import BilevelOptimizer, TorchSGD
from swd_keras.supernet import attention_variables

MODES = ("bilevel", "joint")


def _step_module():
    return backend.module("trainer")


class SWDSearchModel(keras.Model):
    """The search model: a supernet, its bilevel step, and the epoch's edge weights.

    Trained with plain ``model.fit(data)``, where ``data`` yields
    ``((x_train, y_train), (x_val, y_val))``. One step (first-order, SPEC §4):
    (a) forward the validation batch, update the attention parameters on its loss with
    the attention optimizer, and add that pass's edge weights to the epoch's running
    mean; (b) forward the training batch and update the network weights on its loss
    with the weights optimizer. In ``mode="joint"`` (the authors' released code) the
    validation batch is only read for the edge weights and every parameter is updated
    on the training batch by the weights optimizer.

    The running mean lives in non-trainable variables (``edge_weight_sum`` and
    ``edge_weight_count``), so checkpoints carry it; ``fit`` resets it at each epoch
    start.

    Args:
        supernet: a model from ``build_supernet`` (outputs logits and edge weights).
        mode: ``"bilevel"`` or ``"joint"``.
        method: ``"swd"`` or ``"darts"`` (shared alphas: the genotype has two cells).

    Example:
        >>> net = build_supernet((8, 8, 1), 10, channels=8, layers=3, k=2)
        >>> model = SWDSearchModel(net)
        >>> model.compile()   # the paper's optimizers
        >>> model.fit(search.dataset, epochs=2, steps_per_epoch=search.steps_per_epoch)
        >>> model.genotype()
    """

    def __init__(self, supernet: keras.Model, mode: str = "bilevel", method: str = "swd",
                 **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        self.supernet, self.mode, self.method = supernet, mode, method
        shape = tuple(supernet.outputs[1].shape)
        self.num_cells = shape[0]
        self.edge_weight_sum = self.add_weight(shape=shape, initializer="zeros",
                                               trainable=False, name="edge_weight_sum")
        self.edge_weight_count = self.add_weight(shape=(), initializer="zeros",
                                                 trainable=False, name="edge_weight_count")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.arch_loss_tracker = keras.metrics.Mean(name="arch_loss")
        # Decided once, before any optimizer is built (see KERAS-NOTES).
        self._attention_paths = frozenset(v.path for v in attention_variables(supernet))
        self._step = _step_module()
        # The supernet is built; marking the wrapper built keeps Keras from tracing a
        # symbolic call on the ((x, y), (x, y)) training data.
        self.built = True

    # -- the pieces every backend's step uses ---------------------------------------

    def call(self, x, training=False):
        return self.supernet(x, training=training)

    def is_attention(self, variable) -> bool:
        """Whether ``variable`` is an architecture (attention) parameter."""
        return variable.path in self._attention_paths

    @property
    def attention_variables(self) -> list:
        return [v for v in self.trainable_variables if self.is_attention(v)]

    @property
    def weight_variables(self) -> list:
        return [v for v in self.trainable_variables if not self.is_attention(v)]

    def search_loss(self, y, logits):
        """Mean cross-entropy of integer labels against logits."""
        # In float32 even under a mixed-precision policy.
        return ops.mean(keras.losses.sparse_categorical_crossentropy(
            y, ops.cast(logits, "float32"), from_logits=True))

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, self.arch_loss_tracker]

    def compile(self, weights_optimizer: keras.optimizers.Optimizer | None = None,
                attention_optimizer: keras.optimizers.Optimizer | None = None, **kwargs):
        """Sets the two optimizers (default: the paper's SGD for both, SPEC §4).

        Args:
            weights_optimizer: updates the network weights (in ``joint`` mode, all
                parameters).
            attention_optimizer: updates the attention parameters (``bilevel`` only).
            **kwargs: ``keras.Model.compile`` arguments (``jit_compile``, ...); a
                ``loss`` is not accepted: the step computes its own cross-entropy.
        """
        if "loss" in kwargs or "optimizer" in kwargs:
            raise ValueError("SWDSearchModel.compile takes weights_optimizer and "
                             "attention_optimizer, and no loss (it uses cross-entropy).")
        weights_optimizer = weights_optimizer or TorchSGD(
            0.025, momentum=0.9, weight_decay=3e-4, global_clipnorm=5.0, name="weights_sgd")
        attention_optimizer = attention_optimizer or TorchSGD(
            0.025, momentum=0.9, weight_decay=3e-4, global_clipnorm=5.0, name="attention_sgd")
        joint = self.mode == "joint"
        optimizer = BilevelOptimizer(
            weights_optimizer, attention_optimizer,
            is_attention=(lambda v: False) if joint else self.is_attention)
        super().compile(optimizer=optimizer, **kwargs)
        optimizer.build(self.trainable_variables)

    def accumulate_edge_weights(self, edge_weights) -> None:
        """Adds one validation pass's edge weights to the epoch's running mean; in a
        data-parallel step, their mean over the replicas' equal local batches (the
        global batch's), so that every replica holds the same accumulators."""
        self.edge_weight_sum.assign_add(replicas.mean_over_replicas(edge_weights))
        self.edge_weight_count.assign_add(1.0)

    def record_metrics(self, loss, y, logits, arch_loss=None) -> dict:
        """Updates the trackers and returns the step's logs; without ``arch_loss``
        (evaluation) only loss and accuracy."""
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(y, logits)
        if arch_loss is None:
            return {m.name: m.result() for m in (self.loss_tracker, self.accuracy_tracker)}
        self.arch_loss_tracker.update_state(arch_loss)
        return {m.name: m.result() for m in self.metrics}

    # -- the step, written once for every backend ------------------------------------

    def search_step(self, data) -> dict:
        """One step of the search (SPEC §4; see the class docstring) on ``data``, a
        pair of (x, y) batches (training, validation), however Keras packs it: from
        ``fit`` on pairs, or ``train_on_batch(pair)``, which adds empty ``y`` and
        ``sample_weight``. Returns the step's logs."""
        (x_train, y_train), (x_val, y_val) = _train_and_validation(data)
        step, optimizer = self._step, self.optimizer
        if self.mode == "bilevel":
            variables = self.attention_variables
            arch_loss, _, edge_weights, grads = step.loss_and_gradients(
                self, x_val, y_val, variables)
            with step.no_gradient():
                optimizer.attention_optimizer.apply(grads, variables)
        else:
            with step.no_gradient():
                logits, edge_weights = self(x_val, training=True)
                arch_loss = self.search_loss(y_val, logits)
        with step.no_gradient():
            self.accumulate_edge_weights(edge_weights)
        variables = self.weight_variables if self.mode == "bilevel" else self.trainable_variables
        loss, logits, _, grads = step.loss_and_gradients(self, x_train, y_train, variables)
        with step.no_gradient():
            optimizer.weights_optimizer.apply(grads, variables)
            return self.record_metrics(loss, y_train, logits, arch_loss)

    def evaluation_step(self, data) -> dict:
        """Loss and accuracy of an inference-mode pass on ``data``'s (x, y)."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        with self._step.no_gradient():
            logits, _ = self(x, training=False)
            return self.record_metrics(self.search_loss(y, logits), y, logits)

    def train_step(self, *args):
        return self._step.train_step(self, *args)

    def test_step(self, *args):
        return self._step.test_step(self, *args)

    def make_train_function(self, force=False):
        """Keras' train function, or the backend's own where it has one (TensorFlow:
        ``TrainFunction``, which lets the traced graph's Python side go)."""
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=True)
        make = getattr(self._step, "make_train_function", None)
        if make is not None:
            self.train_function = make(self, self.train_function)
        return self.train_function

    # -- edge weights and the genotype -----------------------------------------------

    def fit(self, *args, callbacks=None, **kwargs):
        """``keras.Model.fit``, with the edge-weight running mean reset each epoch."""
        callbacks = [ResetEdgeWeights(), *(callbacks or [])]
        # The backend's settings for building the step (TensorFlow: see fit_scope).
        with getattr(self._step, "fit_scope", lambda model: contextlib.nullcontext())(self):
            return super().fit(*args, callbacks=callbacks, **kwargs)

    def reset_edge_weights(self) -> None:
        self.edge_weight_sum.assign(ops.zeros(self.edge_weight_sum.shape))
        self.edge_weight_count.assign(0.0)

    def edge_weights(self) -> np.ndarray:
        """The running mean of this epoch's edge weights, (L, 14, n) NumPy."""
        count, total = float(to_numpy(self.edge_weight_count)), to_numpy(self.edge_weight_sum)
        if count == 0:
            raise ValueError("No edge weights were accumulated yet: train at least one step.")
        return total / count

    def genotype(self, normalize: bool = True) -> Genotype:
        """Derives the genotype from this epoch's edge weights (SPEC §3).

        Args:
            normalize: apply the architectural weight normalization (eq. 11).

        Returns:
            A ``Genotype`` with one cell per search cell, or, for ``method="darts"``,
            DARTS' two cells (normal, reduce).
        """
        weights = self.edge_weights()
        reductions = default_reduction_indices(self.num_cells)
        if self.method == "darts":
            normal = [i for i in range(self.num_cells) if i not in reductions][0]
            weights = weights[[normal, reductions[0]]]
            reductions = (1,)
        primitives = self.supernet.get_layer("cell_0").primitives
        return derive_genotype(weights, reductions=reductions, normalize=normalize,
                               primitives=primitives)


def _train_and_validation(data):
    """``((x_train, y_train), (x_val, y_val))`` from a step's ``data``."""
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    return x if y is None else (x, y)


class ResetEdgeWeights(keras.callbacks.Callback):
    """Starts each epoch's running mean of the edge weights from zero (SPEC §3)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.reset_edge_weights()
