"""The paper's ablation studies (swd_keras.tuning.ablation, ``swd-keras ablate``): their
grids, the summaries against NumPy, and a tiny k study end to end with its table and
plot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import swd_keras.cli.commands  # noqa: F401  (registers the sub-commands)
from click.testing import CliRunner
from PIL import Image
from swd_keras.cli.main import cli

from swd_keras.tuning.ablation import STUDIES, studies, study_names, study_rows, study_table
from swd_keras.tuning.tuner import TrialRecord

TINY_FLAGS = ["--search-epochs", "1", "--search-channels", "4", "--search-layers", "2",
              "--search-batch-size", "8", "--train-epochs", "1", "--train-channels", "4",
              "--train-layers", "3", "--train-batch-size", "8", "--limit", "16",
              "--primitives", "skip_connect,max_pool_3x3,avg_pool_3x3,sep_conv_3x3"]


def _ablate(*args):
    return CliRunner().invoke(cli, ["ablate", *map(str, args)])


def test_the_studies_are_the_paper_s_rows():
    grids = studies()
    assert STUDIES == ("table3", "table4", "k")
    # Table III: GAP+GMP or GAP in each module, the paper's four rows.
    assert sorted((row["ua_pooling"], row["la_pooling"]) for row in
                  grids["table3"].rows.values()) == sorted(
        [("avg+max", "avg+max"), ("avg", "avg+max"), ("avg", "avg"), ("avg+max", "avg")])
    # Table IV: (UA, LA, AWN) off/off/off, off/on/off, on/on/off, on/on/on.
    assert [tuple(row.values()) for row in grids["table4"].rows.values()] == [
        (False, False, False), (False, True, False), (True, True, False), (True, True, True)]
    assert [row["k"] for row in grids["k"].rows.values()] == [1, 2, 4, 8]
    assert grids["table4"].paper_error["UA on, LA on, AWN on"] == 2.51
    assert study_names("all") == STUDIES and study_names(["k", "table3"]) == ("table3", "k")
    with pytest.raises(ValueError, match="study must be one of table3, table4, k or all"):
        study_names("table5")


def _record(trial_id, variant, seed, metrics, status="COMPLETED"):
    return TrialRecord(trial_id, status, {"variant": variant, "seed": seed}, metrics,
                       Path(trial_id), None, None)


def test_rows_are_means_and_sample_spreads_over_seeds():
    rng = np.random.default_rng(0)
    study = studies((2, 4))["k"]
    records, expected = [], {}
    for row in study.rows:
        val, test = rng.uniform(0.5, 1.0, 3), rng.uniform(0.5, 1.0, 3)
        params, seconds, free = rng.integers(1000, 9000, 3), rng.uniform(5, 50, 3), [3, 5, 4]
        for seed in range(3):
            records.append(_record(f"{row}-{seed}", row, seed, {
                "val_accuracy": val[seed], "test_accuracy": test[seed],
                "parameters": params[seed], "search_seconds": seconds[seed],
                "parameter_free_ops": free[seed]}))
        expected[row] = (100 * (1 - val), 100 * (1 - test), params, seconds, free)
    records.append(_record("unfinished", "k=2", 3, {}, status="RUNNING"))
    rows = study_rows(study, records)
    assert [row["row"] for row in rows] == ["k=2", "k=4"]
    for row in rows:
        val, test, params, seconds, free = expected[row["row"]]
        assert row["trials"] == 3 and row["seeds"] == [0, 1, 2]
        np.testing.assert_allclose(row["val_error"], (val.mean(), val.std(ddof=1)))
        np.testing.assert_allclose(row["test_error"], (test.mean(), test.std(ddof=1)))
        np.testing.assert_allclose([row["parameters"], row["search_seconds"],
                                    row["parameter_free_ops"]],
                                   [params.mean(), seconds.mean(), np.mean(free)])
    table = study_table(rows)
    val, _, _, _, _ = expected["k=2"]
    assert f"| k=2 | 3 | {val.mean():.2f} ± {val.std(ddof=1):.2f} |" in table


@pytest.mark.slow
def test_a_tiny_k_study_writes_its_table_and_plot_and_resumes(tmp_path):
    folder = tmp_path / "ablation"
    args = ["--study", "k", "--k-values", "1,2", "--dataset", "synthetic", *TINY_FLAGS,
            "--validation", "0.2", "--output", folder]
    result = _ablate(*args)
    assert result.exit_code == 0, result.output
    report = (folder / "ablation.md").read_text()
    rows = json.loads((folder / "ablation.json").read_text())["k"]
    assert [row["row"] for row in rows] == ["k=1", "k=2"]
    # Each row is its one trial's metrics, as KerasTuner recorded them.
    for trial in sorted((folder / "k").glob("trial_*/trial.json")):
        record = json.loads(trial.read_text())
        row = next(r for r in rows if r["row"] == record["hyperparameters"]["values"]["variant"])
        observed = {name: value["observations"][0]["value"][0]
                    for name, value in record["metrics"]["metrics"].items()}
        assert row["val_error"][0] == pytest.approx(100 * (1 - observed["val_accuracy"]))
        assert row["test_error"][0] == pytest.approx(100 * (1 - observed["test_accuracy"]))
        assert row["parameters"] == observed["parameters"]
        assert row["val_error"][1] is None  # one seed: no spread
        assert re.search(rf"\| {row['row']} \| 1 \| {row['val_error'][0]:.2f} \|", report)
    assert "## Fig. 4: k" in report and "](k.png)" in report
    with Image.open(folder / "k.png") as plot:
        assert plot.format == "PNG" and plot.size == (600, 400)
    # Run again: the finished grid is reloaded, no trial runs, the report is the same.
    again = _ablate(*args)
    assert again.exit_code == 0, again.output
    assert "== trial" not in again.output and "Reloading" in again.output
    assert (folder / "ablation.md").read_text() == report


@pytest.mark.parametrize("args, message", [
    (["--study", "table5"], "'table5' is not one of 'table3', 'table4', 'k', 'all'"),
    (["--study", "k", "--k-values", "1,3"], "variant 'k=3': .*k=3 must divide"),
    (["--study", "k", "--k-values", "1,x"], "not a comma-separated list of integers"),
    (["--study", "k", "--seeds", "0"], "--seeds"),
])
def test_bad_ablation_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    result = _ablate(*args, "--dataset", "synthetic", "--output", tmp_path / "a")
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1 and re.search(message, error_lines[0])
    assert not (tmp_path / "a").exists()
