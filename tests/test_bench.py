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
                 "--remat", "auto", *TINY, "--steps", "2", "--warmup", "0",
                 "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 2  # header, separator, one row per method
    # auto is reported as resolved: no recomputation on PyTorch.
    expected = [("swd", "none"), ("darts", "none")]
    assert [(row.split("|")[3].strip(), row.split("|")[6].strip())
            for row in lines[2:]] == expected
    results = json.loads(out.read_text())["results"]
    assert [(r["method"], r["remat"]) for r in results] == expected
    for r in results:
        assert len(r["step_s_all"]) == 2  # first + warmup 0 + 2 timed = 3 ends, 2 steps
        assert r["images_per_s"] == pytest.approx(2 / r["step_s"])
        assert 0 < r["first_step_s"] < r["start_s"]
        assert r["peak_rss_gb"] > 0 and r["build_s"] > 0


def test_search_step_runs_both_modes_and_reports_cpu_seconds(tmp_path):
    out = tmp_path / "modes.json"
    result = run("search_step.py", "--backend", "torch", "--mode", "bilevel", "joint",
                 "--remat", "all", *TINY, "--steps", "2", "--warmup", "0", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("|")]
    assert [(row[2].strip(), row[6].strip()) for row in rows[2:]] == [("bilevel", "all"),
                                                                       ("joint", "all")]
    results = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["remat"]) for r in results] == [("bilevel", "all"), ("joint", "all")]
    for r in results:
        assert r["cpu_s_per_step"] > 0
        assert r["cores_busy"] == pytest.approx(r["cpu_s_per_step"] / r["step_s"])


@pytest.mark.parametrize("backend,op_prefix", [("torch", "aten::"), ("jax", "")])
def test_startup_profiles_the_step(tmp_path, backend, op_prefix):
    out, logdir = tmp_path / "startup.json", tmp_path / "profile"
    result = run("startup.py", "--backend", backend, "--mode", "joint", *TINY, "--steps", "1",
                 "--profile", str(logdir), "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    profile = json.loads(out.read_text())["profile"]
    top = profile["top_op_types_s_per_step"]
    assert top and all(name.startswith(op_prefix) for name in top)
    assert 0 < sum(top.values()) <= profile["kernel_s_per_step"] + 1e-3  # the top 20
    assert profile["wall_s_per_step"] > 0 and any(logdir.rglob("*"))


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


def device_check(*args, env=None, timeout=60):
    return subprocess.run(["bash", str(BENCH / "device_check.sh"), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def table(stdout: str, first_cell: str) -> list[list[str]]:
    """The cells of the Markdown rows of ``stdout`` whose first cell is ``first_cell``."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in stdout.splitlines() if line.startswith("|")]
    return [row for row in rows if row[0] == first_cell]


def test_device_check_quick_runs_the_tiny_step_without_tensorflow(tmp_path):
    # The GPU machine has no TensorFlow: here `import tensorflow` fails in every process
    # the check starts, so anything on the path that imports it fails the run. PyTorch:
    # the same code path as JAX's part, without minutes of XLA compiling for the CPU.
    shim = tmp_path / "no_tensorflow"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text('import sys\n\nsys.modules["tensorflow"] = None\n')
    env = {"KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(shim), str(BENCH.parent)]),
           "DEVICE_CHECK_RESULTS": str(tmp_path / "results")}
    blocked = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                             env={**os.environ, **env})
    assert blocked.returncode != 0  # the shim holds
    result = device_check("--quick", "--parts", "correctness-torch", env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "correctness-torch: ok" in result.stdout
    [row] = table(result.stdout, "step")
    assert row[1] == "torch" and row[2].startswith("cpu vs cpu")
    assert row[-1] == "PASS (tolerance 0.0001)"
    assert float(row[4]) == 0.0  # one computation, twice, from the same initial weights
    import numpy as np

    folder = tmp_path / "results" / "correctness-torch"
    with (np.load(folder / "cpu.npz") as run, np.load(folder / "accelerator.npz") as other,
          np.load(folder / "initial_weights.npz") as initial):
        assert run["edge weights"].shape == (1, 14, 8)  # --quick: one cell
        assert run["step losses"].shape == (2, 2) and np.isfinite(run["step losses"]).all()
        assert run.files == other.files
        # Every model variable (the initial weights) and the optimizers' variables.
        assert len(run.files) - 2 > len(initial.files) > 100


def test_device_check_projection_and_differences(tmp_path):
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("device_check", BENCH / "device_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    reference = {"a": np.array([0.5, -3.0]), "b": np.zeros((2, 2))}
    other = {"a": np.array([0.5 + 2e-5, -3.03]), "b": np.zeros((2, 2))}
    assert check.largest_difference(reference, reference) == (0.0, "")
    difference, where = check.largest_difference(reference, other)
    assert where == "a" and difference == pytest.approx(0.03 / 3.0)
    assert check.largest_difference(reference, {"a": reference["a"]})[0] == float("inf")
    assert check.largest_difference({"a": np.ones(2)}, {"a": np.ones(3)})[0] == float("inf")

    def speed(backend, step, first):
        return {"backend": backend, "device": "GPU", "precision": "float32",
                "batch_size": 64, "step_s": step, "first_step_s": first}

    (tmp_path / "speed-jax.json").write_text(json.dumps(
        [speed("jax", 0.05, 40.0), {**speed("jax", 0.01, 9.0), "batch_size": 128},
         {**speed("jax", 0.04, 60.0), "precision": "mixed_bfloat16"}]))
    (tmp_path / "speed-torch.json").write_text(json.dumps([speed("torch", 0.3, 5.0)]))
    result = device_check("--parts", "projection",
                          env={"DEVICE_CHECK_RESULTS": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    rows = {row[0]: row for row in table(result.stdout, "jax") + table(result.stdout, "torch")}
    # The fastest batch-64 row per backend: 11,730 steps x step + the first step.
    assert rows["jax"][2:6] == ["mixed_bfloat16", "0.0400", "60.0",
                               f"{(11730 * 0.04 + 60) / 3600:.2f} h "
                               f"({(11730 * 0.04 + 60) / 60:.0f} min)"]
    assert rows["jax"][6] == "fastest" and rows["torch"][6] == ""
    assert rows["torch"][5].startswith(f"{(11730 * 0.3 + 5) / 3600:.2f} h")


@pytest.mark.parametrize("args", [["--parts", "speed-tensorflow"], ["--fast"], ["--parts"]])
def test_device_check_bad_options_are_one_clear_line(args):
    result = device_check(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
