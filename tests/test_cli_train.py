"""``swd-keras train``, ``evaluate`` and ``export``: bad inputs and a tiny end-to-end run."""

import json

import numpy as np
import pytest
import swd_keras.cli.commands  # noqa: F401  (registers the sub-commands)
from click.testing import CliRunner
from swd_keras.cli.main import cli

from swd_keras.genotype import CellGenotype, Genotype
from swd_keras.network import build_network, inference_model
from swd_keras.training import save_model

TINY = ["--dataset", "digits", "--epochs", "1", "--batch-size", "32", "--channels", "4",
        "--limit", "64"]


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _error_line(result) -> str:
    """The one 'Error: ...' line of a usage error, checked to be the only error output."""
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_unknown_builtin_genotype(tmp_path):
    result = _run("train", "--genotype", "darts_v9", *TINY, "--output", tmp_path / "run")
    assert result.exit_code == 2
    assert "unknown genotype 'darts_v9'" in _error_line(result)
    assert not (tmp_path / "run").exists()


def test_genotype_file_with_wrong_cell_count_for_layers(tmp_path):
    normal = CellGenotype("normal", (("sep_conv_3x3", 0), ("skip_connect", 1)) * 4)
    reduce = CellGenotype("reduce", (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4)
    path = Genotype((normal, reduce, normal)).save(tmp_path / "three.json")
    result = _run("train", "--genotype", path, *TINY, "--layers", "5",
                  "--output", tmp_path / "run")
    assert result.exit_code == 2
    line = _error_line(result)
    assert "3 cells" in line and "layers=5" in line
    assert not (tmp_path / "run").exists()


def test_resume_refuses_new_settings(tmp_path):
    (tmp_path / "run").mkdir()
    result = _run("train", "--resume", tmp_path / "run", "--epochs", "3")
    assert result.exit_code == 2
    assert "drop --epochs" in _error_line(result)
    result = _run("train", "--resume", tmp_path / "run")
    assert result.exit_code == 2
    assert "not a retraining run folder" in _error_line(result)


def test_model_file_that_is_not_a_model(tmp_path):
    fake = tmp_path / "model.keras"
    fake.write_bytes(b"definitely not a zip archive")
    for command in (["evaluate", fake, "--dataset", "digits"],
                    ["export", fake, "--output-dir", tmp_path / "out"]):
        result = _run(*command)
        assert result.exit_code == 2, result.output
        assert "not a loadable Keras model" in _error_line(result)
    assert not (tmp_path / "out").exists()


def test_export_target_that_exists_needs_overwrite(tmp_path):
    model = build_network("darts_v2", (8, 8, 1), 10, channels=4, layers=5, auxiliary=False)
    model_file = save_model(inference_model(model), tmp_path / "net.keras")
    target = tmp_path / "out" / "net" / "1"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("old")
    result = _run("export", model_file, "--output-dir", tmp_path / "out")
    assert result.exit_code == 2
    assert "already exists" in _error_line(result)
    assert (target / "keep.txt").read_text() == "old"


@pytest.mark.slow
def test_train_evaluate_export_on_digits(tmp_path):
    run = tmp_path / "run"
    result = _run("train", "--genotype", "darts_v2", *TINY, "--layers", "3", "--output", run)
    assert result.exit_code == 0, result.output
    results = json.loads((run / "results.json").read_text())
    assert f"test top-1 accuracy: {100 * results['test_top1']:.2f}%" in result.output
    assert f"parameters: {results['parameters']:,}" in result.output

    result = _run("evaluate", run / "model.keras", "--dataset", "digits", "--limit", "64")
    assert result.exit_code == 0, result.output
    # The same 64 test images as the run's own final test.
    assert f"top-1 accuracy: {100 * results['test_top1']:.2f}% (64 test images)" in result.output
    assert f"parameters: {results['parameters']:,}" in result.output

    out = tmp_path / "savedmodels"
    result = _run("export", run / "model.keras", "--output-dir", out, "--name", "digits",
                  "--version", "2")
    assert result.exit_code == 0, result.output
    assert (out / "digits" / "2" / "saved_model.pb").is_file()
    assert "saved_model_cli show --dir" in result.output
    assert "tensorflow/serving" in result.output
    result = _run("export", run / "model.keras", "--output-dir", out, "--name", "digits",
                  "--version", "2")
    assert result.exit_code == 2 and "already exists" in _error_line(result)
    result = _run("export", run / "model.keras", "--output-dir", out, "--name", "digits",
                  "--version", "2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert np.isfinite(results["test_top1"])


@pytest.mark.slow
def test_show_params_prints_the_published_counts(tmp_path):
    result = _run("show", "darts_v2", "--params", "--output", tmp_path / "darts.png")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # The authors' PyTorch counts (see test_network.PUBLISHED_COUNTS).
    assert "    CIFAR-10, C=36, 20 cells: 3,349,342" in lines
    assert "    ImageNet, C=48, 14 cells (DARTS' mobile setting): 4,718,752" in lines
