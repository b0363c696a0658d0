"""Benchmark of the bilevel search step: images/s, time to the first step, peak memory.

Each configuration runs in a fresh Python process (so the Keras backend can differ and
the peak RSS and start-up time are that configuration's alone), exactly as a user runs
a search: ``build_supernet`` + ``SWDSearchModel`` + ``compile()`` + ``model.fit`` on
paired (search-train, search-validation) batches of random images. Defaults are the
paper's: C=16, 5 cells, k=4, batch 64 (+64 validation), 32x32x3, 10 classes.

Reported per configuration:
    images/s      batch size / median step time, over ``--steps`` steps after
                  ``--warmup`` steps; one step of ``--mode bilevel`` is a validation
                  forward and attention update, then a training forward and weight
                  update; of ``--mode joint`` a validation forward (edge weights
                  only), then a training forward and update of all parameters;
    CPU s/step    the median process CPU seconds per step (all threads), and
    cores busy    that divided by the step's wall time;
    first step    seconds from the ``fit()`` call to the end of the first step (the
                  backend's tracing, graph optimisation or compilation, and one step);
    start         seconds from the process start to the end of the first step
                  (imports and model construction included);
    peak RSS      the process' peak resident memory.

Example:
    python bench/search_step.py                          # the paper's configuration, TF
    python bench/search_step.py --backend jax --cells 5 8 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

from swd_keras.cli.allocator import allocator_environment
from swd_keras.cli.tensorflow_import import import_tensorflow_without_optional_imports

_PROCESS_START = time.perf_counter()

BACKENDS = ("tensorflow", "jax", "torch")
COLUMNS = ("backend", "mode", "method", "jit", "precision", "remat", "cells", "k", "batch",
           "input", "C", "images/s", "step s", "CPU s/step", "cores busy", "first step s",
           "start s", "build s", "peak RSS GB")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", nargs="+", default=["tensorflow"], choices=BACKENDS)
    jit = parser.add_mutually_exclusive_group()
    jit.add_argument("--jit", dest="jit", action="store_const", const=True,
                     help="compile with jit_compile=True (XLA on TF, jax.jit on JAX)")
    jit.add_argument("--no-jit", dest="jit", action="store_const", const=False,
                     help="compile with jit_compile=False")
    parser.set_defaults(jit="auto")
    parser.add_argument("--mode", nargs="+", default=["bilevel"], choices=["bilevel", "joint"],
                        help="the search step (swd-keras search --mode)")
    parser.add_argument("--method", nargs="+", default=["swd"], choices=["swd", "darts"])
    parser.add_argument("--cells", nargs="+", type=int, default=[5])
    parser.add_argument("--k", nargs="+", type=int, default=[4])
    parser.add_argument("--batch-size", nargs="+", type=int, default=[64])
    parser.add_argument("--input-size", nargs="+", type=int, default=[32])
    parser.add_argument("--channels", nargs="+", type=int, default=[16])
    parser.add_argument("--precision", nargs="+", default=["float32"],
                        choices=["float32", "mixed_bfloat16"],
                        help="Keras dtype policy (swd-keras search --precision)")
    parser.add_argument("--remat", nargs="+", default=["auto"],
                        choices=["auto", "none", "first-stage", "all"],
                        help="which cells recompute their edges for the gradient "
                             "(swd-keras search --remat; auto: as the command resolves it)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps after the first one")
    parser.add_argument("--json", metavar="OUT", help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("cells", "k", "batch_size", "input_size", "channels"):
        if min(getattr(args, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} values must be positive integers.")
    if args.steps < 1 or args.warmup < 0 or args.classes < 2:
        parser.error("--steps must be >= 1, --warmup >= 0 and --classes >= 2.")
    return args


def configurations(args: argparse.Namespace) -> list[dict]:
    """Every combination of the list-valued options, as child-process settings."""
    keys = ("backend", "mode", "method", "precision", "remat", "cells", "k", "batch_size",
            "input_size", "channels")
    return [dict(zip(keys, values), jit=args.jit, classes=args.classes, steps=args.steps,
                 warmup=args.warmup)
            for values in itertools.product(*(getattr(args, key) for key in keys))]


def run_child(config: dict) -> dict:
    """Runs one configuration in this (fresh) process; the backend is set before keras
    is imported."""
    os.environ["KERAS_BACKEND"] = config["backend"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import_tensorflow_without_optional_imports()  # as the swd-keras commands do
    import resource

    import keras
    import numpy as np

    from swd_keras.search import SWDSearchModel
    from swd_keras.search_job import resolve_remat
    from swd_keras.supernet import build_supernet

    imported = time.perf_counter()
    config = {**config, "remat": resolve_remat(config["remat"])}  # the row says which
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(config["precision"])
    size, batch = config["input_size"], config["batch_size"]
    supernet = build_supernet((size, size, 3), config["classes"],
                              channels=config["channels"], layers=config["cells"],
                              k=config["k"], method=config["method"],
                              rematerialize=config["remat"])
    model = SWDSearchModel(supernet, mode=config["mode"], method=config["method"])
    model.compile(jit_compile=config["jit"])
    built = time.perf_counter()

    # A few distinct batches, cached: the step, not the input pipeline, is measured.
    rng = np.random.default_rng(0)
    distinct = 4

    def half():
        images = rng.normal(size=(distinct * batch, size, size, 3)).astype("float32")
        labels = rng.integers(0, config["classes"], distinct * batch).astype("int32")
        return images, labels

    train, val = half(), half()
    if config["backend"] == "tensorflow":  # a tf.data pipeline, as swd-keras search feeds it
        import tensorflow as tf

        data = (tf.data.Dataset.from_tensor_slices((train, val))
                .batch(batch, drop_remainder=True).cache().repeat().prefetch(2))
    else:  # a generator: no TensorFlow needed (the lent GPUs have none)
        batches = [tuple((x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
                         for x, y in (train, val)) for i in range(distinct)]

        def cycle():  # keras takes generators (not other iterators)
            while True:
                yield from batches

        data = cycle()

    class StepTimer(keras.callbacks.Callback):
        """Records when each step ends. Reading the loss makes the end real: Keras runs
        batch-end callbacks asynchronously unless one overrides them, and the loss
        value exists only once the step has run."""

        def __init__(self):
            super().__init__()
            self.batch_ends: list[float] = []
            self.cpu_ends: list[float] = []  # the process' CPU seconds, all threads

        def on_train_batch_end(self, batch, logs=None):
            float(keras.ops.convert_to_numpy(logs["loss"]))
            self.batch_ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())

    timer = StepTimer()
    total_steps = 1 + config["warmup"] + config["steps"]
    fit_called = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=total_steps, callbacks=[timer], verbose=0)
    ends = timer.batch_ends
    steps = np.diff(ends[config["warmup"]:])
    step = float(np.median(steps))
    cpu_step = float(np.median(np.diff(timer.cpu_ends[config["warmup"]:])))
    return {**config,
            "images_per_s": batch / step,
            "step_s": step,
            "cpu_s_per_step": cpu_step,
            "cores_busy": cpu_step / step,
            "step_s_all": [round(float(t), 4) for t in np.diff(ends)],
            "first_step_s": ends[0] - fit_called,
            "start_s": ends[0] - _PROCESS_START,
            "import_s": imported - _PROCESS_START,
            "build_s": built - imported,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "keras": keras.__version__,
            "device": _device_name(config["backend"])}


def _device_name(backend: str) -> str:
    if backend == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return gpus[0].name if gpus else "cpu"


def table_rows(results: list[dict]) -> list[tuple[str, ...]]:
    rows = []
    for r in results:
        if "error" in r:
            rows.append((r["backend"], r["mode"], r["method"], str(r["jit"]), r["precision"],
                         r["remat"], str(r["cells"]),
                         str(r["k"]), str(r["batch_size"]), str(r["input_size"]),
                         str(r["channels"]), "failed: " + r["error"].splitlines()[-1][:60],
                         *[""] * 7))
            continue
        rows.append((r["backend"], r["mode"], r["method"], str(r["jit"]), r["precision"],
                     r["remat"], str(r["cells"]), str(r["k"]),
                     str(r["batch_size"]), str(r["input_size"]), str(r["channels"]),
                     f"{r['images_per_s']:.1f}", f"{r['step_s']:.2f}",
                     f"{r['cpu_s_per_step']:.2f}", f"{r['cores_busy']:.2f}",
                     f"{r['first_step_s']:.1f}", f"{r['start_s']:.1f}", f"{r['build_s']:.1f}",
                     f"{r['peak_rss_gb']:.2f}"))
    return rows


def markdown_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        config = json.loads(sys.stdin.read())
        print(json.dumps(run_child(config)))
        return 0
    results = []
    print(markdown_row(COLUMNS))
    print(markdown_row("---" for _ in COLUMNS), flush=True)
    for config in configurations(args):
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"],
                               input=json.dumps(config), capture_output=True, text=True,
                               env=allocator_environment(config["backend"]),
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if child.returncode == 0:
            results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        else:
            results.append({**config, "error": child.stderr.strip() or "no output"})
        print(markdown_row(table_rows(results[-1:])[0]), flush=True)
    if args.json:
        from swd_keras.runs import atomic_write_json

        atomic_write_json(args.json, {"date": time.strftime("%Y-%m-%d"), "results": results})
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
