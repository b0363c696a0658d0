"""Exports of a retrain network that take raw images: SavedModel, ONNX and LiteRT.

``export_model`` writes ``OUT_DIR/NAME/VERSION/`` holding one file (or folder) per
requested format, all with the same interface: a raw ``uint8`` image input of any batch
size, named ``images``, and the outputs ``probabilities`` (float32, (b, classes)) and
``predicted_class`` (int32, (b,)). The preprocessing the network was trained with (scale
the stored pixel range to 0..1, subtract the mean, divide by the standard deviation) is
part of the graph, so clients send pixels as stored. The formats:

    saved_model  the version folder itself is a SavedModel for TensorFlow Serving
                 (signature ``serving_default``); this module
    onnx         ``model.onnx``, run by ONNX Runtime (``export_onnx``)
    tflite       ``model.tflite`` (float32) and ``model_int8.tflite`` (post-training
                 quantization calibrated on training images), run by the LiteRT
                 interpreter (``export_litert``)

The run's class names, when ``config.json`` has them, are written to ``labels.txt`` (one
name a line, in label order) in the version folder, and into ONNX's ``metadata_props``.

The export is written to a hidden temporary folder beside the target, each format verified
there in its own runtime (``export_runtime.verify_in_runtime``: a separate Python process
that cannot import keras or swd_keras, outputs compared with the Keras model's), and only
then renamed into place: a target folder is never half-written or unverified.

The SavedModel comes from the TensorFlow backend and from JAX (through jax2tf; TensorFlow is
a dependency). From PyTorch, Keras needs ``torch_xla`` to export; without it the export
fails with a message that says to export with ``--backend tensorflow`` (a ``.keras``
file loads on every backend). ONNX and LiteRT are exported from TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import os
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from swd_keras.export_runtime import (
    INPUT_NAME,
    OUTPUT_CLASS,
    OUTPUT_PROBABILITIES,
    VERIFY_ATOL,
    ExportError,
    ExportRequest,
    verify_in_runtime,
    write_labels,
)
from swd_keras.network import inference_model, load_network
from swd_keras.training import CONFIG_FILE, read_run_config

SIGNATURE = "serving_default"
FORMATS = ("saved_model", "onnx", "tflite")
_FORMAT_MODULES = {"saved_model": __name__, "onnx": "swd_keras.export_onnx",
                   "tflite": "swd_keras.export_litert"}
REQUIRES: dict[str, str] = {}
"""Modules a format needs -> the pip extra that installs them (the SavedModel: none)."""


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
        # The first index of the maximum, as argmax; Keras' TensorFlow argmax adds bit
        # operations (for -0.0) that neither ONNX nor LiteRT's built-in ops have.
        classes = ops.arange(logits.shape[-1], dtype="int32")
        top = ops.max(logits, axis=-1, keepdims=True)
        first = ops.min(ops.where(logits >= top, classes, logits.shape[-1]), axis=-1)
        return {OUTPUT_PROBABILITIES: ops.softmax(logits, axis=-1),
                OUTPUT_CLASS: ops.cast(first, "int32")}

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


def serving_model_from_run(model_path: str | os.PathLike) -> keras.Model:
    """The serving model of a run's ``model.keras``: raw images -> probabilities and class,
    with the normalisation of the run's ``config.json``.

    Args:
        model_path: a ``.keras`` file beside a retraining run's ``config.json``.

    Returns:
        ``serving_model`` of the loaded network.

    Example:
        >>> serving_model_from_run("runs/digits-train/model.keras").predict(images)
    """
    model_path = Path(model_path)
    mean, std, pixel_max = _normalisation(_run_record(model_path), None, None, None)
    return serving_model(load_network(model_path), mean, std, pixel_max)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What ``export_model`` wrote and how it checked it.

    Attributes:
        path: the version folder ``OUT_DIR/NAME/VERSION``.
        name: the model name (TF Serving's ``MODEL_NAME``).
        version: the version number.
        max_abs_diff: the largest probability difference between an export held to the
            Keras model (all but the int8 LiteRT model) and the Keras model.
        batch_sizes: the batch sizes the verification ran.
        files: format -> the files it wrote, relative to ``path``.
        checks: format -> its verification (``verify_in_runtime``'s result; LiteRT's
            also holds the float32 and int8 test accuracies).
    """

    path: Path
    name: str
    version: int
    max_abs_diff: float
    batch_sizes: tuple[int, ...]
    files: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def export_model(model_or_path: keras.Model | str | os.PathLike,
                 formats: str | Sequence[str] = "saved_model",
                 out_dir: str | os.PathLike | None = None, name: str | None = None,
                 version: int = 1, overwrite: bool = False, mean=None, std=None,
                 pixel_max: float | None = None,
                 input_shape: tuple[int, int, int] | None = None,
                 class_names: Sequence[str] | None = None, int8: bool = True,
                 calibration_images: np.ndarray | None = None,
                 evaluation_data: tuple[np.ndarray, np.ndarray] | None = None,
                 calibration_samples: int = 200, evaluation_samples: int = 1000,
                 samples: int = 4, seed: int = 0, verbose: bool = True) -> ExportResult:
    """Exports a retrain network to raw-image SavedModel, ONNX and LiteRT models, verified.

    Args:
        model_or_path: a retrain network (a training model loses its auxiliary head),
            or a ``.keras`` file (a run's ``model.keras``).
        formats: one or several of ``FORMATS`` (``saved_model``, ``onnx``, ``tflite``).
        out_dir: the model base folder [default: ``savedmodels``, or ``exports`` when
            the formats do not include ``saved_model``].
        name: the model name; defaults to the run folder's name for a run's
            ``model.keras``, else the file's stem (or the model's name).
        version: the version folder (a positive integer).
        overwrite: replace an existing ``OUT_DIR/NAME/VERSION``.
        mean, std, pixel_max: the training normalisation; by default read from the
            run's ``config.json`` beside a model file. Required otherwise.
        input_shape: (h, w, c) of the raw images; defaults to the model's input.
        class_names: the classes' names in label order; by default the run's
            (``config.json``'s ``class_names``), else none.
        int8: also write the int8 LiteRT model (``tflite`` only).
        calibration_images: (n, h, w, c) uint8 training images calibrating the int8
            model; by default a seeded sample of the run's training split.
        evaluation_data: (uint8 images, labels) on which the LiteRT models' accuracies
            are measured; by default a sample of the run's test split.
        calibration_samples: training images drawn from the run for calibration.
        evaluation_samples: test images drawn from the run for the accuracies.
        samples: random images for the verification.
        seed: seed of the verification images and of the calibration sample.
        verbose: print the result (and, for a SavedModel, the serving commands).

    Returns:
        An ``ExportResult``.

    Raises:
        ValueError: a file that is not a model, missing normalisation, an unknown format,
            int8 without calibration images, invalid arguments.
        FileExistsError: the target exists and ``overwrite`` is False.
        ExportError: a format whose packages are not installed (the message names the
            pip extra), Keras cannot export it from this backend, or a verification
            failed.

    Example:
        >>> export_model("runs/digits-train/model.keras", ["onnx", "tflite"], "exports")
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}.")
    modules = check_formats(formats)
    formats = tuple(modules)
    if out_dir is None:
        out_dir = "savedmodels" if "saved_model" in formats else "exports"
    model_path = None if isinstance(model_or_path, keras.Model) else Path(model_or_path)
    model = inference_model(model_or_path) if model_path is None else load_network(model_path)
    name = name or _default_name(model, model_path)
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"name must be a plain folder name, got {name!r}.")
    target = Path(out_dir) / name / str(version)
    _check_target(target, overwrite)
    record = _run_record(model_path)
    mean, std, pixel_max = _normalisation(record, mean, std, pixel_max)
    wrapper = serving_model(model, mean, std, pixel_max, input_shape)
    names = _class_names(record, class_names, model.output_shape[-1])

    rng = np.random.default_rng(seed)
    images = rng.integers(0, int(pixel_max) + 1, size=(samples, *wrapper.input_shape[1:]),
                          dtype=np.uint8)
    # JAX needs one eager call before export (KERAS-NOTES); it is cheap elsewhere.
    wrapper.predict_on_batch(images[:1])
    request = ExportRequest(
        model=wrapper, samples=images, class_names=names, int8=int8, run_record=record,
        normalisation=(mean, std, pixel_max), calibration_images=calibration_images,
        evaluation_data=evaluation_data, calibration_samples=calibration_samples,
        evaluation_samples=evaluation_samples, seed=seed)
    for module in modules.values():
        module.check_request(request)

    checks = {}
    with staged_folder(target, overwrite) as folder:
        write_labels(folder, names)
        for fmt, module in modules.items():
            checks[fmt] = module.write_and_verify(request, folder)
    held = [check for check in checks.values() if "max_abs_diff" in check]
    result = ExportResult(target, name, version,
                          max(check["max_abs_diff"] for check in held),
                          held[0]["batch_sizes"],
                          files={fmt: tuple(check["files"]) for fmt, check in checks.items()},
                          checks=checks)
    if verbose:
        print(f"Exported {target}, each format run in its own runtime in a separate Python "
              f"process (batches of {', '.join(map(str, result.batch_sizes))}):")
        for check in checks.values():
            print(f"  {check['summary']}")
        if "saved_model" in formats:
            print(serving_instructions(target, name))
    return result


def export_savedmodel(model_or_path: keras.Model | str | os.PathLike,
                      out_dir: str | os.PathLike = "savedmodels", name: str | None = None,
                      version: int = 1, overwrite: bool = False, mean=None, std=None,
                      pixel_max: float | None = None,
                      input_shape: tuple[int, int, int] | None = None,
                      samples: int = 4, seed: int = 0, verbose: bool = True) -> ExportResult:
    """Exports a retrain network as a TF Serving SavedModel and verifies it.

    ``export_model(..., formats="saved_model")``: see there for the arguments.

    Returns:
        An ``ExportResult``.

    Example:
        >>> export_savedmodel("runs/digits-train/model.keras")  # savedmodels/digits-train/1
    """
    return export_model(model_or_path, "saved_model", out_dir, name, version, overwrite,
                        mean, std, pixel_max, input_shape, samples=samples, seed=seed,
                        verbose=verbose)


def check_formats(formats: str | Sequence[str]) -> dict[str, Any]:
    """Checks that every format of ``formats`` can be exported here, before anything is
    computed (the pipeline calls it before its search).

    Args:
        formats: one or several of ``FORMATS``.

    Returns:
        Format -> its module, in ``FORMATS``' order.

    Raises:
        ValueError: an unknown format, or none.
        ExportError: a format whose packages are not installed (naming the pip extra),
            or that Keras cannot export from this backend.
    """
    modules = {fmt: importlib.import_module(_FORMAT_MODULES[fmt])
               for fmt in format_names(formats)}
    for fmt, module in modules.items():
        _check_requirements(fmt, module.REQUIRES)
        module.check_backend()
    return modules


def format_names(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``formats`` as a tuple in ``FORMATS``' order; a ValueError names an unknown one."""
    chosen = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [fmt for fmt in chosen if fmt not in FORMATS]
    if unknown or not chosen:
        raise ValueError(f"formats must be one or more of {', '.join(FORMATS)}; got "
                         f"{', '.join(map(repr, unknown)) or 'none'}.")
    # In FORMATS' order: the SavedModel, when there is one, is written first and LiteRT
    # converts it rather than writing its own.
    return tuple(fmt for fmt in FORMATS if fmt in chosen)


def _check_requirements(fmt: str, requires: dict[str, str]) -> None:
    missing = [module for module in requires if importlib.util.find_spec(module) is None]
    if missing:
        extras = ",".join(dict.fromkeys(requires[module] for module in missing))
        raise ExportError(f"the {fmt} export needs {', '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not installed: "
                          f'pip install "swd-keras[{extras}]".')


@contextlib.contextmanager
def staged_folder(target: Path, overwrite: bool):
    """Yields a hidden empty folder beside ``target`` that becomes ``target`` if the block
    succeeds (replacing it when ``overwrite``); on any error it is removed, with the
    parent folder if this call created it.

    Args:
        target: the folder to write.
        overwrite: replace an existing ``target``.

    Example:
        >>> with staged_folder(Path("exports/net/1"), overwrite=False) as folder:
        ...     write_and_check(folder)
    """
    created_parent = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        folder = staging / "model"
        folder.mkdir()
        yield folder
        _check_target(target, overwrite)
        if target.exists():
            shutil.rmtree(target)
        os.replace(folder, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created_parent and not any(target.parent.iterdir()):
            target.parent.rmdir()


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


def _run_record(model_path: Path | None) -> dict[str, Any] | None:
    """The retraining run's ``config.json`` beside a model file, if there is one."""
    if model_path is not None and (model_path.parent / CONFIG_FILE).is_file():
        return read_run_config(model_path.parent)
    return None


def _normalisation(record: dict[str, Any] | None, mean, std, pixel_max):
    stored: dict[str, Any] = (record or {}).get("preprocessing", {})
    mean = stored.get("mean") if mean is None else mean
    std = stored.get("std") if std is None else std
    pixel_max = stored.get("pixel_max", 255.0) if pixel_max is None else pixel_max
    if mean is None or std is None:
        raise ValueError("mean and std of the training normalisation are needed: export a "
                         "run's model.keras (its config.json holds them) or pass mean and std.")
    return [float(m) for m in mean], [float(s) for s in std], float(pixel_max)


def _class_names(record: dict[str, Any] | None, class_names, classes: int) -> list[str] | None:
    names = (record or {}).get("class_names") if class_names is None else class_names
    if names is None:
        return None
    names = [str(name) for name in names]
    if len(names) != classes or any(not name or "\n" in name for name in names):
        raise ValueError(f"class_names must be {classes} non-empty one-line names (one per "
                         f"class); got {names!r}.")
    return names


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


check_backend = check_export_backend


def check_request(request: ExportRequest) -> None:
    """The SavedModel needs nothing beyond the serving model."""


def write_and_verify(request: ExportRequest, folder: Path) -> dict[str, Any]:
    """Writes the SavedModel into ``folder`` (the version folder) and verifies it.

    Args:
        request: the export's serving model, sample images and class names.
        folder: the staging version folder.

    Returns:
        ``verify_export``'s result with ``files`` and a one-line ``summary``.
    """
    write_savedmodel(request.model, folder)
    check = verify_export(folder, request.model, request.samples,
                          class_names=request.class_names)
    return {**check, "files": ("saved_model.pb",),
            "summary": f"saved_model: TensorFlow Serving's signature, probabilities within "
                       f"{check['max_abs_diff']:.1e} of Keras"}


def write_savedmodel(wrapper: keras.Model, path: Path) -> None:
    """Writes ``wrapper`` as a SavedModel with the ``serving_default`` signature.

    Args:
        wrapper: the serving model (``serving_model``).
        path: the SavedModel folder.

    Raises:
        ExportError: Keras cannot export from this backend (the message says why).
    """
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


# TensorFlow alone, as in TF Serving: only the SavedModel's graph is available.
SAVEDMODEL_LOADER = r"""
import tensorflow as tf

def open_model(path):
    fn = tf.saved_model.load(path).signatures["serving_default"]
    _, inputs = fn.structured_input_signature
    (input_name, spec), = inputs.items()
    info = {"input_name": input_name, "input_dtype": spec.dtype.name,
            "input_shape": spec.shape.as_list(),
            "outputs": {k: [v.dtype.name, v.shape.as_list()]
                        for k, v in fn.structured_outputs.items()}}

    def predict(images):
        return {k: v.numpy() for k, v in fn(**{input_name: tf.constant(images)}).items()}
    return info, predict
"""


def verify_export(path: str | os.PathLike, model: keras.Model, samples: np.ndarray,
                  atol: float = VERIFY_ATOL,
                  class_names: list[str] | None = None) -> dict[str, Any]:
    """Serves a SavedModel from a separate Python process and compares it with Keras.

    The child process imports TensorFlow with keras and swd_keras blocked, loads the
    SavedModel and runs its ``serving_default`` signature on the first image alone and on
    all ``samples`` (``export_runtime.verify_in_runtime``).

    Args:
        path: the SavedModel folder.
        model: the serving model (``serving_model``: raw images -> dictionary).
        samples: (n, h, w, c) uint8 images, n >= 2.
        atol: the largest allowed probability difference.
        class_names: the names ``labels.txt`` in the folder must hold (``None``: no file).

    Returns:
        ``{"max_abs_diff": float, "batch_sizes": (1, n), "signature": {...}}``.

    Raises:
        ExportError: the child process failed, the signature is not as described, or the
            outputs differ (the message says which).

    Example:
        >>> verify_export("savedmodels/net/1", serving_model(net, mean, std), images)
    """
    return verify_in_runtime(SAVEDMODEL_LOADER, path, model, samples, atol, class_names,
                             runtime="TensorFlow")


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
