"""LiteRT (TensorFlow Lite) exports of the serving model, float32 and int8, run by LiteRT.

``model.tflite`` is the float32 model; ``model_int8.tflite`` its post-training
quantization (weights and activations in int8 where LiteRT has int8 kernels, float
elsewhere), calibrated on a seeded sample of the run's training split. Both keep the
raw-image interface (signature ``serving_default``: input ``images``, uint8, free batch
dimension; outputs ``probabilities`` (float32) and ``predicted_class``), use LiteRT's
built-in ops only (no TensorFlow delegate on the device), and carry their class names in
``labels.txt`` beside them. Verified in the LiteRT interpreter (``ai-edge-litert``) in a
separate process: the float32 model within 1e-4 of Keras, the int8 model by its accuracy
on a sample of the test split, reported next to the float32 model's.

Both are converted from one SavedModel of the serving model, the path Keras' own LiteRT
export takes (``ExportArchive`` -> ``tf.lite.TFLiteConverter.from_saved_model``), written
once for the two conversions (or the export's own SavedModel, when it writes one). It
runs on the TensorFlow backend: Keras converts PyTorch models through ``litert-torch``
and has no LiteRT export from JAX.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from swd_keras.export_runtime import (
    ExportError,
    ExportRequest,
    require_tensorflow_backend,
    verify_in_runtime,
    write_export_file,
)

TFLITE_FILE, INT8_FILE = "model.tflite", "model_int8.tflite"
REQUIRES = {"ai_edge_litert": "litert"}
"""Modules the LiteRT export needs -> the pip extra that installs them."""


def check_backend() -> None:
    """Raises ExportError unless the running backend is TensorFlow."""
    require_tensorflow_backend("tflite")


def check_request(request: ExportRequest) -> None:
    """Raises ValueError if the int8 model has nothing to calibrate on, or if the given
    calibration or evaluation images do not fit the model."""
    shape = tuple(request.model.input_shape[1:])
    if request.calibration_images is not None:
        _check_images(request.calibration_images, shape, "calibration_images")
    elif request.int8 and request.run_record is None:
        raise ValueError("int8 quantization needs calibration images: export a run's "
                         "model.keras (its config.json names the dataset), pass "
                         "calibration_images, or int8=False (--no-int8).")
    if request.evaluation_data is not None:
        images, labels = request.evaluation_data
        _check_images(images, shape, "evaluation_data's images")
        if np.asarray(labels).reshape(-1).shape != (len(images),):
            raise ValueError("evaluation_data must be (images, labels) with one label per "
                             f"image; got {len(images)} images and labels of shape "
                             f"{np.asarray(labels).shape}.")
    for value, argument in ((request.calibration_samples, "calibration_samples"),
                            (request.evaluation_samples, "evaluation_samples")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{argument} must be a positive integer, got {value!r}.")


def _check_images(images: np.ndarray, shape: tuple[int, ...], argument: str) -> None:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != shape or len(images) < 1:
        raise ValueError(f"{argument} must be (n >= 1, {', '.join(map(str, shape))}) uint8 "
                         f"raw images; got {images.dtype} {images.shape}.")


def write_and_verify(request: ExportRequest, folder: Path) -> dict[str, Any]:
    """Writes ``model.tflite`` (and ``model_int8.tflite``) into ``folder``, verified.

    Args:
        request: the export's serving model, samples, class names and data.
        folder: the staging version folder.

    Returns:
        The float32 model's ``verify_in_runtime`` result (with ``accuracy`` when there
        are evaluation images), ``files``, ``int8`` (the int8 model's ``max_abs_diff``
        and ``accuracy``) and a one-line ``summary``.
    """
    calibration, evaluation = _data(request)
    files = (TFLITE_FILE, INT8_FILE) if request.int8 else (TFLITE_FILE,)
    from swd_keras.export import write_savedmodel

    with tempfile.TemporaryDirectory(prefix=".litert-", dir=folder.parent) as scratch:
        # The export's own SavedModel, when it has one (written and verified first).
        saved = folder if (folder / "saved_model.pb").is_file() else Path(scratch) / "sm"
        if saved != folder:
            write_savedmodel(request.model, saved)
        for file in files:
            write_export_file(folder / file,
                               convert(saved, calibration if file == INT8_FILE else None))
    checks = {file: verify_in_runtime(
        LITERT_LOADER, folder / file, request.model, request.samples,
        atol=None if file == INT8_FILE else 1e-4, class_names=request.class_names,
        evaluation=evaluation, runtime="LiteRT") for file in files}
    check = {**checks[TFLITE_FILE], "files": files}
    summary = (f"{TFLITE_FILE}: LiteRT, probabilities within "
               f"{check['max_abs_diff']:.1e} of Keras")
    if request.int8:
        quantized = checks[INT8_FILE]
        check["int8"] = {key: quantized[key] for key in ("max_abs_diff", "accuracy")
                         if key in quantized}
        summary += f"; {INT8_FILE}: probabilities within {quantized['max_abs_diff']:.1e}"
    if evaluation is not None:
        summary += (f"; test accuracy on {len(evaluation[1])} images: float32 "
                    f"{100 * check['accuracy']:.2f} %")
        if request.int8:
            summary += f", int8 {100 * check['int8']['accuracy']:.2f} %"
    return {**check, "summary": summary}


def convert(saved_model: Path, calibration: np.ndarray | None = None) -> bytes:
    """A LiteRT flatbuffer of a SavedModel: float32, or int8 calibrated on ``calibration``.

    Args:
        saved_model: the SavedModel folder (``serving_default`` signature).
        calibration: (n, h, w, c) uint8 images for post-training int8 quantization;
            ``None`` for the float32 model.

    Returns:
        The ``.tflite`` file's bytes.

    Raises:
        ExportError: the converter failed (its first line).

    Example:
        >>> Path("model.tflite").write_bytes(convert(Path("savedmodels/net/1")))
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        return converter.convert()
    except Exception as error:  # noqa: BLE001 (the converter's errors have no common type)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(f"the LiteRT converter failed ({type(error).__name__}: "
                          f"{first_line}).") from error


def _data(request: ExportRequest):
    """(calibration images or None, (test images, labels) or None) of the request."""
    calibration = request.calibration_images if request.int8 else None
    evaluation = request.evaluation_data
    needs_calibration = request.int8 and calibration is None
    if request.run_record is not None and (needs_calibration or evaluation is None):
        drawn = run_samples(request.run_record, request.normalisation,
                            request.calibration_samples, request.evaluation_samples,
                            request.seed)
        calibration = drawn[0] if needs_calibration else calibration
        evaluation = drawn[1] if evaluation is None else evaluation
    if calibration is not None:
        calibration = np.asarray(calibration, np.uint8)
    return calibration, evaluation


def run_samples(record: dict[str, Any], normalisation, calibration_samples: int,
                evaluation_samples: int, seed: int = 0):
    """Raw training images for calibration and raw test images with labels, from a run.

    The training images are the first ``calibration_samples`` of the run's training
    split in the seeded order of the data API (unaugmented); the test images every k-th
    of the test split, so that about ``evaluation_samples`` remain. Both are mapped back
    from the pipeline's normalised floats to the stored pixels the exports take.

    Args:
        record: the retraining run's ``config.json`` (its ``config`` names the data as
            ``fit_network`` opened it: ``dataset``, ``limit``, ``image_size``, ``test_dir``,
            ``holdout``, and ``data_dir`` where recorded).
        normalisation: ``(mean, std, pixel_max)`` of the run.
        calibration_samples: training images to draw.
        evaluation_samples: about this many test images.
        seed: the order of the training split.

    Returns:
        ``(calibration uint8 images, (test uint8 images, int32 labels))``.

    Raises:
        ValueError: the run's data cannot be reopened (the message says why and what to
            pass instead).
    """
    from swd_keras.data import DatasetUnavailableError, train_data

    settings = record.get("config", {})
    try:
        data = train_data(settings["dataset"], 1, seed=seed, data_dir=settings.get("data_dir"),
                          augment=False, cutout=0, limit=settings.get("limit"),
                          image_size=settings.get("image_size"),
                          test_dir=settings.get("test_dir"), holdout=settings.get("holdout"))
    except (KeyError, ValueError, DatasetUnavailableError) as error:
        raise ValueError(f"the run's data cannot be reopened for the int8 calibration and the "
                         f"accuracies ({error}); pass calibration_images and evaluation_data, "
                         "or int8=False (--no-int8).") from None
    mean, std, pixel_max = (np.asarray(value, np.float32) for value in normalisation)

    def raw(images: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((images * std + mean) * pixel_max), 0, 255).astype(np.uint8)

    calibration = np.concatenate(
        [x for x, _ in data.dataset.take(calibration_samples).as_numpy_iterator()])
    stride = max(1, math.ceil(data.num_test_examples / evaluation_samples))
    test = data.test_dataset(256).unbatch().shard(stride, 0).batch(256)
    images, labels = zip(*test.as_numpy_iterator())
    return raw(calibration), (raw(np.concatenate(images)), np.concatenate(labels))


# The LiteRT interpreter alone: no TensorFlow, no Keras.
LITERT_LOADER = r"""
from ai_edge_litert.interpreter import Interpreter

def _shape(detail):
    return [None if d < 0 else int(d) for d in detail["shape_signature"]]

def open_model(path):
    interpreter = Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serving_default")
    (input_name, detail), = runner.get_input_details().items()
    info = {"input_name": input_name, "input_dtype": np.dtype(detail["dtype"]).name,
            "input_shape": _shape(detail),
            "outputs": {k: [np.dtype(v["dtype"]).name, _shape(v)]
                        for k, v in runner.get_output_details().items()}}

    def predict(images):
        return runner(**{input_name: images})
    return info, predict
"""
