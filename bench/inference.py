"""Single-image inference time of the search and retrain networks (the paper's Table V).

The paper compares search methods by the mean time of one inference of the search
network on one image. This script times, in one process per backend, the mean and the
median of ``--runs`` single-image (1x32x32x3) inferences after ``--warmup`` untimed
ones, of:

    swd-5      the SWD search network, 5 cells (the paper's search setting)
    swd-8      the SWD search network, 8 cells
    darts-8    the DARTS search network (softmax edges, all channels), 8 cells
    retrain    the retrain network of ``--genotype`` (C=36, 20 cells, no auxiliary head)

Each network runs as ``model.predict_on_batch`` runs it: compiled by the backend
(``tf.function`` on TensorFlow, ``jax.jit`` on JAX, eager on PyTorch), in inference
mode (BatchNorm with moving statistics).

``--runtimes MODEL`` (a retraining run's ``model.keras``) times the deployed network
instead, one row per runtime, on raw uint8 images: Keras (the serving model,
``predict_on_batch``), the SavedModel (TensorFlow, its ``serving_default`` signature),
ONNX Runtime, and the LiteRT interpreter with the float32 and the int8 model; the
median of ``--runs`` calls on one image and on a batch of ``--batch``, and the file's
size. The exports come from ``--export-dir`` (a version folder ``swd-keras export
--format saved_model,onnx,tflite`` wrote; the formats it lacks get no row), else are
exported into a temporary folder.

Example:
    python bench/inference.py                              # all four, TensorFlow
    python bench/inference.py --backend jax --networks swd-5 darts-8 --json out.json
    python bench/inference.py --runtimes runs/pipeline-digits/train/model.keras
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

NETWORKS = ("swd-5", "swd-8", "darts-8", "retrain")
COLUMNS = ("backend", "network", "cells", "C", "parameters", "mean ms", "median ms",
           "build s")
RUNTIME_COLUMNS = ("runtime", "file", "MB", "1 image ms", "batch ms", "batch")
RUNTIMES = ("keras", "saved_model", "onnxruntime", "litert float32", "litert int8")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="tensorflow",
                        choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--search-channels", type=int, default=16)
    parser.add_argument("--k", type=int, default=4, help="search networks' k")
    parser.add_argument("--retrain-channels", type=int, default=36)
    parser.add_argument("--retrain-cells", type=int, default=20)
    parser.add_argument("--genotype", default="swd_nas_paper",
                        help="built-in genotype name or genotype JSON (retrain network)")
    parser.add_argument("--runs", type=int, default=50, help="timed inferences (mean)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed inferences first")
    parser.add_argument("--json", metavar="OUT", help="also write the rows here")
    parser.add_argument("--runtimes", metavar="MODEL",
                        help="a run's model.keras: time it in each runtime instead")
    parser.add_argument("--export-dir", metavar="DIR",
                        help="with --runtimes: the version folder of its exports")
    parser.add_argument("--batch", type=int, default=32, help="with --runtimes: batch size")
    args = parser.parse_args(argv)
    if args.export_dir and not args.runtimes:
        parser.error("--export-dir needs --runtimes MODEL.")
    if min(args.input_size, args.search_channels, args.retrain_channels,
           args.retrain_cells, args.runs, args.k, args.batch) < 1 \
            or args.warmup < 0 or args.classes < 2:
        parser.error("sizes and --runs must be positive integers, --warmup >= 0 and "
                     "--classes >= 2.")
    return args


def build(name: str, args: argparse.Namespace):
    """(model, cells, channels) of one network of ``NETWORKS``."""
    from swd_keras.network import build_network
    from swd_keras.supernet import build_supernet

    shape = (args.input_size, args.input_size, 3)
    if name == "retrain":
        model = build_network(args.genotype, shape, args.classes,
                              channels=args.retrain_channels, layers=args.retrain_cells,
                              auxiliary=False, drop_path=0.0)
        return model, args.retrain_cells, args.retrain_channels
    method, cells = name.split("-")
    model = build_supernet(shape, args.classes, channels=args.search_channels,
                           layers=int(cells), k=args.k, method=method)
    return model, int(cells), args.search_channels


def time_inference(model, image, runs: int, warmup: int) -> list[float]:
    """Seconds of each of ``runs`` ``predict_on_batch(image)`` calls after ``warmup``."""
    return time_calls(model.predict_on_batch, image, runs, warmup)


def time_calls(predict, images, runs: int, warmup: int) -> list[float]:
    """Seconds of each of ``runs`` ``predict(images)`` calls (which return NumPy, so the
    work is finished) after ``warmup`` untimed ones."""
    for _ in range(warmup):
        predict(images)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predict(images)
        times.append(time.perf_counter() - start)
    return times


def runtime_predictors(keras_model, model_file: str, export_dir):
    """(runtime, file, batch size -> predict function) for each of ``RUNTIMES``.

    Each runtime loads its model when asked for a batch size (only the files that exist
    are asked for); a LiteRT interpreter is made per batch size, as resizing one between
    calls would be timed as well.
    """
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from onnxruntime import InferenceSession

    def saved_model(batch):
        signature = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
        return lambda images: {k: v.numpy() for k, v in
                               signature(images=tf.constant(images)).items()}

    def onnx(batch):
        session = InferenceSession(str(export_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
        return lambda images: session.run(None, {"images": np.asarray(images)})

    def litert(file):
        def make(batch):
            runner = Interpreter(model_path=str(export_dir / file)).get_signature_runner()
            return lambda images: runner(images=images)
        return make

    return [
        ("keras", model_file, lambda batch: keras_model.predict_on_batch),
        ("saved_model", export_dir / "saved_model.pb", saved_model),
        ("onnxruntime", export_dir / "model.onnx", onnx),
        ("litert float32", export_dir / "model.tflite", litert("model.tflite")),
        ("litert int8", export_dir / "model_int8.tflite", litert("model_int8.tflite")),
    ]


def runtime_rows(args: argparse.Namespace) -> list[dict]:
    """One row per runtime of ``--runtimes MODEL`` (see the module's docstring)."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from swd_keras.export import export_model, serving_model_from_run

    with tempfile.TemporaryDirectory(prefix="swd-keras-bench-") as scratch:
        export_dir = Path(args.export_dir) if args.export_dir else export_model(
            args.runtimes, ("saved_model", "onnx", "tflite"), scratch, name="bench",
            verbose=False).path
        keras_model = serving_model_from_run(args.runtimes)
        predictors = runtime_predictors(keras_model, args.runtimes, export_dir)
        shape = (args.batch, *keras_model.input_shape[1:])
        images = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
        rows = []
        for runtime, file, make in predictors:
            if not Path(file).is_file():  # a format the export folder does not have
                continue
            size = Path(file).stat().st_size
            if runtime == "saved_model":  # its graph and its variables/
                size += sum(f.stat().st_size for f in (export_dir / "variables").iterdir())
            medians = [statistics.median(time_calls(make(batch), images[:batch], args.runs,
                                                    args.warmup))
                       for batch in (1, args.batch)]
            rows.append({"runtime": runtime, "file": Path(file).name,
                         "MB": round(size / 2**20, 2),
                         "1 image ms": round(1000 * medians[0], 2),
                         "batch ms": round(1000 * medians[1], 2), "batch": args.batch})
            print("| " + " | ".join(str(rows[-1][c]) for c in RUNTIME_COLUMNS) + " |",
                  flush=True)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from swd_keras.network import count_parameters

    keras.utils.set_random_seed(0)
    if args.runtimes:
        print("| " + " | ".join(RUNTIME_COLUMNS) + " |")
        print("|" + " --- |" * len(RUNTIME_COLUMNS))
        rows = runtime_rows(args)
        write_json(args, rows)
        return 0
    image = np.random.default_rng(0).normal(
        size=(1, args.input_size, args.input_size, 3)).astype("float32")
    rows = []
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * len(COLUMNS))
    for name in args.networks:
        start = time.perf_counter()
        try:
            model, cells, channels = build(name, args)
        except ValueError as error:  # a configuration the networks reject
            print(f"inference.py: error: {error}", file=sys.stderr)
            return 2
        build_seconds = time.perf_counter() - start
        times = time_inference(model, image, args.runs, args.warmup)
        row = {"backend": args.backend, "network": name, "cells": cells, "C": channels,
               "parameters": count_parameters(model),
               "mean ms": round(1000 * statistics.fmean(times), 1),
               "median ms": round(1000 * statistics.median(times), 1),
               "build s": round(build_seconds, 1)}
        rows.append(row)
        print("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |", flush=True)
    write_json(args, rows)
    return 0


def write_json(args: argparse.Namespace, rows: list[dict]) -> None:
    """Writes the rows to ``--json`` (if given), with the date and the arguments."""
    if args.json:
        from swd_keras.runs import atomic_write_json

        atomic_write_json(args.json, {"date": time.strftime("%Y-%m-%d"),
                                      "args": vars(args), "rows": rows})


if __name__ == "__main__":
    sys.exit(main())
