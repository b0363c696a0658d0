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

Example:
    python bench/inference.py                              # all four, TensorFlow
    python bench/inference.py --backend jax --networks swd-5 darts-8 --json out.json
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
    args = parser.parse_args(argv)
    if min(args.input_size, args.search_channels, args.retrain_channels,
           args.retrain_cells, args.runs, args.k) < 1 or args.warmup < 0 or args.classes < 2:
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
    for _ in range(warmup):
        model.predict_on_batch(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict_on_batch(image)  # returns NumPy: the work is finished
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from swd_keras.network import count_parameters

    keras.utils.set_random_seed(0)
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
    if args.json:
        from swd_keras.runs import atomic_write_json

        atomic_write_json(args.json, {"date": time.strftime("%Y-%m-%d"),
                                      "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
