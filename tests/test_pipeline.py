"""``swd-keras run`` / ``run_pipeline``: defaults, bad inputs, and a tiny digits run that is
killed in two stages, resumed, served, and skipped once finished."""

import json
import re

import keras
import numpy as np
import pytest
import swd_keras.cli.commands  # noqa: F401  (registers the sub-commands)
import tensorflow as tf
from click.testing import CliRunner
from swd_keras.cli.main import cli

import swd_keras.pipeline as pipeline
from swd_keras.data import train_data
from swd_keras.genotype import Genotype
from swd_keras.pipeline import PipelineConfig, pipeline_config, run_pipeline
from swd_keras.runs import completed_epochs
from tests.test_search import SMALL_OPS

# Two search cells (normal, reduce: DARTS' pair) retrained as three cells, tiny everything.
# Four candidate ops (a conv, a skip, a pool, none): the pipeline's stages do not depend
# on which, and the search's tracing grows with their number.
TINY_SEARCH = {"epochs": 2, "channels": 8, "layers": 2, "batch_size": 16, "limit": 32,
               "primitives": SMALL_OPS}
TINY_RETRAIN = {"epochs": 2, "channels": 4, "layers": 3, "batch_size": 16, "limit": 32}
# The same settings as flags (--limit sets both stages' limit).
TINY_FLAGS = ["--dataset", "digits", "--search-epochs", "2", "--search-channels", "8",
              "--search-layers", "2", "--search-batch-size", "16", "--train-epochs", "2",
              "--train-channels", "4", "--train-layers", "3", "--train-batch-size", "16",
              "--limit", "32", "--primitives", ",".join(SMALL_OPS)]


def _run(*args, catch_exceptions=True):
    return CliRunner().invoke(cli, ["run", *map(str, args)], catch_exceptions=catch_exceptions)


def _error_line(result) -> str:
    """The one 'Error: ...' line of a usage error, checked to be the only error output."""
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_defaults_are_the_papers_except_on_the_small_sets():
    cifar = pipeline_config("cifar100")
    # SPEC §1-5: search 30 epochs of a 5-cell C=16 supernet at batch 64; retrain 600 epochs
    # of 20 cells, C=36, batch 96, lr 0.025.
    assert (cifar.search.epochs, cifar.search.layers, cifar.search.channels,
            cifar.search.batch_size) == (30, 5, 16, 64)
    assert (cifar.retrain.epochs, cifar.retrain.layers, cifar.retrain.channels,
            cifar.retrain.batch_size, cifar.retrain.learning_rate) == (600, 20, 36, 96, 0.025)
    assert cifar.retrain.genotype == "search/genotype.json" and cifar.name == "swd_nas_cifar100"

    digits = pipeline_config("digits", seed=3, retrain={"epochs": 7})
    assert (digits.search.epochs, digits.search.layers, digits.search.channels) == (8, 5, 16)
    assert (digits.retrain.epochs, digits.retrain.layers, digits.retrain.channels,
            digits.retrain.batch_size) == (7, 8, 16, 64)
    assert digits.search.seed == digits.retrain.seed == 3
    assert digits.retrain.dataset == "digits"
    # The stored form gives back the same settings.
    assert PipelineConfig.from_json(json.loads(json.dumps(digits.to_json()))) == digits


@pytest.mark.parametrize("kwargs, message", [
    (dict(retrain={"genotype": "darts_v2"}), "retrain['genotype'] is set by the pipeline"),
    (dict(search={"epoch": 3}), "search['epoch'] is not a SearchConfig field"),
    (dict(search={"layers": 4}, retrain={"layers": 8}), "cannot be retrained as 8 layers"),
    (dict(name="a/b"), "name must be a plain folder name"),
])
def test_bad_python_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pipeline_config("digits", **kwargs)


def test_bad_inputs_are_one_line_and_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    cases = [
        ([], "--dataset is required"),
        (["--dataset", "mnist"], "'mnist' is not one of"),
        # 4 search cells (reductions at 1 and 2) do not stack into 8 retrain cells.
        (["--dataset", "digits", "--search-layers", "4", "--train-layers", "8"],
         "the search's 4 cells cannot be retrained as 8 layers"),
        (["--dataset", "digits", "--search-channels", "6"], "k=4 must divide"),
        (["--dataset", "digits", "--search-channels", "4"], "reduction edges need at least 2"),
        (["--resume", tmp_path], "is not a pipeline run folder"),
        (["--resume", tmp_path, "--train-epochs", "3"], "drop --train-epochs"),
        (["--resume", tmp_path, "--format", "onnx"], "drop --format"),
        (["--dataset", "digits", "--format", "saved_model,pdf"],
         "'pdf': choose from saved_model, onnx, tflite"),
    ]
    for args, message in cases:
        output = [] if "--resume" in args else ["--output", run_dir]
        result = _run(*args, *output)
        assert result.exit_code == 2, (args, result.output)
        assert message in _error_line(result), (args, result.output)
        assert not run_dir.exists()

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    for extra in ([], ["--overwrite"]):
        result = _run(*TINY_FLAGS, "--output", other, *extra)
        assert result.exit_code == 2
        assert "is not a pipeline run folder" in _error_line(result)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_a_backend_the_export_cannot_use_is_refused_before_the_search(tmp_path, monkeypatch):
    import swd_keras.export as export

    monkeypatch.setattr(export.keras.backend, "backend", lambda: "torch")
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="^the export stage cannot run here: .*torch_xla"):
        run_pipeline(pipeline_config("digits"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


class _Interrupt(keras.callbacks.Callback):
    """Kills a retraining right after its first epoch's checkpoint."""

    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


def _served_correct(path, limit: int) -> tuple[int, int]:
    """Correct predictions of the SavedModel on digits' first ``limit`` test images, sent
    as raw 0..16 pixels (the normalised test batches mapped back to what sklearn stores)."""
    data = train_data("digits", 1, limit=limit)
    mean, std = np.asarray(data.info.mean), np.asarray(data.info.std)
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    correct = examples = 0
    for images, labels in data.test_dataset(8).as_numpy_iterator():
        raw = np.rint((images * std + mean) * 16.0).astype(np.uint8)
        predicted = serve(images=tf.constant(raw))["predicted_class"].numpy()
        correct += int((predicted == labels.reshape(-1)).sum())
        examples += len(labels)
    return correct, examples


def _stamps(paths):
    return {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in paths}


@pytest.mark.slow
def test_digits_pipeline_killed_resumed_served_and_skipped(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    config = pipeline_config("digits", search=TINY_SEARCH, retrain=TINY_RETRAIN,
                             formats=("onnx", "saved_model"))
    assert config.formats == ("saved_model", "onnx")  # FORMATS' order: the SavedModel first

    # 1. Killed in the search, after its first epoch's checkpoint.
    def kill_after_first_search_epoch(line):
        if line.startswith("epoch 1:"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, run_dir, echo=kill_after_first_search_epoch, verbose=0)
    assert json.loads((run_dir / "pipeline.json").read_text())["finished"] == {}
    assert len((run_dir / "search" / "genotypes.jsonl").read_text().splitlines()) == 1

    # 2. Resumed: the search continues from epoch 1; killed in the retraining's epoch 1.
    fit_network = pipeline.fit_network
    monkeypatch.setattr(pipeline, "fit_network",
                        lambda *a, **k: fit_network(*a, **k, callbacks=[_Interrupt()]))
    lines = []
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(run_dir=run_dir, resume=True, echo=lines.append, verbose=0)
    monkeypatch.undo()
    assert "== stage 1/3: search (resumed from its last checkpoint), " + str(
        run_dir / "search") in lines
    assert "      resumed after epoch 1" in lines
    epochs = [json.loads(line)["epoch"]
              for line in (run_dir / "search" / "genotypes.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    state = json.loads((run_dir / "pipeline.json").read_text())
    assert list(state["finished"]) == ["search"] and state["finished"]["search"]["epochs"] == 2
    assert completed_epochs(run_dir / "train") == 1
    assert not (run_dir / "train" / "model.keras").exists()

    # 3. The command resumes the retraining after epoch 1, then exports and verifies.
    result = _run("--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert "finished before, skipped: search" in result.output
    assert "== stage 2/3: retrain (resumed after epoch 1 of 2)" in result.output
    history = (run_dir / "train" / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["1", "2"]
    results = json.loads((run_dir / "train" / "results.json").read_text())
    assert f"test top-1 accuracy: {100 * results['test_top1']:.2f}%" in result.output
    state = json.loads((run_dir / "pipeline.json").read_text())
    assert list(state["finished"]) == ["search", "train", "export"]
    export = state["finished"]["export"]
    assert export["path"] == "savedmodels/swd_nas_digits/1" and export["verified"] is True
    assert export["max_abs_diff"] <= 1e-4 and export["batch_sizes"] == [1, 4]
    saved = run_dir / export["path"]
    assert (saved / "saved_model.pb").is_file() and (saved / "model.onnx").is_file()
    assert export["formats"] == ["saved_model", "onnx"]
    assert "saved_model, onnx: each served from a separate Python process" in result.output
    assert f"export:     {saved} (saved_model, onnx, verified)" in result.output
    assert "tensorflow/serving" in result.output
    # The served model, fed raw pixels, scores the retraining's own test accuracy.
    correct, examples = _served_correct(saved, TINY_RETRAIN["limit"])
    assert examples == results["test_examples"] == 32
    assert correct == round(results["test_top1"] * examples)
    # The retrained genotype is the searched one.
    searched = Genotype.load(run_dir / "search" / "genotype.json")
    trained = json.loads((run_dir / "train" / "config.json").read_text())["genotype"]
    assert Genotype.from_dict(trained) == searched

    # 4. Finished: --resume, and the original command on the same folder, skip every stage
    # and rewrite nothing.
    outputs = [run_dir / "pipeline.json", run_dir / "search" / "genotype.json",
               run_dir / "search" / "checkpoint.npz", run_dir / "train" / "model.keras",
               run_dir / "train" / "results.json", saved / "saved_model.pb"]
    before = _stamps(outputs)
    same = [*TINY_FLAGS, "--format", "onnx,saved_model"]
    for args in (["--resume", run_dir], [*same, "--output", run_dir]):
        result = _run(*args)
        assert result.exit_code == 0, result.output
        assert "finished before, skipped: search, train, export" in result.output
        assert "== stage" not in result.output
        assert _stamps(outputs) == before
    # Other settings on the same folder are refused.
    result = _run(*same, "--train-epochs", "3", "--output", run_dir)
    assert result.exit_code == 2
    assert "other settings (retrain.epochs: 2 -> 3" in _error_line(result)
    assert _stamps(outputs) == before
