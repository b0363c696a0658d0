"""`swd-keras search` end to end: outputs, resume, data paths, bad inputs."""

import json
import math
import shutil
import time

import pytest
import tensorflow_datasets as tfds
from click.testing import CliRunner
from swd_keras.cli.main import cli

from swd_keras.genotype import Genotype
from swd_keras.search_job import SearchConfig, SearchRunCallback, load_config

TINY = ["--epochs", "2", "--layers", "2", "--channels", "4", "--k", "2", "--batch-size", "8",
        "--limit", "16"]


def invoke(*args):
    from swd_keras.cli.commands import search  # noqa: F401  (registers the command)

    return CliRunner().invoke(cli, ["search", *args], catch_exceptions=False)


@pytest.mark.slow
def test_digits_search_writes_a_run_folder_and_resumes_identically(tmp_path, monkeypatch):
    unbroken, killed = tmp_path / "unbroken", tmp_path / "killed"
    on_epoch_end = SearchRunCallback.on_epoch_end

    def copy_after_first_epoch(self, epoch, logs=None):
        # The folder as a kill right after epoch 1's checkpoint leaves it.
        on_epoch_end(self, epoch, logs)
        if epoch == 0:
            shutil.copytree(self.run_dir, killed)

    monkeypatch.setattr(SearchRunCallback, "on_epoch_end", copy_after_first_epoch)
    result = invoke("--dataset", "digits", *TINY, "--output", str(unbroken))
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    files = {p.name for p in unbroken.iterdir()}
    assert {"config.json", "genotype.json", "genotype.png", "genotypes.jsonl", "history.csv",
            "checkpoint.npz", "logs"} <= files
    genotype = Genotype.load(unbroken / "genotype.json")
    assert [c.type for c in genotype.cells] == ["normal", "reduce"]
    lines = (unbroken / "genotypes.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert "collapse report" in result.output and "parameter-free" in result.output
    assert result.output.count("first step done after") == 1  # start-up shown once
    history = (unbroken / "history.csv").read_text().splitlines()
    assert history[0].split(",")[:1] == ["epoch"] and len(history) == 3

    # The run killed right after its first epoch's checkpoint, resumed.
    assert len((killed / "genotypes.jsonl").read_text().splitlines()) == 1
    result = invoke("--resume", str(killed))
    assert result.exit_code == 0, result.output
    assert "resumed after epoch 1" in result.output
    assert Genotype.load(killed / "genotype.json") == genotype
    assert (killed / "genotypes.jsonl").read_text() == (unbroken / "genotypes.jsonl").read_text()


@pytest.mark.slow
def test_cifar100_runs_the_tfds_code_path_with_mock_data(tmp_path, monkeypatch):
    from swd_keras.data.sources import tfds as tfds_source

    # Under mock_data tfds' download is a no-op; let the network check pass.
    monkeypatch.setattr(tfds_source, "can_reach", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=64):
        result = invoke("--dataset", "cifar100", "--data-dir", str(tmp_path / "tfds"),
                        "--epochs", "1", "--layers", "1", "--channels", "4", "--k", "2",
                        "--batch-size", "8", "--limit", "16", "--output", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "16 search-train / 16 search-val images, 2 steps per epoch" in result.output
    assert "images (32, 32, 3), 100 classes" in result.output
    assert "(1 cells, C=4, k=2" in result.output
    genotype = Genotype.load(tmp_path / "run" / "genotype.json")
    assert genotype.num_cells == 1


def test_unavailable_dataset_is_one_line_within_seconds(tmp_path, monkeypatch):
    from swd_keras.data.sources import tfds as tfds_source

    monkeypatch.setattr(tfds_source, "can_reach", lambda *a, **k: False)
    started = time.time()
    result = invoke("--dataset", "cifar100", "--data-dir", str(tmp_path / "empty"),
                    "--output", str(tmp_path / "run"))
    assert time.time() - started < 30
    assert result.exit_code == 2
    message = result.output.strip().splitlines()[-1]
    assert "cifar100" in message and "--data-dir" in message


@pytest.mark.parametrize("args,needle", [
    (["--dataset", "mnist"], "Invalid value for '--dataset'"),
    (["--dataset", "digits", "--k", "3", "--channels", "16"], "k=3 must divide"),
    (["--dataset", "digits", "--epochs", "-1"], "Invalid value for '--epochs'"),
    (["--resume", "."], "is not a search run folder"),
])
def test_bad_inputs_are_one_clear_line(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output


def test_a_new_run_refuses_an_existing_run_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SearchConfig().to_json()))
    result = invoke("--dataset", "digits", "--output", str(tmp_path))
    assert result.exit_code == 2 and "already exists and is not empty" in result.output


class _FakeModel:
    stop_training = False

    def genotype(self, normalize=True):
        raise AssertionError("no genotype may be derived from a diverged epoch")


def test_a_non_finite_loss_stops_without_touching_the_checkpoint(tmp_path):
    state = {"epoch": 1, "history": [], "genotypes": []}
    callback = SearchRunCallback(tmp_path, SearchConfig(), state, echo=lambda line: None)
    callback.set_model(_FakeModel())
    callback.on_train_batch_end(3, {"loss": math.nan})
    assert callback.model.stop_training and "nan" in callback.diverged
    callback.on_epoch_end(1, {"loss": math.inf})
    assert state["epoch"] == 1 and not list(tmp_path.iterdir())


USER_PRIMITIVES = '''
import keras
from keras import ops

from swd_keras.ops import register_primitive


@keras.saving.register_keras_serializable(package="cli_user_ops")
class ScaledIdentity(keras.layers.Layer):
    """A parameter-free op: half the input, subsampled at stride 2."""

    def __init__(self, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.strides = strides

    def call(self, x, training=None):
        return 0.5 * x[:, ::self.strides, ::self.strides, :]

    def compute_output_shape(self, shape):
        return (shape[0], -(-shape[1] // self.strides), -(-shape[2] // self.strides), shape[3])

    def get_config(self):
        return {**super().get_config(), "strides": self.strides}


register_primitive("half_identity", lambda channels, strides, affine, **kw:
                   ScaledIdentity(strides, **kw), parameter_free=True)
'''


@pytest.mark.slow
def test_search_with_a_users_primitives_module(tmp_path):
    module = tmp_path / "cli_user_ops.py"
    module.write_text(USER_PRIMITIVES)
    run = tmp_path / "run"
    primitives = "sep_conv_3x3,half_identity,max_pool_3x3,none"
    result = invoke("--dataset", "synthetic", *TINY, "--epochs", "1", "--output", str(run),
                    "--primitives", primitives, "--primitives-module", str(module))
    assert result.exit_code == 0, result.output
    config = load_config(run)
    assert config.primitives == tuple(primitives.split(","))
    assert config.primitives_module == str(module)
    used = {op for cell in Genotype.load(run / "genotype.json").cells for op, _ in cell.edges}
    assert used <= {"sep_conv_3x3", "half_identity", "max_pool_3x3"}
    weights = [json.loads(line) for line in (run / "genotypes.jsonl").read_text().splitlines()]
    assert len(weights) == 1


def test_unknown_primitives_are_refused_in_one_line_and_write_nothing(tmp_path):
    from swd_keras.cli.commands import export, search, train  # noqa: F401  (registers the commands)

    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--dataset", "synthetic", "--output", str(run),
                                      "--primitives", "sep_conv_3x3,bogus_op"])
    assert result.exit_code == 2
    assert "bogus_op" in result.output and "sep_conv_3x3" in result.output
    result = CliRunner().invoke(cli, ["search", "--dataset", "synthetic", "--output", str(run),
                                      "--primitives-module", str(tmp_path / "missing.py")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not run.exists()

    for command in (["train", "--genotype", "darts_v2", "--dataset", "digits"],
                    ["evaluate", "m.keras", "--dataset", "digits"],
                    ["export", "m.keras"]):
        result = CliRunner().invoke(cli, [*command, "--primitives-module", "no_such_ops_module"])
        assert result.exit_code == 2 and "no_such_ops_module" in result.output, command
