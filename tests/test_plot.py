"""Genotype pictures: a valid PNG, one panel per cell, every op written on its edge."""

import random
import struct
from collections import Counter

import pytest
from matplotlib.patches import Circle

from swd_keras.genotype import CellGenotype, Genotype, get_genotype
from swd_keras.ops import PRIMITIVES
from swd_keras.plot import genotype_figure, plot_genotype

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    assert data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_png_that_grows_with_the_cells(tmp_path):
    two = plot_genotype(get_genotype("darts_v2"), tmp_path / "darts.png", title="DARTS V2")
    five = plot_genotype("swd_nas_paper", tmp_path / "pics" / "swd.png")
    assert two == tmp_path / "darts.png" and five.exists()
    (w2, h2), (w5, h5) = _png_size(two), _png_size(five)
    assert w2 == w5 >= 800
    assert 600 <= h2 < h5
    # One panel per cell: the height is close to proportional to the number of cells.
    assert h5 / h2 == pytest.approx(5 / 2, rel=0.1)
    assert two.stat().st_size > 20_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["darts.png", "pics"]  # no temp file


def test_plot_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "g.png"
    path.write_bytes(b"old")
    plot_genotype("darts_v2", path)
    assert _png_size(path)[0] >= 800


@pytest.mark.parametrize("name", ["darts_v2", "swd_nas_paper"])
def test_figure_has_one_panel_per_cell_with_every_op_on_it(name):
    genotype = get_genotype(name)
    figure = genotype_figure(genotype, title=name)
    assert len(figure.axes) == genotype.num_cells
    node_labels = {"$c_{k-2}$", "$c_{k-1}$", "$c_{k}$", "0", "1", "2", "3"}
    for index, (ax, cell) in enumerate(zip(figure.axes, genotype.cells, strict=True)):
        texts = [t.get_text() for t in ax.texts]
        assert Counter(t for t in texts if t not in node_labels) == Counter(
            op for op, _ in cell.edges)
        assert node_labels <= set(texts)
        assert ax.get_title(loc="left").startswith(f"cell {index}: {cell.type}")
    assert figure.get_suptitle() == name


def _random_cells(count, seed=0):
    rng = random.Random(seed)
    ops = [op for op in PRIMITIVES if op != "none"]
    cells = []
    for _ in range(count):
        edges = [(rng.choice(ops), source) for node in range(4)
                 for source in sorted(rng.sample(range(node + 2), 2))]
        cells.append(CellGenotype("normal", edges))
    return cells


# At mid-length, node 0 -> node 1's label would sit on node 1 -> node 2's.
CROWDED = CellGenotype("normal", [("sep_conv_3x3", 0), ("skip_connect", 1),
                                  ("skip_connect", 1), ("avg_pool_3x3", 2),
                                  ("sep_conv_3x3", 2), ("avg_pool_3x3", 3),
                                  ("max_pool_3x3", 2), ("max_pool_3x3", 4)])


def test_edge_labels_cover_no_other_label_and_no_node():
    cells = (get_genotype("swd_nas_paper").cells + get_genotype("darts_v2").cells
             + (CROWDED,) + tuple(_random_cells(10)))
    figure = genotype_figure(Genotype(cells))
    figure.draw_without_rendering()
    for ax in figure.axes:
        labels = [text for text in ax.texts if text.get_text() in PRIMITIVES]
        assert len(labels) == 8
        # The labels' (rotated) white boxes and the node circles, in display coordinates.
        boxes = [text.get_bbox_patch() for text in labels]
        boxes = [box.get_transform().transform_path(box.get_path()) for box in boxes]
        circles = [patch.get_transform().transform_path(patch.get_path())
                   for patch in ax.patches if isinstance(patch, Circle)]
        assert len(circles) == 7
        for i, box in enumerate(boxes):
            assert not any(box.intersects_path(other, filled=True) for other in boxes[i + 1:])
            assert not any(box.intersects_path(circle, filled=True) for circle in circles)


def test_plot_rejects_unknown_genotype(tmp_path):
    with pytest.raises(ValueError, match="unknown genotype"):
        plot_genotype("no_such_genotype", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
