"""The GPU check of issue 14: correctness of the step on the GPU, its speed, the full search.

``bench/device_check.sh`` runs each part below in its own process, under its own time
limit, with ``KERAS_BACKEND`` set for the part; each part prints Markdown table rows
(a title line, a header, a separator, one row per measurement) that paste into
docs/BENCHMARKS.md, and writes what the later parts read into ``--results``.

    correctness  the tiny configuration's two bilevel steps (``TINY``: fixed data, one
                 draw of the initial weights) on the accelerator against the same steps
                 on the CPU, at the same time in two processes (JAX: both
                 jit-compiled; PyTorch: eager): the step losses, every model and
                 optimizer variable and the edge weights. PASS where the largest
                 difference, relative to max(1, |CPU value|), is at most
                 ``--tolerance``. On the accelerator float32 runs at full precision
                 here (no TF32), so that both compute the same function.
    speed        the paper's configuration (C=16, 5 cells, k=4, 32x32x3, 10 classes) on
                 the accelerator: ``bench/search_step.py``'s own measurement (``model.fit``
                 on a generator of NumPy batches; no TensorFlow) in a fresh process per
                 precision and batch, plus the peak accelerator memory.
    projection   the paper's full CIFAR-10 search (30 epochs x 391 steps at batch 64)
                 per backend, from its fastest batch-64 step: steps x step + first step.

With ``--quick`` (the smoke test of the machinery) the correctness part runs the smaller
``QUICK`` configuration, and the CPU stands in for a missing accelerator (CPU against
CPU). Without it, an
accelerator the backend cannot see is a failure: this is a GPU check.

Example:
    KERAS_BACKEND=jax python bench/device_check.py correctness --results /tmp/check
    KERAS_BACKEND=torch python bench/device_check.py speed --results /tmp/check
    python bench/device_check.py projection --results /tmp/check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# The part processes import no keras and no backend (a backend initialised there would
# hold the GPU while their children measure): only the measurements' processes do.
BACKENDS = ("jax", "torch")
TINY = {"input_shape": (8, 8, 3), "classes": 10, "channels": 8, "layers": 3, "k": 2,
        "batch": 8, "steps": 2}  # a normal and two reduction cells
# --quick, on a CPU: one (reduction) cell, since XLA compiles the 3-cell step on a CPU
# for minutes.
QUICK = {**TINY, "channels": 4, "layers": 1, "batch": 4}
PAPER = {"method": "swd", "remat": "auto", "cells": 5, "k": 4, "input_size": 32,
         "channels": 16, "classes": 10}
BATCHES = (64, 128, 256)
PRECISIONS = ("float32", "mixed_bfloat16")
TIMED_STEPS = {"jax": (20, 3), "torch": (10, 2)}  # (timed steps, untimed after the first)
SEARCH_STEPS = 30 * 391  # the paper's CIFAR-10 search: 30 epochs of 25,000 / 64 batches
DEFAULT_TOLERANCE = 1e-4


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["correctness", "speed", "projection", "tiny-step",
                                         "speed-step"],
                        help="the part to run (tiny-step and speed-step: one measurement, "
                             "the parts' own child processes)")
    parser.add_argument("--results", type=Path, default=Path("/tmp/swd-keras-device-check"),
                        help="folder for what the parts hand on (created)")
    parser.add_argument("--quick", action="store_true",
                        help="correctness: let the CPU stand in for a missing accelerator")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="correctness: the largest relative difference that passes")
    parser.add_argument("--device", choices=["cpu", "accelerator"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.tolerance > 0:
        parser.error("--tolerance must be a positive number.")
    if args.part in ("correctness", "speed", "tiny-step", "speed-step"):
        backend = os.environ.get("KERAS_BACKEND")
        if backend not in BACKENDS:
            parser.error(f"KERAS_BACKEND must be one of {', '.join(BACKENDS)} for the "
                         f"{args.part} part, got {backend!r}.")
    return args


def markdown_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def print_table(title: str, columns: tuple[str, ...]) -> None:
    print(f"\n{title}\n")
    print(markdown_row(columns))
    print(markdown_row("---" for _ in columns), flush=True)


def write_json(path: Path, value) -> None:
    """Writes ``value`` whole or not at all: a part killed at its time limit leaves the
    rows it finished for the projection."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, indent=1))
    os.replace(temporary, path)


def child_environment(backend: str, device: str, jax_cache: Path) -> dict[str, str]:
    """The environment of a correctness run on ``device`` (``cpu`` or ``accelerator``),
    JAX's compiled programs cached in ``jax_cache``."""
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1"}
    if backend == "jax":
        # float32 products and convolutions at full precision on a GPU, not TF32; on
        # the CPU too, so that a CPU standing in for the GPU compiles the same program
        # and finds it in the cache.
        env.update(JAX_COMPILATION_CACHE_DIR=str(jax_cache),
                   JAX_DEFAULT_MATMUL_PRECISION="highest")
        if device == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
    elif device == "cpu":
        env["KERAS_TORCH_DEVICE"] = "cpu"
    return env


def accelerator(backend: str) -> str | None:
    """The name of the accelerator the running backend computes on, or None on the CPU.
    Call it in a measurement's process only (it initialises the backend)."""
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return None if device.platform == "cpu" else str(device.device_kind)
    import keras
    import torch

    if keras.ops.zeros(()).device.type != "cuda":  # keras' device: KERAS_TORCH_DEVICE
        return None
    return torch.cuda.get_device_name()


# -- correctness ------------------------------------------------------------------------


def tiny_step(config: dict, device: str, folder: Path) -> dict:
    """Two bilevel steps of ``config`` (``TINY`` or ``QUICK``) in this process, with
    ``model.fit`` on a generator of fixed NumPy batches (``jit_compile=True`` on JAX).
    Writes the step losses, every model and optimizer variable (after the steps) and
    the edge weights to ``folder/<device>.npz``. Both runs start from one draw of the
    initial weights (PyTorch's initialisers draw different numbers on different
    devices): the CPU run writes it, the accelerator run waits for it. An accelerator
    run that finds no accelerator also waits for the CPU run to end, so that on JAX its
    compiled step comes from the compilation cache the two share.

    Returns:
        ``{"device": ..., "jit": ...}``: where and how it ran.
    """
    backend = os.environ["KERAS_BACKEND"]
    if backend == "torch" and device == "accelerator":
        import torch

        torch.backends.cudnn.allow_tf32 = False  # full float32, as the CPU computes
        torch.backends.cuda.matmul.allow_tf32 = False
    import keras
    import numpy as np

    from swd_keras.search import SWDSearchModel
    from swd_keras.supernet import build_supernet

    name = accelerator(backend) or "cpu"
    jit = backend == "jax"
    keras.utils.set_random_seed(0)
    supernet = build_supernet(config["input_shape"], config["classes"],
                              channels=config["channels"], layers=config["layers"],
                              k=config["k"])
    model = SWDSearchModel(supernet)
    model.compile(jit_compile=jit)
    initial = folder / "initial_weights.npz"
    if device == "cpu":
        save_npz(initial, {f"w{i}": w for i, w in enumerate(model.get_weights())})
    else:  # the CPU run builds its model at the same time, in its own process
        wait_for(folder / "cpu.npz" if name == "cpu" else initial)
        with np.load(initial) as saved:
            model.set_weights([saved[f"w{i}"] for i in range(len(saved.files))])

    rng = np.random.default_rng(0)
    batch = config["batch"]

    def half():
        images = rng.normal(size=(batch, *config["input_shape"])).astype("float32")
        return images, rng.integers(0, config["classes"], batch).astype("int32")

    batches = [(half(), half()) for _ in range(config["steps"])]

    def generator():  # keras takes generators without TensorFlow (no tf.data)
        yield from batches

    class Losses(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.logs = []

        def on_train_batch_end(self, batch, logs=None):
            self.logs.append([float(keras.ops.convert_to_numpy(logs[key]))
                              for key in ("loss", "arch_loss")])

    losses = Losses()
    model.fit(generator(), epochs=1, steps_per_epoch=config["steps"], callbacks=[losses],
              shuffle=False, verbose=0)
    arrays = {"step losses": np.array(losses.logs), "edge weights": model.edge_weights()}
    for variable in [*model.weights, *model.optimizer.variables]:
        arrays[variable.path] = keras.ops.convert_to_numpy(variable)
    save_npz(folder / f"{device}.npz", arrays)
    return {"device": name, "jit": jit}


def save_npz(path: Path, arrays: dict) -> None:
    """``np.savez``, whole or not at all: the other run reads the file once it exists."""
    import numpy as np

    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)


def wait_for(path: Path) -> None:
    """Returns once ``path`` exists (the part stops this process if the other run fails)."""
    while not path.exists():
        time.sleep(0.2)


def largest_difference(reference: dict, other: dict) -> tuple[float, str]:
    """The largest ``|other - reference| / max(1, |reference|)`` over all arrays, and
    the name of the array it is in ("" where nothing differs)."""
    import numpy as np

    if set(reference) != set(other):
        return float("inf"), "the runs hold different variables"
    worst, where = 0.0, ""
    for key, ref in reference.items():
        if ref.shape != other[key].shape:
            return float("inf"), f"{key}: shapes {ref.shape} and {other[key].shape}"
        if not ref.size:
            continue
        ref, value = ref.astype("float64"), other[key].astype("float64")
        difference = float(np.max(np.abs(value - ref) / np.maximum(1.0, np.abs(ref))))
        if not np.isfinite(difference):
            return float("inf"), key
        if difference > worst:
            worst, where = difference, key
    return worst, where


def correctness(args: argparse.Namespace) -> int:
    import numpy as np

    backend = os.environ["KERAS_BACKEND"]
    config = QUICK if args.quick else TINY
    columns = ("check", "backend", "devices", "configuration", "max difference", "in",
               "result")
    print_table(f"Correctness: accelerator against CPU ({backend})", columns)
    folder = args.results / f"correctness-{backend}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("initial_weights.npz", "cpu.npz", "accelerator.npz"):
        (folder / name).unlink(missing_ok=True)
    runs = {}
    for device in ("cpu", "accelerator"):
        with open(folder / f"{device}.log", "w") as log:  # the child holds its own copy
            runs[device] = subprocess.Popen(
                [sys.executable, __file__, "tiny-step", "--device", device,
                 *(["--quick"] * args.quick), "--results", str(folder)],
                stdout=subprocess.PIPE, stderr=log, text=True,
                env=child_environment(backend, device, folder / "jax-cache"))
    ran = {}
    for device, process in runs.items():  # the CPU first: the other one waits for it
        stdout, _ = process.communicate()
        if process.returncode != 0:
            runs["accelerator"].kill()
            stderr = (folder / f"{device}.log").read_text()
            print(stderr[-3000:], file=sys.stderr)
            print(markdown_row(("step", backend, device, describe(config), "", "",
                                "FAIL: " + last_line(stderr))))
            return 1
        ran[device] = json.loads(stdout.strip().splitlines()[-1])
    name = ran["accelerator"]["device"]
    if name == "cpu" and not args.quick:
        print(markdown_row(("step", backend, "no accelerator", describe(config), "", "",
                            f"FAIL: {backend} sees no GPU (--quick compares CPU with CPU)")))
        return 1
    with np.load(folder / "cpu.npz") as cpu, np.load(folder / "accelerator.npz") as acc:
        difference, where = largest_difference(dict(cpu), dict(acc))
    passed = difference <= args.tolerance
    jit = "jit" if ran["accelerator"]["jit"] else "eager"
    print(markdown_row(("step", backend, f"{name} vs cpu ({jit})", describe(config),
                        f"{difference:.2e}", where or "-",
                        f"{'PASS' if passed else 'FAIL'} (tolerance {args.tolerance:g})")),
          flush=True)
    return 0 if passed else 1


def describe(config: dict) -> str:
    return (f"{config['steps']} steps, C={config['channels']}, {config['layers']} cells, "
            f"k={config['k']}, batch {config['batch']}, "
            f"{'x'.join(map(str, config['input_shape']))}")


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:120] if lines else "no output"


# -- speed ------------------------------------------------------------------------------

SPEED_COLUMNS = ("backend", "device", "precision", "batch", "remat", "first step s (compile)",
                 "step s", "images/s", "peak GPU memory GB")


def speed_step(config: dict) -> dict:
    """``bench/search_step.py``'s measurement of ``config`` in this process, and the peak
    memory the accelerator held; ``{"skipped": ...}`` without an accelerator."""
    backend = config["backend"]
    name = accelerator(backend)
    if name is None:
        return {**config, "skipped": f"{backend} sees no GPU"}
    from search_step import run_child

    result = run_child(config)
    if backend == "jax":
        import jax

        peak = jax.devices()[0].memory_stats()["peak_bytes_in_use"]
    else:
        import torch

        peak = torch.cuda.max_memory_allocated()
    return {**result, "device": name, "peak_gpu_gb": peak / 2**30}


def speed(args: argparse.Namespace) -> int:
    from swd_keras.cli.allocator import allocator_environment

    backend = os.environ["KERAS_BACKEND"]
    print_table(f"Speed: the paper's search step ({backend}, C=16, 5 cells, k=4, "
                f"32x32x3; batch = search-train and search-val images each)", SPEED_COLUMNS)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"speed-{backend}.json"
    steps, warmup = TIMED_STEPS[backend]
    results, status = [], 0
    for batch in BATCHES:
        for precision in PRECISIONS:
            config = {**PAPER, "backend": backend, "precision": precision, "batch_size": batch,
                      "jit": backend == "jax", "steps": steps, "warmup": warmup}
            child = subprocess.run([sys.executable, __file__, "speed-step"],
                                   input=json.dumps(config), capture_output=True, text=True,
                                   env=allocator_environment(backend))
            if child.returncode != 0:
                print(child.stderr[-3000:], file=sys.stderr)
                result = {**config, "error": last_line(child.stderr)}
                status = 1
            else:
                result = json.loads(child.stdout.strip().splitlines()[-1])
            if "skipped" in result:
                print(f"{result['skipped']}: the speed part measures GPUs only.")
                return 1
            results.append(result)
            write_json(out, results)
            print(markdown_row(speed_row(result)), flush=True)
    return status


def speed_row(r: dict) -> tuple:
    if "error" in r:
        return (r["backend"], "", r["precision"], r["batch_size"], r["remat"],
                "failed: " + r["error"], "", "", "")
    return (r["backend"], r["device"], r["precision"], r["batch_size"], r["remat"],
            f"{r['first_step_s']:.1f}", f"{r['step_s']:.4f}", f"{r['images_per_s']:.0f}",
            f"{r['peak_gpu_gb']:.2f}")


# -- projection -------------------------------------------------------------------------


def projection(args: argparse.Namespace) -> int:
    columns = ("backend", "device", "precision", "step s (batch 64)", "first step s",
               "projected search", "")
    print_table(f"Projection: the paper's CIFAR-10 search, {SEARCH_STEPS:,} steps "
                f"(30 epochs x 391) at batch 64", columns)
    projected = []
    for backend in BACKENDS:
        path = args.results / f"speed-{backend}.json"
        rows = [r for r in (json.loads(path.read_text()) if path.exists() else [])
                if "step_s" in r and r["batch_size"] == 64]
        if not rows:
            print(f"{backend}: no batch-64 speed result in {args.results}; not projected.")
            continue
        best = min(rows, key=lambda r: r["step_s"])
        seconds = SEARCH_STEPS * best["step_s"] + best["first_step_s"]
        projected.append((seconds, best))
    if not projected:
        return 1
    fastest = min(seconds for seconds, _ in projected)
    for seconds, r in projected:
        print(markdown_row((r["backend"], r["device"], r["precision"], f"{r['step_s']:.4f}",
                            f"{r['first_step_s']:.1f}",
                            f"{seconds / 3600:.2f} h ({seconds / 60:.0f} min)",
                            "fastest" if seconds == fastest else "")))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.part == "tiny-step":
        print(json.dumps(tiny_step(QUICK if args.quick else TINY, args.device, args.results)))
        return 0
    if args.part == "speed-step":
        print(json.dumps(speed_step(json.loads(sys.stdin.read()))))
        return 0
    if args.part in ("correctness", "speed"):
        backend = os.environ["KERAS_BACKEND"]
        missing = [name for name in (backend, "keras") if importlib.util.find_spec(name) is None]
        if missing:
            print(f"{args.part} ({backend}): {' and '.join(missing)} not installed; skipped.")
            return 0
    return {"correctness": correctness, "speed": speed, "projection": projection}[
        args.part](args)


if __name__ == "__main__":
    sys.exit(main())
