"""Retraining a genotype's network (SPEC §5): optimizer, schedules, checkpoints, ``fit_network``.

The pieces follow DARTS' ``train.py``: SGD with momentum and PyTorch's (coupled) weight
decay, gradient clipping by global norm, a cosine learning rate stepped once per epoch,
drop path ramped linearly over the epochs, an auxiliary loss weighted 0.4, and the test
accuracy measured once, after the last epoch.

A run folder holds::

    config.json        the settings, the genotype and the dataset's preprocessing
    checkpoints/       epoch_NNNN.npz: the last completed epoch (model, optimizer, history)
    history.csv        one row per epoch (loss, accuracy, learning rate, drop-path rate)
    tensorboard/       TensorBoard logs
    model.keras        the final inference model (no auxiliary head)
    results.json       test accuracy and parameter count

Every file except TensorBoard's event logs is written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from swd_keras.cells import check_drop_path_rate
from swd_keras.genotype import Genotype, get_genotype
from swd_keras.network import (
    AUX_LOGITS,
    LOGITS,
    build_network,
    cells_of,
    count_parameters,
    has_auxiliary_head,
    inference_model,
    stacking_plan,
)
from swd_keras.optimizers import EpochCosineDecay, TorchSGD
from swd_keras.runs import atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint

RUN_FORMAT = "swd-keras/retrain-run@1"
CHECKPOINT_FORMAT = "swd-keras/retrain-checkpoint@1"
CONFIG_FILE, RESULTS_FILE, MODEL_FILE, HISTORY_FILE = (
    "config.json", "results.json", "model.keras", "history.csv")
CHECKPOINT_DIR, TENSORBOARD_DIR = "checkpoints", "tensorboard"


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- optimizer


def make_optimizer(learning_rate: float, epochs: int, steps_per_epoch: int,
                   momentum: float = 0.9, weight_decay: float = 3e-4,
                   grad_clip: float | None = 5.0,
                   minimum_learning_rate: float = 0.0) -> TorchSGD:
    """DARTS' retraining optimizer: ``TorchSGD`` on an ``EpochCosineDecay`` schedule.

    ``TorchSGD`` is ``torch.optim.SGD``: the weight decay is L2 added to the (clipped)
    gradient inside the momentum, not Keras' decoupled decay. The cosine schedule is
    stepped once per epoch and computed from the optimizer's step counter, so a
    restored optimizer resumes it exactly (DARTS' ``CosineAnnealingLR``).

    Args:
        learning_rate: the initial learning rate (0.025 for CIFAR).
        epochs: training epochs (the cosine period).
        steps_per_epoch: optimizer steps per epoch.
        momentum: momentum factor.
        weight_decay: L2 coefficient, added to the gradient (PyTorch semantics).
        grad_clip: global-norm clip of the gradients; None or 0 for none.
        minimum_learning_rate: where the cosine ends (0 for retraining).

    Returns:
        The optimizer.
    """
    if not 0.0 <= minimum_learning_rate <= learning_rate:
        raise ValueError(f"minimum_learning_rate must be in [0, learning_rate={learning_rate}], "
                         f"got {minimum_learning_rate!r}.")
    schedule = EpochCosineDecay(learning_rate, minimum_learning_rate, epochs, steps_per_epoch)
    return TorchSGD(schedule, momentum=momentum, weight_decay=weight_decay,
                    global_clipnorm=grad_clip or None)


# ---------------------------------------------------------------------------------- loss


@keras.saving.register_keras_serializable(package="swd_keras")
class LabelSmoothingCrossentropy(keras.losses.Loss):
    """Cross-entropy of logits against integer labels, with optional label smoothing.

    The target distribution is ``(1 - label_smoothing) * one_hot + label_smoothing / n``
    (DARTS' ``CrossEntropyLabelSmooth`` for ImageNet); 0 gives the plain sparse
    cross-entropy.

    Args:
        label_smoothing: in [0, 1).
        name: the loss's name.
        **kwargs: ``keras.losses.Loss`` arguments (``reduction``, ...).

    Call arguments:
        y_true: (b,) or (b, 1) integer labels.
        y_pred: (b, n) logits.

    Returns:
        The mean loss over the batch (per the reduction).

    Example:
        >>> loss = LabelSmoothingCrossentropy(0.1)
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        target = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            target, y_pred, from_logits=True, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def compile_network(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    label_smoothing: float = 0.0, auxiliary_weight: float = 0.4,
                    top5: bool = False) -> keras.Model:
    """Compiles a retrain network for ``fit``: cross-entropy, auxiliary loss, accuracy.

    A model with the auxiliary output gets the loss ``main + auxiliary_weight * aux``
    (targets: ``with_auxiliary_targets``); accuracy is measured on the main logits.

    Args:
        model: from ``build_network``.
        optimizer: e.g. ``make_optimizer(...)``.
        label_smoothing: see ``LabelSmoothingCrossentropy``.
        auxiliary_weight: weight of the auxiliary loss (0.4 in DARTS).
        top5: also track top-5 accuracy (ImageNet).

    Returns:
        ``model``, compiled.
    """
    def metrics():
        found = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if top5:
            found.append(keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5"))
        return found

    if has_auxiliary_head(model):
        model.compile(
            optimizer=optimizer,
            loss={LOGITS: LabelSmoothingCrossentropy(label_smoothing),
                  AUX_LOGITS: LabelSmoothingCrossentropy(label_smoothing)},
            loss_weights={LOGITS: 1.0, AUX_LOGITS: float(auxiliary_weight)},
            metrics={LOGITS: metrics()})
    else:
        model.compile(optimizer=optimizer, loss=LabelSmoothingCrossentropy(label_smoothing),
                      metrics=metrics())
    return model


def with_auxiliary_targets(dataset):
    """Maps ``(x, y)`` batches to ``(x, {"logits": y, "aux_logits": y})`` (a tf.data map)."""
    return dataset.map(lambda x, y: (x, {LOGITS: y, AUX_LOGITS: y}))


# ----------------------------------------------------------------------------- drop path


def set_drop_path_rate(model: keras.Model, rate: float) -> int:
    """Sets the drop-path probability of every retrain ``Cell`` of ``model``.

    Args:
        model: a model holding ``Cell`` layers.
        rate: the probability, in [0, 1).

    Returns:
        How many cells were set.

    Raises:
        ValueError: ``rate`` out of range, or no cell in ``model``.
    """
    rate = check_drop_path_rate(rate, "rate")
    cells = cells_of(model)
    if not cells:
        raise ValueError(f"model {model.name!r} has no retrain Cell layers to set.")
    for cell in cells:
        cell.drop_path_rate.assign(rate)
    return len(cells)


class DropPathSchedule(keras.callbacks.Callback):
    """Ramps the cells' drop-path probability linearly: ``p_e = max_rate * e / epochs``.

    Set at the start of every (0-based) epoch ``e``, as DARTS' ``train.py`` does: 0 in the
    first epoch, ``max_rate * (epochs - 1) / epochs`` in the last. The rate goes into a
    variable, so the compiled training step is not retraced. The epoch's rate is added to
    the logs as ``drop_path_rate``.

    Args:
        max_rate: the maximum probability (0.2 in the paper), in [0, 1).
        epochs: the total number of training epochs.

    Example:
        >>> model.fit(data, epochs=600, callbacks=[DropPathSchedule(0.2, 600)])
    """

    def __init__(self, max_rate: float, epochs: int):
        super().__init__()
        self.max_rate = check_drop_path_rate(max_rate, "max_rate")
        self.epochs = _check_positive_int(epochs, "epochs")
        self._rate = 0.0

    def rate(self, epoch: int) -> float:
        """The probability during (0-based) ``epoch``."""
        return self.max_rate * epoch / self.epochs

    def on_epoch_begin(self, epoch, logs=None):
        self._rate = self.rate(epoch)
        set_drop_path_rate(self.model, self._rate)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["drop_path_rate"] = self._rate


# ----------------------------------------------------------------------------- evaluation


def evaluate_network(model: keras.Model, dataset, top_k: tuple[int, ...] = (1,)) -> dict:
    """Top-k accuracies of ``model`` over a dataset of ``(x, y)`` batches.

    Args:
        model: an inference model (logits output); a training model is reduced with
            ``inference_model``.
        dataset: an iterable of ``(images, labels)`` batches (a ``tf.data.Dataset``).
        top_k: which accuracies to report (e.g. ``(1, 5)``).

    Returns:
        ``{"top1": ..., "top5": ..., "examples": n}`` (one ``topK`` key per ``top_k``).
    """
    model = inference_model(model)
    correct = dict.fromkeys(top_k, 0)
    examples = 0
    batches = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
    for images, labels in batches:
        logits = ops.convert_to_numpy(model.predict_on_batch(images))
        labels = np.asarray(labels).reshape(-1)
        # Rank of the true class: how many classes score strictly higher.
        true_scores = logits[np.arange(len(labels)), labels]
        ranks = (logits > true_scores[:, None]).sum(axis=1)
        for k in top_k:
            correct[k] += int((ranks < k).sum())
        examples += len(labels)
    if examples == 0:
        raise ValueError("the evaluation dataset is empty.")
    return {**{f"top{k}": correct[k] / examples for k in top_k}, "examples": examples}


# ---------------------------------------------------------------------------- checkpoints


def _checkpoint_file(run_dir: Path, epoch: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"epoch_{epoch:04d}.npz"


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[int, Path | None]:
    """The last completed epoch of a run and its checkpoint file (``(0, None)`` if none)."""
    found = sorted((Path(run_dir) / CHECKPOINT_DIR).glob("epoch_*.npz"))
    if not found:
        return 0, None
    return int(found[-1].stem.split("_")[1]), found[-1]


class _EpochCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint and rewrites history.csv after each epoch; stops on NaN/inf."""

    def __init__(self, run_dir: Path, history: list[dict[str, float]]):
        super().__init__()
        self.run_dir, self.history = run_dir, history
        self.diverged: tuple[int, float] | None = None
        self._learning_rate = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        # The rate this epoch trains with (the step counter moves on during the epoch).
        self._learning_rate = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        loss = float(logs.get("loss", float("nan")))
        if not math.isfinite(loss):
            self.diverged = (epoch + 1, loss)
            self.model.stop_training = True
            return
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
               "learning_rate": self._learning_rate}
        self.history.append(row)
        path = _checkpoint_file(self.run_dir, epoch + 1)
        save_checkpoint(path, self.model,
                        {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "history": self.history})
        _write_history(self.run_dir / HISTORY_FILE, self.history)
        for old in (self.run_dir / CHECKPOINT_DIR).glob("epoch_*.npz"):
            if old != path:
                old.unlink(missing_ok=True)


def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


# ------------------------------------------------------------------------------ run config


def retrain_defaults(dataset: str) -> dict[str, Any]:
    """SPEC §5's settings for ``dataset``: ImageNet's for ``imagenet2012``, else CIFAR's."""
    if dataset == "imagenet2012":
        return dict(epochs=250, batch_size=256, channels=48, learning_rate=0.1,
                    weight_decay=3e-5, label_smoothing=0.1)
    return dict(epochs=600, batch_size=96, channels=36, learning_rate=0.025,
                weight_decay=3e-4, label_smoothing=0.0)


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """The settings of a retraining run (SPEC §5; CIFAR defaults).

    Args:
        genotype: a built-in name or a genotype JSON path.
        dataset: a dataset name of ``swd_keras.data.DATASETS``.
        epochs: training epochs.
        batch_size: examples per step.
        channels: C of the first cells.
        layers: number of cells L.
        learning_rate: initial SGD learning rate.
        min_learning_rate: where the cosine schedule ends.
        momentum: SGD momentum.
        weight_decay: L2 coefficient (PyTorch semantics, see ``TorchSGD``).
        grad_clip: gradient global-norm clip (0 for none).
        cutout: cutout square side (0 for none; None: the dataset's default,
            ``swd_keras.data.DEFAULT_CUTOUT``, 16 for CIFAR).
        drop_path: maximum drop-path probability.
        auxiliary: train with the auxiliary head.
        auxiliary_weight: weight of the auxiliary loss.
        label_smoothing: label smoothing of the loss.
        seed: seed of initialisation, data order, augmentation and drop path.
        limit: use at most this many training and test examples (smoke runs).
    """

    genotype: str
    dataset: str
    epochs: int = 600
    batch_size: int = 96
    channels: int = 36
    layers: int = 20
    learning_rate: float = 0.025
    min_learning_rate: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    cutout: int | None = None
    drop_path: float = 0.2
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    label_smoothing: float = 0.0
    seed: int = 0
    limit: int | None = None

    def __post_init__(self):
        for name in ("epochs", "batch_size", "channels", "layers"):
            _check_positive_int(getattr(self, name), name)
        for name in ("learning_rate", "min_learning_rate", "weight_decay", "grad_clip",
                     "auxiliary_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(f"min_learning_rate ({self.min_learning_rate}) must not exceed "
                             f"learning_rate ({self.learning_rate}).")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}.")
        check_drop_path_rate(self.drop_path, "drop_path")
        if self.cutout is not None and (isinstance(self.cutout, bool)
                                        or not isinstance(self.cutout, int) or self.cutout < 0):
            raise ValueError(f"cutout must be a non-negative integer, got {self.cutout!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if self.limit is not None:
            _check_positive_int(self.limit, "limit")

    @property
    def head(self) -> str:
        """The network head: ``"imagenet"`` for imagenet2012, else ``"cifar"``."""
        return "imagenet" if self.dataset == "imagenet2012" else "cifar"


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def raw_pixel_max(dataset: str) -> float:
    """The largest raw pixel value of ``dataset``'s stored images (what 1.0 maps from).

    Scikit-learn's digits store 0..16; every other dataset stores 0..255 bytes. (The
    data module's ``DatasetInfo`` does not record this scale.)
    """
    return 16.0 if dataset == "digits" else 255.0


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a retraining run folder.

    Raises:
        ValueError: no config.json, or not a retraining run's.
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{run_dir} is not a retraining run folder (no {CONFIG_FILE}).") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read ({error}).") from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise ValueError(f"{path}: not a retraining run config (format {RUN_FORMAT!r}).")
    return data


# ----------------------------------------------------------------------------------- fit


def fit_network(run_dir: str | os.PathLike, config: RetrainConfig | None = None, *,
                resume: bool = False, data_dir: str | None = None,
                verbose: str | int = "auto",
                callbacks: list[keras.callbacks.Callback] | None = None) -> dict[str, Any]:
    """Retrains a genotype's network in a run folder, or resumes one; returns the results.

    Each epoch ends with a checkpoint (model, optimizer, epoch, drop-path and seed states,
    history), written atomically; ``resume=True`` continues after the last one and gives
    the result of an unbroken run (the data pipeline is a function of seed and epoch).
    After the last epoch the inference model is saved as ``model.keras`` and evaluated
    once on the test split; ``results.json`` records it.

    Args:
        run_dir: the run folder (created; it must not hold a run unless ``resume``).
        config: the settings (required unless ``resume``).
        resume: continue the run in ``run_dir`` with its stored settings.
        data_dir: tfds data folder.
        verbose: ``model.fit``'s verbosity (``"auto"``: progress bar).
        callbacks: more callbacks for ``model.fit``; they run after the epoch's
            checkpoint is written.

    Returns:
        The results: ``test_top1`` (and ``test_top5`` for ImageNet), ``parameters``,
        ``epochs`` and the last epoch's training metrics.

    Raises:
        ValueError: invalid settings, an unknown genotype or one that does not fit
            ``layers``, ``run_dir`` already holding a run (without ``resume``) or not
            holding one (with ``resume``).
        swd_keras.data.DatasetUnavailableError: the dataset is not available.
        TrainingDivergedError: the loss became NaN or infinite.
    """
    from swd_keras import data as data_module

    run_dir = Path(run_dir)
    if resume:
        if config is not None:
            raise ValueError("pass either config or resume=True, not both.")
        stored = read_run_config(run_dir)
        if (run_dir / RESULTS_FILE).is_file() and (run_dir / MODEL_FILE).is_file():
            return json.loads((run_dir / RESULTS_FILE).read_text(encoding="utf-8"))
        config = RetrainConfig(**stored["config"])
        genotype = Genotype.from_dict(stored["genotype"])
        done, checkpoint = latest_checkpoint(run_dir)
    else:
        if config is None:
            raise ValueError("config is required for a new run.")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ValueError(f"run folder {run_dir} already exists and is not empty; "
                             "resume it or choose another folder.")
        genotype = get_genotype(config.genotype)
        done, checkpoint = 0, None
    stacking_plan(genotype, config.layers)

    data = data_module.train_data(
        config.dataset, config.batch_size, seed=config.seed, data_dir=data_dir,
        epochs=config.epochs, initial_epoch=min(done, config.epochs), cutout=config.cutout,
        limit=config.limit)
    info = data.info
    config = dataclasses.replace(config, cutout=data.cutout)  # record the side applied
    keras.utils.set_random_seed(config.seed)
    model = build_network(genotype, info.input_shape, info.num_classes, config.channels,
                          config.layers, auxiliary=config.auxiliary,
                          drop_path=config.drop_path, head=config.head)
    optimizer = make_optimizer(config.learning_rate, config.epochs, data.steps_per_epoch,
                               config.momentum, config.weight_decay, config.grad_clip,
                               config.min_learning_rate)
    compile_network(model, optimizer, config.label_smoothing, config.auxiliary_weight,
                    top5=config.head == "imagenet")
    optimizer.build(model.trainable_variables)

    history: list[dict[str, float]] = []
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{checkpoint}: not a retraining checkpoint.")
        history = state["history"]
        _write_history(run_dir / HISTORY_FILE, history)
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / CONFIG_FILE, {
            "format": RUN_FORMAT, "config": dataclasses.asdict(config),
            "genotype": genotype.to_dict(), "head": config.head,
            "backend": keras.backend.backend(),
            "preprocessing": {"input_shape": list(info.input_shape), "mean": list(info.mean),
                              "std": list(info.std),
                              "pixel_max": raw_pixel_max(config.dataset)},
            "num_classes": info.num_classes})

    if done < config.epochs:
        checkpointer = _EpochCheckpoint(run_dir, history)
        dataset = with_auxiliary_targets(data.dataset) if config.auxiliary else data.dataset
        model.fit(dataset, epochs=config.epochs, initial_epoch=done,
                  steps_per_epoch=data.steps_per_epoch, verbose=verbose, shuffle=False,
                  callbacks=[DropPathSchedule(config.drop_path, config.epochs), checkpointer,
                             keras.callbacks.TensorBoard(str(run_dir / TENSORBOARD_DIR),
                                                         write_graph=False),
                             *(callbacks or [])])
        if checkpointer.diverged is not None:
            epoch, loss = checkpointer.diverged
            last, last_file = latest_checkpoint(run_dir)
            kept = (f"the last good checkpoint is {last_file} (epoch {last})" if last_file
                    else "no epoch completed, so there is no checkpoint")
            raise TrainingDivergedError(
                f"training loss became {loss} in epoch {epoch}; stopped; {kept}.")

    final = inference_model(model)
    save_model(final, run_dir / MODEL_FILE)
    scores = evaluate_network(final, data.test_dataset(),
                              top_k=(1, 5) if config.head == "imagenet" else (1,))
    results = {
        **{f"test_{key}": value for key, value in scores.items()},
        "parameters": count_parameters(model),
        "epochs": config.epochs,
        "final_epoch_metrics": history[-1] if history else {},
        "model": MODEL_FILE,
    }
    atomic_write_json(run_dir / RESULTS_FILE, results)
    return results


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Saves ``model`` as a ``.keras`` file atomically (temporary file, then rename)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"a model file must end in .keras, got {path}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save(folder / path.name)
        os.replace(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path
