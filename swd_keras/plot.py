"""Pictures of genotypes: one panel per cell, its nodes and its op-labelled edges.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no display, no global
state), so it runs on headless machines and inside threads.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch

from swd_keras.genotype import CellGenotype, Genotype, get_genotype
from swd_keras.ops import PARAMETER_FREE
from swd_keras.runs import atomic_write_bytes

# Node layout in data units (the axes keep an equal aspect, so circles stay round): the
# two cell inputs on the left, the intermediate nodes on a zigzag, the output on the
# right. The positions were searched on a grid so that every one of the 18 possible
# straight edges passes at least 0.5 from the nodes it does not join, and edges that
# share a node are at least 8 degrees apart.
_INPUT_POSITIONS = ((0.0, 3.6), (0.0, 0.0))
_NODE_POSITIONS = ((1.9, 3.6), (3.5, 0.6), (5.1, 2.1), (6.7, 0.0))
_OUTPUT_POSITION = (8.3, 1.8)
_NODE_RADIUS = 0.3
_PANEL_INCHES = (9.0, 4.8)
_DPI = 110
_NODE_COLORS = {"input": "#cfe3f5", "node": "#fbe3b7", "output": "#d7ecd0"}
_EDGE_COLORS = {"weighted": "#1f4e8c", "parameter_free": "#a0522d", "concat": "#8c8c8c"}
# Where along its edge a label may sit (fractions of the edge), in order of preference;
# the first place that covers no node and no earlier label wins.
_LABEL_PLACES = (0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78)


def genotype_figure(genotype: Genotype | str, title: str | None = None) -> Figure:
    """Draws ``genotype`` as a matplotlib Figure, one panel (Axes) per cell.

    Args:
        genotype: a Genotype, or anything ``get_genotype`` accepts.
        title: a title over all panels.

    Returns:
        A ``matplotlib.figure.Figure`` (on an Agg canvas) with ``genotype.num_cells`` axes.

    Example:
        >>> fig = genotype_figure("darts_v2")
        >>> len(fig.axes)
        2
    """
    genotype = get_genotype(genotype)
    width, panel_height = _PANEL_INCHES
    title_inches = 0.8 if title else 0.1
    height = panel_height * genotype.num_cells + title_inches
    figure = Figure(figsize=(width, height))
    canvas = FigureCanvasAgg(figure)
    # A fixed layout (no constrained layout): label placement converts text sizes to data
    # units with the axes' scale, which must not change afterwards.
    axes = figure.subplots(genotype.num_cells, 1, squeeze=False, gridspec_kw={
        "left": 0.02, "right": 0.98, "bottom": 0.01, "top": 1 - title_inches / height,
        "hspace": 0.12})[:, 0]
    renderer = canvas.get_renderer()
    for index, (ax, cell) in enumerate(zip(axes, genotype.cells, strict=True)):
        heading = (f"cell {index}: {cell.type}  "
                   f"({cell.parameter_free_count} of {len(cell.edges)} ops parameter-free)")
        _draw_cell(ax, cell, heading, renderer)
    if title:
        figure.suptitle(title, y=1 - 0.15 / height, va="top", fontsize=14, fontweight="bold")
    return figure


def plot_genotype(genotype: Genotype | str, path: str | os.PathLike,
                  title: str | None = None) -> Path:
    """Writes a PNG picture of ``genotype``, one panel per cell, atomically.

    Each panel shows the inputs ``c_{k-2}``, ``c_{k-1}``, the intermediate nodes 0-3
    and the output ``c_{k}``; each edge is labelled by its op (blue: ops with weights,
    brown: parameter-free ops); dashed grey edges feed the output's concatenation.

    Args:
        genotype: a Genotype, or anything ``get_genotype`` accepts.
        path: the PNG file to write.
        title: a title over all panels.

    Returns:
        The written file as a ``Path``.

    Example:
        >>> plot_genotype("swd_nas_paper", "swd_nas_paper.png", title="SWD-NAS")
        PosixPath('swd_nas_paper.png')
    """
    buffer = io.BytesIO()
    genotype_figure(genotype, title).savefig(buffer, format="png", dpi=_DPI)
    return atomic_write_bytes(path, buffer.getvalue())


def _draw_cell(ax, cell: CellGenotype, heading: str, renderer) -> None:
    ax.set_title(heading, fontsize=11, loc="left")
    ax.set_xlim(-0.5, _OUTPUT_POSITION[0] + 0.5)
    ax.set_ylim(-0.5, 4.1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.apply_aspect()  # fixes ax.transData now, for measuring labels below
    (x0, _), (x1, _) = ax.transData.transform([(0.0, 0.0), (1.0, 0.0)])
    pixels_per_unit = x1 - x0

    labels = ["$c_{k-2}$", "$c_{k-1}$"] + [str(i) for i in range(len(_NODE_POSITIONS))]
    kinds = ["input", "input"] + ["node"] * len(_NODE_POSITIONS)
    nodes = [_node(ax, xy, label, _NODE_COLORS[kind]) for xy, label, kind
             in zip(_INPUT_POSITIONS + _NODE_POSITIONS, labels, kinds, strict=True)]
    output = _node(ax, _OUTPUT_POSITION, "$c_{k}$", _NODE_COLORS["output"])
    # Places labels must not cover: capsules (segment start, segment end, radius).
    occupied = [(np.asarray(c.center), np.asarray(c.center), _NODE_RADIUS)
                for c in nodes + [output]]

    for index in cell.concat:
        _arrow(ax, nodes[index], output, _EDGE_COLORS["concat"], dashed=True)
    for node, edges in enumerate(cell.nodes):
        for op, source in edges:
            color = _EDGE_COLORS["parameter_free" if op in PARAMETER_FREE else "weighted"]
            _arrow(ax, nodes[source], nodes[node + 2], color)
            _place_label(ax, op, nodes[source].center, nodes[node + 2].center, color,
                         occupied, renderer, pixels_per_unit)


def _node(ax, xy, label: str, color: str) -> Circle:
    circle = Circle(xy, _NODE_RADIUS, facecolor=color, edgecolor="#333333", zorder=3)
    ax.add_patch(circle)
    ax.text(*xy, label, ha="center", va="center", fontsize=11, zorder=4)
    return circle


def _arrow(ax, source: Circle, target: Circle, color: str, dashed: bool = False) -> None:
    # patchA/patchB clip the arrow at the circles' rims.
    ax.add_patch(FancyArrowPatch(
        source.center, target.center, patchA=source, patchB=target,
        arrowstyle="-|>", mutation_scale=12,
        color=color, linestyle="--" if dashed else "-", linewidth=1.2, zorder=1))


def _place_label(ax, text: str, start, end, color: str, occupied: list, renderer,
                 pixels_per_unit: float) -> None:
    """Writes ``text`` along the edge from ``start`` to ``end``, at the first place of
    ``_LABEL_PLACES`` where it covers nothing in ``occupied`` (else the least-bad one),
    and adds its footprint to ``occupied``.

    A label's footprint is a capsule: the segment its text spans along the edge, widened
    by half the text height, in data units.
    """
    start, end = np.asarray(start, float), np.asarray(end, float)
    direction = (end - start) / np.linalg.norm(end - start)
    label = ax.text(0, 0, text, ha="center", va="center", fontsize=8, color=color, zorder=2,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                          "edgecolor": "none", "alpha": 0.9})
    extent = label.get_window_extent(renderer)
    half_length = extent.width / 2 / pixels_per_unit * direction
    radius = extent.height / 2 / pixels_per_unit
    label.set_rotation(np.degrees(np.arctan2(direction[1], direction[0])))
    label.set_rotation_mode("anchor")
    best = None
    for t in _LABEL_PLACES:
        center = start + t * (end - start)
        footprint = (center - half_length, center + half_length, radius)
        overlap = sum(max(0.0, r + footprint[2] - _segment_distance(a, b, *footprint[:2]))
                      for a, b, r in occupied)
        if best is None or overlap < best[0]:
            best = (overlap, center, footprint)
        if overlap == 0:
            break
    label.set_position(best[1])
    occupied.append(best[2])


def _segment_distance(a, b, c, d) -> float:
    """The distance between the segments ab and cd (points are 2-D arrays)."""
    def cross(u, v):
        return u[0] * v[1] - u[1] * v[0]

    def point_distance(p, q, r):  # from p to the segment qr
        qr = r - q
        length = float(qr @ qr)
        t = 0.0 if length == 0 else float(np.clip((p - q) @ qr / length, 0.0, 1.0))
        return float(np.linalg.norm(q + t * qr - p))

    ab, cd = b - a, d - c
    if (cross(ab, c - a) * cross(ab, d - a) < 0) and (cross(cd, a - c) * cross(cd, b - c) < 0):
        return 0.0  # the segments cross
    return min(point_distance(a, c, d), point_distance(b, c, d),
               point_distance(c, a, b), point_distance(d, a, b))
