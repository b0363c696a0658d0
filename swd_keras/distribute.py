"""Data parallelism, chosen once: one architecture searched (or retrained) on N replicas.

``data_parallel(devices)`` is the one place a job's strategy or distribution comes from:
``tf.distribute.MirroredStrategy`` (one host) or ``MultiWorkerMirroredStrategy`` (the
hosts ``TF_CONFIG`` names) on TensorFlow, ``keras.distribution.DataParallel`` (with
``keras.distribution.initialize`` for several processes) on JAX; PyTorch runs on one
device. Everything built, compiled and fitted inside the context is replicated, and the
data pipeline keeps yielding the global batch: Keras splits it over the replicas. The
backend specifics live in ``swd_keras/backend/<name>/distribute.py``.

A host without GPUs has as many devices as
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` says (JAX's own flag; TensorFlow's
host CPU is split into that many logical devices), which is how the tests run two
replicas on a CPU. See docs/SCALE.md.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import numpy as np

from swd_keras import backend

DEVICES_HELP = "'all' or a positive device count"
_HOST_DEVICES = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def check_devices(devices: str | int | None) -> str | int:
    """``devices`` in its stored form: ``"all"`` or a positive int (None: 1).

    Args:
        devices: ``"all"``, a count, or a count's digits (``"2"``).

    Returns:
        ``"all"`` or the count.

    Raises:
        ValueError: anything else, naming the allowed values.

    Example:
        >>> check_devices("2"), check_devices(None), check_devices("all")
        (2, 1, 'all')
    """
    if devices is None:
        return 1
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if devices == "all" or (isinstance(devices, int) and not isinstance(devices, bool)
                            and devices >= 1):
        return devices
    raise ValueError(f"devices must be {DEVICES_HELP}, got {devices!r}.")


def host_device_count() -> int:
    """The host devices ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` asks for
    (1 without it): a GPU-less host's device count on every backend."""
    found = _HOST_DEVICES.findall(os.environ.get("XLA_FLAGS", ""))
    return int(found[-1]) if found else 1


def replica_count(devices: str | int | None, batch_size: int | None = None) -> int:
    """The replicas ``devices`` gives on the running backend, checked to exist.

    Reads only the environment and the devices' list: no TensorFlow runtime starts, so
    it can run before ``data_parallel``.

    Args:
        devices: ``"all"``, a count, or None (1).
        batch_size: the global batch, checked to split evenly over the replicas (the
            cross-replica BatchNorm statistics and loss scaling assume equal local
            batches); None: not checked.

    Returns:
        The replica count (1 for one device).

    Raises:
        ValueError: a malformed ``devices``, more devices than exist (naming what exists),
            a malformed ``TF_CONFIG``, more than one device on PyTorch, or a batch that
            does not split.

    Example:
        >>> replica_count("all", batch_size=64)
        1
    """
    devices = check_devices(devices)
    engine = backend.module("distribute")
    if devices == 1:
        # A process of a multi-worker cluster that trained alone would write the same
        # run folder as its peers.
        cluster = engine.cluster() if hasattr(engine, "cluster") else None
        workers = 1 if cluster is None else len(cluster["tasks"])
        if workers > 1:
            raise ValueError(f"--devices 1: TF_CONFIG names a cluster of {workers} workers; "
                             f"pass --devices all to train on all of them, or unset TF_CONFIG.")
        replicas = 1
    else:
        replicas = engine.count_replicas(devices)
    if batch_size is not None and batch_size % replicas:
        raise ValueError(f"--batch-size {batch_size} does not split over {replicas} replicas: "
                         f"pass a multiple of {replicas} (each replica gets an equal part).")
    return replicas


@contextlib.contextmanager
def data_parallel(devices: str | int | None) -> Iterator[object | None]:
    """Runs the block data-parallel over ``devices``.

    One replica (``None``, ``1``, or ``"all"`` where one device exists) changes nothing.
    More: on TensorFlow a ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names a
    cluster of several workers, else a ``MirroredStrategy`` over the first GPUs (or, with
    no GPU, as many logical CPU devices), its ``scope()`` entered; on JAX
    ``keras.distribution.DataParallel`` set (after ``keras.distribution.initialize`` when
    the multi-process settings are in the environment) and the previous distribution
    restored on exit. On TensorFlow enter it before any TensorFlow op runs (data
    loading included): logical devices and the multi-worker strategy need that.

    Args:
        devices: ``"all"``, a count, or None (1).

    Yields:
        The strategy (TensorFlow), the distribution (JAX), or None for one replica.

    Raises:
        ValueError: as ``replica_count``.

    Example:
        >>> with data_parallel("all"):
        ...     model = build_search_model(config, (32, 32, 3), 10, steps_per_epoch)
        ...     model.fit(dataset, epochs=30)
    """
    replicas = replica_count(devices)
    if replicas == 1:
        yield None
        return
    with backend.module("distribute").scope(replicas) as engine:
        yield engine


def is_chief() -> bool:
    """Whether this process writes the run folder: TensorFlow's task 0 of the
    ``TF_CONFIG`` cluster (or no cluster), JAX's process 0; always on PyTorch.

    On JAX call it inside ``data_parallel`` (which joins the processes first).
    """
    return backend.module("distribute").is_chief()


def to_numpy(value) -> np.ndarray:
    """A variable's (or tensor's) value as NumPy, replicated or not: with several JAX
    processes, this process's own copy (no process addresses the whole array)."""
    return backend.module("distribute").to_numpy(value)
