"""ONNX and LiteRT exports: run in their runtimes, compared with NumPy and the Keras model."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime
import pytest
import swd_keras.cli.commands  # noqa: F401  (registers the sub-commands)
from ai_edge_litert.interpreter import Interpreter
from click.testing import CliRunner
from swd_keras.cli.commands import export as export_command
from swd_keras.cli.main import cli

from swd_keras.data import get_dataset_info, train_data
from swd_keras.export import FORMATS, ExportError, export_model, serving_model
from swd_keras.export_litert import LITERT_LOADER
from swd_keras.export_runtime import verify_in_runtime
from swd_keras.genotype import get_genotype
from swd_keras.network import build_network
from swd_keras.runs import start_run
from swd_keras.training import RetrainConfig, save_model

BENCH = Path(__file__).resolve().parents[1] / "bench" / "inference.py"
NAMES = [f"digit {i}" for i in range(10)]


def _digits_run(folder: Path) -> keras.Model:
    """A tiny digits network saved as a retraining run, with the record fit_network
    writes."""
    info = get_dataset_info("digits")
    keras.utils.set_random_seed(3)
    model = build_network("darts_v2", (8, 8, 1), 10, channels=4, layers=3, auxiliary=False)
    config = RetrainConfig(genotype="darts_v2", dataset="digits", epochs=1, batch_size=8,
                           channels=4, layers=3, auxiliary=False)
    start_run(folder, "retrain", config, genotype=get_genotype("darts_v2").to_dict(),
              head="cifar", num_classes=10, class_names=NAMES,
              preprocessing={"input_shape": [8, 8, 1], "mean": list(info.mean),
                             "std": list(info.std), "pixel_max": 16.0})
    save_model(model, folder / "model.keras")
    return model


def _expected_probabilities(model, images):
    """NumPy preprocessing of digits' 0..16 pixels, the Keras network, NumPy softmax."""
    info = get_dataset_info("digits")
    normalised = (images.astype("float32") / 16.0 - np.float32(info.mean)) / np.float32(info.std)
    logits = keras.ops.convert_to_numpy(model.predict_on_batch(normalised))
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def _litert(path, images):
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    return runner(images=images)


def test_onnx_and_litert_run_raw_pixels_like_keras_and_int8_reports_accuracy(tmp_path):
    model = _digits_run(tmp_path / "run")
    out = tmp_path / "exports"
    result = export_model(tmp_path / "run" / "model.keras", ["tflite", "onnx"], out,
                          calibration_samples=32, verbose=False)
    folder = out / "run" / "1"
    assert result.path == folder and sorted(os.listdir(out / "run")) == ["1"]  # no staging
    assert result.files == {"onnx": ("model.onnx",),
                            "tflite": ("model.tflite", "model_int8.tflite")}
    assert not (folder / "saved_model.pb").exists()  # LiteRT's SavedModel was temporary
    assert (folder / "labels.txt").read_text().splitlines() == NAMES
    for file in ("model.onnx", "model.tflite", "model_int8.tflite", "labels.txt"):
        assert (folder / file).stat().st_mode & 0o777 == 0o644, file  # a server may read it
    metadata = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert metadata["class_names"] == '["digit 0", "digit 1", "digit 2", "digit 3", ' \
        '"digit 4", "digit 5", "digit 6", "digit 7", "digit 8", "digit 9"]'

    images = np.random.default_rng(5).integers(0, 17, size=(4, 8, 8, 1), dtype=np.uint8)
    expected = _expected_probabilities(model, images)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    assert [(i.name, i.type) for i in session.get_inputs()] == [("images", "tensor(uint8)")]
    for size in (1, 4):
        probabilities, classes = session.run(["probabilities", "predicted_class"],
                                             {"images": images[:size]})
        np.testing.assert_allclose(probabilities, expected[:size], atol=1e-4)
        np.testing.assert_array_equal(classes, expected[:size].argmax(axis=1))
        served = _litert(folder / "model.tflite", images[:size])
        np.testing.assert_allclose(served["probabilities"], expected[:size], atol=1e-4)
        assert served["predicted_class"].dtype == np.int32
        np.testing.assert_array_equal(served["predicted_class"], expected[:size].argmax(axis=1))

    # The accuracies on the whole test split (360 digits, under evaluation_samples),
    # recomputed here from the data API's test batches mapped back to stored pixels.
    data = train_data("digits", 1)
    mean, std = np.float32(data.info.mean), np.float32(data.info.std)
    batches = list(data.test_dataset(400).as_numpy_iterator())
    test_images = np.rint((batches[0][0] * std + mean) * 16.0).astype(np.uint8)
    labels = batches[0][1]
    check = result.checks["tflite"]
    for file, accuracy in (("model.tflite", check["accuracy"]),
                           ("model_int8.tflite", check["int8"]["accuracy"])):
        predicted = _litert(folder / file, test_images)["predicted_class"]
        assert accuracy == pytest.approx(np.mean(predicted == labels)), file
    assert check["max_abs_diff"] <= 1e-4 and check["int8"]["max_abs_diff"] > 0

    # The harness catches another network and other class names.
    other = serving_model(build_network("darts_v2", (8, 8, 1), 10, channels=4, layers=3,
                                        auxiliary=False), data.info.mean, data.info.std, 16.0)
    with pytest.raises(ExportError, match="differ from the Keras model"):
        verify_in_runtime(LITERT_LOADER, folder / "model.tflite", other, images,
                          class_names=NAMES)
    with pytest.raises(ExportError, match="class names"):
        verify_in_runtime(LITERT_LOADER, folder / "model.tflite", other, images,
                          class_names=NAMES[::-1])

    bench = subprocess.run(
        [sys.executable, str(BENCH), "--runtimes", str(tmp_path / "run" / "model.keras"),
         "--export-dir", str(folder), "--runs", "2", "--warmup", "1", "--batch", "4"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert bench.returncode == 0, bench.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in bench.stdout.splitlines() if line.startswith("|")]
    # A row per runtime the folder has (the SavedModel's is test_export.py's format).
    assert [row[0].strip() for row in rows[2:]] == [
        "keras", "onnxruntime", "litert float32", "litert int8"]
    for row in rows[2:]:
        assert float(row[2]) > 0 and float(row[3]) > 0 and float(row[4]) > 0
        assert row[5].strip() == "4"


def _error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize(("fmt", "module", "extra"), [
    ("onnx", "onnxruntime", "onnx"), ("onnx", "tf2onnx", "onnx"),
    ("tflite", "ai_edge_litert", "litert")])
def test_a_format_whose_package_is_missing_names_the_extra(tmp_path, monkeypatch, fmt,
                                                           module, extra):
    _digits_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "run" / "model.keras"),
                                      "--format", f"saved_model,{fmt}",
                                      "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert _error_line(result) == (
        f"Error: the {fmt} export needs {module}, which is not installed: "
        f'pip install "swd-keras[{extra}]".')
    assert not (tmp_path / "out").exists()


def test_bad_export_requests_are_one_line_and_write_nothing(tmp_path, monkeypatch):
    assert export_command.FORMATS == FORMATS
    _digits_run(tmp_path / "run")
    bare = save_model(build_network("darts_v2", (8, 8, 1), 10, channels=4, layers=3,
                                    auxiliary=False), tmp_path / "bare" / "net.keras")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "run" / "model.keras"),
                                      "--format", "onnx,pdf", "--output-dir", str(out)])
    assert result.exit_code == 2
    assert "'pdf': choose from saved_model, onnx, tflite" in _error_line(result)
    # A model without a run: nothing to calibrate the int8 model on.
    with pytest.raises(ValueError, match="int8 quantization needs calibration images"):
        export_model(bare, "tflite", out, mean=(0.3,), std=(0.4,))
    with pytest.raises(ValueError, match="class_names must be 10"):
        export_model(tmp_path / "run" / "model.keras", "onnx", out, class_names=["a", "b"])
    with pytest.raises(ValueError, match="formats must be one or more of"):
        export_model(tmp_path / "run" / "model.keras", (), out)
    for backend in ("jax", "torch"):
        monkeypatch.setattr(keras.backend, "backend", lambda name=backend: name)
        for fmt in ("onnx", "tflite"):
            with pytest.raises(ExportError, match=f"^the {fmt} export runs on the tensorflow "
                                                  f"backend, not {backend}: export with "
                                                  "--backend tensorflow"):
                export_model(tmp_path / "run" / "model.keras", fmt, out)
    assert not out.exists()
