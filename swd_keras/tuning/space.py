"""``SearchSpace``: which settings a tuning project varies, and over which values.

A space is a mapping from a setting's name to its range, as a JSON or YAML file holds it::

    {"k": [2, 4, 8],                                   a list: a Choice
     "arch_lr": {"min": 1e-4, "max": 1e-2, "sampling": "log"},   bounds: a Float
     "channels": {"min": 8, "max": 16, "step": 8},     integer bounds: an Int
     "mode": "joint"}                                  one value: Fixed

Each entry becomes a KerasTuner hyperparameter of the same name (``declare``), so any
oracle (random, Bayesian, Hyperband, grid) draws its values. Names are checked against
the settings a hypermodel tunes, and every value's combinations are checked against the
search's and the retraining's own rules before any trial starts (``check``).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import keras_tuner

SAMPLINGS = ("linear", "log", "reverse_log")
_MAX_COMBINATIONS = 4096
_MAX_INT_VALUES = 64


class SearchSpace:
    """A validated tuning space: setting name -> range.

    Args:
        ranges: ``{name: range}``; a range is a list of values (Choice), a mapping with
            ``min`` and ``max`` and optionally ``step`` and ``sampling`` (Int when the
            bounds and step are integers, else Float), or one value (Fixed).
        allowed: the names a hypermodel tunes; any other name is refused.

    Raises:
        ValueError: an unknown name (the message lists the allowed ones), an empty
            range, or a malformed one, naming the setting.

    Example:
        >>> space = SearchSpace({"k": [2, 4], "lr": {"min": 0.01, "max": 0.1}},
        ...                     allowed=("k", "lr"))
        >>> space.names
        ('k', 'lr')
    """

    def __init__(self, ranges: Mapping[str, Any], allowed: tuple[str, ...]):
        if not isinstance(ranges, Mapping):
            raise ValueError(f"a search space must map setting names to ranges, got "
                             f"{type(ranges).__name__}.")
        unknown = [name for name in ranges if name not in allowed]
        if unknown:
            raise ValueError(f"space: unknown hyperparameter {unknown[0]!r}; allowed: "
                             f"{', '.join(allowed)}.")
        self._ranges = {name: _checked(name, spec) for name, spec in ranges.items()}

    @classmethod
    def from_file(cls, path: str | Path, allowed: tuple[str, ...]) -> SearchSpace:
        """The space in a ``.json``, ``.yaml`` or ``.yml`` file (``read_space_file``)."""
        return cls(read_space_file(path), allowed)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._ranges)

    def to_json(self) -> dict[str, Any]:
        """The ranges, as the file gives them (checked and normalised)."""
        return dict(self._ranges)

    def declare(self, hp: keras_tuner.HyperParameters) -> dict[str, Any]:
        """Registers every range in ``hp`` and returns the values ``hp`` holds now."""
        values = {}
        for name, spec in self._ranges.items():
            if isinstance(spec, list):
                values[name] = hp.Choice(name, spec, ordered=_ordered(spec))
            elif isinstance(spec, dict):
                kind = hp.Int if all(isinstance(spec.get(key, 1), int)
                                     for key in ("min", "max", "step")) else hp.Float
                values[name] = kind(name, spec["min"], spec["max"], step=spec.get("step"),
                                    sampling=spec.get("sampling", "linear"))
            else:
                values[name] = hp.Fixed(name, spec)
        return values

    def candidates(self) -> Iterator[dict[str, Any]]:
        """Value combinations that cover the space's edges, for ``check``: every
        combination of each Choice's values, each Int's values (its bounds if it has
        more than 64) and each Float's bounds; past 4,096 combinations, each setting's
        values in turn with the others at their first."""
        values = {name: _edge_values(spec) for name, spec in self._ranges.items()}
        if math.prod(len(v) for v in values.values()) <= _MAX_COMBINATIONS:
            for combination in itertools.product(*values.values()):
                yield dict(zip(values, combination, strict=True))
            return
        first = {name: options[0] for name, options in values.items()}
        for name, options in values.items():
            for value in options:
                yield {**first, name: value}

    def check(self, build: Callable[[dict[str, Any]], Any]) -> None:
        """Calls ``build`` (a settings dict -> validated config) on every ``candidates``
        combination, so a value that breaks the search's own rules is reported before
        any trial starts.

        Raises:
            ValueError: naming the combination and the rule it breaks.
        """
        for values in self.candidates():
            try:
                build(values)
            except ValueError as error:
                shown = ", ".join(f"{name}={value!r}" for name, value in values.items())
                raise ValueError(f"space: {shown}: {error}") from None


def read_space_file(path: str | Path) -> dict[str, Any]:
    """The ranges in a ``.json``, ``.yaml`` or ``.yml`` file, parsed but not checked.

    Raises:
        ValueError: an unreadable or unparsable file, or one that is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"space file {path}: cannot read it ({error.strerror}).") from None
    kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
    try:
        ranges = _parse_yaml(text) if kind == "YAML" else json.loads(text)
    except ValueError as error:
        raise ValueError(f"space file {path}: not valid {kind} "
                         f"({str(error).splitlines()[0]}).") from None
    if ranges is None:
        return {}
    if not isinstance(ranges, dict):
        raise ValueError(f"space file {path}: must map setting names to ranges, got "
                         f"{type(ranges).__name__}.")
    return ranges


def _checked(name: str, spec: Any) -> Any:
    """``spec`` checked: a non-empty list of scalars of one kind, bounds, or one scalar."""
    if isinstance(spec, list | tuple):
        if not spec:
            raise ValueError(f"space: {name!r} has an empty range (no values).")
        if not all(_is_scalar(value) for value in spec):
            raise ValueError(f"space: {name!r} values must be numbers, strings or booleans, "
                             f"got {list(spec)!r}.")
        if len({type(value) for value in spec}) > 1 and not all(
                isinstance(value, int | float) and not isinstance(value, bool)
                for value in spec):
            raise ValueError(f"space: {name!r} mixes kinds of values: {list(spec)!r}.")
        if len(set(spec)) != len(spec):
            raise ValueError(f"space: {name!r} repeats a value: {list(spec)!r}.")
        return list(spec)
    if isinstance(spec, Mapping):
        extra = set(spec) - {"min", "max", "step", "sampling"}
        if extra or not {"min", "max"} <= set(spec):
            raise ValueError(f"space: {name!r} bounds take min, max and optionally step and "
                             f"sampling; got {sorted(spec)}.")
        bounds = [spec["min"], spec["max"], *([spec["step"]] if "step" in spec else [])]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bounds):
            raise ValueError(f"space: {name!r} min, max and step must be numbers, got "
                             f"{dict(spec)!r}.")
        if spec["min"] > spec["max"]:
            raise ValueError(f"space: {name!r} has an empty range (min {spec['min']} > max "
                             f"{spec['max']}).")
        if "step" in spec and spec["step"] <= 0:
            raise ValueError(f"space: {name!r} step must be positive, got {spec['step']}.")
        sampling = spec.get("sampling", "linear")
        if sampling not in SAMPLINGS:
            raise ValueError(f"space: {name!r} sampling must be one of {', '.join(SAMPLINGS)}"
                             f", got {sampling!r}.")
        if sampling != "linear" and spec["min"] <= 0:
            raise ValueError(f"space: {name!r} {sampling} sampling needs min > 0, got "
                             f"{spec['min']}.")
        return dict(spec)
    if not _is_scalar(spec):
        raise ValueError(f"space: {name!r} must be a list of values, bounds "
                         f"({{min, max}}) or one value, got {spec!r}.")
    return spec


def _parse_yaml(text: str) -> Any:
    """``text`` parsed as YAML; a parse error as a ValueError."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(str(error)) from None


def _is_scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float | str)


def _ordered(values: list) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _edge_values(spec: Any) -> list:
    if isinstance(spec, list):
        return spec
    if not isinstance(spec, dict):
        return [spec]
    low, high = spec["min"], spec["max"]
    integer = all(isinstance(spec.get(key, 1), int) for key in ("min", "max", "step"))
    if integer and (high - low) // spec.get("step", 1) < _MAX_INT_VALUES:
        return list(range(low, high + 1, spec.get("step", 1)))
    return [low, high] if low != high else [low]
