"""``swd-keras show``: print a genotype and draw its cells."""

from __future__ import annotations

from pathlib import Path

import click
from swd_keras.cli.main import cli, select_backend


@cli.command()
@click.argument("genotype")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG file to write [default: GENOTYPE_NAME.png in the current folder].")
@click.option("--params", is_flag=True,
              help="Also print the parameter counts of the retrain networks (CIFAR, ImageNet).")
def show(genotype: str, output: Path | None, params: bool) -> None:
    """Print GENOTYPE (a built-in name or a genotype JSON file) and draw it as a PNG.

    Built-ins: darts_v2, swd_nas_paper.
    """
    select_backend(None, data=False)  # genotypes name Keras primitives: Keras loads
    from swd_keras.genotype import get_genotype
    from swd_keras.plot import plot_genotype

    try:
        loaded = get_genotype(genotype)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="GENOTYPE") from None
    name = Path(genotype).stem
    click.echo(f"{name}: {loaded.num_cells} cells, reduction cells at "
               f"{list(loaded.reduction_indices)}, primitives {list(loaded.primitives)}")
    click.echo("(node numbers: 0 = c_{k-2}, 1 = c_{k-1}, 2-5 = intermediate nodes 0-3)")
    for index, cell in enumerate(loaded.cells):
        click.echo(f"cell {index} {cell}")
        click.echo(f"    parameter-free ops: {cell.parameter_free_count} of {len(cell.edges)}")
    if params:
        from swd_keras.network import paper_parameter_counts

        click.echo("parameters (trainable, auxiliary head excluded):")
        for label, count in paper_parameter_counts(loaded):
            click.echo(f"    {label}: " + (f"{count:,}" if count is not None
                                             else "the genotype does not fit this depth"))
    written = plot_genotype(loaded, output or Path(f"{name}.png"), title=name)
    click.echo(f"wrote {written}")
