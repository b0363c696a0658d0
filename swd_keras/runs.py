"""One run-folder layer for every job (the search and the retraining).

A run folder holds ``config.json`` (the run's record: its format, the backend it
started on, its frozen config and what the job adds), ``checkpoint.npz`` (the last
completed epoch) and ``history.csv`` (one row per epoch), all written atomically, so a
run killed at any moment resumes from its last completed epoch.

The rules every job follows:

- **Configs** are frozen dataclasses derived from ``RunConfig``: validated when made,
  stored as JSON and read back through the same class (fields added since a run
  started take their defaults).
- **Checkpoints** key every variable by its path (``model/<path>``,
  ``optimizer/<path>``), so a checkpoint restores into any model built from the same
  config, whatever the order of its variables; a checkpoint that does not match the
  model is refused with what differs.
- **Divergence**: one check (``non_finite``) stops a job at the first NaN or infinite
  loss or metric (``RunCallback``); its last good checkpoint is kept.
- **A run folder** is one whose ``config.json`` is a complete record of its job
  (``read_run``: its format, backend and every setting the job's config requires);
  jobs write it only once their data has loaded, so an unloadable dataset leaves no
  folder, and a folder with an incomplete record is neither resumed nor written into.
- **Resume** (``resume_run``): only a folder that holds a run of the same job, on the
  backend it started on; a checkpoint written by an earlier version of this package is
  refused in one line.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import importlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import keras
import numpy as np

from swd_keras.distribute import is_chief, to_numpy

CONFIG_FILE, CHECKPOINT_FILE, HISTORY_FILE = "config.json", "checkpoint.npz", "history.csv"
CHECKPOINT_FORMAT = "swd-keras/checkpoint@2"
"""Checkpoints keyed by variable path; ``resume_run`` refuses the ``@1`` ones, keyed by index."""
_KINDS = {
    "search": ("swd_keras.search_job", "SearchConfig", ()),
    "retrain": ("swd_keras.training.config", "RetrainConfig", ("genotype",)),
}
"""Per job: its config class (module, name; imported when a record is checked, since
those modules import this one) and the record's own fields that resuming it reads."""
RUN_KINDS = tuple(_KINDS)
_RECORD_FIELDS = ("format", "backend", "config")


# ----------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` through a temporary file in the same folder.

    A reader (or a crash) sees either the old file or the whole new one, never a
    partly written file.

    Args:
        path: destination file; its folder is created if missing.
        data: the file's full content.

    Returns:
        The destination as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) atomically; see ``atomic_write_bytes``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as indented JSON atomically; see ``atomic_write_bytes``."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------- configs


class RunConfig:
    """Base of the jobs' configs: frozen dataclasses validated when made, JSON both ways.

    A subclass is a ``@dataclasses.dataclass(frozen=True)`` that overrides ``validate``
    (raising a ``ValueError`` that names the setting); ``dataclasses.replace`` validates
    the new value too.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ()
    """Settings every stored config of this class holds, besides its fields without a
    default: those that decide what a run computes, so that a record without them is
    not taken for a run at the defaults. Fields added later are not listed: a run
    started before them takes their defaults."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self):
        """Raises a ValueError naming the first bad setting; returns self."""
        return self

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]):
        """The config stored by ``to_json``; fields unknown to this version are dropped,
        missing ones take their defaults."""
        fields = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in fields})

    @classmethod
    def missing_settings(cls, data: dict[str, Any]) -> list[str]:
        """The required settings (``REQUIRED`` and the fields without a default) that a
        stored config ``data`` lacks, in field order.

        Example:
            >>> SearchConfig.missing_settings({"dataset": "digits"})[:2]
            ['epochs', 'batch_size']
        """
        without_default = [field.name for field in dataclasses.fields(cls)
                           if field.default is dataclasses.MISSING
                           and field.default_factory is dataclasses.MISSING]
        return [name for name in dict.fromkeys([*without_default, *cls.REQUIRED])
                if name not in data]


# ------------------------------------------------------------------------- the record


def _format(kind: str) -> str:
    if kind not in RUN_KINDS:
        raise ValueError(f"kind must be one of {RUN_KINDS}, got {kind!r}.")
    return f"swd-keras/{kind}-run@1"


def is_run_folder(path: str | os.PathLike, kind: str | None = None) -> bool:
    """Whether ``path`` holds a complete record of a ``kind`` run (any job's if None).

    Example:
        >>> is_run_folder("runs/search-digits-0", "search")
        True
    """
    for job in RUN_KINDS if kind is None else (kind,):
        try:
            read_run(path, job)
            return True
        except ValueError:
            pass
    return False


def check_new_run_folder(run_dir: str | os.PathLike) -> None:
    """Raises a ValueError if ``run_dir`` exists and is not empty (a new run's folder
    must not mix with another run's files, nor overwrite a ``config.json`` it did not
    write, complete or not)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        advice = ("resume the run it holds (resume=True, --resume) or choose another folder"
                  if is_run_folder(run_dir) else
                  "it holds no complete run to resume; choose another folder")
        raise ValueError(f"run folder {run_dir} already exists and is not empty: {advice}.")


def start_run(run_dir: str | os.PathLike, kind: str, config: RunConfig,
              **extra: Any) -> dict[str, Any]:
    """Writes a new run's record into ``run_dir`` (which must be new or empty).

    A job calls it once its data has loaded, so that a run that cannot start leaves
    nothing behind.

    Args:
        run_dir: the run folder.
        kind: the job, one of ``RUN_KINDS``.
        config: the run's settings.
        **extra: more JSON-ready fields the job records (e.g. the genotype).

    Returns:
        The record written to ``config.json``.

    Example:
        >>> start_run("runs/new", "search", SearchConfig(dataset="digits"))["format"]
        'swd-keras/search-run@1'
    """
    check_new_run_folder(run_dir)
    record = {"format": _format(kind), "backend": keras.backend.backend(),
              "config": config.to_json(), **extra}
    atomic_write_json(Path(run_dir) / CONFIG_FILE, record)
    return record


def read_run(run_dir: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The record of the ``kind`` run in ``run_dir``, checked to be complete.

    Args:
        run_dir: the run folder.
        kind: the job, one of ``RUN_KINDS``.

    Returns:
        The record (``config.json``): ``format``, ``backend``, ``config`` and the
        job's own fields.

    Raises:
        ValueError: no record, an unreadable one, another job's, an incomplete one
            (the message names what it lacks), or one written by an earlier version
            of this package.

    Example:
        >>> read_run("runs/search-digits-0", "search")["config"]["dataset"]
        'digits'
    """
    expected, path = _format(kind), Path(run_dir) / CONFIG_FILE
    name = "retraining" if kind == "retrain" else kind
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{run_dir} is not a {name} run folder (no {CONFIG_FILE}).") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read ({error}).") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a {name} run record (a JSON object is expected).")
    if "format" not in record and "dataset" in record and kind == "search":
        raise ValueError(_predates(run_dir))  # the bare config searches kept before formats
    if "format" in record and record["format"] != expected:
        raise ValueError(f"{path}: not a {name} run record (format {record['format']!r}, "
                         f"expected {expected!r}).")
    missing = _missing(record, kind)
    if missing:
        raise ValueError(f"{path} is not a complete {name} run record: it has no "
                         f"{', '.join(missing)}.")
    return record


def _missing(record: dict[str, Any], kind: str) -> list[str]:
    """The fields of a ``kind`` record (and, as ``config.NAME``, the settings of its
    config) that ``record`` lacks."""
    module, class_name, job_fields = _KINDS[kind]
    missing = [field for field in (*_RECORD_FIELDS, *job_fields) if field not in record]
    config = record.get("config")
    if "config" in record and not isinstance(config, dict):
        missing.append("config settings (config is not a JSON object)")
    elif isinstance(config, dict):
        config_class = getattr(importlib.import_module(module), class_name)
        missing += [f"config.{field}" for field in config_class.missing_settings(config)]
    return missing


def check_backend(started_on: str, run_dir: str | os.PathLike) -> None:
    """Raises a ValueError unless the running Keras backend is ``started_on``: a run's
    checkpoints and compiled numerics belong to the backend it started on."""
    running = keras.backend.backend()
    if started_on != running:
        raise ValueError(f"{run_dir} was started on the {started_on} backend, not {running}: "
                         f"resume it there (--backend {started_on}).")


def resume_run(run_dir: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The record of the run to resume in ``run_dir``, checked to be resumable here.

    Raises:
        ValueError: not a ``kind`` run (``read_run``), started on another backend, or
            holding a checkpoint of an earlier version of this package.
    """
    record = read_run(run_dir, kind)
    check_backend(record.get("backend"), run_dir)
    checkpoint = Path(run_dir) / CHECKPOINT_FILE
    earlier = sorted((Path(run_dir) / "checkpoints").glob("epoch_*.npz"))
    if earlier or (checkpoint.is_file() and _stored_format(checkpoint) != CHECKPOINT_FORMAT):
        raise ValueError(_predates(run_dir))
    return record


def _predates(run_dir: str | os.PathLike) -> str:
    return (f"{run_dir} holds a run of an earlier swd-keras version (its checkpoint is keyed "
            f"by variable index), which this version cannot resume: start a new run.")


# ------------------------------------------------------------------------ checkpoints


def _keyed(prefix: str, variables: Iterable) -> dict[str, Any]:
    """``{prefix/path: variable}``. Keras gives a variable created outside a layer's
    scope (a cell's ``SeedGenerator``) a bare name that several share: the second and
    later ones are keyed ``path#1``, ``path#2``, ... in the model's own order."""
    seen: collections.Counter = collections.Counter()
    keyed = {}
    for variable in variables:
        count = seen[variable.path]
        seen[variable.path] += 1
        keyed[f"{prefix}/{variable.path}" + (f"#{count}" if count else "")] = variable
    return keyed


def _model_and_optimizer(model) -> dict[str, Any]:
    return {**_keyed("model", model.variables), **_keyed("optimizer", model.optimizer.variables)}


def save_checkpoint(path: str | os.PathLike, model, state: dict[str, Any]) -> Path:
    """Every variable of ``model`` and of its optimizer, keyed by path, and the job's
    JSON-ready ``state``, in one atomically written ``.npz``.

    Returns:
        The checkpoint's path.
    """
    arrays = {key: to_numpy(variable.value)
              for key, variable in _model_and_optimizer(model).items()}
    buffer = io.BytesIO()
    np.savez(buffer, state=np.array(json.dumps({"format": CHECKPOINT_FORMAT, **state})),
             **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, model) -> dict[str, Any]:
    """Restores a checkpoint into ``model`` (and its optimizer, built); returns the state.

    Raises:
        ValueError: a checkpoint of an earlier version, or one whose variables (paths or
            shapes) do not match the model's; nothing is assigned then.
    """
    variables = _model_and_optimizer(model)
    with np.load(path, allow_pickle=False) as data:
        state = json.loads(str(data["state"]))
        if state.pop("format", None) != CHECKPOINT_FORMAT:
            raise ValueError(_predates(Path(path).parent))
        stored = set(data.files) - {"state"}
        missing, unexpected = sorted(set(variables) - stored), sorted(stored - set(variables))
        if missing or unexpected:
            raise ValueError(
                f"{path} does not match this model: {len(missing)} of its variables are not "
                f"in the checkpoint{_examples(missing)}, {len(unexpected)} stored ones are "
                f"not in the model{_examples(unexpected)}.")
        arrays = {key: data[key] for key in variables}
    for key, variable in variables.items():
        if tuple(arrays[key].shape) != tuple(variable.shape):
            raise ValueError(f"{path} does not match this model: {key} has shape "
                             f"{tuple(arrays[key].shape)} there, {tuple(variable.shape)} here.")
    for key, variable in variables.items():
        variable.assign(arrays[key])
    return state


def _examples(keys: list[str]) -> str:
    return f" (e.g. {', '.join(keys[:2])})" if keys else ""


def _stored_format(path: Path) -> str | None:
    with np.load(path, allow_pickle=False) as data:
        if "state" not in data.files:
            return None
        return json.loads(str(data["state"])).get("format")


def checkpoint_state(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The job state of the run's checkpoint without loading its arrays (None: none)."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        state = json.loads(str(data["state"]))
    state.pop("format", None)
    return state


def completed_epochs(run_dir: str | os.PathLike) -> int:
    """The epochs the run's checkpoint has completed (0 without a checkpoint)."""
    state = checkpoint_state(run_dir)
    return 0 if state is None else int(state["epoch"])


# ------------------------------------------------------------------ history, divergence


def write_history(run_dir: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """``history.csv``: one row per epoch, a column per key any row has."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(Path(run_dir) / HISTORY_FILE, text.getvalue())


def non_finite(logs: dict[str, Any] | None) -> str | None:
    """``"loss became nan"`` for the first NaN or infinite value in ``logs`` (None: all
    finite): the one divergence check of every job."""
    for key, value in (logs or {}).items():
        if not math.isfinite(float(value)):
            return f"{key} became {float(value)}"
    return None


class RunDiverged(RuntimeError):
    """The loss (or a metric) became NaN or infinite; the last good checkpoint is kept."""


class RunCallback(keras.callbacks.Callback):
    """Records each completed epoch of a run, and stops at the first NaN or infinite log.

    After an epoch whose logs are all finite it appends the history row (the epoch,
    the logs and ``extra_logs``), calls ``record(epoch, row)`` (the job's own outputs)
    and writes the checkpoint and ``history.csv``; an epoch with a NaN or infinite log
    writes nothing and stops training. ``error()`` is then the ``RunDiverged`` to raise.

    Args:
        run_dir: the run folder.
        state: the job state the checkpoint stores; its ``"history"`` list gains a row
            and its ``"epoch"`` is set after each good epoch.
    """

    def __init__(self, run_dir: str | os.PathLike, state: dict[str, Any]):
        super().__init__()
        self.run_dir, self.state = Path(run_dir), state
        self.diverged: str | None = None
        self.chief = is_chief()

    def extra_logs(self) -> dict[str, float]:
        """More columns of the epoch's history row (read at the epoch's end)."""
        return {}

    def record(self, epoch: int, row: dict[str, float]) -> None:
        """The job's own outputs of a completed (1-based) ``epoch``, before its checkpoint."""

    def stop(self, reason: str) -> None:
        """Marks the run as diverged (``reason``) and stops training."""
        self.diverged = self.diverged or reason
        self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        bad = non_finite(logs)
        if self.diverged or bad:
            self.stop(f"the training {bad} in epoch {epoch + 1}")
            return
        row = {"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()},
               **self.extra_logs()}
        self.state["epoch"] = epoch + 1
        self.state["history"].append(row)
        self.record(epoch + 1, row)
        if self.chief:
            save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.model, self.state)
            write_history(self.run_dir, self.state["history"])

    def error(self, hint: str = "") -> RunDiverged:
        """The ``RunDiverged`` that says what diverged and which checkpoint is kept."""
        done = completed_epochs(self.run_dir)
        kept = (f"the last good checkpoint is {self.run_dir / CHECKPOINT_FILE} (epoch {done})"
                if done else "no epoch completed, so there is no checkpoint")
        return RunDiverged(f"{self.diverged}; stopped; {kept}" + (f"; {hint}" if hint else "")
                           + ".")
