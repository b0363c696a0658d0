"""Searched architectures: the Genotype data type, its JSON file, derivation, built-ins.

A genotype is the one contract between search and retraining (SPEC §3, §5, §6). It holds
any number of cells; each cell lists 8 ``(op, input)`` pairs, two per intermediate node
in node order. Input indices number the cell's nodes: 0 and 1 are the two cell inputs
(the outputs of the previous-previous and previous cells), 2..5 the intermediate nodes
0..3, so intermediate node ``i`` may take inputs ``0 .. i + 1``.

Example:
    >>> g = get_genotype("swd_nas_paper")
    >>> g.num_cells, g.reduction_indices
    (5, (1, 3))
    >>> path = g.save("genotype.json")
    >>> Genotype.load("genotype.json") == g
    True
"""

from __future__ import annotations

import ast
import functools
import importlib.resources
import json
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from keras import ops

from swd_keras.ops import OPS, PARAMETER_FREE, PRIMITIVES, check_primitives
from swd_keras.runs import atomic_write_json

GENOTYPE_FORMAT = "swd-keras/genotype@1"
"""The ``format`` value of a genotype JSON file; a reader rejects any other version."""

CELL_TYPES: tuple[str, ...] = ("normal", "reduce")
NUM_NODES = 4
"""Intermediate nodes per cell."""
EDGES_PER_NODE = 2
"""Edges each intermediate node keeps in a derived cell."""
NUM_SEARCH_EDGES = sum(node + 2 for node in range(NUM_NODES))
"""Mixed edges of a search cell (2 + 3 + 4 + 5 = 14), in DARTS order: node 0's edges
from inputs 0, 1; node 1's from 0, 1, 2; node 2's from 0..3; node 3's from 0..4."""
DEFAULT_CONCAT: tuple[int, ...] = tuple(range(2, 2 + NUM_NODES))

BUILTIN_GENOTYPES: tuple[str, ...] = ("darts_v2", "swd_nas_paper")
"""Names that ``get_genotype`` resolves to the published genotypes of SPEC §6."""

_NONE_OP = "none"


class GenotypeError(ValueError):
    """A genotype (or a genotype file) that breaks the format; the message names why."""


def _as_index(value: Any, what: str) -> int:
    """``value`` as a plain int, or a GenotypeError; bools are not indices."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise GenotypeError(f"{what} must be an integer, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class CellGenotype:
    """One searched cell: its type, its 8 ``(op, input)`` edges and the nodes it outputs.

    Args:
        type: ``"normal"`` or ``"reduce"`` (a reduction cell halves the resolution).
        edges: 8 ``(op_name, input_index)`` pairs, two per intermediate node in node
            order; intermediate node ``i`` (0..3) takes inputs ``0 .. i + 1``.
        concat: the node indices whose outputs the cell concatenates, each in 2..5.

    Example:
        >>> cell = CellGenotype("normal", [("sep_conv_3x3", 0), ("skip_connect", 1)] * 4)
        >>> cell.nodes[3]
        (('sep_conv_3x3', 0), ('skip_connect', 1))
    """

    type: str
    edges: tuple[tuple[str, int], ...]
    concat: tuple[int, ...] = DEFAULT_CONCAT

    def __post_init__(self):
        if self.type not in CELL_TYPES:
            raise GenotypeError(f"cell type must be one of {list(CELL_TYPES)}, got {self.type!r}.")
        if isinstance(self.edges, (str, bytes)) or not hasattr(self.edges, "__len__"):
            raise GenotypeError(f"edges must be a list of (op, input) pairs, got {self.edges!r}.")
        expected = NUM_NODES * EDGES_PER_NODE
        if len(self.edges) != expected:
            raise GenotypeError(
                f"a cell has {expected} edges (two per intermediate node), got {len(self.edges)}.")
        edges = []
        for position, edge in enumerate(self.edges):
            node = position // EDGES_PER_NODE
            if isinstance(edge, (str, bytes)) or not hasattr(edge, "__len__") or len(edge) != 2:
                raise GenotypeError(f"edge {position} must be an (op, input) pair, got {edge!r}.")
            op, index = edge
            if op not in OPS:
                raise GenotypeError(
                    f"edge {position}: unknown op {op!r}; allowed: {list(OPS)} (the "
                    f"registered ones; import the module that registers others first).")
            index = _as_index(index, f"edge {position} input index")
            if not 0 <= index < node + 2:
                raise GenotypeError(
                    f"node {node}: input index {index} out of range "
                    f"(node {node} takes inputs 0..{node + 1}).")
            edges.append((op, index))
        if isinstance(self.concat, (str, bytes)) or not hasattr(self.concat, "__iter__"):
            raise GenotypeError(f"concat must be a list of node indices, got {self.concat!r}.")
        concat = tuple(_as_index(i, "concat entry") for i in self.concat)
        if not concat or len(set(concat)) != len(concat) or not all(
                i in DEFAULT_CONCAT for i in concat):
            raise GenotypeError(
                f"concat must list distinct intermediate node indices from {list(DEFAULT_CONCAT)}, "
                f"got {list(concat)}.")
        object.__setattr__(self, "edges", tuple(edges))
        object.__setattr__(self, "concat", concat)

    @property
    def is_reduction(self) -> bool:
        """Whether the cell halves the resolution."""
        return self.type == "reduce"

    @property
    def nodes(self) -> tuple[tuple[tuple[str, int], ...], ...]:
        """The edges grouped per intermediate node: ``nodes[i]`` holds node i's two edges."""
        return tuple(self.edges[i:i + EDGES_PER_NODE]
                     for i in range(0, len(self.edges), EDGES_PER_NODE))

    @property
    def parameter_free_count(self) -> int:
        """How many of the 8 ops have no weights at stride 1 (``PARAMETER_FREE``: the
        built-in ones and those registered with ``parameter_free=True``)."""
        return sum(op in PARAMETER_FREE for op, _ in self.edges)

    def to_dict(self) -> dict[str, Any]:
        """The cell's entry of the genotype JSON format."""
        return {"type": self.type, "edges": [[op, index] for op, index in self.edges],
                "concat": list(self.concat)}

    def __str__(self) -> str:
        # Nodes are named by their input index (2..5) so that edges read as node = f(inputs).
        nodes = "; ".join(
            f"{node + 2} = " + " + ".join(f"{op}({index})" for op, index in edges)
            for node, edges in enumerate(self.nodes))
        return f"{self.type}: {nodes}; out = concat{self.concat}"


@dataclass(frozen=True)
class Genotype:
    """A searched architecture: one ``CellGenotype`` per searched cell.

    SWD-NAS searches 5 distinct cells (normal, reduce, normal, reduce, normal); a classic
    DARTS genotype is the 2-cell case (normal, reduce). Instances are immutable, hashable
    and compare by value.

    Args:
        cells: the cells, in network order.
        primitives: the candidate operations of the search space the genotype came from;
            every op of every cell must be one of them.

    Example:
        >>> g = Genotype.from_darts_string(
        ...     "Genotype(normal=[('sep_conv_3x3', 0)] * 8, normal_concat=range(2, 6), "
        ...     "reduce=[('max_pool_3x3', 1)] * 8, reduce_concat=range(2, 6))")
        >>> g.reduction_indices
        (1,)
    """

    cells: tuple[CellGenotype, ...]
    primitives: tuple[str, ...] = PRIMITIVES

    def __post_init__(self):
        try:
            primitives = check_primitives(self.primitives)
        except ValueError as error:
            raise GenotypeError(str(error)) from None
        if isinstance(self.cells, (str, bytes, dict)) or not hasattr(self.cells, "__iter__"):
            raise GenotypeError(f"cells must be a sequence of CellGenotype, got {self.cells!r}.")
        cells = tuple(self.cells)
        if not cells:
            raise GenotypeError("a genotype needs at least one cell.")
        for position, cell in enumerate(cells):
            if not isinstance(cell, CellGenotype):
                raise GenotypeError(f"cells[{position}] must be a CellGenotype, got {cell!r}.")
            outside = sorted({op for op, _ in cell.edges} - set(primitives))
            if outside:
                raise GenotypeError(
                    f"cells[{position}]: ops {outside} are not among the genotype's primitives "
                    f"{list(primitives)}.")
        object.__setattr__(self, "cells", cells)
        object.__setattr__(self, "primitives", primitives)

    @property
    def num_cells(self) -> int:
        """How many cells the genotype holds."""
        return len(self.cells)

    @property
    def reduction_indices(self) -> tuple[int, ...]:
        """Positions of the reduction cells."""
        return tuple(i for i, cell in enumerate(self.cells) if cell.is_reduction)

    def parameter_free_counts(self) -> list[int]:
        """Per cell, how many of its 8 ops are parameter-free (skip_connect counts)."""
        return [cell.parameter_free_count for cell in self.cells]

    def __str__(self) -> str:
        return "\n".join(f"cell {i} {cell}" for i, cell in enumerate(self.cells))

    # ----- the JSON format -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The genotype as the JSON format's dictionary.

        Returns:
            ``{"format": "swd-keras/genotype@1", "primitives": [...], "cells": [{"type":
            ..., "edges": [[op, input], ...], "concat": [...]}, ...]}``.
        """
        return {"format": GENOTYPE_FORMAT, "primitives": list(self.primitives),
                "cells": [cell.to_dict() for cell in self.cells]}

    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        """Reads the dictionary that ``to_dict`` gives; extra keys are ignored.

        Args:
            data: a dictionary of the JSON format.

        Returns:
            The Genotype.

        Raises:
            GenotypeError: a missing or unsupported ``format``, a missing key, or an
                invalid cell (the message names the cell and the problem).
        """
        if not isinstance(data, dict):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(data).__name__}.")
        if "format" not in data:
            raise GenotypeError(f"missing 'format' (expected {GENOTYPE_FORMAT!r}).")
        if data["format"] != GENOTYPE_FORMAT:
            raise GenotypeError(
                f"unsupported format {data['format']!r}; expected {GENOTYPE_FORMAT!r}.")
        primitives = data.get("primitives", PRIMITIVES)
        if not isinstance(primitives, list | tuple):
            raise GenotypeError(f"'primitives' must be a list of op names, got {primitives!r}.")
        if not isinstance(data.get("cells"), list):
            raise GenotypeError("'cells' must be a list of cells.")
        cells = []
        for position, cell in enumerate(data["cells"]):
            try:
                if not isinstance(cell, dict):
                    raise GenotypeError(f"must be an object, got {cell!r}.")
                missing = [key for key in ("type", "edges") if key not in cell]
                if missing:
                    raise GenotypeError(f"missing {missing}.")
                cells.append(CellGenotype(cell["type"], cell["edges"],
                                          cell.get("concat", DEFAULT_CONCAT)))
            except GenotypeError as error:
                raise GenotypeError(f"cells[{position}]: {error}") from None
        return cls(tuple(cells), tuple(primitives))

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the genotype as JSON, atomically.

        Args:
            path: the destination file.

        Returns:
            The destination as a ``Path``.
        """
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Genotype:
        """Reads a genotype JSON file.

        Args:
            path: a file written by ``save`` (or by hand in the same format).

        Returns:
            The Genotype.

        Raises:
            GenotypeError: one line naming the file and the problem (no such file,
                invalid JSON, wrong format version, unknown op, input index out of range,
                wrong edge count, ...).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise GenotypeError(f"{path}: no such genotype file.") from None
        except (OSError, UnicodeDecodeError) as error:
            raise GenotypeError(f"{path}: cannot read ({error}).") from None
        return _genotype_from_json(text, str(path))

    # ----- classic DARTS genotypes -------------------------------------------------------

    @classmethod
    def from_darts_string(cls, text: str) -> Genotype:
        """Parses a DARTS ``Genotype(normal=..., normal_concat=..., reduce=...,
        reduce_concat=...)`` string into a 2-cell Genotype (normal, reduce).

        The string is parsed as a syntax tree, never evaluated. Concat lists may be
        written as lists or as ``range(2, 6)``.

        Args:
            text: the string, as DARTS prints it or as its ``genotypes.py`` holds it.

        Returns:
            A Genotype with cells ``(normal, reduce)``.

        Raises:
            GenotypeError: the string is not such a call, or a cell is invalid.

        Example:
            >>> darts = get_genotype("darts_v2")
            >>> Genotype.from_darts_string(darts.to_darts_string()) == darts
            True
        """
        fields = ("normal", "normal_concat", "reduce", "reduce_concat")
        try:
            call = ast.parse(text.strip(), mode="eval").body
        except SyntaxError as error:
            raise GenotypeError(f"not a DARTS genotype string: {error.msg}.") from None
        name = getattr(call, "func", None)
        name = getattr(name, "id", None) or getattr(name, "attr", None)
        if not isinstance(call, ast.Call) or name != "Genotype":
            raise GenotypeError("not a DARTS genotype string: expected Genotype(normal=..., "
                                "normal_concat=..., reduce=..., reduce_concat=...).")
        if len(call.args) > len(fields):
            raise GenotypeError(f"DARTS Genotype takes at most {len(fields)} fields.")
        values = dict(zip(fields, call.args, strict=False))  # positional fields come first
        for keyword in call.keywords:
            if keyword.arg not in fields or keyword.arg in values:
                raise GenotypeError(
                    f"DARTS Genotype: unexpected or repeated field {keyword.arg!r}; "
                    f"fields are {list(fields)}.")
            values[keyword.arg] = keyword.value
        missing = [f for f in fields if f not in values]
        if missing:
            raise GenotypeError(f"DARTS Genotype: missing fields {missing}.")
        cells = []
        for cell_type in CELL_TYPES:
            try:
                edges = ast.literal_eval(values[cell_type])
                concat = _darts_concat(values[f"{cell_type}_concat"])
            except (ValueError, TypeError, SyntaxError):
                raise GenotypeError(
                    f"DARTS Genotype: {cell_type} must be a list of (op, input) pairs and "
                    f"{cell_type}_concat a list or range(...) of integers.") from None
            try:
                cells.append(CellGenotype(cell_type, edges, concat))
            except GenotypeError as error:
                raise GenotypeError(f"DARTS Genotype {cell_type}: {error}") from None
        return cls(tuple(cells))

    def to_darts_string(self) -> str:
        """The genotype as DARTS' ``Genotype(normal=..., ..., reduce_concat=...)`` string.

        Returns:
            The string, with concat written as lists (as in DARTS' ``genotypes.py``).

        Raises:
            GenotypeError: the genotype is not exactly (normal, reduce).
        """
        if tuple(cell.type for cell in self.cells) != CELL_TYPES:
            raise GenotypeError(
                "only a 2-cell (normal, reduce) genotype has a DARTS string; this one has "
                f"cells {[cell.type for cell in self.cells]}.")
        parts = []
        for cell in self.cells:
            parts.append(f"{cell.type}={[tuple(edge) for edge in cell.edges]!r}")
            parts.append(f"{cell.type}_concat={list(cell.concat)!r}")
        return f"Genotype({', '.join(parts)})"


def _darts_concat(node: ast.expr) -> tuple[int, ...]:
    """A DARTS concat field: a literal list/tuple of ints, or ``range(...)`` of literals."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "range" and not node.keywords):
        return tuple(range(*(ast.literal_eval(arg) for arg in node.args)))
    return tuple(ast.literal_eval(node))


def _genotype_from_json(text: str, source: str) -> Genotype:
    """Parses genotype JSON ``text``; errors are prefixed with ``source`` (a file name)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise GenotypeError(
            f"{source}: invalid JSON ({error.msg} at line {error.lineno}, "
            f"column {error.colno}).") from None
    try:
        return Genotype.from_dict(data)
    except GenotypeError as error:
        raise GenotypeError(f"{source}: {error}") from None


def load_genotype(path: str | os.PathLike) -> Genotype:
    """Reads a genotype JSON file; see ``Genotype.load``."""
    return Genotype.load(path)


@functools.cache
def _builtin_genotype(name: str) -> Genotype:
    resource = importlib.resources.files("swd_keras") / "builtin_genotypes" / f"{name}.json"
    return _genotype_from_json(resource.read_text(encoding="utf-8"), f"built-in {name!r}")


def get_genotype(name_or_path: str | os.PathLike | Genotype) -> Genotype:
    """A built-in genotype by name, or a genotype JSON file by path.

    Args:
        name_or_path: ``"darts_v2"`` (DARTS' published cells: normal, reduce),
            ``"swd_nas_paper"`` (the 5 cells released with SWD-NAS: normal, reduce,
            normal, reduce, normal), a path to a JSON file, or a Genotype (returned
            as is).

    Returns:
        The Genotype.

    Raises:
        ValueError: an unknown name (the message lists the built-ins); a GenotypeError
            (a ValueError) for a malformed file.

    Example:
        >>> get_genotype("darts_v2").reduction_indices
        (1,)
    """
    if isinstance(name_or_path, Genotype):
        return name_or_path
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_GENOTYPES:
        return _builtin_genotype(name_or_path)
    path = Path(name_or_path)
    if path.is_file():
        return Genotype.load(path)
    raise ValueError(
        f"unknown genotype {str(name_or_path)!r}: neither a built-in {list(BUILTIN_GENOTYPES)} "
        "nor an existing JSON file.")


# ----- architecture weights -> genotype (SPEC §3) -------------------------------------


def normalize_edge_weights(weights):
    """Architectural weight normalization, eq. 11: ``A[e, l] = W[e, l] / sum_l' W[e, l']``.

    Normalizes over the last axis (the ops of an edge), for any leading shape.

    Args:
        weights: a NumPy array (or nested list) of non-negative edge weights, at least
            1-D; or a backend/Keras tensor, for use inside a traced or jitted graph.

    Returns:
        A NumPy array for NumPy (or list) input, validated; otherwise a ``keras.ops``
        tensor, unvalidated (a graph cannot raise on values).

    Raises:
        ValueError: NumPy input that is 0-D, not finite, negative, or has an edge whose
            weights sum to zero.

    Example:
        >>> normalize_edge_weights(np.array([[1.0, 3.0], [2.0, 2.0]]))
        array([[0.25, 0.75],
               [0.5 , 0.5 ]])
    """
    if isinstance(weights, np.ndarray | np.generic | list | tuple):
        xp = np
        weights = _checked_numpy_weights(weights)
    else:
        xp = ops
    return weights / xp.sum(weights, axis=-1, keepdims=True)


def _checked_numpy_weights(weights) -> np.ndarray:
    weights = np.asarray(weights)
    if not np.issubdtype(weights.dtype, np.floating):
        weights = weights.astype(np.float64)
    if weights.ndim < 1:
        raise ValueError(f"weights must be at least 1-D (ops on the last axis), got shape "
                         f"{weights.shape}.")
    if not np.all(np.isfinite(weights)):
        raise ValueError("weights must be finite; got NaN or inf.")
    if np.any(weights < 0):
        raise ValueError(f"weights must be non-negative; the smallest is {weights.min()}.")
    zero_rows = np.argwhere(weights.sum(axis=-1) == 0)
    if zero_rows.size:
        raise ValueError(f"weights of edge {tuple(int(i) for i in zero_rows[0])} sum to zero; "
                         "eq. 11 divides by that sum.")
    return weights


def default_reduction_indices(num_cells: int) -> tuple[int, ...]:
    """Where the reduction cells of an ``num_cells``-cell network sit.

    DARTS' rule puts them at ``L // 3`` and ``2L // 3`` (cells 1 and 3 of 5). For
    ``L == 2`` that rule would make both cells reductions; a 2-cell genotype is DARTS'
    (normal, reduce) pair instead, so the answer there is ``(1,)``.

    Args:
        num_cells: the number of searched cells L (at least 1).

    Returns:
        The sorted, distinct reduction positions.
    """
    if num_cells < 1:
        raise ValueError(f"num_cells must be at least 1, got {num_cells}.")
    if num_cells == 2:
        return (1,)
    return tuple(sorted({num_cells // 3, 2 * num_cells // 3}))


def derive_genotype(weights, reductions=None, normalize: bool = True,
                    primitives=PRIMITIVES) -> Genotype:
    """Derives the genotype from per-cell edge weights (SPEC §3, DARTS' rule).

    For every intermediate node: rank its incoming edges by their largest non-``none``
    weight and keep the top 2 (ties: the lower input index first); on each kept edge
    pick the non-``none`` op with the largest weight (ties: the earlier primitive).
    The kept edges of a node are listed in increasing input index. Without ``none``
    among the primitives, every op competes.

    Args:
        weights: an (L, 14, n) array: per cell, per search edge (DARTS order: node 0's
            edges from inputs 0, 1; node 1's from 0, 1, 2; ...; node 3's from 0..4), per
            op in ``primitives`` order; any array-like (NumPy, a backend tensor).
        reductions: positions of the reduction cells; by default
            ``default_reduction_indices(L)`` (L // 3 and 2L // 3, or (1,) when L == 2).
        normalize: apply eq. 11 (``normalize_edge_weights``) first; False ranks the raw
            weights (the AWN-off ablation).
        primitives: the op names of the last axis.

    Returns:
        A Genotype with L cells.

    Raises:
        ValueError: a wrong shape (naming the expected (L, 14, n) and the one given),
            invalid weights, or invalid reduction positions.

    Example:
        >>> weights = np.random.rand(5, 14, 8)
        >>> derive_genotype(weights).reduction_indices
        (1, 3)
    """
    primitives = check_primitives(primitives)
    candidates = np.array([op != _NONE_OP for op in primitives])
    if not candidates.any():
        raise ValueError("primitives must hold an op other than 'none' to choose from.")
    weights = np.asarray(weights)
    if weights.ndim != 3 or weights.shape[1:] != (NUM_SEARCH_EDGES, len(primitives)):
        raise ValueError(f"weights must have shape (L, {NUM_SEARCH_EDGES}, {len(primitives)}) "
                         f"(cells, edges, ops); got {weights.shape}.")
    num_cells = weights.shape[0]
    if num_cells < 1:
        raise ValueError("weights must hold at least one cell (L >= 1).")
    if normalize:
        weights = normalize_edge_weights(weights)
    elif not np.all(np.isfinite(weights)):
        raise ValueError("weights must be finite; got NaN or inf.")
    reductions = _checked_reductions(reductions, num_cells)

    # The `none` op never wins an edge and never makes an edge strong.
    candidate_weights = np.where(candidates, weights, -np.inf)
    cells = []
    for cell_index in range(num_cells):
        edges = []
        first_edge = 0
        for node in range(NUM_NODES):
            node_weights = candidate_weights[cell_index, first_edge:first_edge + node + 2]
            strength = node_weights.max(axis=-1)
            # A stable sort on -strength keeps the lower input index first among ties.
            kept = np.argsort(-strength, kind="stable")[:EDGES_PER_NODE]
            for index in sorted(int(i) for i in kept):
                edges.append((primitives[int(np.argmax(node_weights[index]))], index))
            first_edge += node + 2
        cell_type = "reduce" if cell_index in reductions else "normal"
        cells.append(CellGenotype(cell_type, tuple(edges)))
    return Genotype(tuple(cells), primitives)


def _checked_reductions(reductions, num_cells: int) -> tuple[int, ...]:
    if reductions is None:
        return default_reduction_indices(num_cells)
    reductions = tuple(_as_index(i, "reductions entry") for i in reductions)
    if len(set(reductions)) != len(reductions) or not all(
            0 <= i < num_cells for i in reductions):
        raise ValueError(f"reductions must be distinct cell positions in 0..{num_cells - 1}, "
                         f"got {list(reductions)}.")
    return reductions
