"""``swd-keras search``: search SWD-NAS cells and write the genotype."""

from __future__ import annotations

from pathlib import Path

import click
from swd_keras.cli.dataset_options import (
    BUILTIN_DATASETS,
    dataset_errors,
    dataset_options,
    image_size,
)
from swd_keras.cli.main import (
    BACKENDS,
    cli,
    devices_option,
    primitives_module_option,
    select_backend,
)
from swd_keras.cli.stage_options import primitives_option

DATASETS = BUILTIN_DATASETS


@cli.command()
@dataset_options(default="cifar10")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--channels", type=click.IntRange(min=2), default=16, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=5, show_default=True,
              help="Search cells L; reduction cells at L//3 and 2L//3.")
@click.option("--k", type=click.IntRange(min=1), default=4, show_default=True,
              help="c/k channels of each edge enter the candidate operations.")
@click.option("--mode", type=click.Choice(("bilevel", "joint")), default="bilevel",
              show_default=True)
@click.option("--method", type=click.Choice(("swd", "darts")), default="swd",
              show_default=True, help="darts: the plain DARTS baseline in the same code.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.025,
              show_default=True)
@click.option("--lr-min", type=click.FloatRange(min=0), default=0.001, show_default=True)
@click.option("--momentum", type=click.FloatRange(min=0), default=0.9, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=3e-4, show_default=True)
@click.option("--arch-lr", type=click.FloatRange(min=0, min_open=True), default=0.025,
              show_default=True, help="Learning rate of the attention parameters.")
@click.option("--grad-clip", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="Run folder [default: runs/search-DATASET-SEED].")
@click.option("--resume", type=click.Path(file_okay=False), default=None,
              help="Continue the run in this folder from its last completed epoch.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Keras backend [default: KERAS_BACKEND or tensorflow].")
@click.option("--jit/--no-jit", default=None,
              help="Compile the step with XLA / jax.jit [default: Keras' auto].")
@click.option("--precision", type=click.Choice(("float32", "mixed_bfloat16")),
              default="float32", show_default=True,
              help="Compute dtype; mixed_bfloat16 keeps variables in float32.")
@click.option("--remat", type=click.Choice(("auto", "none", "first-stage", "all")),
              default="auto", show_default=True, is_flag=False, flag_value="all",
              help="Which cells recompute their edges for the gradient: less memory, "
                   "a slower step, the same results. auto: first-stage on TensorFlow, "
                   "none elsewhere; a bare --remat means all.")
@click.option("--no-upper-attention", is_flag=True, help="Ablation: all channels enter.")
@click.option("--no-lower-attention", is_flag=True, help="Ablation: softmax over alphas.")
@click.option("--no-normalization", is_flag=True, help="Ablation: no eq. 11 normalization.")
@click.option("--ua-pooling", type=click.Choice(("avg+max", "avg", "max")), default="avg+max",
              show_default=True)
@click.option("--la-pooling", type=click.Choice(("avg", "avg+max")), default="avg",
              show_default=True)
@click.option("--ua-reduction", type=click.IntRange(min=1), default=2, show_default=True,
              help="Channel reduction ratio of UA's MLP.")
@click.option("--la-reduction", type=click.IntRange(min=1), default=8, show_default=True,
              help="Channel reduction ratio of LA's MLP.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use at most this many images per search half (quick runs).")
@primitives_option
@devices_option
@primitives_module_option
def search(**options) -> None:
    """Search SWD-NAS cells on a dataset and write the genotype.

    Writes config.json, genotype.json, genotype.png, genotypes.jsonl, history.csv,
    TensorBoard logs and a checkpoint into the run folder.
    """
    select_backend(options.pop("backend"))
    from swd_keras.data.names import label
    from swd_keras.runs import read_run
    from swd_keras.search_job import SearchConfig, SearchDiverged, collapse_report, run_search

    resume, devices = options.pop("resume"), options.pop("devices")
    config = None
    if resume is not None:
        try:
            read_run(resume, "search")
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--resume") from None
        run_dir = Path(resume)
    else:
        output = options.pop("output")
        modules = click.get_current_context().meta["primitives_modules"]
        if len(modules) > 1:
            raise click.BadParameter("a search takes one primitives module (it is recorded "
                                     "for --resume).", param_hint="--primitives-module")
        # A file by its absolute path: a resumed run may start from another folder.
        options["primitives_module"] = (None if not modules else str(Path(modules[0]).resolve())
                                        if modules[0].endswith(".py") else modules[0])
        options["image_size"] = image_size(options["image_size"])
        try:
            with dataset_errors():
                config = SearchConfig(
                    upper_attention=not options.pop("no_upper_attention"),
                    lower_attention=not options.pop("no_lower_attention"),
                    normalization=not options.pop("no_normalization"), **options)
        except ValueError as error:
            raise click.UsageError(str(error)) from None
        run_dir = Path(output or f"runs/search-{label(config.dataset)}-{config.seed}")
    try:
        with dataset_errors():
            result = run_search(None if resume else config, run_dir,
                                resume=resume is not None, echo=click.echo, devices=devices)
    except SearchDiverged as error:
        raise click.ClickException(str(error)) from None
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"\ngenotype ({result.run_dir / 'genotype.json'}):\n{result.genotype}")
    click.echo(collapse_report(result.genotype))
    click.echo(f"search took {result.seconds:.0f} s; retrain it with: swd-keras train "
               f"{retrain_arguments(result)}")


def retrain_arguments(result) -> str:
    """The ``swd-keras train`` arguments that retrain ``result``'s genotype on its data."""
    import shlex

    from swd_keras.search_job import load_config

    config = load_config(result.run_dir)
    arguments = ["--genotype", str(result.run_dir / "genotype.json"), "--dataset",
                 str(result.dataset)]
    if config.image_size is not None:
        arguments += ["--image-size", *map(str, config.image_size)]
    if config.test_dir is not None:
        arguments += ["--test-dir", str(config.test_dir)]
    if config.holdout is not None:
        arguments += ["--holdout", str(config.holdout)]
    return shlex.join(arguments)
