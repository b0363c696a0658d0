"""The retraining job: ``fit_network`` in a run folder (``swd_keras.runs``), resumable.

The run folder holds::

    config.json        the record: settings, backend, genotype, the dataset's preprocessing
    checkpoint.npz     the last completed epoch (model, optimizer, history)
    history.csv        one row per epoch (loss, accuracy, learning rate, drop-path rate)
    tensorboard/       TensorBoard logs
    model.keras        the final inference model (no auxiliary head)
    results.json       test accuracy and parameter count

Every file except TensorBoard's event logs is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras
from keras import ops

from swd_keras.distribute import data_parallel, is_chief, replica_count
from swd_keras.genotype import Genotype, get_genotype
from swd_keras.network import build_network, count_parameters, inference_model, stacking_plan
from swd_keras.runs import (
    CHECKPOINT_FILE,
    RunCallback,
    RunDiverged,
    atomic_write_json,
    check_new_run_folder,
    completed_epochs,
    load_checkpoint,
    resume_run,
    start_run,
    write_history,
)
from swd_keras.training.compile import compile_network, make_optimizer, with_auxiliary_targets
from swd_keras.training.config import (
    MODEL_FILE,
    RESULTS_FILE,
    TENSORBOARD_DIR,
    RetrainConfig,
    raw_pixel_max,
)
from swd_keras.training.drop_path import DropPathSchedule
from swd_keras.training.evaluation import evaluate_network

TrainingDivergedError = RunDiverged
"""The retraining loss became NaN or infinite (``swd_keras.runs.RunDiverged``)."""


def fit_network(run_dir: str | os.PathLike, config: RetrainConfig | None = None, *,
                resume: bool = False, data_dir: str | None = None,
                verbose: str | int = "auto",
                callbacks: list[keras.callbacks.Callback] | None = None,
                devices: str | int | None = None, dataset=None) -> dict[str, Any]:
    """Retrains a genotype's network in a run folder, or resumes one; returns the results.

    Each epoch ends with a checkpoint (model, optimizer, epoch, drop-path and seed states,
    history), written atomically; ``resume=True`` continues after the last one and gives
    the result of an unbroken run (the data pipeline is a function of seed and epoch).
    After the last epoch the inference model is saved as ``model.keras`` and evaluated
    once on the test split (and on the validation split, with ``config.validation``);
    ``results.json`` records it.

    Data-parallel over ``config.devices`` (``swd_keras.distribute.data_parallel``): every
    process trains and tests, only the chief writes the run folder, and every process
    resumes from the same checkpoint (a folder shared between hosts).

    Args:
        run_dir: the run folder (created; it must be new or empty unless ``resume``).
        config: the settings (required unless ``resume``).
        resume: continue the run in ``run_dir`` with its stored settings, on the backend
            it started on.
        data_dir: tfds data folder.
        verbose: ``model.fit``'s verbosity (``"auto"``: progress bar).
        callbacks: more callbacks for ``model.fit``; they run after the epoch's
            checkpoint is written.
        devices: replaces the config's ``devices`` for this call (``"all"`` or a count);
            None keeps it (a resumed run: the recorded one; ``config.json`` keeps it).
        dataset: when resuming a run made from an ``ArrayDataset``, the same arrays
            again (checked against the run's record); None otherwise.

    Returns:
        The results: ``test_top1`` (and ``test_top5`` for ImageNet; ``val_top1`` with
        ``config.validation``), ``test_examples``, ``parameters``, ``epochs`` and the
        last epoch's training metrics.

    Raises:
        ValueError: invalid settings, an unknown genotype or one that does not fit
            ``layers``, ``run_dir`` already holding files (without ``resume``), not
            holding a retraining run, or holding one of another backend (with
            ``resume``), devices that do not exist or a batch that does not split over
            them, or (resuming) data other than the run's; nothing is written then.
        swd_keras.data.DatasetUnavailableError: the dataset is not available.
        TrainingDivergedError: the loss became NaN or infinite.
    """
    from swd_keras.data import check_same_data
    from swd_keras.data.sources import with_arrays

    run_dir = Path(run_dir)
    if resume:
        if config is not None:
            raise ValueError("pass either config or resume=True, not both.")
        record = resume_run(run_dir, "retrain")
        if (run_dir / RESULTS_FILE).is_file() and (run_dir / MODEL_FILE).is_file():
            return json.loads((run_dir / RESULTS_FILE).read_text(encoding="utf-8"))
        config = RetrainConfig.from_json(with_arrays(record["config"], dataset))
        genotype = Genotype.from_dict(record["genotype"])
    else:
        record = {}
        if config is None:
            raise ValueError("config is required for a new run.")
        # Every process checks before the first collective step (variable creation), so
        # no process can see the chief's config.json here.
        check_new_run_folder(run_dir)
        genotype = get_genotype(config.genotype)
    if devices is not None:
        config = dataclasses.replace(config, devices=devices)
    stacking_plan(genotype, config.layers)
    replica_count(config.devices, config.batch_size)
    done = completed_epochs(run_dir) if resume else 0

    with data_parallel(config.devices):
        chief = is_chief()
        data = _training_data(config, data_dir, done)
        check_same_data(record, data.info, run_dir)
        config = dataclasses.replace(config, cutout=data.cutout)  # record the side applied
        model = _compiled_network(config, genotype, data)
        state = {"epoch": 0, "history": []}
        if done:
            state = load_checkpoint(run_dir / CHECKPOINT_FILE, model)
            if chief:
                write_history(run_dir, state["history"])
        elif chief:
            _start(run_dir, config, genotype, data.info)
        if done < config.epochs:
            _train(model, config, data, run_dir, state, verbose, callbacks or [])
        return _test(model, config, data, run_dir, state, chief)


def _training_data(config: RetrainConfig, data_dir: str | None, done: int):
    from swd_keras.data import train_data

    return train_data(config.dataset, config.batch_size, seed=config.seed, data_dir=data_dir,
                      epochs=config.epochs, initial_epoch=min(done, config.epochs - 1),
                      cutout=config.cutout, limit=config.limit, image_size=config.image_size,
                      test_dir=config.test_dir, holdout=config.holdout,
                      validation=config.validation)


def _compiled_network(config: RetrainConfig, genotype: Genotype, data) -> keras.Model:
    """The config's network, seeded, compiled and with its optimizer built (so that a
    checkpoint can be restored into both)."""
    keras.utils.set_random_seed(config.seed)
    model = build_network(genotype, data.info.input_shape, data.info.num_classes,
                          config.channels, config.layers, auxiliary=config.auxiliary,
                          drop_path=config.drop_path, head=config.head)
    optimizer = make_optimizer(config.learning_rate, config.epochs, data.steps_per_epoch,
                               config.momentum, config.weight_decay, config.grad_clip,
                               config.min_learning_rate)
    compile_network(model, optimizer, config.label_smoothing, config.auxiliary_weight,
                    top5=config.head == "imagenet")
    optimizer.build(model.trainable_variables)
    return model


def _start(run_dir: Path, config: RetrainConfig, genotype: Genotype, info) -> None:
    """The new run's record: what resuming and the export need besides the settings."""
    from swd_keras.data import run_record

    start_run(run_dir, "retrain", config, genotype=genotype.to_dict(), head=config.head,
              **run_record(info, raw_pixel_max(config.dataset)))


class _EpochRecorder(RunCallback):
    """The run's checkpoint and history row per epoch, with the rate the epoch trained
    at (the step counter moves on during the epoch, so it is read at its start)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._learning_rate = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def extra_logs(self) -> dict[str, float]:
        return {"learning_rate": self._learning_rate}


def _train(model: keras.Model, config: RetrainConfig, data, run_dir: Path, state: dict,
           verbose, callbacks: list[keras.callbacks.Callback]) -> None:
    recorder = _EpochRecorder(run_dir, state)
    dataset = with_auxiliary_targets(data.dataset) if config.auxiliary else data.dataset
    logs = ([keras.callbacks.TensorBoard(str(run_dir / TENSORBOARD_DIR), write_graph=False)]
            if recorder.chief else [])
    model.fit(dataset, epochs=config.epochs, initial_epoch=state["epoch"],
              steps_per_epoch=data.steps_per_epoch, verbose=verbose, shuffle=False,
              callbacks=[DropPathSchedule(config.drop_path, config.epochs), recorder, *logs,
                         *callbacks])
    if recorder.diverged is not None:
        raise recorder.error()


def _test(model: keras.Model, config: RetrainConfig, data, run_dir: Path,
          state: dict, chief: bool) -> dict[str, Any]:
    """Tests the inference model once (on every process); the chief saves it and writes
    ``results.json``."""
    final = inference_model(model)
    if chief:
        save_model(final, run_dir / MODEL_FILE)
    top_k = (1, 5) if config.head == "imagenet" else (1,)
    splits = {"test": data.test_dataset()}
    if data.num_validation_examples:
        splits["val"] = data.validation_dataset()
    scores = {f"{split}_{key}": value for split, batches in splits.items()
              for key, value in evaluate_network(final, batches, top_k=top_k).items()}
    results = {
        **scores,
        "parameters": count_parameters(model),
        "epochs": config.epochs,
        "final_epoch_metrics": state["history"][-1] if state["history"] else {},
        "model": MODEL_FILE,
    }
    if chief:
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
