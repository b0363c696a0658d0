"""Tuning with KerasTuner (swd_keras.tuning, ``swd-keras tune``): spaces, hypermodels,
oracles, a two-trial project interrupted and resumed, and bad input."""

from __future__ import annotations

import json
import re
import socket

import keras
import keras_tuner
import numpy as np
import pytest
import swd_keras.cli.commands  # noqa: F401  (registers the sub-commands)
from click.testing import CliRunner
from swd_keras.cli.commands.tune import parse_range
from swd_keras.cli.main import cli

from swd_keras.data import train_data
from swd_keras.network import load_network
from swd_keras.tuning import (
    RetrainHyperModel,
    SearchHyperModel,
    SearchSpace,
    SWDTuner,
    make_oracle,
    summary_table,
)
from swd_keras.tuning.hypermodels import SEARCH_SETTINGS

# A trial small enough for CI: one epoch of a 2-cell supernet over four candidate ops,
# then one epoch of a 3-cell network.
TINY_SEARCH = {"epochs": 1, "channels": 4, "layers": 2, "batch_size": 8, "limit": 16,
               "jit": False,
               "primitives": ("skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3")}
TINY_RETRAIN = {"epochs": 1, "channels": 4, "layers": 3, "batch_size": 8, "limit": 16,
                "auxiliary": False}


def _tune(*args):
    return CliRunner().invoke(cli, ["tune", *map(str, args)])


# -- spaces -----------------------------------------------------------------------------

def test_a_space_declares_each_kind_of_range():
    space = SearchSpace({"k": [2, 4, 8], "lr": {"min": 0.001, "max": 0.1, "sampling": "log"},
                         "channels": {"min": 8, "max": 24, "step": 8}, "mode": "joint",
                         "upper_attention": [True, False]}, allowed=SEARCH_SETTINGS)
    hp = keras_tuner.HyperParameters()
    values = space.declare(hp)
    kinds = {item.name: type(item).__name__ for item in hp.space}
    assert kinds == {"k": "Choice", "lr": "Float", "channels": "Int", "mode": "Fixed",
                     "upper_attention": "Choice"}
    assert values == {"k": 2, "lr": 0.001, "channels": 8, "mode": "joint",
                      "upper_attention": True}
    # Every value of the choices and the ints, the float's bounds: 3 * 2 * 3 * 1 * 2.
    candidates = list(space.candidates())
    assert len(candidates) == 36
    assert {c["channels"] for c in candidates} == {8, 16, 24}
    assert {c["lr"] for c in candidates} == {0.001, 0.1}


def test_space_files_in_json_and_yaml_are_the_same_space(tmp_path):
    ranges = {"k": [2, 4], "arch_lr": {"min": 0.0001, "max": 0.01, "sampling": "log"}}
    (tmp_path / "space.json").write_text(json.dumps(ranges))
    (tmp_path / "space.yaml").write_text("k: [2, 4]\narch_lr: {min: 0.0001, max: 0.01, "
                                         "sampling: log}\n")
    spaces = [SearchSpace.from_file(tmp_path / name, SEARCH_SETTINGS).to_json()
              for name in ("space.json", "space.yaml")]
    assert spaces[0] == spaces[1] == ranges


@pytest.mark.parametrize("ranges, message", [
    ({"kk": [2]}, "unknown hyperparameter 'kk'; allowed: k, lr"),
    ({"k": []}, "'k' has an empty range"),
    ({"lr": {"min": 0.1, "max": 0.01}}, "'lr' has an empty range"),
    ({"lr": {"min": 0.0, "max": 0.1, "sampling": "log"}}, "needs min > 0"),
    ({"lr": {"min": 0.01, "max": 0.1, "sampling": "cubic"}}, "sampling must be one of"),
    ({"mode": ["joint", 3]}, "mixes kinds"),
    ({"k": [2, 2]}, "repeats a value"),
    ({"k": {"low": 1}}, "bounds take min, max"),
])
def test_bad_spaces_name_the_setting(ranges, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(ranges, allowed=SEARCH_SETTINGS)


@pytest.mark.parametrize("text, expected", [
    ("k=2,4,8", ("k", [2, 4, 8])),
    ("arch_lr=0.0001..0.01:log", ("arch_lr", {"min": 0.0001, "max": 0.01, "sampling": "log"})),
    ("channels=8..32:step=8", ("channels", {"min": 8, "max": 32, "step": 8})),
    ("mode=joint", ("mode", "joint")),
    ("upper_attention=true,false", ("upper_attention", [True, False])),
])
def test_hp_flags_parse_into_a_space_file_s_form(text, expected):
    assert parse_range(text) == expected


# -- hypermodels and oracles --------------------------------------------------------------

def test_the_search_hypermodel_maps_values_onto_both_stages():
    hypermodel = SearchHyperModel("digits", {"k": [2, 4], "seed": [3], "retrain.channels": [8]},
                                  search={"epochs": 2}, retrain={"epochs": 3},
                                  validation=0.2,
                                  variants={"plain": {}, "no UA": {"upper_attention": False}})
    config = hypermodel.config({"k": 4, "seed": 3, "retrain.channels": 8, "variant": "no UA"})
    assert (config.search.k, config.search.epochs, config.search.upper_attention) == (4, 2, False)
    assert (config.retrain.channels, config.retrain.epochs) == (8, 3)
    assert config.search.seed == config.retrain.seed == 3
    assert config.search.validation == config.retrain.validation == 0.2
    assert config.formats == ()  # a trial exports nothing
    # KerasTuner's own hyperparameters drive build; Hyperband's budget is the retraining's.
    hp = keras_tuner.HyperParameters()
    hp.values["tuner/epochs"] = 7
    built = hypermodel.build(hp)
    assert built.retrain.epochs == 7 and built.search.k == 2
    assert {item.name for item in hp.space} == {"k", "seed", "retrain.channels", "variant"}


def test_the_retrain_hypermodel_tunes_one_genotype_s_network():
    hypermodel = RetrainHyperModel("darts_v2", "digits", {"channels": [8, 12],
                                                          "drop_path": [0.0, 0.3]},
                                   retrain={"epochs": 4})
    config = hypermodel.config({"channels": 12, "drop_path": 0.3})
    assert (config.genotype, config.channels, config.drop_path, config.epochs) == \
        ("darts_v2", 12, 0.3, 4)
    assert config.layers == 8 and config.validation == 0.1  # digits' pipeline size
    with pytest.raises(ValueError, match="unknown hyperparameter 'k'"):
        RetrainHyperModel("darts_v2", "digits", {"k": [2]})


def test_values_that_break_the_search_s_rules_are_refused_before_any_trial():
    with pytest.raises(ValueError, match=r"space: k=3, channels=16: k=3 must divide"):
        SearchHyperModel("digits", {"k": [4, 3], "channels": [16]})
    with pytest.raises(ValueError, match="space: channels=6: k=4 must divide"):
        SearchHyperModel("digits", {"channels": {"min": 6, "max": 8, "step": 2}})


@pytest.mark.parametrize("name, oracle_class", [
    ("random", keras_tuner.oracles.RandomSearchOracle),
    ("bayesian", keras_tuner.oracles.BayesianOptimizationOracle),
    ("hyperband", keras_tuner.oracles.HyperbandOracle),
    ("grid", keras_tuner.oracles.GridSearchOracle),
])
def test_every_keras_tuner_oracle_maximises_the_validation_accuracy(name, oracle_class):
    oracle = make_oracle(name, max_trials=6)
    assert isinstance(oracle, oracle_class)
    assert (oracle.objective.name, oracle.objective.direction) == ("val_accuracy", "max")
    with pytest.raises(ValueError, match="oracle must be one of random, bayesian"):
        make_oracle("annealing", 3)


# -- a project, interrupted and resumed ----------------------------------------------------

class _Stop(KeyboardInterrupt):
    """Raised from the progress lines, as a Ctrl-C in the middle of a trial."""


def _validation_accuracy(model_path, seed_limit: int) -> float:
    """The model's accuracy on the validation split, recomputed with NumPy."""
    data = train_data("synthetic", batch_size=8, validation=0.2, limit=seed_limit)
    model = load_network(model_path)
    correct = total = 0
    for x, y in data.validation_dataset().as_numpy_iterator():
        predicted = np.argmax(keras.ops.convert_to_numpy(model(x, training=False)), axis=-1)
        correct, total = correct + int(np.sum(predicted == y)), total + len(y)
    return correct / total


@pytest.mark.slow
def test_an_interrupted_project_resumes_without_repeating_a_finished_trial(tmp_path):
    def hypermodel():
        return SearchHyperModel("synthetic", {"k": [1, 2]}, search=TINY_SEARCH,
                                retrain=TINY_RETRAIN, validation=0.2)

    lines = []

    def stop_in_the_second_trial(line: str) -> None:
        lines.append(line)
        if line.startswith("== stage 2/2: retrain") and "trial_1" in line:
            raise _Stop

    tuner = SWDTuner(hypermodel(), make_oracle("grid", 2), tmp_path, "project",
                     echo=stop_in_the_second_trial)
    with pytest.raises(_Stop):
        tuner.search()
    first = tmp_path / "project" / "trial_0" / "pipeline" / "train" / "model.keras"
    finished_at = first.stat().st_mtime_ns

    lines.clear()
    resumed = SWDTuner(hypermodel(), make_oracle("grid", 2), tmp_path, "project",
                       echo=lines.append)
    resumed.search()
    # Trial 0 is not run again; trial 1 continues after its finished search.
    assert not any(line.startswith("== trial 0") for line in lines)
    assert any(line.startswith("== trial 1") for line in lines)
    assert "finished before, skipped: search" in lines
    assert first.stat().st_mtime_ns == finished_at

    records = resumed.records()
    assert [r.status for r in records] == ["COMPLETED", "COMPLETED"]
    assert sorted(r.hyperparameters["k"] for r in records) == [1, 2]
    # Both recorded, each scored on the validation split (never the test split), and the
    # better one first.
    for record in records:
        assert record.metrics["val_accuracy"] == pytest.approx(
            _validation_accuracy(record.model, 16))
        results = json.loads((record.folder / "pipeline/train/results.json").read_text())
        assert record.metrics["test_accuracy"] == results["test_top1"]
        assert record.metrics["parameters"] == results["parameters"]
        genotype = json.loads(record.genotype.read_text())
        assert record.metrics["parameter_free_ops"] == sum(
            op in ("skip_connect", "max_pool_3x3", "avg_pool_3x3")
            for cell in genotype["cells"] for op, _ in cell["edges"])
        assert record.metrics["search_seconds"] > 0
    assert records[0].metrics["val_accuracy"] >= records[1].metrics["val_accuracy"]
    best = resumed.oracle.get_best_trials(1)[0]
    assert best.trial_id == records[0].trial_id
    # KerasTuner's own accessor gives the best trial's retrained network.
    network = resumed.get_best_models(1)[0]
    image = np.zeros((2, 16, 16, 3), np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(network(image)),
                               keras.ops.convert_to_numpy(load_network(records[0].model)(image)),
                               rtol=1e-6, atol=1e-6)
    table = summary_table(records)
    assert table.count("\n") == 3 and "completed" in table and str(records[0].genotype) in table

    # The same project with other settings is refused, with nothing changed.
    with pytest.raises(ValueError, match="holds a tuning project with other settings"):
        SWDTuner(SearchHyperModel("synthetic", {"k": [1, 2]}, search=TINY_SEARCH,
                                  retrain=TINY_RETRAIN, validation=0.25),
                 make_oracle("grid", 2), tmp_path, "project")


@pytest.mark.slow
def test_tune_retrains_a_fixed_genotype_on_the_command_line(tmp_path):
    result = _tune("--dataset", "synthetic", "--genotype", "darts_v2", "--hp",
                   "drop_path=0.0,0.1", "--oracle", "grid", "--max-trials", "1",
                   "--train-epochs", "1", "--train-channels", "4", "--train-layers", "3",
                   "--train-batch-size", "8", "--limit", "16", "--output", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert "1 trials in" in result.output and "drop_path=0.0" in result.output
    trial = json.loads((tmp_path / "p" / "trial_0" / "trial.json").read_text())
    assert trial["status"] == "COMPLETED"
    results = json.loads((tmp_path / "p" / "trial_0" / "train" / "results.json").read_text())
    assert trial["metrics"]["metrics"]["val_accuracy"]["observations"][0]["value"] == \
        [results["val_top1"]]


# -- bad input: one line, nothing written ---------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--hp", "kk=2"], "unknown hyperparameter 'kk'"),
    (["--hp", "k=2", "--hp", "lr=0.1..0.01"], "'lr' has an empty range"),
    (["--hp", "k=3,4", "--search-channels", "8"], "k=3 must divide the channel count c=8"),
    (["--hp", "k"], "is not NAME=VALUES"),
    (["--space", "SPACE"], "unknown hyperparameter 'depth'"),
    (["--genotype", "darts_v2", "--search-epochs", "2"], "--search-\\* options do not apply"),
])
def test_bad_tuning_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    (tmp_path / "space.yaml").write_text("depth: [1, 2]\n")
    args = [str(tmp_path / "space.yaml") if a == "SPACE" else a for a in args]
    result = _tune("--dataset", "synthetic", *args, "--output", tmp_path / "p")
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1 and re.search(message, error_lines[0])
    assert not (tmp_path / "p").exists()


def test_a_worker_that_cannot_reach_its_chief_says_so(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner1")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(port))
    result = _tune("--dataset", "synthetic", "--hp", "k=1,2", "--chief-timeout", "1",
                   "--output", tmp_path / "p")
    assert result.exit_code == 2
    assert f"cannot reach the tuning chief at 127.0.0.1:{port} within 1 s" in result.output
    assert not (tmp_path / "p").exists()
