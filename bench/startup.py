"""Where the time before the first search step goes, phase by phase.

Builds the search model as ``bench/search_step.py`` does (one configuration, in this
process) and times its train step the way ``fit()`` runs it, split into phases:

    import        importing keras, the backend and swd_keras;
    build         ``build_supernet`` + ``SWDSearchModel`` + ``compile()``;
    trace         TensorFlow: Python tracing of the step into a graph (with the number
                  of graph operations); JAX: tracing and lowering under ``jax.jit``;
    compile       JAX: XLA compilation;
    optimise+run  TensorFlow: the first call, which runs the Grappler graph optimiser,
                  builds the executor and runs the step; JAX: the first compiled step;
                  PyTorch: the first (eager) step;
    step          the median of the next ``--steps`` steps.

Each phase also reports its process CPU seconds (``*_cpu_s``, all threads), which other
work on a shared machine disturbs less than wall time, and the resident memory after
build, trace and the steps (``rss_after_*_gb``) beside the peak. For the steps it also
reports the CPU seconds spent in the operating system (``step_kernel_cpu_s``) and the
page faults (``step_page_faults``), medians per step. Like ``swd-keras``, a JAX run
restarts itself with the allocator setting of ``cli/allocator.py``; set
``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` to measure without it.

TensorFlow's graph optimiser runs as ``model.fit`` sets it (off on a CPU, see
``swd_keras/backend/tensorflow/trainer.py``) unless ``--grappler on`` or ``off`` says otherwise;
``--grappler on --grappler-off layout_optimizer remapping ...`` switches single passes
off, to measure what each costs and gains. ``--profile DIR`` runs two more steps under
the backend's profiler (TensorFlow's, ``torch.profiler``, ``jax.profiler``), writes its
trace into DIR and reports the kernel time per op type.

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

from swd_keras.cli.allocator import restart_with_allocator_setting  # noqa: E402  (imports no keras)
from swd_keras.cli.tensorflow_import import import_tensorflow_without_optional_imports  # noqa: E402

GRAPPLER_PASSES = ("layout_optimizer", "constant_folding", "shape_optimization",
                   "remapping", "arithmetic_optimization", "dependency_optimization",
                   "loop_optimization", "function_optimization", "debug_stripper",
                   "implementation_selector", "pin_to_host_optimization")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="tensorflow",
                        choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--mode", default="bilevel", choices=["bilevel", "joint"],
                        help="the search step (swd-keras search --mode)")
    parser.add_argument("--method", default="swd", choices=["swd", "darts"])
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--remat", choices=["auto", "none", "first-stage", "all"],
                        default="auto",
                        help="which cells recompute their edges for the gradient "
                             "(swd-keras search --remat; auto: as the command resolves it)")
    parser.add_argument("--grappler", choices=["fit", "on", "off"], default="fit",
                        help="TensorFlow: the Grappler graph optimiser as model.fit sets it "
                             "(off on a CPU), or on, or off")
    parser.add_argument("--grappler-off", nargs="+", default=[], choices=GRAPPLER_PASSES,
                        metavar="PASS", help=f"TensorFlow: Grappler passes to switch off, "
                                             f"of {', '.join(GRAPPLER_PASSES)}")
    parser.add_argument("--profile", metavar="DIR",
                        help="profile two more steps into DIR and report the busiest op "
                             "types (time summed over the threads)")
    parser.add_argument("--json", metavar="OUT", help="also write the phases here")
    args = parser.parse_args(argv)
    if min(args.cells, args.k, args.batch_size, args.input_size, args.channels,
           args.steps) < 1:
        parser.error("sizes and --steps must be positive integers.")
    return args


_CPU = {}
_OPEN_SCOPES = []


def _rss_gb() -> float:
    """The process' resident memory now (Linux), GB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def _timed(fn, name=None):
    """(fn(), wall seconds); with ``name``, also records the process CPU seconds (all
    threads), which other processes on a shared machine disturb less than wall time."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if name:
        _CPU[name] = time.process_time() - cpu
    return result, time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    if argv is None:  # run as a script: start as `swd-keras` would
        restart_with_allocator_setting(args.backend)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import_tensorflow_without_optional_imports()  # as the swd-keras commands do
    import resource

    import keras
    import numpy as np

    from swd_keras.search import SWDSearchModel
    from swd_keras.search_job import resolve_remat
    from swd_keras.supernet import build_supernet

    phases = {"import_s": time.perf_counter() - _PROCESS_START}
    keras.utils.set_random_seed(0)

    def build():
        supernet = build_supernet((args.input_size,) * 2 + (3,), args.classes,
                                  channels=args.channels, layers=args.cells, k=args.k,
                                  method=args.method,
                                  rematerialize=resolve_remat(args.remat))
        model = SWDSearchModel(supernet, mode=args.mode, method=args.method)
        model.compile()
        return model

    model, phases["build_s"] = _timed(build, "build_cpu_s")
    phases["rss_after_build_gb"] = _rss_gb()
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.input_size, args.input_size, 3)

    def batch():
        return (rng.normal(size=shape).astype("float32"),
                rng.integers(0, args.classes, args.batch_size).astype("int32"))

    data = (batch(), batch())
    step = {"tensorflow": _tensorflow_step, "jax": _jax_step, "torch": _torch_step}[
        args.backend](model, data, args, phases)
    times, cpu_times, kernel_times, faults = [], [], [], []
    for _ in range(args.steps):
        before = resource.getrusage(resource.RUSAGE_SELF)
        _, seconds = _timed(step, "step_cpu_s")
        after = resource.getrusage(resource.RUSAGE_SELF)
        times.append(seconds)
        cpu_times.append(_CPU["step_cpu_s"])
        kernel_times.append(after.ru_stime - before.ru_stime)
        faults.append(after.ru_minflt - before.ru_minflt)
    phases["step_s"] = float(np.median(times))
    # The operating system's share of the step: memory handed back and faulted in again.
    phases["step_kernel_cpu_s"] = float(np.median(kernel_times))
    phases["step_page_faults"] = int(np.median(faults))
    phases["rss_after_steps_gb"] = _rss_gb()
    _CPU["step_cpu_s"] = float(np.median(cpu_times))
    phases["first_step_total_s"] = time.perf_counter() - _PROCESS_START - sum(times)
    if args.profile:
        profile = {"tensorflow": _tensorflow_profile, "jax": _jax_profile,
                   "torch": _torch_profile}[args.backend]
        phases["profile"] = profile(step, args.profile)
    phases["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    for scope in _OPEN_SCOPES:  # before the interpreter's shutdown unloads TensorFlow
        scope.__exit__(None, None, None)
    phases.update(_CPU)
    result = {**vars(args), **phases}
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                      for k, v in result.items()}, indent=1))
    if args.json:
        from swd_keras.runs import atomic_write_json

        atomic_write_json(args.json, {"date": time.strftime("%Y-%m-%d"), **result})
    return 0


def _tensorflow_step(model, data, args, phases):
    import tensorflow as tf

    if args.grappler == "fit":  # as model.fit runs the step; kept until the end
        _OPEN_SCOPES.append(model._step.fit_scope(model))
        _OPEN_SCOPES[-1].__enter__()
    elif args.grappler == "off":
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if args.grappler_off:
        tf.config.optimizer.set_experimental_options(
            {name: False for name in args.grappler_off})
    data = tf.nest.map_structure(tf.constant, data)
    # As keras' TensorFlow trainer wraps train_step (without autograph).
    function = tf.function(tf.autograph.experimental.do_not_convert(model.train_step),
                           reduce_retracing=True)
    concrete, phases["trace_s"] = _timed(lambda: function.get_concrete_function(data),
                                         "trace_cpu_s")
    # The step's graph and the functions it calls (the shared forward/backward).
    graph = concrete.graph.as_graph_def()
    phases["graph_ops"] = len(graph.node) + sum(len(f.node_def) for f in graph.library.function)
    phases["rss_after_trace_gb"] = _rss_gb()

    def step():
        return float(function(data)["loss"])

    _, phases["optimise_and_first_step_s"] = _timed(step, "optimise_and_first_step_cpu_s")
    return step


def _profiled(step, start, stop, steps: int) -> float:
    """Wall seconds of ``steps`` steps between the profiler's ``start()`` and
    ``stop()``."""
    start()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    wall = time.perf_counter() - began
    stop()
    return wall


def _xplane_events(logdir: str):
    """(line name, event name, seconds) of every event in the newest XPlane trace
    under ``logdir`` (written by TensorFlow's and JAX's profilers)."""
    import glob

    try:
        from tsl.profiler.protobuf import xplane_pb2
    except ImportError:  # older layouts
        from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb"))[-1], "rb") as f:
        space.ParseFromString(f.read())
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                yield (line.name, plane.event_metadata[event.metadata_id].name,
                       event.duration_ps * 1e-12)


def _tensorflow_profile(step, logdir: str, steps: int = 2) -> dict:
    """Runs ``steps`` steps under the TensorFlow profiler and sums the kernel time of
    each op type (over all threads), split into forward and gradient ops."""
    import collections

    import tensorflow as tf

    wall = _profiled(step, lambda: tf.profiler.experimental.start(logdir),
                     tf.profiler.experimental.stop, steps)
    by_type, by_part, executor = collections.Counter(), collections.Counter(), 0.0
    for line, name, seconds in _xplane_events(logdir):
        if not line.startswith("tf_Compute"):
            continue
        if name.startswith("ExecutorState::"):  # spans the kernels it runs
            executor += seconds
            continue
        if ":" not in name:  # other runtime events
            continue
        node, op_type = name.rsplit(":", 1)
        by_type[op_type] += seconds
        by_part["gradient" if "gradient" in node.lower() else "forward/update"] += seconds
    return {**_profile_summary(wall, by_type, steps, executor_process_s_per_step=executor),
            "by_part_s_per_step": {k: round(v / steps, 3) for k, v in by_part.items()}}


def _jax_profile(step, logdir: str, steps: int = 2) -> dict:
    """Runs ``steps`` steps under ``jax.profiler`` and sums the time of each kind of
    XLA operation (its HLO name without the number: ``fusion``, ``convolution``, ...)
    over XLA's threads."""
    import collections
    import re

    import jax

    wall = _profiled(step, lambda: jax.profiler.start_trace(logdir), jax.profiler.stop_trace,
                     steps)
    by_type = collections.Counter()
    for line, name, seconds in _xplane_events(logdir):
        # XLA's CPU threads; runtime events (the executor's spans, which contain the
        # operations, and thread-pool waits) are named Class::method.
        if line.startswith("tf_XLA") and "::" not in name:
            by_type[re.sub(r"[.\d]+$", "", name)] += seconds
    return _profile_summary(wall, by_type, steps)


def _profile_summary(wall: float, by_type, steps: int, **extra) -> dict:
    """Per-step figures of a profile: wall time, summed kernel time, the busiest op
    types."""
    return {"wall_s_per_step": round(wall / steps, 3),
            "kernel_s_per_step": round(sum(by_type.values()) / steps, 3),
            **{k: round(v / steps, 3) for k, v in extra.items()},
            "top_op_types_s_per_step": {k: round(v / steps, 3)
                                        for k, v in by_type.most_common(20)}}


def _torch_profile(step, logdir: str, steps: int = 2) -> dict:
    """Runs ``steps`` steps under ``torch.profiler`` (CPU), writes its Chrome trace into
    ``logdir`` and sums the self time of each aten op (over all threads)."""
    import collections

    import torch

    os.makedirs(logdir, exist_ok=True)
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    wall = _profiled(step, prof.start, prof.stop, steps)
    prof.export_chrome_trace(os.path.join(logdir, "trace.json"))
    # Only aten ops: the profiler also records autograd and Python-side events, whose
    # self time (dispatch overhead, not kernels) can rank among the top on a loaded machine.
    by_type = collections.Counter({event.key: event.self_cpu_time_total * 1e-6
                                   for event in prof.key_averages()
                                   if event.key.startswith("aten::")})
    return _profile_summary(wall, by_type, steps)


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
    lowered, phases["trace_s"] = _timed(lambda: jitted.lower(state, data), "trace_cpu_s")
    compiled, phases["compile_s"] = _timed(lowered.compile, "compile_cpu_s")
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
