"""Run folders: atomic file writes, config and resume bookkeeping."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from keras import ops


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


def save_checkpoint(path: str | os.PathLike, model, state: dict) -> None:
    """Model variables, optimizer variables and the run state, in one atomic file."""
    arrays = {f"model_{i}": ops.convert_to_numpy(v.value)
              for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer_{i}": ops.convert_to_numpy(v.value)
                   for i, v in enumerate(model.optimizer.variables)})
    buffer = io.BytesIO()
    np.savez(buffer, state=np.array(json.dumps(state)), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, model) -> dict:
    """Restores a checkpoint into a model built from the same config; returns the state."""
    with np.load(path, allow_pickle=False) as data:
        for prefix, variables in (("model", model.variables),
                                  ("optimizer", model.optimizer.variables)):
            stored = sum(1 for key in data.files if key.startswith(prefix + "_"))
            if stored != len(variables):
                raise ValueError(f"{path} does not match this model ({stored} {prefix} "
                                 f"variables stored, {len(variables)} expected).")
            for i, variable in enumerate(variables):
                variable.assign(data[f"{prefix}_{i}"])
        return json.loads(str(data["state"]))
