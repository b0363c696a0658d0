"""``swd-keras show``: prints a genotype and writes its picture; bad input exits with 2."""

import os

import pytest
from click.testing import CliRunner
from swd_keras.cli.commands import show  # noqa: F401  (registers the command)
from swd_keras.cli.main import cli

from swd_keras.genotype import Genotype, get_genotype

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runner():
    return CliRunner()


def test_show_builtin_prints_cells_and_writes_png(runner, tmp_path):
    output = tmp_path / "out" / "darts.png"
    result = runner.invoke(cli, ["show", "darts_v2", "--output", str(output)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("darts_v2: 2 cells, reduction cells at [1]")
    darts = get_genotype("darts_v2")
    assert f"cell 0 {darts.cells[0]}" in lines
    assert f"cell 1 {darts.cells[1]}" in lines
    assert "    parameter-free ops: 2 of 8" in lines
    assert "    parameter-free ops: 8 of 8" in lines
    assert lines[-1] == f"wrote {output}"
    assert output.read_bytes()[:8] == PNG_SIGNATURE


def test_show_default_output_name_in_current_folder(runner, tmp_path):
    with runner.isolated_filesystem(temp_dir=tmp_path) as folder:
        result = runner.invoke(cli, ["show", "swd_nas_paper"])
        assert result.exit_code == 0, result.output
        assert "cell 4 normal:" in result.output
        assert [line.strip() for line in result.output.splitlines()
                if "parameter-free" in line] == [
            f"parameter-free ops: {n} of 8" for n in (3, 2, 4, 3, 3)]
        with open(f"{folder}/swd_nas_paper.png", "rb") as f:
            assert f.read(8) == PNG_SIGNATURE


def test_show_json_file(runner, tmp_path):
    genotype = Genotype.from_darts_string(get_genotype("darts_v2").to_darts_string())
    path = genotype.save(tmp_path / "searched.json")
    with runner.isolated_filesystem(temp_dir=tmp_path) as folder:
        result = runner.invoke(cli, ["show", str(path)])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("searched: 2 cells")
        with open(f"{folder}/searched.png", "rb") as f:
            assert f.read(8) == PNG_SIGNATURE


@pytest.mark.parametrize("content, message", [
    (None, "unknown genotype"),
    ("{broken", "invalid JSON"),
    ('{"format": "swd-keras/genotype@1", "cells": [{"type": "normal", "edges": '
     '[["sep_conv_3x3", 0]]}]}', "cells[0]: a cell has 8 edges"),
])
def test_show_bad_genotype_exits_2_with_one_line(runner, tmp_path, content, message):
    argument = "no_such_genotype"
    if content is not None:
        argument = str(tmp_path / "bad.json")
        (tmp_path / "bad.json").write_text(content)
    with runner.isolated_filesystem(temp_dir=tmp_path) as folder:
        result = runner.invoke(cli, ["show", argument])
        assert result.exit_code == 2
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1
        assert errors[0].startswith("Error: Invalid value for GENOTYPE: ")
        assert message in errors[0]
        assert "Traceback" not in result.output
        assert os.listdir(folder) == []  # nothing written
