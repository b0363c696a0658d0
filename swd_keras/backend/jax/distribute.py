"""JAX's data parallelism: ``keras.distribution.DataParallel`` over the global devices,
with ``keras.distribution.initialize`` first when several processes form the run.

The jitted step is one SPMD program over the global batch, so a step on N devices is
already the one-device step: nothing inside the step is reduced by hand.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import jax
import keras
import numpy as np

MULTI_PROCESS_SETTINGS = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "JAX_COORDINATOR_ADDRESS")
"""Environment variables that make a process one of several: Keras' own
(``keras.distribution.initialize``, with ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and
``KERAS_DISTRIBUTION_PROCESS_ID``) or JAX's (``jax.distributed.initialize``, with
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``)."""


def _initialize() -> None:
    """Joins the other processes once, before JAX's devices are first listed."""
    if not jax.distributed.is_initialized() and any(
            os.environ.get(name) for name in MULTI_PROCESS_SETTINGS):
        keras.distribution.initialize()


def count_replicas(devices: int | str) -> int:
    """The replicas ``devices`` (a count or ``"all"``) gives: every process's devices.

    Raises:
        ValueError: more devices than exist, or, with several processes, a count other
            than all of them.
    """
    _initialize()
    found = jax.device_count()
    if devices == "all":
        return found
    processes = jax.process_count()
    if processes > 1 and devices != found:
        raise ValueError(f"--devices {devices}: {processes} processes hold {found} devices; "
                         f"a run over several processes takes all of them (--devices all).")
    if devices > found:
        platform = jax.devices()[0].platform
        hint = ("" if platform != "cpu" else
                "; XLA_FLAGS=--xla_force_host_platform_device_count=N makes N host devices")
        raise ValueError(f"--devices {devices}: only {found} {platform} "
                         f"device{'s' if found > 1 else ''} here{hint}.")
    return devices


@contextlib.contextmanager
def scope(replicas: int) -> Iterator[keras.distribution.DataParallel]:
    """Sets ``DataParallel`` over the first ``replicas`` devices; restores the previous
    distribution on exit."""
    _initialize()
    distribution = keras.distribution.DataParallel(devices=jax.devices()[:replicas])
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(distribution)
    try:
        yield distribution
    finally:
        keras.distribution.set_distribution(previous)


def is_chief() -> bool:
    """Whether this is process 0 (the only one without several processes)."""
    _initialize()
    return jax.process_index() == 0


def to_numpy(value) -> np.ndarray:
    """A replicated variable's value as NumPy. With several processes no process can
    address the whole array, so it reads its own copy (every copy is the same)."""
    if isinstance(value, keras.Variable):
        value = value.value
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        value = value.addressable_data(0)
    return np.asarray(value)
