"""ONNX export of the serving model, run by ONNX Runtime.

``model.onnx`` is Keras' own ONNX export (``model.export(format="onnx")``, through
tf2onnx on the TensorFlow backend) of the raw-image serving model: input ``images``
(uint8, free batch dimension), outputs ``probabilities`` and ``predicted_class``. The
run's class names are in the model's ``metadata_props`` under ``class_names`` (a JSON
list), as well as in ``labels.txt`` beside it::

    session = onnxruntime.InferenceSession("model.onnx")
    json.loads(session.get_modelmeta().custom_metadata_map["class_names"])

It is exported from the TensorFlow backend only: Keras exports ONNX from JAX through
jax2onnx and from PyTorch through ``torch.onnx``, whose graphs of this network were not
verified; a ``.keras`` file loads on every backend, so ``--backend tensorflow`` exports
any run.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import keras

from swd_keras.export_runtime import (
    INPUT_NAME,
    ExportError,
    ExportRequest,
    require_tensorflow_backend,
    verify_in_runtime,
    write_export_file,
)

ONNX_FILE = "model.onnx"
CLASS_NAMES_KEY = "class_names"
REQUIRES = {"onnx": "onnx", "onnxruntime": "onnx", "tf2onnx": "onnx"}
"""Modules the ONNX export needs -> the pip extra that installs them."""


def check_backend() -> None:
    """Raises ExportError unless the running backend is TensorFlow."""
    require_tensorflow_backend("onnx")


def check_request(request: ExportRequest) -> None:
    """ONNX needs nothing beyond the serving model."""


def write_and_verify(request: ExportRequest, folder: Path) -> dict[str, Any]:
    """Writes ``model.onnx`` into ``folder`` and runs it in ONNX Runtime against Keras.

    Args:
        request: the export's serving model, sample images and class names.
        folder: the staging version folder.

    Returns:
        ``verify_in_runtime``'s result with ``files`` and a one-line ``summary``.
    """
    path = folder / ONNX_FILE
    write_onnx(request.model, path, request.class_names)
    check = verify_in_runtime(ONNX_LOADER, path, request.model, request.samples,
                              class_names=request.class_names, runtime="ONNX Runtime")
    return {**check, "files": (ONNX_FILE,),
            "summary": f"{ONNX_FILE}: ONNX Runtime, probabilities within "
                       f"{check['max_abs_diff']:.1e} of Keras"}


def write_onnx(wrapper: keras.Model, path: Path, class_names: list[str] | None = None) -> None:
    """Writes the serving model as ONNX, with the class names in its metadata.

    Args:
        wrapper: the serving model (``serving_model``).
        path: the ``.onnx`` file.
        class_names: stored as ``metadata_props["class_names"]`` (JSON) unless ``None``.

    Raises:
        ExportError: the conversion failed (its first line).

    Example:
        >>> write_onnx(serving_model(net, mean, std), Path("model.onnx"), ["cat", "dog"])
    """
    spec = keras.InputSpec(shape=(None, *wrapper.input_shape[1:]), dtype="uint8",
                           name=INPUT_NAME)
    try:
        with warnings.catch_warnings():
            # Keras' tf2onnx patch probes np.object, which NumPy 2 warns about.
            warnings.simplefilter("ignore", FutureWarning)
            wrapper.export(str(path), format="onnx", input_signature=[spec], verbose=False)
    except Exception as error:  # noqa: BLE001 (the converter fails its own ways)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(f"Keras could not export ONNX ({type(error).__name__}: "
                          f"{first_line}).") from error
    os.chmod(path, 0o644)  # as write_export_file: readable by a server running as another user
    if class_names is not None:
        import onnx

        proto = onnx.load(str(path))
        entry = proto.metadata_props.add()
        entry.key, entry.value = CLASS_NAMES_KEY, json.dumps(class_names)
        write_export_file(path, proto.SerializeToString())


# ONNX Runtime alone: no TensorFlow, no Keras.
ONNX_LOADER = r"""
import onnxruntime

def _dtype(onnx_type):
    name = onnx_type[len("tensor("):-1]
    return {"float": "float32", "double": "float64"}.get(name, name)

def _shape(shape):
    return [d if isinstance(d, int) else None for d in shape]

def open_model(path):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    outputs = [output.name for output in session.get_outputs()]
    metadata = session.get_modelmeta().custom_metadata_map
    info = {"input_name": image_input.name, "input_dtype": _dtype(image_input.type),
            "input_shape": _shape(image_input.shape),
            "outputs": {o.name: [_dtype(o.type), _shape(o.shape)]
                        for o in session.get_outputs()},
            "class_names": (json.loads(metadata["class_names"])
                            if "class_names" in metadata else None)}

    def predict(images):
        return dict(zip(outputs, session.run(outputs, {image_input.name: images})))
    return info, predict
"""
