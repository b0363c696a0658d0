"""``--devices``: bad input refused in one line with nothing written, a retraining on two
devices and a search on two workers that complete and resume like unbroken runs.

Devices are fixed when TensorFlow or JAX starts, so the runs on two devices go through
``tests/multiworker.py`` in subprocesses: one process with ``XLA_FLAGS`` forcing two host
devices, and two processes of a ``TF_CONFIG`` cluster on loopback.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import swd_keras.cli.commands  # noqa: F401  (registers the sub-commands)
from click.testing import CliRunner
from swd_keras.cli.main import cli

from swd_keras.genotype import Genotype

TINY_SEARCH = ["search", "--dataset", "synthetic", "--epochs", "1", "--layers", "2",
               "--channels", "4", "--k", "2", "--batch-size", "8", "--limit", "16"]
TINY_TRAIN = ["train", "--genotype", "darts_v2", "--dataset", "synthetic", "--epochs", "1",
              "--layers", "3", "--channels", "4", "--batch-size", "8", "--limit", "16"]
TINY_RUN = ["run", "--dataset", "synthetic", "--search-epochs", "1", "--search-layers", "3",
            "--search-channels", "8", "--search-batch-size", "8", "--train-epochs", "1",
            "--train-layers", "3", "--train-channels", "4", "--train-batch-size", "8",
            "--limit", "16"]


def _error_line(result) -> str:
    """The one ``Error:`` line of a usage error, checked to be the only error output."""
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def _refused(tmp_path, command, *args) -> str:
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, [*command, *args, "--output", str(run)])
    assert not run.exists(), result.output
    return _error_line(result)


@pytest.mark.backend
@pytest.mark.parametrize("command", [TINY_SEARCH, TINY_TRAIN, TINY_RUN],
                         ids=["search", "train", "run"])
def test_devices_that_do_not_exist_are_one_line_and_write_nothing(tmp_path, monkeypatch,
                                                                  command):
    backend = keras.backend.backend()
    if backend == "torch":
        line = _refused(tmp_path, command, "--devices", "2")
        assert "--devices 2: data-parallel search runs on the tensorflow and jax" in line
        return
    if backend == "tensorflow":
        # TensorFlow splits the host CPU into XLA_FLAGS' count when it starts a strategy;
        # counting them reads the flag, so it can change here.
        monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
        exists = 2
    else:
        import jax

        exists = jax.device_count()
    line = _refused(tmp_path, command, "--devices", str(exists + 1))
    assert f"--devices {exists + 1}: only {exists} " in line
    assert "xla_force_host_platform_device_count" in line
    for bad in ("0", "two"):
        assert "is not 'all' or a positive device count" in _refused(
            tmp_path, command, "--devices", bad)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TF_CONFIG is TensorFlow's")
@pytest.mark.parametrize("command", [TINY_SEARCH, TINY_TRAIN, TINY_RUN],
                         ids=["search", "train", "run"])
def test_batches_that_do_not_split_and_bad_tf_config_are_one_line(tmp_path, monkeypatch,
                                                                  command):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    batch = "--train-batch-size" if command is TINY_RUN else "--batch-size"
    line = _refused(tmp_path, command, batch, "7", "--devices", "2")
    assert "--batch-size 7 does not split over 2 replicas" in line
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    for tf_config, needle in [
        ("{not json", "TF_CONFIG is not JSON"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), 'TF_CONFIG has no "cluster"'),
        (json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 2}}),
         "is not in its cluster: its tasks are worker 0, worker 1"),
    ]:
        monkeypatch.setenv("TF_CONFIG", tf_config)
        assert needle in _refused(tmp_path, command, "--devices", "all")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": 1}}))
    assert "--devices 1: TF_CONFIG names a cluster of 2 workers" in _refused(tmp_path, command)
    # Each worker of a CPU cluster holds one replica.
    assert "--devices 3: TF_CONFIG names 2 workers with 1 device each" in _refused(
        tmp_path, command, "--devices", "3")


# -- runs on two devices (subprocesses) -------------------------------------------------

DRIVER = Path(__file__).with_name("multiworker.py")
ROOT = DRIVER.parent.parent


def _result(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _environment(**changes) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CONFIG", "XLA_FLAGS")}
    return {**env, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": str(ROOT), **changes}


def _same_checkpoints(first: Path, second: Path) -> None:
    """Every stored array and the job state of two checkpoints are identical."""
    with np.load(first / "checkpoint.npz") as a, np.load(second / "checkpoint.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="runs TensorFlow")
def test_two_device_retraining_completes_and_resumes_like_an_unbroken_run(tmp_path):
    done = subprocess.run(
        [sys.executable, str(DRIVER), "two-devices", str(tmp_path)], cwd=tmp_path,
        env=_environment(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
        capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    results = _result(done.stdout)
    unbroken, resumed = tmp_path / "train", tmp_path / "train-resumed"
    assert json.loads((unbroken / "config.json").read_text())["config"]["devices"] == "all"
    _same_checkpoints(unbroken, resumed)
    assert (unbroken / "history.csv").read_text() == (resumed / "history.csv").read_text()
    assert results["epochs"] == 2 and (resumed / "model.keras").is_file()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _two_workers(tmp_path: Path, phase: str, run: Path, *args: str) -> list[str]:
    """Runs the driver as worker 0 (the chief) and worker 1 of a fresh loopback
    cluster, each in its own empty folder ``PHASE-workerI``; returns their outputs."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        folder = tmp_path / f"{phase}-worker{index}"
        folder.mkdir()
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(
            [sys.executable, str(DRIVER), "search", str(run), *args], cwd=folder,
            env=_environment(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=900)[0])
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="runs TensorFlow")
def test_two_workers_search_one_run_folder_and_resume_it(tmp_path):
    run = tmp_path / "run"
    killed = _two_workers(tmp_path, "killed", run, "--exit-after-epoch-1")
    assert all("EXITED after epoch 1" in output for output in killed)
    assert json.loads((run / "config.json").read_text())["config"]["devices"] == "all"
    first = (run / "genotypes.jsonl").read_text().splitlines()
    assert len(first) == 1
    outputs = _two_workers(tmp_path, "resumed", run, "--resume")
    assert all("resumed after epoch 1" in output for output in outputs)
    genotypes = [_result(output)["genotype"] for output in outputs]
    assert genotypes[0] == genotypes[1] == Genotype.load(run / "genotype.json").to_dict()
    lines = (run / "genotypes.jsonl").read_text().splitlines()
    assert lines[0] == first[0] and len(lines) == 2
    # One run folder, the chief's: the processes' own folders stayed empty, and the
    # driver makes any write of a process that is not the chief fail.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "killed-worker0", "killed-worker1", "resumed-worker0", "resumed-worker1", "run"]
    assert not any(any(p.iterdir()) for p in tmp_path.iterdir() if p.name != "run")
