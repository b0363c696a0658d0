"""SavedModel export for TensorFlow Serving, with a raw-image signature, and its verification.

``export_savedmodel`` writes ``OUT_DIR/NAME/VERSION/`` (the layout TF Serving watches)
whose ``serving_default`` signature takes raw ``uint8`` images of any batch size, named
``images``, and returns ``probabilities`` (float32, (b, classes)) and ``predicted_class``
(int32, (b,)). The preprocessing the network was trained with (scale the stored pixel
range to 0..1, subtract the mean, divide by the standard deviation) is part of the
graph, so clients send pixels as stored.

The export is written to a hidden temporary folder beside the target, verified there
(``verify_export``: served by a separate Python process that cannot import keras or
swd_keras, outputs compared with the Keras model's), and only then renamed into place:
a target folder is never half-written or unverified.

It works from the TensorFlow backend and from JAX (through jax2tf; TensorFlow is a
dependency). From PyTorch, Keras needs ``torch_xla`` to export; without it the export
fails with a message that says to export with ``--backend tensorflow`` (a ``.keras``
file loads on every backend).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from swd_keras.network import inference_model, load_network
from swd_keras.training import CONFIG_FILE, read_run_config

SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_PROBABILITIES, OUTPUT_CLASS = "probabilities", "predicted_class"
VERIFY_ATOL = 1e-4
VERIFY_TIMEOUT_S = 600


class ExportError(RuntimeError):
    """The SavedModel could not be written, or it disagrees with the Keras model."""


@keras.saving.register_keras_serializable(package="swd_keras")
class RawImagePreprocessing(keras.layers.Layer):
    """Stored pixels to the network's input: ``(x / pixel_max - mean) / std`` in float32.

    Args:
        mean: per-channel mean, in 0..1 units.
        std: per-channel standard deviation, in 0..1 units.
        pixel_max: the stored pixel value that maps to 1.0 (255 for bytes).
        **kwargs: Layer arguments.

    Call arguments:
        images: (b, h, w, c) raw pixels (e.g. uint8).

    Returns:
        (b, h, w, c) float32 normalised images.

    Example:
        >>> layer = RawImagePreprocessing((0.5,), (0.25,), 255.0)
    """

    def __init__(self, mean, std, pixel_max: float = 255.0, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"mean and std must have one entry per channel and std > 0; got "
                             f"mean={self.mean}, std={self.std}.")
        if pixel_max <= 0:
            raise ValueError(f"pixel_max must be positive, got {pixel_max!r}.")
        self.pixel_max = float(pixel_max)

    def call(self, images):
        x = ops.cast(images, "float32") / self.pixel_max
        return (x - np.asarray(self.mean, "float32")) / np.asarray(self.std, "float32")

    def compute_output_spec(self, images):
        return keras.KerasTensor(images.shape, dtype="float32")

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std,
                "pixel_max": self.pixel_max}


@keras.saving.register_keras_serializable(package="swd_keras")
class ClassPrediction(keras.layers.Layer):
    """Logits to ``{"probabilities": softmax, "predicted_class": argmax (int32)}``.

    Call arguments:
        logits: (b, classes).

    Returns:
        The dictionary of (b, classes) float32 probabilities and (b,) int32 classes.
    """

    def call(self, logits):
        return {OUTPUT_PROBABILITIES: ops.softmax(logits, axis=-1),
                OUTPUT_CLASS: ops.cast(ops.argmax(logits, axis=-1), "int32")}

    def compute_output_spec(self, logits):
        return {OUTPUT_PROBABILITIES: keras.KerasTensor(logits.shape, dtype="float32"),
                OUTPUT_CLASS: keras.KerasTensor(logits.shape[:1], dtype="int32")}


def serving_model(model: keras.Model, mean, std, pixel_max: float = 255.0,
                  input_shape: tuple[int, int, int] | None = None) -> keras.Model:
    """Wraps an inference model into raw ``uint8`` images -> probabilities and class.

    Args:
        model: the inference model (normalised float images -> logits).
        mean: per-channel mean of the training normalisation (0..1 units).
        std: per-channel standard deviation (0..1 units).
        pixel_max: the raw value that maps to 1.0.
        input_shape: (h, w, c) of the raw images; defaults to the model's.

    Returns:
        A functional model sharing ``model``'s weights, with the input ``images``
        (uint8) and the outputs ``probabilities`` and ``predicted_class``.
    """
    input_shape = tuple(input_shape or model.input_shape[1:])
    if tuple(model.input_shape[1:]) != input_shape:
        raise ValueError(f"input_shape {input_shape} does not match the model's input "
                         f"{tuple(model.input_shape[1:])}.")
    if len(mean) != input_shape[-1]:
        raise ValueError(f"mean has {len(mean)} entries for {input_shape[-1]} channels.")
    images = keras.Input(input_shape, dtype="uint8", name=INPUT_NAME)
    normalised = RawImagePreprocessing(mean, std, pixel_max, name="preprocessing")(images)
    outputs = ClassPrediction(name="prediction")(model(normalised))
    return keras.Model(images, outputs, name=f"{model.name}_serving")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What ``export_savedmodel`` wrote and how it checked it.

    Attributes:
        path: the version folder ``OUT_DIR/NAME/VERSION``.
        name: the model name (TF Serving's ``MODEL_NAME``).
        version: the version number.
        max_abs_diff: the largest probability difference between the served SavedModel
            and the Keras model on the verification images.
        batch_sizes: the batch sizes the verification served.
    """

    path: Path
    name: str
    version: int
    max_abs_diff: float
    batch_sizes: tuple[int, ...]


def export_savedmodel(model_or_path: keras.Model | str | os.PathLike,
                      out_dir: str | os.PathLike = "savedmodels", name: str | None = None,
                      version: int = 1, overwrite: bool = False, mean=None, std=None,
                      pixel_max: float | None = None,
                      input_shape: tuple[int, int, int] | None = None,
                      samples: int = 4, seed: int = 0, verbose: bool = True) -> ExportResult:
    """Exports a retrain network as a TF Serving SavedModel and verifies it.

    Args:
        model_or_path: a retrain network (a training model loses its auxiliary head),
            or a ``.keras`` file (a run's ``model.keras``).
        out_dir: the model base folder (``savedmodels``).
        name: the model name; defaults to the run folder's name for a run's
            ``model.keras``, else the file's stem (or the model's name).
        version: the version folder (a positive integer).
        overwrite: replace an existing ``OUT_DIR/NAME/VERSION``.
        mean, std, pixel_max: the training normalisation; by default read from the
            run's ``config.json`` beside a model file. Required otherwise.
        input_shape: (h, w, c) of the raw images; defaults to the model's input.
        samples: random images for the verification.
        seed: seed of the verification images.
        verbose: print the result and the serving commands.

    Returns:
        An ``ExportResult``.

    Raises:
        ValueError: a file that is not a model, missing normalisation, invalid
            arguments.
        FileExistsError: the target exists and ``overwrite`` is False.
        ExportError: Keras cannot export from this backend, or the verification failed.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}.")
    check_export_backend()
    model_path = None if isinstance(model_or_path, keras.Model) else Path(model_or_path)
    model = inference_model(model_or_path) if model_path is None else load_network(model_path)
    name = name or _default_name(model, model_path)
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"name must be a plain folder name, got {name!r}.")
    target = Path(out_dir) / name / str(version)
    _check_target(target, overwrite)
    mean, std, pixel_max = _normalisation(model_path, mean, std, pixel_max)
    wrapper = serving_model(model, mean, std, pixel_max, input_shape)

    rng = np.random.default_rng(seed)
    images = rng.integers(0, int(pixel_max) + 1, size=(samples, *wrapper.input_shape[1:]),
                          dtype=np.uint8)
    # JAX needs one eager call before export (KERAS-NOTES); it is cheap elsewhere.
    wrapper.predict_on_batch(images[:1])

    created_parent = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=target.parent))
    try:
        _write_savedmodel(wrapper, staging / "model")
        check = verify_export(staging / "model", wrapper, images)
        _check_target(target, overwrite)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / "model", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created_parent and not any(target.parent.iterdir()):
            target.parent.rmdir()
    result = ExportResult(target, name, version, check["max_abs_diff"], check["batch_sizes"])
    if verbose:
        print(f"Exported {target} and served it from a separate Python process: outputs "
              f"match the Keras model (max |difference| {result.max_abs_diff:.2e} over "
              f"batches of {', '.join(map(str, result.batch_sizes))}).")
        print(serving_instructions(target, name))
    return result


def _default_name(model: keras.Model, model_path: Path | None) -> str:
    if model_path is None:
        return model.name
    if (model_path.parent / CONFIG_FILE).is_file():
        return model_path.resolve().parent.name
    return model_path.stem


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True (--overwrite) "
                              "or choose another version.")


def _normalisation(model_path: Path | None, mean, std, pixel_max):
    stored: dict[str, Any] = {}
    if model_path is not None and (model_path.parent / CONFIG_FILE).is_file():
        stored = read_run_config(model_path.parent).get("preprocessing", {})
    mean = stored.get("mean") if mean is None else mean
    std = stored.get("std") if std is None else std
    pixel_max = stored.get("pixel_max", 255.0) if pixel_max is None else pixel_max
    if mean is None or std is None:
        raise ValueError("mean and std of the training normalisation are needed: export a "
                         "run's model.keras (its config.json holds them) or pass mean and std.")
    return [float(m) for m in mean], [float(s) for s in std], float(pixel_max)


def check_export_backend() -> None:
    """Raises ExportError if Keras cannot write a SavedModel from the current backend.

    TensorFlow exports directly and JAX through jax2tf; PyTorch needs ``torch_xla``.
    """
    backend = keras.backend.backend()
    if backend == "torch" and importlib.util.find_spec("torch_xla") is None:
        raise ExportError(
            "Keras exports a SavedModel from the torch backend only through torch_xla, "
            "which is not installed; export with --backend tensorflow "
            "(KERAS_BACKEND=tensorflow): the .keras file loads on every backend.")
    if backend not in ("tensorflow", "jax", "torch"):
        raise ExportError(f"Keras cannot export a SavedModel from the {backend} backend; "
                          "use --backend tensorflow.")


def _write_savedmodel(wrapper: keras.Model, path: Path) -> None:
    spec = keras.InputSpec(shape=(None, *wrapper.input_shape[1:]), dtype="uint8",
                           name=INPUT_NAME)
    archive = keras.export.ExportArchive()
    try:
        archive.track_and_add_endpoint(SIGNATURE, wrapper, [spec])
        archive.write_out(str(path), verbose=False)
    except Exception as error:  # noqa: BLE001 (each backend's exporter fails its own way)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(
            f"Keras could not export a SavedModel from the {keras.backend.backend()} backend "
            f"({type(error).__name__}: {first_line}); try --backend tensorflow.") from error


# The verification runs in a fresh interpreter that cannot import keras or swd_keras (as
# in TF Serving, only the SavedModel's graph is available); it writes its outputs to npz.
_SERVE_SCRIPT = r"""
import json, sys
for blocked in ("keras", "tf_keras", "swd_keras"):
    sys.modules[blocked] = None
import numpy as np
import tensorflow as tf

path, images_file, out_file = sys.argv[1:4]
images = np.load(images_file)
fn = tf.saved_model.load(path).signatures["serving_default"]
_, inputs = fn.structured_input_signature
(input_name, spec), = inputs.items()
outputs = {}
for size in (1, len(images)):
    result = fn(**{input_name: tf.constant(images[:size])})
    for key, value in result.items():
        outputs[f"{key}_{size}"] = value.numpy()
np.savez(out_file, **outputs)
print(json.dumps({"input_name": input_name, "input_dtype": spec.dtype.name,
                  "input_shape": spec.shape.as_list(),
                  "outputs": {k: [v.dtype.name, v.shape.as_list()]
                              for k, v in fn.structured_outputs.items()},
                  "batch_sizes": [1, len(images)],
                  "keras_loaded": any(m == "keras" or m.startswith("keras.")
                                      for m, mod in sys.modules.items() if mod is not None)}))
"""


def verify_export(path: str | os.PathLike, model: keras.Model, samples: np.ndarray,
                  atol: float = VERIFY_ATOL) -> dict[str, Any]:
    """Serves a SavedModel from a separate Python process and compares it with Keras.

    The child process imports TensorFlow with keras and swd_keras blocked, loads the
    SavedModel and runs its ``serving_default`` signature on the first
    image alone and on all ``samples``; this process compares the returned
    probabilities with ``model``'s (``atol``), and checks the signature: a ``uint8``
    ``images`` input with a free batch dimension, ``probabilities`` and
    ``predicted_class`` outputs, the class being the argmax of the probabilities.

    Args:
        path: the SavedModel folder.
        model: the serving model (``serving_model``: raw images -> dictionary).
        samples: (n, h, w, c) uint8 images, n >= 2.
        atol: the largest allowed probability difference.

    Returns:
        ``{"max_abs_diff": float, "batch_sizes": (1, n), "signature": {...}}``.

    Raises:
        ExportError: the child process failed, the signature is not as described, or the
            outputs differ (the message says which).
    """
    samples = np.asarray(samples)
    if samples.dtype != np.uint8 or samples.ndim != 4 or len(samples) < 2:
        raise ValueError(f"samples must be (n >= 2, h, w, c) uint8 images, got "
                         f"{samples.dtype} {samples.shape}.")
    expected = ops.convert_to_numpy(model.predict_on_batch(samples)[OUTPUT_PROBABILITIES])
    with tempfile.TemporaryDirectory(prefix="swd-keras-verify-") as scratch:
        images_file, out_file = Path(scratch) / "images.npy", Path(scratch) / "outputs.npz"
        np.save(images_file, samples)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"}
        try:
            child = subprocess.run(
                [sys.executable, "-c", _SERVE_SCRIPT, str(path), str(images_file),
                 str(out_file)], capture_output=True, text=True, env=env,
                timeout=VERIFY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ExportError(f"serving {path} took over {VERIFY_TIMEOUT_S} s.") from None
        if child.returncode != 0:
            tail = (child.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ExportError(f"serving {path} in a separate process failed: {tail}")
        signature = json.loads(child.stdout.strip().splitlines()[-1])
        with np.load(out_file) as served:
            outputs = dict(served)
    _check_signature(signature, samples.shape[1:])
    max_diff = 0.0
    for size in signature["batch_sizes"]:
        probabilities = outputs[f"{OUTPUT_PROBABILITIES}_{size}"]
        classes = outputs[f"{OUTPUT_CLASS}_{size}"]
        if probabilities.shape != expected[:size].shape:
            raise ExportError(f"served probabilities have shape {probabilities.shape}, "
                              f"expected {expected[:size].shape}.")
        max_diff = max(max_diff, float(np.abs(probabilities - expected[:size]).max()))
        if not np.array_equal(classes, probabilities.argmax(axis=-1)):
            raise ExportError("served predicted_class is not the argmax of the probabilities.")
    if max_diff > atol:
        raise ExportError(f"served probabilities differ from the Keras model's by {max_diff:.2e} "
                          f"(allowed {atol:.0e}).")
    return {"max_abs_diff": max_diff, "batch_sizes": tuple(signature["batch_sizes"]),
            "signature": signature}


def _check_signature(signature: dict[str, Any], image_shape: tuple[int, ...]) -> None:
    problems = []
    if signature["keras_loaded"]:
        problems.append("the serving process loaded keras")
    if signature["input_dtype"] != "uint8":
        problems.append(f"input dtype {signature['input_dtype']}, not uint8")
    if signature["input_shape"] != [None, *image_shape]:
        problems.append(f"input shape {signature['input_shape']}, not [None, *{image_shape}]")
    if set(signature["outputs"]) != {OUTPUT_PROBABILITIES, OUTPUT_CLASS}:
        problems.append(f"outputs {sorted(signature['outputs'])}")
    if problems:
        raise ExportError("the SavedModel's serving_default signature is wrong: "
                          + "; ".join(problems) + ".")


def serving_instructions(path: str | os.PathLike, name: str) -> str:
    """The commands to inspect and serve an exported version folder, as text."""
    version_dir = Path(path).resolve()
    base = version_dir.parent
    return "\n".join([
        "Inspect it:",
        f"  saved_model_cli show --dir {shlex.quote(str(version_dir))} --all",
        "Serve it with TensorFlow Serving (REST on port 8501):",
        f"  docker run --rm -p 8501:8501 -v {shlex.quote(f'{base}:/models/{name}')} "
        f"-e MODEL_NAME={shlex.quote(name)} tensorflow/serving",
        "Query it (uint8 images, nested lists of shape (batch, height, width, channels)):",
        f"  curl -X POST http://localhost:8501/v1/models/{name}:predict "
        "-d '{\"signature_name\": \"serving_default\", \"instances\": [IMAGE, ...]}'",
    ])
