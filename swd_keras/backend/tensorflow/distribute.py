"""TensorFlow's data parallelism: ``tf.distribute.MirroredStrategy`` on one host,
``tf.distribute.MultiWorkerMirroredStrategy`` across the hosts ``TF_CONFIG`` names.

Counting devices reads only the environment and TensorFlow's physical device list,
which start no TensorFlow runtime: the logical CPU devices of a GPU-less host and the
multi-worker strategy must both be set up before the first TensorFlow op runs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from swd_keras.distribute import host_device_count

WORKER_JOBS = ("chief", "worker")
"""The ``TF_CONFIG`` jobs that train; a ``ps`` or ``evaluator`` task holds no replica."""


def cluster() -> dict | None:
    """The cluster ``TF_CONFIG`` describes: ``{"tasks": [(type, index), ...], "task":
    (type, index)}``, or None without ``TF_CONFIG``.

    Raises:
        ValueError: ``TF_CONFIG`` is not JSON, has no ``cluster`` of worker addresses,
            or names a task that is not in its cluster.
    """
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not JSON ({error.msg} at character {error.pos}).") \
            from None
    jobs = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(jobs, dict) or not any(
            isinstance(jobs.get(job), list) and jobs[job] for job in WORKER_JOBS):
        raise ValueError('TF_CONFIG has no "cluster" with a "chief" or "worker" list of '
                         'addresses, e.g. {"cluster": {"worker": ["host1:12345", '
                         '"host2:12345"]}, "task": {"type": "worker", "index": 0}}.')
    tasks = [(job, index) for job in WORKER_JOBS for index in range(len(jobs.get(job) or []))]
    task = config.get("task")
    here = (task.get("type"), task.get("index")) if isinstance(task, dict) else None
    if here not in tasks:
        raise ValueError(f"TF_CONFIG's task {task!r} is not in its cluster: its tasks are "
                         f"{', '.join(f'{job} {index}' for job, index in tasks)}.")
    return {"tasks": tasks, "task": here}


def _gpus() -> list:
    return tf.config.list_physical_devices("GPU")


def count_replicas(devices: int | str) -> int:
    """The replicas ``devices`` (a count or ``"all"``) gives here, cluster included.

    Raises:
        ValueError: more devices than exist, a malformed ``TF_CONFIG``, or a count a
            ``TF_CONFIG`` cluster cannot be split into.
    """
    found = cluster()
    workers = 1 if found is None else len(found["tasks"])
    if workers > 1:
        # The multi-worker strategy takes each worker's GPUs, or its one CPU.
        local = len(_gpus()) or 1
        if devices == "all":
            return workers * local
        if devices % workers or devices // workers > local:
            raise ValueError(
                f"--devices {devices}: TF_CONFIG names {workers} workers with {local} "
                f"device{'s' if local > 1 else ''} each here; pass --devices all or a "
                f"multiple of {workers} up to {workers * local}.")
        return devices
    gpus = len(_gpus())
    local = gpus or host_device_count()
    if devices == "all":
        return local
    if devices > local:
        what = (f"{gpus} GPU{'s' if gpus > 1 else ''}" if gpus else
                f"{local} host CPU device{'s' if local > 1 else ''} (no GPU; "
                f"XLA_FLAGS=--xla_force_host_platform_device_count=N makes N)")
        raise ValueError(f"--devices {devices}: only {what} here.")
    return devices


@contextlib.contextmanager
def scope(replicas: int) -> Iterator[tf.distribute.Strategy]:
    """Enters the strategy of ``replicas`` (more than one) replicas: the multi-worker
    one under a ``TF_CONFIG`` cluster, else a mirrored one over the first GPUs or, on a
    host without GPUs, over as many logical CPU devices."""
    found = cluster()
    if found is not None and len(found["tasks"]) > 1:
        per_worker = replicas // len(found["tasks"])
        gpus = _gpus()
        if gpus and per_worker < len(gpus):
            tf.config.set_visible_devices(gpus[:per_worker], "GPU")
        strategy = _strategy(None)
    elif _gpus():
        strategy = _strategy(tuple(f"/gpu:{i}" for i in range(replicas)))
    else:
        _split_host(replicas)
        strategy = _strategy(tuple(f"/cpu:{i}" for i in range(replicas)))
    with strategy.scope():
        yield strategy


@functools.cache
def _strategy(devices: tuple[str, ...] | None) -> tf.distribute.Strategy:
    """One strategy per device set and process: a second strategy over the same devices
    numbers its collective operations from the same start as the first, and the runtime
    takes them for the first one's (a shape mismatch in the collective instance)."""
    if devices is None:
        return _MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy(list(devices))


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """The multi-worker strategy with the ``reduce`` Keras 3's ``fit`` expects of it.

    Its own ``reduce`` takes one value, and ``fit`` hands it the whole first data batch
    (a nest) to find the input shapes; and ``fit`` reduces every scalar log with
    ``axis=0``, which a scalar has not (tensorflow/tensorflow#72388). So a nest is
    reduced value by value, and a scalar over the replicas alone (``axis=None``).
    """

    def reduce(self, reduce_op, value, axis):
        parent = tf.distribute.MultiWorkerMirroredStrategy.reduce

        def one(part):
            rank = self.experimental_local_results(part)[0].shape.rank
            return parent(self, reduce_op, part, axis if rank else None)

        return tf.nest.map_structure(one, value)


def _split_host(count: int) -> None:
    """Makes ``count`` logical CPU devices of the host's CPU (once per process)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is not None and len(configured) >= count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        raise RuntimeError(
            f"{count} replicas on the host CPU need {count} logical CPU devices, and "
            f"TensorFlow had started with {len(configured or [None])} before: enter "
            f"swd_keras.distribute.data_parallel before any TensorFlow op runs.") from None


def is_chief() -> bool:
    """Whether this process is the cluster's chief: the ``chief`` task, else worker 0
    (True without a ``TF_CONFIG`` cluster)."""
    found = cluster()
    return found is None or found["task"] == found["tasks"][0]


def to_numpy(value) -> np.ndarray:
    """A variable's value as NumPy: a mirrored one's (every replica holds the same), or
    a sync-on-read one's (a metric's) aggregate over the replicas, which NumPy cannot
    read directly."""
    if isinstance(value, keras.Variable):
        value = value.value
    return tf.convert_to_tensor(value).numpy()
