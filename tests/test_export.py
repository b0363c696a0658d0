"""SavedModel export: served from a separate process, compared with the Keras model."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from swd_keras.export import ExportError, export_savedmodel, serving_model, verify_export
from swd_keras.network import build_network, inference_model
from swd_keras.runs import start_run
from swd_keras.training import RetrainConfig, save_model

MEAN, STD, PIXEL_MAX = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), 255.0

# The test's own server: a fresh interpreter with keras blocked, as TF Serving has none.
SERVE = r"""
import sys
sys.modules["keras"] = None
sys.modules["swd_keras"] = None
import numpy as np
import tensorflow as tf
fn = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = fn(images=tf.constant(np.load(sys.argv[2])))
np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
"""


def _network():
    model = build_network("darts_v2", (16, 16, 3), 6, channels=4, layers=3)
    model(np.random.rand(4, 16, 16, 3).astype("float32"), training=True)  # move BN stats
    return inference_model(model)


def _serve(tmp_path, export_dir, images):
    np.save(tmp_path / "in.npy", images)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"}
    subprocess.run([sys.executable, "-c", SERVE, str(export_dir), str(tmp_path / "in.npy"),
                    str(tmp_path / "out.npz")], check=True, env=env, capture_output=True)
    with np.load(tmp_path / "out.npz") as served:
        return dict(served)


@pytest.mark.backend
def test_export_serves_raw_uint8_images_like_the_keras_model(tmp_path):
    if keras.backend.backend() == "torch":
        pytest.skip("covered by test_export_from_torch_fails_clearly")
    model = _network()
    result = export_savedmodel(model, tmp_path / "savedmodels", name="net", version=3,
                               mean=MEAN, std=STD, verbose=False)
    assert result.path == tmp_path / "savedmodels" / "net" / "3"
    assert result.max_abs_diff <= 1e-4 and result.batch_sizes == (1, 4)
    assert sorted(os.listdir(tmp_path / "savedmodels" / "net")) == ["3"]  # no staging left

    images = np.random.default_rng(9).integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    served = _serve(tmp_path, result.path, images)
    # Independent expectation: NumPy preprocessing, then the Keras model, then softmax.
    normalised = (images.astype("float32") / PIXEL_MAX - np.float32(MEAN)) / np.float32(STD)
    logits = keras.ops.convert_to_numpy(model.predict(normalised, verbose=0))
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(served["probabilities"], probabilities, atol=1e-4)
    np.testing.assert_array_equal(served["predicted_class"], logits.argmax(axis=1))
    assert served["predicted_class"].dtype == np.int32


def test_export_from_a_run_reads_its_normalisation_and_refuses_to_overwrite(tmp_path, capsys):
    run = tmp_path / "my_run"
    model = build_network("darts_v2", (8, 8, 1), 10, channels=4, layers=3, auxiliary=False)
    start_run(run, "retrain", RetrainConfig("darts_v2", "digits", channels=4, layers=3),
              genotype={}, preprocessing={"mean": [0.3], "std": [0.2], "pixel_max": 16.0})
    save_model(model, run / "model.keras")
    out = tmp_path / "savedmodels"
    result = export_savedmodel(run / "model.keras", out)
    assert result.path == out / "my_run" / "1"  # named after the run folder
    printed = capsys.readouterr().out
    assert f"saved_model_cli show --dir {result.path.resolve()} --all" in printed
    assert "docker run" in printed and "MODEL_NAME=my_run" in printed

    # The digits scale: stored pixels 0..16 map to 0..1.
    images = np.random.default_rng(1).integers(0, 17, size=(3, 8, 8, 1), dtype=np.uint8)
    served = _serve(tmp_path, result.path, images)
    logits = keras.ops.convert_to_numpy(
        model.predict((images.astype("float32") / 16.0 - 0.3) / 0.2, verbose=0))
    np.testing.assert_array_equal(served["predicted_class"], logits.argmax(axis=1))

    stamp = (result.path / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already exists.*overwrite"):
        export_savedmodel(run / "model.keras", out)
    assert (result.path / "saved_model.pb").stat().st_mtime_ns == stamp
    again = export_savedmodel(run / "model.keras", out, overwrite=True, verbose=False)
    assert (again.path / "saved_model.pb").stat().st_mtime_ns != stamp
    assert sorted(os.listdir(out / "my_run")) == ["1"]


def test_verify_export_detects_a_different_model(tmp_path):
    model = _network()
    result = export_savedmodel(model, tmp_path, name="a", mean=MEAN, std=STD, verbose=False)
    other = serving_model(_network(), MEAN, STD)  # fresh random weights
    images = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(ExportError, match="differ from the Keras model"):
        verify_export(result.path, other, images)
    check = verify_export(result.path, serving_model(model, MEAN, STD), images)
    assert check["signature"]["input_dtype"] == "uint8"
    assert check["signature"]["input_shape"] == [None, 16, 16, 3]
    assert check["signature"]["keras_loaded"] is False


def test_export_rejects_bad_inputs_without_writing(tmp_path):
    fake = tmp_path / "fake.keras"
    fake.write_text("nope")
    out = tmp_path / "savedmodels"
    with pytest.raises(ValueError, match="not a loadable Keras model"):
        export_savedmodel(fake, out)
    model_file = save_model(_network(), tmp_path / "bare" / "net.keras")
    with pytest.raises(ValueError, match="mean and std"):
        export_savedmodel(model_file, out)
    with pytest.raises(ValueError, match="version"):
        export_savedmodel(model_file, out, version=0, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="3 channels"):
        export_savedmodel(model_file, out, mean=(0.5,), std=(0.5,))
    assert not out.exists()


@pytest.mark.backend
def test_export_from_torch_fails_clearly(tmp_path):
    if keras.backend.backend() != "torch":
        pytest.skip("torch backend only")
    with pytest.raises(ExportError, match="torch_xla.*--backend tensorflow"):
        export_savedmodel(_network(), tmp_path, name="t", mean=MEAN, std=STD, verbose=False)
    assert not any(tmp_path.iterdir())


def test_verify_export_reports_a_failing_child_process(tmp_path):
    with pytest.raises(ExportError, match="separate process failed"):
        verify_export(tmp_path / "missing", serving_model(_network(), MEAN, STD),
                      np.zeros((2, 16, 16, 3), np.uint8))
