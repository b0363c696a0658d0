"""The run-folder layer: configs, checkpoints keyed by variable path, divergence, and the
resume rule (same job, same backend, this version's checkpoint), through the Python API
and the CLI."""

import dataclasses
import json
import math
import re

import keras
import numpy as np
import pytest
import swd_keras.cli.commands  # noqa: F401  (registers the sub-commands)
from click.testing import CliRunner
from swd_keras.cli.main import cli

from swd_keras.data import DatasetUnavailableError
from swd_keras.optimizers import TorchSGD
from swd_keras.runs import (
    CHECKPOINT_FILE,
    RunCallback,
    checkpoint_state,
    is_run_folder,
    load_checkpoint,
    non_finite,
    read_run,
    save_checkpoint,
    start_run,
    write_history,
)
from swd_keras.search_job import SearchConfig, run_search
from swd_keras.training import RetrainConfig, fit_network

# ------------------------------------------------------------------------- checkpoints


def _model(order=("a", "b"), units=3):
    """Two named Dense branches created in ``order``: the same variable paths, listed in
    another order when ``order`` is reversed."""
    inputs = keras.Input((2,))
    layers = {name: keras.layers.Dense(units if name == "b" else 2, name=name) for name in order}
    model = keras.Model(inputs, [layers[name](inputs) for name in order])
    model.compile(optimizer=TorchSGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _values(variables):
    return {v.path: keras.ops.convert_to_numpy(v) for v in variables}


@pytest.mark.backend
def test_a_checkpoint_restores_by_variable_path_whatever_the_order(tmp_path):
    source = _model(("a", "b"))
    rng = np.random.default_rng(0)
    for variable in [*source.variables, *source.optimizer.variables]:
        variable.assign(rng.normal(size=variable.shape).astype(variable.dtype))
    path = save_checkpoint(tmp_path / CHECKPOINT_FILE, source, {"epoch": 3, "history": []})
    with np.load(path) as data:
        assert sorted(data.files) == sorted(
            ["state", *(f"model/{v.path}" for v in source.variables),
             *(f"optimizer/{v.path}" for v in source.optimizer.variables)])

    target = _model(("b", "a"))
    assert [v.path for v in target.variables] != [v.path for v in source.variables]
    assert load_checkpoint(path, target) == {"epoch": 3, "history": []}
    for got, want in ((target.variables, source.variables),
                      (target.optimizer.variables, source.optimizer.variables)):
        want_values = _values(want)
        for path_, value in _values(got).items():
            np.testing.assert_array_equal(value, want_values[path_])
    assert checkpoint_state(tmp_path) == {"epoch": 3, "history": []}


@pytest.mark.backend
def test_a_checkpoint_of_another_model_is_refused_without_assigning(tmp_path):
    path = save_checkpoint(tmp_path / CHECKPOINT_FILE, _model(), {"epoch": 1})
    wider = _model(units=4)
    before = _values(wider.variables)
    with pytest.raises(ValueError, match=r"does not match this model: model/b/kernel has shape "
                                         r"\(2, 3\) there, \(2, 4\) here"):
        load_checkpoint(path, wider)
    assert all(np.array_equal(before[k], v) for k, v in _values(wider.variables).items())

    inputs = keras.Input((2,))
    other = keras.Model(inputs, keras.layers.Dense(2, name="c")(inputs))
    other.compile(optimizer=TorchSGD(0.1, momentum=0.9), loss="mse")
    other.optimizer.build(other.trainable_variables)
    with pytest.raises(ValueError, match=r"4 of its variables are not in the checkpoint "
                                         r"\(e\.g\. model/c/bias, model/c/kernel\), 8 stored"):
        load_checkpoint(path, other)


def _write_index_keyed_checkpoint(path):
    np.savez(path, state=np.array(json.dumps({"epoch": 1})), model_0=np.zeros(2))


def test_a_checkpoint_keyed_by_index_predates_this_version(tmp_path):
    _write_index_keyed_checkpoint(tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="earlier swd-keras version .* keyed by variable index"):
        load_checkpoint(tmp_path / CHECKPOINT_FILE, _model())


# -------------------------------------------------------------- configs, history, NaN


def test_configs_are_frozen_validated_and_round_trip_through_json():
    config = SearchConfig(channels=8, layers=2, k=2)
    assert SearchConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(AttributeError):
        config.epochs = 3
    with pytest.raises(ValueError, match="k=3 must divide"):
        SearchConfig(channels=8, k=3)
    retrain = RetrainConfig("darts_v2", "digits", epochs=3)
    assert RetrainConfig.from_json({**retrain.to_json(), "removed_field": 1}) == retrain
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        RetrainConfig.from_json({**retrain.to_json(), "epochs": 0})


def test_history_and_the_divergence_check(tmp_path):
    write_history(tmp_path, [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "lr": 0.1}])
    assert (tmp_path / "history.csv").read_text() == "epoch,loss,lr\n1,0.5,\n2,0.25,0.1\n"
    assert non_finite({"loss": 1.0, "accuracy": 0.5}) is None
    assert non_finite({"loss": 1.0, "accuracy": math.nan}) == "accuracy became nan"
    assert non_finite({"loss": -math.inf}) == "loss became -inf"


class _FakeModel:
    stop_training = False


def test_a_diverged_epoch_writes_nothing_and_names_the_kept_checkpoint(tmp_path):
    state = {"epoch": 0, "history": []}
    callback = RunCallback(tmp_path, state)
    callback.set_model(_FakeModel())
    callback.on_epoch_end(0, {"loss": math.inf})
    assert callback.model.stop_training and state == {"epoch": 0, "history": []}
    assert not list(tmp_path.iterdir())
    assert str(callback.error("lower the rate")) == (
        "the training loss became inf in epoch 1; stopped; no epoch completed, so there is "
        "no checkpoint; lower the rate.")


# ------------------------------------------------------------------------- the resume rule

SEARCH = SearchConfig(dataset="digits", epochs=2, channels=4, layers=2, k=2, batch_size=8,
                      limit=16)
RETRAIN = RetrainConfig("darts_v2", "digits", epochs=2, batch_size=8, channels=4, layers=3,
                        limit=16)


def _started_on_tensorflow(run_dir, kind):
    """A run folder as a job writes it on TensorFlow before its first epoch."""
    assert keras.backend.backend() == "tensorflow"
    if kind == "search":
        return start_run(run_dir, "search", SEARCH)
    return start_run(run_dir, "retrain", RETRAIN, genotype={}, head="cifar")


def _stamps(run_dir):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*")}


needs_tensorflow = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                      reason="the runs are started on TensorFlow")


@needs_tensorflow
@pytest.mark.parametrize("kind", ["search", "retrain"])
def test_resuming_a_tensorflow_run_under_jax_is_refused(tmp_path, monkeypatch, kind):
    run_dir = tmp_path / "run"
    record = _started_on_tensorflow(run_dir, kind)
    assert read_run(run_dir, kind) == record and record["backend"] == "tensorflow"
    before = _stamps(run_dir)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    message = f"{run_dir} was started on the tensorflow backend, not jax: resume it there " \
              f"(--backend tensorflow)."

    with pytest.raises(ValueError) as error:
        if kind == "search":
            run_search(run_dir=run_dir, resume=True, echo=lambda line: None)
        else:
            fit_network(run_dir, resume=True)
    assert str(error.value) == message

    command = "search" if kind == "search" else "train"
    result = CliRunner().invoke(cli, [command, "--resume", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error:")] == [
        f"Error: {message}"]
    assert "Traceback" not in result.output
    assert _stamps(run_dir) == before, "a refused resume writes nothing"


@needs_tensorflow
@pytest.mark.parametrize("kind", ["search", "retrain"])
def test_a_run_folder_of_an_earlier_version_is_refused_in_one_line(tmp_path, kind):
    run_dir = tmp_path / "run"
    _started_on_tensorflow(run_dir, kind)
    if kind == "search":
        _write_index_keyed_checkpoint(run_dir / CHECKPOINT_FILE)
    else:  # the retraining kept checkpoints/epoch_NNNN.npz
        (run_dir / "checkpoints").mkdir()
        _write_index_keyed_checkpoint(run_dir / "checkpoints" / "epoch_0001.npz")
    command = "search" if kind == "search" else "train"
    result = CliRunner().invoke(cli, [command, "--resume", str(run_dir)])
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "earlier swd-keras version" in line and "start a new run" in line

    # A search folder from before the run record (a bare config) says the same.
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"dataset": "digits", "backend": None}))
    with pytest.raises(ValueError, match="earlier swd-keras version"):
        run_search(run_dir=old, resume=True, echo=lambda line: None)


# ------------------------------------------------------------ what makes a run folder

def _quiet(line):
    pass


def _invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def _error_line(result) -> str:
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


@pytest.mark.parametrize("kind", ["search", "retrain", "pipeline"])
def test_a_run_whose_data_cannot_load_leaves_no_folder(tmp_path, monkeypatch, kind):
    from swd_keras.data.sources import tfds as tfds_source
    from swd_keras.pipeline import pipeline_config, run_pipeline

    monkeypatch.setattr(tfds_source, "can_reach", lambda *a, **k: False)  # no downloads
    empty, run_dir = tmp_path / "tfds", tmp_path / "run"
    empty.mkdir()
    with pytest.raises(DatasetUnavailableError, match="cifar10"):
        if kind == "search":
            run_search(dataclasses.replace(SEARCH, dataset="cifar10", data_dir=str(empty)),
                       run_dir, echo=_quiet)
        elif kind == "retrain":
            fit_network(run_dir, dataclasses.replace(RETRAIN, dataset="cifar10"),
                        data_dir=str(empty))
        else:
            run_pipeline(pipeline_config("cifar10", data_dir=str(empty)), run_dir, echo=_quiet)
    assert not run_dir.exists()

    command = {"search": ["search"], "retrain": ["train", "--genotype", "darts_v2"],
               "pipeline": ["run"]}[kind]
    result = _invoke(*command, "--dataset", "cifar10", "--data-dir", empty, "--output", run_dir)
    assert result.exit_code == 2, result.output
    assert "cifar10" in _error_line(result) and "Traceback" not in result.output
    assert not run_dir.exists()


@needs_tensorflow
@pytest.mark.parametrize("kind", ["search", "retrain"])
def test_an_incomplete_record_is_neither_resumed_nor_written_over(tmp_path, kind):
    complete = _started_on_tensorflow(tmp_path / "complete", kind)
    assert is_run_folder(tmp_path / "complete", kind) and is_run_folder(tmp_path / "complete")
    name, command = ("search", "search") if kind == "search" else ("retraining", "train")
    partial = {**complete, "config": {key: value for key, value in complete["config"].items()
                                      if key != "epochs"}}
    new_run = (["search", "--dataset", "digits"] if kind == "search" else
               ["train", "--genotype", "darts_v2", "--dataset", "digits"])
    everything = "format, backend, config" + ("" if kind == "search" else ", genotype")
    for label, record, missing in [("empty", {}, everything),
                                   ("partial", partial, "config.epochs")]:
        run_dir = tmp_path / label
        run_dir.mkdir()
        (run_dir / "config.json").write_text(json.dumps(record))
        before = _stamps(run_dir)
        refusal = re.escape(f"{run_dir / 'config.json'} is not a complete {name} run record: "
                            f"it has no {missing}.")
        assert not is_run_folder(run_dir, kind) and not is_run_folder(run_dir), label

        with pytest.raises(ValueError, match=refusal):  # not resumed at the defaults
            if kind == "search":
                run_search(run_dir=run_dir, resume=True, echo=_quiet)
            else:
                fit_network(run_dir, resume=True)
        with pytest.raises(ValueError, match="holds no complete run to resume"):
            if kind == "search":
                run_search(SEARCH, run_dir, echo=_quiet)
            else:
                fit_network(run_dir, RETRAIN)

        result = _invoke(command, "--resume", run_dir)
        assert result.exit_code == 2 and re.search(refusal, _error_line(result)), result.output
        result = _invoke(*new_run, "--output", run_dir)
        assert result.exit_code == 2, result.output
        assert "holds no complete run to resume" in _error_line(result)
        assert _stamps(run_dir) == before, f"{label}: a refused run writes nothing"
