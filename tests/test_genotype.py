"""Genotype: the data type, its JSON file, DARTS strings, built-ins, eq. 11 and derivation."""

import dataclasses
import json
import re

import keras
import numpy as np
import pytest

from swd_keras.genotype import (
    BUILTIN_GENOTYPES,
    GENOTYPE_FORMAT,
    CellGenotype,
    Genotype,
    GenotypeError,
    default_reduction_indices,
    derive_genotype,
    get_genotype,
    load_genotype,
    normalize_edge_weights,
)
from swd_keras.ops import PRIMITIVES

# DARTS_V2 exactly as DARTS' genotypes.py (github.com/quark0/darts, cnn/genotypes.py) has it.
DARTS_V2_STRING = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)

# SPEC §6, copied verbatim; parsed below independently of the shipped JSON files.
SPEC_SECTION_6 = """
DARTS_V2 (DARTS paper, one normal + one reduce cell):
normal = (sep_conv_3x3,0) (sep_conv_3x3,1) (sep_conv_3x3,0) (sep_conv_3x3,1)
         (sep_conv_3x3,1) (skip_connect,0) (skip_connect,0) (dil_conv_3x3,2)
reduce = (max_pool_3x3,0) (max_pool_3x3,1) (skip_connect,2) (max_pool_3x3,1)
         (max_pool_3x3,0) (skip_connect,2) (skip_connect,2) (max_pool_3x3,1)
SWD-NAS released cells (two edges per intermediate node, in node order):
cell 0 normal: (skip_connect,0) (sep_conv_5x5,1) (max_pool_3x3,0) (dil_conv_3x3,1)
               (sep_conv_3x3,0) (dil_conv_5x5,1) (sep_conv_5x5,0) (avg_pool_3x3,1)
cell 1 reduce: (dil_conv_3x3,0) (dil_conv_3x3,1) (max_pool_3x3,0) (sep_conv_5x5,1)
               (dil_conv_3x3,1) (sep_conv_5x5,3) (sep_conv_5x5,0) (skip_connect,1)
cell 2 normal: (skip_connect,0) (sep_conv_3x3,1) (avg_pool_3x3,0) (sep_conv_3x3,2)
               (sep_conv_5x5,0) (sep_conv_3x3,1) (avg_pool_3x3,0) (skip_connect,1)
cell 3 reduce: (avg_pool_3x3,0) (sep_conv_3x3,1) (skip_connect,0) (avg_pool_3x3,1)
               (dil_conv_3x3,0) (dil_conv_3x3,1) (sep_conv_3x3,0) (dil_conv_5x5,1)
cell 4 normal: (sep_conv_3x3,0) (sep_conv_5x5,1) (skip_connect,0) (skip_connect,1)
               (sep_conv_5x5,0) (dil_conv_5x5,1) (dil_conv_5x5,0) (max_pool_3x3,1)
"""

# A valid cell, used to build variants.
EDGES = (("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("skip_connect", 0), ("dil_conv_3x3", 2),
         ("max_pool_3x3", 3), ("avg_pool_3x3", 1), ("dil_conv_5x5", 4), ("sep_conv_3x3", 2))


def _spec_cells(text):
    """(type, [(op, input), ...]) per cell of SPEC §6, in the order the text lists them."""
    cells = []
    for block in re.split(r"\n(?=normal =|reduce =|cell \d)", text.strip()):
        header = re.match(r"(normal|reduce) =|cell \d (normal|reduce):", block)
        if header:
            pairs = re.findall(r"\((\w+),(\d)\)", block)
            cells.append((header.group(1) or header.group(2),
                          [(op, int(index)) for op, index in pairs]))
    return cells


def _genotype_dict(**cell_changes):
    cell = {"type": "normal", "edges": [list(edge) for edge in EDGES], "concat": [2, 3, 4, 5]}
    cell.update(cell_changes)
    reduce = {"type": "reduce", "edges": [["max_pool_3x3", 0]] * 8, "concat": [2, 3, 4, 5]}
    return {"format": GENOTYPE_FORMAT, "primitives": list(PRIMITIVES), "cells": [cell, reduce]}


# ----- the data type ----------------------------------------------------------------


def test_cell_genotype_is_immutable_hashable_and_compares_by_value():
    from_lists = CellGenotype("normal", [list(edge) for edge in EDGES], [2, 3, 4, 5])
    from_tuples = CellGenotype("normal", EDGES)
    assert from_lists == from_tuples
    assert hash(from_lists) == hash(from_tuples)
    assert from_lists.edges == EDGES and from_lists.concat == (2, 3, 4, 5)
    assert len({from_lists, from_tuples, CellGenotype("reduce", EDGES)}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        from_lists.type = "reduce"
    genotype = Genotype((from_lists,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        genotype.cells = ()
    assert genotype == Genotype([from_tuples]) and hash(genotype) == hash(Genotype([from_tuples]))


def test_cell_nodes_and_parameter_free_count():
    cell = CellGenotype("normal", EDGES)
    assert cell.nodes == (EDGES[0:2], EDGES[2:4], EDGES[4:6], EDGES[6:8])
    # skip_connect, max_pool_3x3 and avg_pool_3x3 are the parameter-free ops of EDGES.
    assert cell.parameter_free_count == 3
    assert not cell.is_reduction and CellGenotype("reduce", EDGES).is_reduction


@pytest.mark.parametrize("kwargs, message", [
    ({"type": "normal", "edges": EDGES[:7]}, "8 edges"),
    ({"type": "normal", "edges": EDGES + EDGES[:2]}, "got 10"),
    ({"type": "normal", "edges": (("conv_7x1_1x7", 0),) + EDGES[1:]},
     "unknown op 'conv_7x1_1x7'; allowed: ['sep_conv_3x3'"),
    ({"type": "normal", "edges": EDGES[:2] + (("skip_connect", 3),) + EDGES[3:]},
     "node 1: input index 3 out of range (node 1 takes inputs 0..2)"),
    ({"type": "normal", "edges": EDGES[:7] + (("skip_connect", -1),)},
     "node 3: input index -1 out of range"),
    ({"type": "normal", "edges": EDGES[:7] + (("skip_connect", 1.0),)}, "must be an integer"),
    ({"type": "normal", "edges": EDGES[:7] + (("skip_connect", True),)}, "must be an integer"),
    ({"type": "normal", "edges": EDGES[:7] + (("skip_connect",),)}, "(op, input) pair"),
    ({"type": "normal", "edges": "sep_conv_3x3"}, "list of (op, input) pairs"),
    ({"type": "reduction", "edges": EDGES}, "cell type must be one of ['normal', 'reduce']"),
    ({"type": "normal", "edges": EDGES, "concat": (1, 2)}, "concat must list distinct"),
    ({"type": "normal", "edges": EDGES, "concat": (2, 2)}, "concat must list distinct"),
    ({"type": "normal", "edges": EDGES, "concat": ()}, "concat must list distinct"),
    ({"type": "normal", "edges": EDGES, "concat": 5}, "concat must be a list of node indices"),
])
def test_cell_genotype_rejects_invalid_cells(kwargs, message):
    with pytest.raises(GenotypeError) as info:
        CellGenotype(**kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_genotype_validation():
    cell = CellGenotype("normal", EDGES)
    with pytest.raises(GenotypeError, match="at least one cell"):
        Genotype(())
    with pytest.raises(GenotypeError, match="cells must be a sequence of CellGenotype"):
        Genotype(None)
    with pytest.raises(GenotypeError, match=r"cells\[1\] must be a CellGenotype"):
        Genotype((cell, {"type": "normal"}))
    with pytest.raises(GenotypeError, match="not among the genotype's primitives"):
        Genotype((cell,), primitives=("sep_conv_3x3", "none"))
    with pytest.raises(GenotypeError, match="Unknown primitive"):
        Genotype((cell,), primitives=("sep_conv_3x3", "conv_9x9"))


def test_genotype_properties_and_str():
    g = Genotype((CellGenotype("normal", EDGES), CellGenotype("reduce", (("skip_connect", 1),) * 8),
                  CellGenotype("normal", EDGES)))
    assert g.num_cells == 3
    assert g.reduction_indices == (1,)
    assert g.parameter_free_counts() == [3, 8, 3]
    lines = str(g).splitlines()
    assert len(lines) == 3
    assert lines[0] == ("cell 0 normal: 2 = sep_conv_3x3(0) + sep_conv_5x5(1); "
                        "3 = skip_connect(0) + dil_conv_3x3(2); "
                        "4 = max_pool_3x3(3) + avg_pool_3x3(1); "
                        "5 = dil_conv_5x5(4) + sep_conv_3x3(2); out = concat(2, 3, 4, 5)")
    assert lines[1].startswith("cell 1 reduce: 2 = skip_connect(1) + skip_connect(1);")


# ----- the JSON format ----------------------------------------------------------------


def test_dict_round_trip_gives_exactly_the_format():
    data = _genotype_dict()
    genotype = Genotype.from_dict(data)
    assert genotype.to_dict() == data
    assert list(genotype.to_dict()) == ["format", "primitives", "cells"]
    assert list(genotype.to_dict()["cells"][0]) == ["type", "edges", "concat"]
    # Extra keys are ignored; the result is unchanged.
    extra = dict(data, name="mine", comment="x")
    extra["cells"] = [dict(cell, note="y") for cell in data["cells"]]
    assert Genotype.from_dict(extra) == genotype


def test_json_round_trip_and_atomic_save(tmp_path):
    genotype = Genotype.from_dict(_genotype_dict(concat=[2, 4, 5]))
    path = genotype.save(tmp_path / "sub" / "genotype.json")
    assert path == tmp_path / "sub" / "genotype.json"
    assert json.loads(path.read_text()) == genotype.to_dict()
    assert Genotype.load(path) == genotype
    assert load_genotype(str(path)) == genotype
    assert get_genotype(path) == genotype
    assert get_genotype(str(path)) == genotype
    assert sorted(p.name for p in path.parent.iterdir()) == ["genotype.json"]  # no temp file


@pytest.mark.parametrize("content, message", [
    ("{not json", "invalid JSON (Expecting property name enclosed in double quotes at line 1"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({k: v for k, v in _genotype_dict().items() if k != "format"}),
     "missing 'format'"),
    (json.dumps(dict(_genotype_dict(), format="swd-keras/genotype@2")),
     "unsupported format 'swd-keras/genotype@2'; expected 'swd-keras/genotype@1'"),
    (json.dumps(dict(_genotype_dict(), cells={})), "'cells' must be a list"),
    (json.dumps(_genotype_dict(edges=[["sep_conv_3x3", 0]] * 7)),
     "cells[0]: a cell has 8 edges (two per intermediate node), got 7"),
    (json.dumps(_genotype_dict(edges=[["conv_3x3", 0]] + [list(e) for e in EDGES[1:]])),
     "cells[0]: edge 0: unknown op 'conv_3x3'; allowed:"),
    (json.dumps(_genotype_dict(edges=[list(e) for e in EDGES[:6]] + [["skip_connect", 5]] * 2)),
     "cells[0]: node 3: input index 5 out of range (node 3 takes inputs 0..4)"),
    (json.dumps(_genotype_dict(type="up")), "cells[0]: cell type must be one of"),
    (json.dumps({"format": GENOTYPE_FORMAT, "cells": [{"type": "normal"}]}),
     "cells[0]: missing ['edges']"),
])
def test_malformed_files_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(GenotypeError) as info:
        Genotype.load(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ")
    assert message in text
    assert "\n" not in text


def test_missing_file(tmp_path):
    with pytest.raises(GenotypeError, match="no such genotype file"):
        load_genotype(tmp_path / "absent.json")


def test_primitives_default_when_absent():
    data = _genotype_dict()
    del data["primitives"]
    assert Genotype.from_dict(data).primitives == PRIMITIVES


# ----- classic DARTS strings ------------------------------------------------------------


def test_darts_string_import_equals_the_builtin_and_round_trips():
    darts = Genotype.from_darts_string(DARTS_V2_STRING)
    assert darts == get_genotype("darts_v2")
    assert [cell.type for cell in darts.cells] == ["normal", "reduce"]
    assert darts.cells[0].edges[7] == ("dil_conv_3x3", 2)
    assert darts.cells[1].edges[2] == ("skip_connect", 2)
    assert darts.to_darts_string() == DARTS_V2_STRING
    assert Genotype.from_darts_string(darts.to_darts_string()) == darts


def test_darts_string_with_ranges_positional_fields_and_prefix():
    text = ("genotypes.Genotype([('skip_connect', 0)] * 2 , range(2, 6), "
            "reduce=[('avg_pool_3x3', 1)] * 8, reduce_concat=range(3, 6))")
    with pytest.raises(GenotypeError):  # `[...] * 2` is an expression, not a literal
        Genotype.from_darts_string(text)
    text = ("genotypes.Genotype(" + repr([("skip_connect", 0), ("sep_conv_3x3", 1)] * 4)
            + ", range(2, 6), reduce=" + repr([("avg_pool_3x3", 1)] * 8)
            + ", reduce_concat=range(3, 6))")
    genotype = Genotype.from_darts_string(text)
    assert genotype.cells[0].concat == (2, 3, 4, 5)
    assert genotype.cells[1].concat == (3, 4, 5)
    assert genotype.cells[1].edges == (("avg_pool_3x3", 1),) * 8


@pytest.mark.parametrize("text, message", [
    ("__import__('os').system('touch /tmp/pwned')", "not a DARTS genotype string"),
    ("Genotype(normal=[", "not a DARTS genotype string"),
    ("Genotype(normal=[], normal_concat=[2])", "missing fields ['reduce', 'reduce_concat']"),
    ("Genotype(normal=x, normal_concat=[2, 3, 4, 5], reduce=[], reduce_concat=[2, 3, 4, 5])",
     "normal must be a list of (op, input) pairs"),
    ("Genotype(normal=[], normal_concat=[2], reduce=[], reduce_concat=[2], extra=1)",
     "unexpected or repeated field 'extra'"),
    (DARTS_V2_STRING.replace("dil_conv_3x3", "conv_7x1_1x7"),
     "DARTS Genotype normal: edge 7: unknown op 'conv_7x1_1x7'"),
    (DARTS_V2_STRING.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 6)"),
     "DARTS Genotype normal: node 3: input index 6 out of range"),
])
def test_darts_string_rejects_bad_input(text, message):
    with pytest.raises(GenotypeError) as info:
        Genotype.from_darts_string(text)
    assert message in str(info.value)


def test_to_darts_string_needs_normal_reduce_pair():
    with pytest.raises(GenotypeError, match="only a 2-cell"):
        get_genotype("swd_nas_paper").to_darts_string()


# ----- built-ins -------------------------------------------------------------------------


def test_builtins_match_spec_section_6():
    spec = _spec_cells(SPEC_SECTION_6)
    assert len(spec) == 7 and all(len(edges) == 8 for _, edges in spec)
    expected = {"darts_v2": spec[:2], "swd_nas_paper": spec[2:]}
    assert set(BUILTIN_GENOTYPES) == set(expected)
    for name, cells in expected.items():
        genotype = get_genotype(name)
        assert [(cell.type, list(cell.edges)) for cell in genotype.cells] == cells
        assert all(cell.concat == (2, 3, 4, 5) for cell in genotype.cells)
        assert genotype.primitives == PRIMITIVES


def test_builtins_spot_checked_by_hand():
    swd = get_genotype("swd_nas_paper")
    assert [cell.type for cell in swd.cells] == ["normal", "reduce", "normal", "reduce", "normal"]
    assert swd.reduction_indices == (1, 3)
    assert swd.cells[0].edges[0] == ("skip_connect", 0)
    assert swd.cells[1].edges[5] == ("sep_conv_5x5", 3)
    assert swd.cells[2].edges[3] == ("sep_conv_3x3", 2)
    assert swd.cells[3].edges[7] == ("dil_conv_5x5", 1)
    assert swd.cells[4].edges[6] == ("dil_conv_5x5", 0)
    # Counted by hand from SPEC §6 (skip_connect and the pools are parameter-free).
    assert swd.parameter_free_counts() == [3, 2, 4, 3, 3]
    darts = get_genotype("darts_v2")
    assert darts.reduction_indices == (1,)
    assert darts.parameter_free_counts() == [2, 8]


def test_get_genotype_unknown_name_lists_builtins():
    with pytest.raises(ValueError) as info:
        get_genotype("darts_v3")
    assert "unknown genotype 'darts_v3'" in str(info.value)
    assert "['darts_v2', 'swd_nas_paper']" in str(info.value)


def test_get_genotype_passes_genotypes_through():
    genotype = get_genotype("darts_v2")
    assert get_genotype(genotype) is genotype


# ----- eq. 11 ------------------------------------------------------------------------------


def _normalize_by_loops(weights):
    """Eq. 11 written out edge by edge, independently of the vectorized code."""
    flat = weights.reshape(-1, weights.shape[-1])
    out = np.empty_like(flat, dtype=np.float64)
    for e, row in enumerate(flat):
        total = sum(float(v) for v in row)
        for op, value in enumerate(row):
            out[e, op] = float(value) / total
    return out.reshape(weights.shape)


@pytest.mark.parametrize("shape", [(8,), (14, 8), (5, 14, 8), (3, 2, 4)])
def test_normalize_edge_weights_matches_eq_11(shape):
    weights = np.random.default_rng(0).uniform(0.0, 3.0, size=shape)
    result = normalize_edge_weights(weights)
    assert isinstance(result, np.ndarray) and result.shape == shape
    np.testing.assert_allclose(result, _normalize_by_loops(weights), rtol=1e-12)
    np.testing.assert_allclose(result.sum(-1), 1.0, rtol=1e-12)


def test_normalize_edge_weights_accepts_lists_and_ints():
    result = normalize_edge_weights([[1, 3], [2, 2]])
    assert result.dtype == np.float64
    np.testing.assert_array_equal(result, [[0.25, 0.75], [0.5, 0.5]])
    float32 = normalize_edge_weights(np.array([1.0, 3.0], np.float32))
    assert float32.dtype == np.float32


@pytest.mark.parametrize("weights, message", [
    (np.float64(2.0), "at least 1-D"),
    (np.array([[1.0, np.nan]]), "finite"),
    (np.array([[1.0, np.inf]]), "finite"),
    (np.array([[1.0, -0.5]]), "non-negative"),
    (np.array([[1.0, 2.0], [0.0, 0.0]]), "weights of edge (1,) sum to zero"),
])
def test_normalize_edge_weights_rejects_bad_weights(weights, message):
    with pytest.raises(ValueError) as info:
        normalize_edge_weights(weights)
    assert message in str(info.value)


@pytest.mark.backend
def test_normalize_edge_weights_keras_ops_matches_numpy():
    weights = np.random.default_rng(1).uniform(0.01, 2.0, size=(5, 14, 8)).astype("float32")
    expected = _normalize_by_loops(weights)
    eager = normalize_edge_weights(keras.ops.convert_to_tensor(weights))
    assert not isinstance(eager, np.ndarray)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(eager), expected, atol=1e-6)
    # Inside a traced graph: a functional model (tf.function / jax.jit / torch).
    inputs = keras.Input(shape=(14, 8))
    model = keras.Model(inputs, normalize_edge_weights(inputs))
    np.testing.assert_allclose(model.predict(weights, verbose=0), expected, atol=1e-6)


# ----- derivation (SPEC §3) -------------------------------------------------------------------

NONE = PRIMITIVES.index("none")
NODE_FIRST_EDGE = (0, 2, 5, 9)


def _edge(node, source):
    return NODE_FIRST_EDGE[node] + source


def _planted_weights(cells, low=0.01, high=1.0, rng=None):
    """(L, 14, 8) weights where each cell's listed (op, input) pairs carry ``high`` on
    their op and every other entry is small noise below ``low``; the DARTS rule must
    recover exactly the listed pairs."""
    rng = rng or np.random.default_rng(0)
    weights = rng.uniform(0.0, low, size=(len(cells), 14, len(PRIMITIVES)))
    for c, edges in enumerate(cells):
        for position, (op, source) in enumerate(edges):
            weights[c, _edge(position // 2, source), PRIMITIVES.index(op)] = high
    return weights


def test_derive_recovers_planted_cells_with_default_reductions():
    swd = get_genotype("swd_nas_paper")
    # derive_genotype lists a node's edges by increasing input index: the SWD cells do.
    cells = [cell.edges for cell in swd.cells]
    derived = derive_genotype(_planted_weights(cells))
    assert derived == swd
    assert derive_genotype(_planted_weights(cells), normalize=False) == swd


def test_derive_orders_edges_by_input_index_and_handles_darts_pair():
    darts = get_genotype("darts_v2")
    derived = derive_genotype(_planted_weights([cell.edges for cell in darts.cells]))
    assert derived.reduction_indices == (1,)  # L == 2: DARTS' (normal, reduce)
    # Same pairs as DARTS_V2, but within each node sorted by input index.
    for ours, theirs in zip(derived.cells, darts.cells, strict=True):
        for node_ours, node_theirs in zip(ours.nodes, theirs.nodes, strict=True):
            assert node_ours == tuple(sorted(node_theirs, key=lambda edge: edge[1]))
    assert derived.cells[1].nodes[1] == (("max_pool_3x3", 1), ("skip_connect", 2))


@pytest.mark.parametrize("num_cells, expected", [(1, (0,)), (2, (1,)), (3, (1, 2)),
                                                 (5, (1, 3)), (8, (2, 5)), (20, (6, 13))])
def test_default_reduction_indices(num_cells, expected):
    assert default_reduction_indices(num_cells) == expected
    weights = np.random.default_rng(num_cells).uniform(0.1, 1, size=(num_cells, 14, 8))
    assert derive_genotype(weights).reduction_indices == expected


def test_derive_explicit_reductions():
    weights = np.random.default_rng(2).uniform(0.1, 1, size=(4, 14, 8))
    assert derive_genotype(weights, reductions=()).reduction_indices == ()
    assert derive_genotype(weights, reductions=[0, 3]).reduction_indices == (0, 3)
    with pytest.raises(ValueError, match="distinct cell positions in 0..3"):
        derive_genotype(weights, reductions=[4])
    with pytest.raises(ValueError, match="distinct cell positions"):
        derive_genotype(weights, reductions=[1, 1])


def test_derive_ignores_none_even_when_largest():
    weights = np.full((1, 14, 8), 0.05)
    # Node 1 (edges from inputs 0, 1, 2): `none` dominates edge 0 but its real ops are
    # weak; edges 1 and 2 carry moderate real weights and must win.
    weights[0, _edge(1, 0), NONE] = 10.0
    weights[0, _edge(1, 0), PRIMITIVES.index("sep_conv_3x3")] = 0.1
    weights[0, _edge(1, 1), PRIMITIVES.index("dil_conv_5x5")] = 0.5
    weights[0, _edge(1, 2), PRIMITIVES.index("avg_pool_3x3")] = 0.4
    # Node 0: `none` is the largest on both edges; the largest real op must be chosen.
    weights[0, _edge(0, 0), NONE] = 9.0
    weights[0, _edge(0, 0), PRIMITIVES.index("max_pool_3x3")] = 0.3
    weights[0, _edge(0, 1), NONE] = 9.0
    weights[0, _edge(0, 1), PRIMITIVES.index("skip_connect")] = 0.2
    for normalize in (False, True):
        cell = derive_genotype(weights, reductions=(), normalize=normalize).cells[0]
        assert cell.nodes[0] == (("max_pool_3x3", 0), ("skip_connect", 1))
        assert cell.nodes[1] == (("dil_conv_5x5", 1), ("avg_pool_3x3", 2))
        assert all(op != "none" for op, _ in cell.edges)


def test_derive_breaks_ties_by_lower_edge_then_lower_primitive():
    # Every weight equal: each node keeps inputs 0 and 1, each edge the first primitive.
    cell = derive_genotype(np.ones((1, 14, 8)), reductions=()).cells[0]
    assert cell.edges == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)) * 4
    weights = np.full((1, 14, 8), 0.1)
    # Node 3 (inputs 0..4): inputs 1, 3 and 4 tie for strength; 1 and 3 are kept.
    for source in (1, 3, 4):
        weights[0, _edge(3, source), PRIMITIVES.index("dil_conv_3x3")] = 0.7
        weights[0, _edge(3, source), PRIMITIVES.index("skip_connect")] = 0.7
    cell = derive_genotype(weights, reductions=(), normalize=False).cells[0]
    assert cell.nodes[3] == (("dil_conv_3x3", 1), ("dil_conv_3x3", 3))


def test_normalization_changes_the_chosen_edges():
    weights = np.full((1, 14, 8), 0.01)
    sep3, skip = PRIMITIVES.index("sep_conv_3x3"), PRIMITIVES.index("skip_connect")
    # Node 1 (inputs 0, 1, 2):
    #   edge A (input 0): every op strong, one a bit stronger -> raw max 2.0, share 2/9.
    #   edge B (input 1): one op 0.5, the rest 0.01 -> raw max 0.5, share ~0.88.
    #   edge C (input 2): one op 1.0, the rest 0.6 -> raw max 1.0, share 1/5.2.
    weights[0, _edge(1, 0)] = 1.0
    weights[0, _edge(1, 0), sep3] = 2.0
    weights[0, _edge(1, 1), skip] = 0.5
    weights[0, _edge(1, 2)] = 0.6
    weights[0, _edge(1, 2), skip] = 1.0
    raw = derive_genotype(weights, reductions=(), normalize=False).cells[0]
    normalized = derive_genotype(weights, reductions=(), normalize=True).cells[0]
    assert raw.nodes[1] == (("sep_conv_3x3", 0), ("skip_connect", 2))
    assert normalized.nodes[1] == (("sep_conv_3x3", 0), ("skip_connect", 1))


def _derive_reference(weights, primitives):
    """The DARTS rule written with plain Python lists (no NumPy sorting)."""
    cells = []
    for cell in weights.tolist():
        edges, first = [], 0
        for node in range(4):
            scored = []
            for source in range(node + 2):
                row = cell[first + source]
                candidates = [(value, -op) for op, value in enumerate(row)
                              if primitives[op] != "none"]
                best_value, best_negative_op = max(candidates)
                scored.append((best_value, -source, primitives[-best_negative_op]))
            kept = sorted(scored, reverse=True)[:2]
            edges += sorted(((op, -neg_source) for _, neg_source, op in kept),
                            key=lambda edge: edge[1])
            first += node + 2
        cells.append(edges)
    return cells


@pytest.mark.parametrize("seed", range(5))
def test_derive_matches_reference_on_random_weights(seed):
    rng = np.random.default_rng(seed)
    # Rounded values make ties common, so the tie rules are exercised as well.
    weights = np.round(rng.uniform(0.0, 1.0, size=(5, 14, 8)), 1) + 0.1
    genotype = derive_genotype(weights, normalize=False)
    assert [list(cell.edges) for cell in genotype.cells] == _derive_reference(weights, PRIMITIVES)
    # Eq. 11 is checked on its own above; the rule must then act on exactly its output.
    normalized = derive_genotype(weights)
    expected = _derive_reference(normalize_edge_weights(weights), PRIMITIVES)
    assert [list(cell.edges) for cell in normalized.cells] == expected


def test_derive_without_none_lets_every_op_compete():
    primitives = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
    weights = np.random.default_rng(3).uniform(0.1, 1.0, size=(2, 14, 3))
    genotype = derive_genotype(weights, primitives=primitives, normalize=False)
    assert genotype.primitives == primitives
    assert [list(c.edges) for c in genotype.cells] == _derive_reference(weights, primitives)
    # The first primitive is the largest on every edge -> it is chosen everywhere.
    weights[..., 0] = 5.0
    genotype = derive_genotype(weights, primitives=primitives, normalize=False)
    assert {op for cell in genotype.cells for op, _ in cell.edges} == {"max_pool_3x3"}


@pytest.mark.parametrize("shape", [(14, 8), (2, 13, 8), (2, 14, 7), (0, 14, 8)])
def test_derive_rejects_wrong_shapes(shape):
    with pytest.raises(ValueError) as info:
        derive_genotype(np.ones(shape))
    assert "(L, 14, 8)" in str(info.value) or "at least one cell" in str(info.value)
    if shape[0] != 0:
        assert f"got {shape}" in str(info.value)


def test_derive_rejects_bad_weights_and_primitives():
    with pytest.raises(ValueError, match="finite"):
        derive_genotype(np.full((1, 14, 8), np.nan), normalize=False)
    with pytest.raises(ValueError, match="non-negative"):
        derive_genotype(-np.ones((1, 14, 8)))
    with pytest.raises(ValueError, match="Unknown primitive"):
        derive_genotype(np.ones((1, 14, 2)), primitives=("sep_conv_3x3", "conv_1x1"))
    with pytest.raises(ValueError, match="other than 'none'"):
        derive_genotype(np.ones((1, 14, 1)), primitives=("none",))
