"""Distributed tuning: KerasTuner's chief and workers, set by three environment variables.

``KERASTUNER_TUNER_ID`` names the process (``chief`` for the one that serves the oracle,
e.g. ``tuner0``, ``tuner1`` for workers), ``KERASTUNER_ORACLE_IP`` and
``KERASTUNER_ORACLE_PORT`` the chief's address. The chief runs no trial: it hands out
trials over gRPC and records their results; each worker runs one trial at a time and
asks for the next until the oracle has none. With none of the variables set, one process
does both. docs/SCALE.md has the commands for N machines.
"""

from __future__ import annotations

import os

TUNER_ID, ORACLE_IP, ORACLE_PORT = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP",
                                    "KERASTUNER_ORACLE_PORT")
DEFAULT_CHIEF_TIMEOUT = 300.0
"""Seconds a worker waits for its chief to answer before it gives up."""


def role() -> str:
    """``single`` (no distributed tuning), ``chief`` or ``worker``.

    Raises:
        ValueError: ``KERASTUNER_ORACLE_IP`` set without the other two variables.
    """
    if ORACLE_IP not in os.environ:
        return "single"
    missing = [name for name in (ORACLE_PORT, TUNER_ID) if not os.environ.get(name)]
    if missing:
        raise ValueError(f"{ORACLE_IP} is set, so this is distributed tuning, but "
                         f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                         f"not: set all of {TUNER_ID}, {ORACLE_IP} and {ORACLE_PORT}.")
    port = os.environ[ORACLE_PORT]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{ORACLE_PORT} must be a port number (1-65535), got {port!r}.")
    return "chief" if "chief" in os.environ[TUNER_ID] else "worker"


def is_worker() -> bool:
    """Whether this process is a distributed tuning worker."""
    return role() == "worker"


def chief_address() -> str:
    """``IP:PORT`` of the chief, from the environment."""
    return f"{os.environ[ORACLE_IP]}:{os.environ[ORACLE_PORT]}"


def wait_for_chief(timeout: float = DEFAULT_CHIEF_TIMEOUT) -> None:
    """Returns once the chief's oracle server accepts connections.

    KerasTuner's own client waits up to an hour on every request; a worker started
    against a wrong address or a chief that died should say so instead.

    Raises:
        ValueError: no answer within ``timeout`` seconds.
    """
    import grpc

    channel = grpc.insecure_channel(chief_address())
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ValueError(f"cannot reach the tuning chief at {chief_address()} within "
                         f"{timeout:g} s: start the chief first ({TUNER_ID}=chief), or "
                         f"check {ORACLE_IP} and {ORACLE_PORT}.") from None
    finally:
        channel.close()
