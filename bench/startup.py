"""Where the time before the first search step goes, phase by phase.

Builds the search model as ``bench/search_step.py`` does (one configuration, in this
process) and times its train step the way ``fit()`` runs it, split into phases:

    import        importing keras, the backend and swd_keras;
    build         ``build_supernet`` + ``SWDSearchModel`` + ``compile()``;
    trace         TensorFlow: Python tracing of the step into a graph (with the number
                  of graph operations); JAX: tracing and lowering under ``jax.jit``;
    optimise+run  TensorFlow: the first call, which runs the Grappler graph optimiser
                  and then the step; JAX: XLA compilation, then the first step;
                  PyTorch: the first (eager) step;
    step          the median of the next ``--steps`` steps.

TensorFlow's graph optimiser can be switched off (``--grappler off``) or limited to
some passes (``--grappler-off layout_optimizer remapping ...``) to measure what it costs
and what it gains.

Example:
    python bench/startup.py --backend tensorflow --grappler off --json startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

_PROCESS_START = time.perf_counter()

GRAPPLER_PASSES = ("layout_optimizer", "constant_folding", "shape_optimization",
                   "remapping", "arithmetic_optimization", "dependency_optimization",
                   "loop_optimization", "function_optimization", "debug_stripper",
                   "implementation_selector", "pin_to_host_optimization")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="tensorflow",
                        choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--method", default="swd", choices=["swd", "darts"])
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--grappler", choices=["default", "off"], default="default",
                        help="TensorFlow: run the Grappler graph optimiser or not")
    parser.add_argument("--grappler-off", nargs="+", default=[], choices=GRAPPLER_PASSES,
                        metavar="PASS", help=f"TensorFlow: Grappler passes to switch off, "
                                             f"of {', '.join(GRAPPLER_PASSES)}")
    parser.add_argument("--json", metavar="OUT", help="also write the phases here")
    args = parser.parse_args(argv)
    if min(args.cells, args.k, args.batch_size, args.input_size, args.channels,
           args.steps) < 1:
        parser.error("sizes and --steps must be positive integers.")
    return args


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import resource

    import keras
    import numpy as np

    from swd_keras.search import SWDSearchModel
    from swd_keras.supernet import build_supernet

    phases = {"import_s": time.perf_counter() - _PROCESS_START}
    keras.utils.set_random_seed(0)

    def build():
        supernet = build_supernet((args.input_size,) * 2 + (3,), args.classes,
                                  channels=args.channels, layers=args.cells, k=args.k,
                                  method=args.method)
        model = SWDSearchModel(supernet, method=args.method)
        model.compile()
        return model

    model, phases["build_s"] = _timed(build)
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.input_size, args.input_size, 3)

    def batch():
        return (rng.normal(size=shape).astype("float32"),
                rng.integers(0, args.classes, args.batch_size).astype("int32"))

    data = (batch(), batch())
    step = {"tensorflow": _tensorflow_step, "jax": _jax_step, "torch": _torch_step}[
        args.backend](model, data, args, phases)
    times = []
    for _ in range(args.steps):
        _, seconds = _timed(step)
        times.append(seconds)
    phases["step_s"] = float(np.median(times))
    phases["first_step_total_s"] = time.perf_counter() - _PROCESS_START - sum(times)
    phases["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = {**vars(args), **phases}
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                      for k, v in result.items()}, indent=1))
    if args.json:
        from swd_keras.runs import atomic_write_json

        atomic_write_json(args.json, {"date": time.strftime("%Y-%m-%d"), **result})
    return 0


def _tensorflow_step(model, data, args, phases):
    import tensorflow as tf

    if args.grappler == "off":
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    elif args.grappler_off:
        tf.config.optimizer.set_experimental_options(
            {name: False for name in args.grappler_off})
    data = tf.nest.map_structure(tf.constant, data)
    # As keras' TensorFlow trainer wraps train_step (without autograph).
    function = tf.function(tf.autograph.experimental.do_not_convert(model.train_step),
                           reduce_retracing=True)
    concrete, phases["trace_s"] = _timed(lambda: function.get_concrete_function(data))
    phases["graph_ops"] = len(concrete.graph.get_operations())

    def step():
        return float(function(data)["loss"])

    _, phases["optimise_and_first_step_s"] = _timed(step)
    return step


def _jax_step(model, data, args, phases):
    import jax

    model.make_train_function()
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    jitted = jax.jit(model.train_step)
    lowered, phases["trace_s"] = _timed(lambda: jitted.lower(state, data))
    compiled, phases["compile_s"] = _timed(lowered.compile)
    holder = {"state": state}

    def step():
        logs, holder["state"] = compiled(holder["state"], data)
        return float(logs["loss"])

    _, phases["optimise_and_first_step_s"] = _timed(step)
    return step


def _torch_step(model, data, args, phases):
    import torch

    model.make_train_function()
    data = tuple(tuple(torch.as_tensor(a) for a in half) for half in data)

    def step():
        return float(model.train_step(data)["loss"])

    _, phases["optimise_and_first_step_s"] = _timed(step)
    return step


if __name__ == "__main__":
    sys.exit(main())
