"""``swd-keras run``: search, retrain and export in one resumable run folder."""

from __future__ import annotations

import json
from pathlib import Path

import click
from swd_keras.cli.commands.export import formats_option
from swd_keras.cli.dataset_options import data_settings, dataset_errors, dataset_options
from swd_keras.cli.main import BACKENDS, cli, devices_option, select_backend
from swd_keras.cli.stage_options import STAGE_FIELDS, stage_options, stage_settings

# Options that make up the run's settings: with --resume they come from pipeline.json.
_SETTINGS = ("dataset", "data_dir", "image_size", "test_dir", "holdout", "seed",
             *STAGE_FIELDS, "name", "version", "formats", "overwrite")
@cli.command()
@dataset_options(dataset_help="Both stages use it (required unless --resume).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder [default: runs/pipeline-DATASET-SEED]; one that holds this "
                   "pipeline is continued.")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Continue the run in this folder with its stored settings.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Keras backend [default: a resumed run's own, else $KERAS_BACKEND or "
                   "tensorflow].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@stage_options()
@click.option("--name", default=None,
              help="Exported model name [default: swd_nas_DATASET].")
@click.option("--version", "version", type=click.IntRange(min=1), default=1, show_default=True,
              help="Exported version folder number.")
@formats_option
@click.option("--overwrite", is_flag=True,
              help="Start over: delete the pipeline run that --output holds.")
@devices_option
@click.pass_context
def run(ctx: click.Context, resume: Path | None, output: Path | None, backend: str | None,
        devices, **options) -> None:
    """Search cells, retrain the genotype and export it verified, in one folder.

    RUN_DIR holds pipeline.json (settings and finished stages), search/, train/ and
    savedmodels/NAME/VERSION/ (the --format exports: a SavedModel, model.onnx,
    model.tflite and model_int8.tflite, each checked in its own runtime). Re-running
    with --resume RUN_DIR (or the same command) skips the finished stages and continues
    the unfinished one from its last checkpoint.
    Defaults are the paper's; on digits they finish in about ten minutes on a CPU.
    """
    given = [name for name in _SETTINGS
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if resume is not None:
        if given or output is not None:
            options_of = {param.name: param.opts[0] for param in ctx.command.params}
            flags = ", ".join(options_of[name]
                              for name in [*given, *(["output"] if output else [])])
            raise click.UsageError(f"--resume takes the settings from {resume}/pipeline.json; "
                                   f"drop {flags}.")
    elif options["dataset"] is None:
        raise click.UsageError("--dataset is required (or --resume RUN_DIR).")
    from swd_keras.data.names import label

    run_dir = resume or output or Path(f"runs/pipeline-{label(options['dataset'])}-"
                                       f"{options['seed']}")
    select_backend(backend or _stored_backend(run_dir))

    from swd_keras.export import ExportError
    from swd_keras.pipeline import pipeline_config, run_pipeline
    from swd_keras.search_job import SearchDiverged
    from swd_keras.training import TrainingDivergedError

    config = None
    if resume is None:
        stages = stage_settings(options, devices)
        try:
            with dataset_errors():
                config = pipeline_config(
                    options["dataset"], seed=options["seed"], search=stages["search"],
                    retrain=stages["retrain"], name=options["name"],
                    version=options["version"], formats=options["formats"],
                    **data_settings(options))
        except ValueError as error:
            raise click.UsageError(str(error)) from None
    try:
        with dataset_errors():
            result = run_pipeline(config, run_dir, resume=resume is not None,
                                  overwrite=options["overwrite"], echo=click.echo,
                                  devices=devices if resume else None)
    except (SearchDiverged, TrainingDivergedError, ExportError) as error:
        raise click.ClickException(str(error)) from None
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    results, stages = result.results, result.stages
    click.echo(f"\npipeline finished: {run_dir}\n"
               f"  genotype:   {run_dir / stages['search']['genotype']}\n"
               f"  model:      {run_dir / stages['train']['model']} "
               f"({results['parameters']:,} parameters)\n"
               f"  test top-1 accuracy: {100 * results['test_top1']:.2f}% "
               f"({results['test_examples']} test images)\n"
               f"  export:     {result.export_path} "
               f"({', '.join(stages['export'].get('formats', ['saved_model']))}, verified)")


def _stored_backend(run_dir: Path) -> str | None:
    """The backend a pipeline run folder was started on (read before Keras is imported,
    so that a resumed run loads its checkpoints on their own backend)."""
    try:
        return json.loads((run_dir / "pipeline.json").read_text(encoding="utf-8"))["backend"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
