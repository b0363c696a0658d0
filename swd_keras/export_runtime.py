"""The verification harness of every export format: its own runtime, in a separate process.

Each format supplies a short *loader* (Python source defining ``open_model(path)``, which
returns a description of the model's input and outputs and a ``predict(images)`` function,
using only that format's runtime). ``verify_in_runtime`` runs it in a fresh interpreter
in which keras and swd_keras cannot be imported, as on a serving machine or a phone, on
the first sample image alone and on all of them (and, optionally, on labelled evaluation
images), and compares what came back with the Keras serving model: the input is ``uint8``
with a free batch dimension, the outputs are ``probabilities`` and ``predicted_class``
(the argmax), the probabilities agree within ``atol`` and the class names stored in the
export are the run's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

VERIFY_ATOL = 1e-4
VERIFY_TIMEOUT_S = 600
INPUT_NAME = "images"
OUTPUT_PROBABILITIES, OUTPUT_CLASS = "probabilities", "predicted_class"
LABELS_FILE = "labels.txt"
EVALUATION_BATCH = 32


class ExportError(RuntimeError):
    """An export could not be written, or it disagrees with the Keras model."""


def require_tensorflow_backend(format_name: str) -> None:
    """Raises ExportError unless Keras runs on TensorFlow, whose graph the ``format_name``
    converter reads."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ExportError(f"the {format_name} export runs on the tensorflow backend, not "
                          f"{backend}: export with --backend tensorflow "
                          "(KERAS_BACKEND=tensorflow); the .keras file loads on every backend.")


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """What every format's writer gets: the serving model and what it is checked with.

    Attributes:
        model: the serving model (raw ``uint8`` images -> probabilities and class).
        samples: (n >= 2, h, w, c) uint8 verification images.
        class_names: the classes' names (``labels.txt``, metadata), or ``None``.
        int8: also write a quantized model where the format has one (LiteRT).
        run_record: the retraining run's ``config.json`` (``None`` for a bare model):
            names the dataset that calibration and accuracy samples come from.
        normalisation: ``(mean, std, pixel_max)`` of the training preprocessing.
        calibration_images: uint8 images for quantization, instead of the run's.
        evaluation_data: ``(uint8 images, labels)`` for accuracies, instead of the run's.
        calibration_samples: training images to draw from the run.
        evaluation_samples: test images to draw from the run.
        seed: seed of the drawn samples.
    """

    model: keras.Model
    samples: np.ndarray
    class_names: list[str] | None
    int8: bool
    run_record: dict[str, Any] | None
    normalisation: tuple[list[float], list[float], float]
    calibration_images: np.ndarray | None
    evaluation_data: tuple[np.ndarray, np.ndarray] | None
    calibration_samples: int
    evaluation_samples: int
    seed: int


_PRELUDE = r"""
import json, os, sys
for blocked in ("keras", "tf_keras", "swd_keras"):
    sys.modules[blocked] = None
import numpy as np
"""

# Runs after the format's loader has defined open_model(path).
_MAIN = r"""
path, images_file, out_file, evaluation_file = sys.argv[1:5]
images = np.load(images_file)
info, predict = open_model(path)
outputs = {}
for size in (1, len(images)):
    for key, value in predict(images[:size]).items():
        outputs[f"{key}_{size}"] = np.asarray(value)
if evaluation_file:
    evaluation = np.load(evaluation_file)
    outputs["evaluation_predicted_class"] = np.concatenate(
        [np.asarray(predict(evaluation[i:i + EVALUATION_BATCH])["predicted_class"])
         for i in range(0, len(evaluation), EVALUATION_BATCH)])
np.savez(out_file, **outputs)
folder = path if os.path.isdir(path) else os.path.dirname(path)
labels = os.path.join(folder, "labels.txt")
if os.path.isfile(labels):
    with open(labels, encoding="utf-8") as handle:
        info["labels_file"] = handle.read().splitlines()
info["batch_sizes"] = [1, len(images)]
info["keras_loaded"] = any(m == "keras" or m.startswith("keras.")
                           for m, mod in sys.modules.items() if mod is not None)
print(json.dumps(info))
"""


def verify_in_runtime(loader: str, path: str | os.PathLike, model: keras.Model,
                      samples: np.ndarray, atol: float | None = VERIFY_ATOL,
                      class_names: list[str] | None = None,
                      evaluation: tuple[np.ndarray, np.ndarray] | None = None,
                      runtime: str = "its runtime") -> dict[str, Any]:
    """Runs an export in a separate process through ``loader`` and checks it against Keras.

    Args:
        loader: Python source defining ``open_model(path) -> (info, predict)``: ``info``
            holds ``input_name``, ``input_dtype``, ``input_shape`` (``None`` for a free
            dimension), ``outputs`` (name -> [dtype, shape]) and optionally
            ``class_names`` (from the format's metadata); ``predict(images)`` returns a
            dictionary of NumPy arrays.
        path: the exported file or folder.
        model: the serving model (``serving_model``: raw images -> dictionary).
        samples: (n >= 2, h, w, c) uint8 images.
        atol: the largest allowed probability difference; ``None`` only measures it (a
            quantized export, judged by its accuracy).
        class_names: the names the export must carry (``labels.txt`` beside it and the
            format's metadata), or ``None`` for none.
        evaluation: ``(images, labels)`` (uint8 images, int labels) whose accuracy in the
            runtime is measured.
        runtime: the runtime's name, for messages.

    Returns:
        ``{"max_abs_diff": float, "batch_sizes": (1, n), "signature": {...}}`` plus
        ``"accuracy"`` with ``evaluation``.

    Raises:
        ExportError: the child process failed, the signature is not as described, the
            class names differ or the outputs differ (the message says which).

    Example:
        >>> verify_in_runtime(ONNX_LOADER, "exports/net/1/model.onnx", wrapper, images)
    """
    samples = np.asarray(samples)
    if samples.dtype != np.uint8 or samples.ndim != 4 or len(samples) < 2:
        raise ValueError(f"samples must be (n >= 2, h, w, c) uint8 images, got "
                         f"{samples.dtype} {samples.shape}.")
    expected = ops.convert_to_numpy(model.predict_on_batch(samples)[OUTPUT_PROBABILITIES])
    signature, outputs = _run_child(loader, Path(path), samples, evaluation, runtime)
    _check_signature(signature, samples.shape[1:], class_names)
    max_diff = 0.0
    for size in signature["batch_sizes"]:
        probabilities = outputs[f"{OUTPUT_PROBABILITIES}_{size}"]
        classes = outputs[f"{OUTPUT_CLASS}_{size}"]
        if probabilities.shape != expected[:size].shape:
            raise ExportError(f"{runtime}'s probabilities have shape {probabilities.shape}, "
                              f"expected {expected[:size].shape}.")
        max_diff = max(max_diff, float(np.abs(probabilities - expected[:size]).max()))
        if not np.array_equal(classes, probabilities.argmax(axis=-1)):
            raise ExportError(f"{runtime}'s predicted_class is not the argmax of its "
                              "probabilities.")
    if atol is not None and max_diff > atol:
        raise ExportError(f"{runtime}'s probabilities differ from the Keras model's by "
                          f"{max_diff:.2e} (allowed {atol:.0e}).")
    check = {"max_abs_diff": max_diff, "batch_sizes": tuple(signature["batch_sizes"]),
             "signature": signature}
    if evaluation is not None:
        labels = np.asarray(evaluation[1]).reshape(-1)
        check["accuracy"] = float(np.mean(outputs["evaluation_predicted_class"] == labels))
    return check


def _run_child(loader: str, path: Path, samples: np.ndarray,
               evaluation: tuple[np.ndarray, np.ndarray] | None, runtime: str):
    script = "\n".join([_PRELUDE, f"EVALUATION_BATCH = {EVALUATION_BATCH}", loader, _MAIN])
    with tempfile.TemporaryDirectory(prefix="swd-keras-verify-") as scratch:
        images_file, out_file = Path(scratch) / "images.npy", Path(scratch) / "outputs.npz"
        np.save(images_file, samples)
        evaluation_file = ""
        if evaluation is not None:
            evaluation_file = str(Path(scratch) / "evaluation.npy")
            np.save(evaluation_file, np.asarray(evaluation[0], np.uint8))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"}
        try:
            child = subprocess.run(
                [sys.executable, "-c", script, str(path), str(images_file), str(out_file),
                 evaluation_file], capture_output=True, text=True, env=env,
                timeout=VERIFY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ExportError(f"running {path} in {runtime} took over {VERIFY_TIMEOUT_S} s.") \
                from None
        if child.returncode != 0:
            tail = (child.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ExportError(f"running {path} in {runtime} in a separate process failed: "
                              f"{tail}")
        signature = json.loads(child.stdout.strip().splitlines()[-1])
        with np.load(out_file) as served:
            return signature, dict(served)


def _check_signature(signature: dict[str, Any], image_shape: tuple[int, ...],
                     class_names: list[str] | None) -> None:
    problems = []
    if signature["keras_loaded"]:
        problems.append("the serving process loaded keras")
    if signature["input_name"] != INPUT_NAME:
        problems.append(f"input {signature['input_name']!r}, not {INPUT_NAME!r}")
    if signature["input_dtype"] != "uint8":
        problems.append(f"input dtype {signature['input_dtype']}, not uint8")
    if signature["input_shape"] != [None, *image_shape]:
        problems.append(f"input shape {signature['input_shape']}, not [None, *{image_shape}]")
    if set(signature["outputs"]) != {OUTPUT_PROBABILITIES, OUTPUT_CLASS}:
        problems.append(f"outputs {sorted(signature['outputs'])}")
    # labels.txt goes with every format; a format with metadata (ONNX) also reports its own.
    for where in ("labels_file", "class_names"):
        stored = signature.get(where)
        if (where == "labels_file" or where in signature) and stored != class_names:
            problems.append(f"class names {stored} in its {where}, expected {class_names}")
    if problems:
        raise ExportError("the export's signature is wrong: " + "; ".join(problems) + ".")


def write_export_file(path: Path, data: bytes) -> None:
    """Writes one file of an export atomically, readable by every user (as the SavedModel's
    files are): a model server often runs as another user than the one who exported."""
    from swd_keras.runs import atomic_write_bytes

    atomic_write_bytes(path, data)
    os.chmod(path, 0o644)


def write_labels(folder: Path, class_names: list[str] | None) -> None:
    """Writes ``labels.txt`` (one class name a line, in label order) into ``folder``."""
    if class_names is not None:
        text = "".join(f"{name}\n" for name in class_names)
        write_export_file(folder / LABELS_FILE, text.encode("utf-8"))
