"""One process of a data-parallel test run: a tiny search or retraining, new or resumed.

Devices and ``TF_CONFIG`` are fixed when TensorFlow starts, so the tests of
``tests/test_devices.py`` run their multi-device jobs through this script in a fresh
process::

    python tests/multiworker.py search|train RUN_DIR [--exit-after-epoch-1] [--resume]
    python tests/multiworker.py two-devices OUT

The last line printed is ``RESULT {json}``: the genotype (search) or the results
(train). A process that is not the chief may write no file at all: every atomic write
and every picture raises in it. ``--exit-after-epoch-1`` ends the process once epoch 1's
checkpoint is written, as a kill then would. ``two-devices`` retrains on two devices of
one process; the run's folder is copied as it stands after epoch 1 (what a kill then
leaves behind) and the copy resumed, so it must end where the unbroken run ends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

# Four candidate ops (a conv, a skip, a pool, none): what these runs check, the run
# folder and the resume on every worker, does not depend on them, and tracing the
# multi-worker step grows with their number.
SEARCH = dict(dataset="synthetic", epochs=2, layers=1, channels=4, k=2, batch_size=8, limit=16,
              jit=False, primitives=("sep_conv_3x3", "skip_connect", "max_pool_3x3", "none"))
TRAIN = dict(genotype="darts_v2", dataset="synthetic", epochs=2, layers=3, channels=4,
             batch_size=8, limit=16)


def _forbid_writes() -> None:
    """Makes every file write of the jobs fail loudly in this process."""
    import tempfile

    import matplotlib.figure

    def refuse(*args, **kwargs):
        raise AssertionError(f"a process that is not the chief wrote a file ({args[:2]})")

    tempfile.mkstemp = refuse
    os.replace = refuse
    matplotlib.figure.Figure.savefig = refuse


def search(run_dir: Path, resume: bool = False,
           snapshot: Path | None = None, exit_after_epoch_1: bool = False) -> dict:
    """A tiny search on every device (or resumed); returns its genotype."""
    from swd_keras.search_job import SearchConfig, run_search

    def echo(line: str) -> None:
        print(line, flush=True)
        if line.startswith("epoch 1:"):  # printed once epoch 1's checkpoint is written
            _after_epoch_1(run_dir, snapshot, exit_after_epoch_1)

    config = None if resume else SearchConfig(**SEARCH, devices="all")
    result = run_search(config, run_dir, resume=resume, echo=echo, verbose=0)
    return {"genotype": result.genotype.to_dict()}


def train(run_dir: Path, resume: bool = False, snapshot: Path | None = None,
          exit_after_epoch_1: bool = False) -> dict:
    """A tiny retraining on every device (or resumed); returns its results."""
    import keras

    from swd_keras.training import RetrainConfig, fit_network

    class AfterEpoch1(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # runs after the run's own checkpoint
            if epoch == 0:
                _after_epoch_1(run_dir, snapshot, exit_after_epoch_1)

    config = None if resume else RetrainConfig(**TRAIN, devices="all")
    return fit_network(run_dir, config, resume=resume, verbose=0, callbacks=[AfterEpoch1()])


def _after_epoch_1(run_dir: Path, snapshot: Path | None, exit_now: bool) -> None:
    if snapshot is not None:
        shutil.copytree(run_dir, snapshot)
    if exit_now:
        print("EXITED after epoch 1", flush=True)
        os._exit(0)


def two_devices(out: Path) -> dict:
    """A retraining on the two devices of one process, unbroken (``train``) and resumed
    from its epoch-1 copy (``train-resumed``). A search resumed on several replicas is
    the two-worker test's (the same mirrored variables and checkpoint), and the search
    step on two replicas is checked against one device in tests/test_replicas.py."""
    train(out / "train", snapshot=out / "train-resumed")
    return train(out / "train-resumed", resume=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("job", choices=("search", "train", "two-devices"))
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--exit-after-epoch-1", action="store_true")
    args = parser.parse_args(argv)

    from swd_keras.distribute import is_chief

    if not is_chief():
        _forbid_writes()
    if args.job == "two-devices":
        result = two_devices(args.run_dir)
    else:
        result = (search if args.job == "search" else train)(
            args.run_dir, resume=args.resume, exit_after_epoch_1=args.exit_after_epoch_1)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
