"""Distributed tuning: a KerasTuner chief and two workers as three local processes on
127.0.0.1 run three trials between them, none twice."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from tests.test_ablation import TINY_FLAGS

ENTRY = "import sys; from swd_keras.cli.main import main; sys.argv[0] = 'swd-keras'; main()"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_a_chief_and_two_workers_run_each_trial_once(tmp_path):
    port = _free_port()
    command = [sys.executable, "-c", ENTRY, "tune", "--dataset", "synthetic", "--hp",
               "k=1,2", "--hp", "seed=0,1", "--oracle", "grid", "--max-trials", "3",
               *TINY_FLAGS, "--validation", "0.2", "--chief-timeout", "120",
               "--output", str(tmp_path / "project")]
    processes = {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id,
                   "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
            processes[tuner_id] = subprocess.Popen(
                command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
        outputs = {name: process.communicate(timeout=900)[0]
                   for name, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, process in processes.items():
        assert process.returncode == 0, f"{name}:\n{outputs[name][-3000:]}"

    # Each worker ran its trials one after another; between them, every trial once.
    ran = {name: re.findall(r"^== trial (\d+):", outputs[name], re.MULTILINE)
           for name in ("tuner0", "tuner1")}
    all_runs = ran["tuner0"] + ran["tuner1"]
    assert sorted(all_runs) == ["0", "1", "2"], ran
    assert not re.search(r"^== trial", outputs["chief"], re.MULTILINE)  # the chief runs none
    # The chief recorded the three, each with its own values, and printed the summary.
    trials = [json.loads(path.read_text())
              for path in sorted((tmp_path / "project").glob("trial_*/trial.json"))]
    assert [trial["status"] for trial in trials] == ["COMPLETED"] * 3
    values = {(t["hyperparameters"]["values"]["k"], t["hyperparameters"]["values"]["seed"])
              for t in trials}
    assert len(values) == 3
    assert "3 trials in" in outputs["chief"]
    for trial in trials:
        folder = tmp_path / "project" / f"trial_{trial['trial_id']}"
        results = json.loads((folder / "pipeline/train/results.json").read_text())
        observed = trial["metrics"]["metrics"]["val_accuracy"]["observations"][0]["value"]
        assert observed == [results["val_top1"]]
