"""Smoke tests of the benchmark scripts at a tiny configuration, so that they cannot rot.

No timing is asserted: only that the scripts run end to end, and that what they report
is consistent (a row per configuration, images/s = batch / step time, phases present).
PyTorch runs them fastest (no graph to build), so the runs use it; one TensorFlow run,
marked slow, covers the graph-count and Grappler paths.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
TINY = ["--cells", "1", "--channels", "4", "--k", "2", "--batch-size", "2",
        "--input-size", "8"]


def run(script, *args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_search_step_reports_a_row_per_configuration(tmp_path):
    out = tmp_path / "steps.json"
    result = run("search_step.py", "--backend", "torch", "--method", "swd", "darts",
                 "--remat", "auto", "all", *TINY, "--steps", "2", "--warmup", "0",
                 "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 4  # header, separator, one row per method and remat
    # auto is reported as resolved: no recomputation on PyTorch.
    expected = [("swd", "none"), ("swd", "all"), ("darts", "none"), ("darts", "all")]
    assert [(row.split("|")[2].strip(), row.split("|")[5].strip())
            for row in lines[2:]] == expected
    results = json.loads(out.read_text())["results"]
    assert [(r["method"], r["remat"]) for r in results] == expected
    for r in results:
        assert len(r["step_s_all"]) == 2  # first + warmup 0 + 2 timed = 3 ends, 2 steps
        assert r["images_per_s"] == pytest.approx(2 / r["step_s"])
        assert 0 < r["first_step_s"] < r["start_s"]
        assert r["peak_rss_gb"] > 0 and r["build_s"] > 0


def test_startup_reports_phases(tmp_path):
    out = tmp_path / "startup.json"
    result = run("startup.py", "--backend", "torch", *TINY, "--steps", "1", "--json",
                 str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    phases = json.loads(out.read_text())
    for key in ("import_s", "build_s", "optimise_and_first_step_s", "step_s",
                "first_step_total_s", "peak_rss_gb"):
        assert phases[key] > 0, key


def test_inference_reports_a_row_per_network(tmp_path):
    out = tmp_path / "inference.json"
    result = run("inference.py", "--backend", "torch", "--networks", "swd-5", "darts-8",
                 "retrain", "--input-size", "8", "--search-channels", "4", "--k", "2",
                 "--retrain-channels", "4", "--retrain-cells", "5", "--runs", "3",
                 "--warmup", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["network"], r["cells"], r["C"]) for r in rows] == [
        ("swd-5", 5, 4), ("darts-8", 8, 4), ("retrain", 5, 4)]
    for r in rows:
        assert r["parameters"] > 0 and r["mean ms"] > 0 and r["median ms"] > 0
    assert len([line for line in result.stdout.splitlines() if line.startswith("|")]) == 5


def test_depthwise_compares_both_jax_versions(tmp_path):
    out = tmp_path / "depthwise.json"
    result = run("depthwise.py", "--batch-size", "2", "--input-size", "7", "--channels", "3",
                 "--size", "3", "--strides", "2", "--runs", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(r["version"], r["pass"]) for r in report["rows"]] == [
        ("xla grouped conv", "forward"), ("xla grouped conv", "forward + backward"),
        ("shifted products", "forward"), ("shifted products", "forward + backward")]
    assert report["max_relative_difference"] < 1e-5


@pytest.mark.slow
def test_startup_counts_tensorflow_graph_operations(tmp_path):
    out = tmp_path / "startup.json"
    result = run("startup.py", "--backend", "tensorflow", *TINY, "--steps", "1",
                 "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    phases = json.loads(out.read_text())
    assert phases["graph_ops"] > 1000 and phases["trace_s"] > 0


@pytest.mark.parametrize("script,args", [
    ("search_step.py", ["--cells", "0"]),
    ("search_step.py", ["--backend", "numpy"]),
    ("startup.py", ["--grappler-off", "no_such_pass"]),
    ("inference.py", ["--runs", "0"]),
    ("depthwise.py", ["--strides", "2", "--dilation", "2"]),
    ("inference.py", ["--networks", "swd-3"]),
    ("inference.py", ["--networks", "swd-5", "--search-channels", "4"]),  # c/k = 1
])
def test_bad_options_are_one_clear_line(script, args):
    result = run(script, *args, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr.strip().splitlines()[-1]
